"""The happy path: a task goes QUEUED -> PROCESSING -> SUCCEED and its result is a real upscaled image."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import EmulatorApi

STATUS_ORDER = ["TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCEED"]


def download_image(api: EmulatorApi, result: dict[str, Any]) -> tuple[httpx.Response, Image.Image]:
    response = httpx.get(result["images"][0]["image_url"])
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content)
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return response, image


def test_task_progresses_through_every_status(api_factory: Callable[..., EmulatorApi]) -> None:
    # A long QUEUED phase makes the first poll land in it even on a slow machine.
    api = api_factory(queue_seconds=0.5, job_duration=1.2)
    task_id = api.submit_ok(resolution="2k")
    polls: list[dict[str, Any]] = []

    final = api.wait(task_id, on_poll=polls.append)

    statuses = [poll["task"]["status"] for poll in polls]
    assert statuses[0] == "TASK_STATUS_QUEUED"
    assert "TASK_STATUS_PROCESSING" in statuses
    assert statuses[-1] == "TASK_STATUS_SUCCEED"
    assert [STATUS_ORDER.index(status) for status in statuses] == sorted(
        STATUS_ORDER.index(status) for status in statuses
    )
    progress = [poll["task"]["progress_percent"] for poll in polls]
    assert progress == sorted(progress)
    for poll in polls:
        task, debug = poll["task"], poll["extra"]["debug_info"]
        assert task["task_id"] == task_id
        assert task["task_type"] == "UPSCALE"
        assert task["reason"] == ""
        if task["status"] == "TASK_STATUS_QUEUED":
            assert task["progress_percent"] == 0
            assert task["eta"] >= 1
            assert (debug["execute_time_ms"], debug["complete_time_ms"]) == ("", "")
            assert poll["images"] == []
        elif task["status"] == "TASK_STATUS_PROCESSING":
            assert 0 <= task["progress_percent"] <= 99
            assert task["eta"] == 1
            assert debug["execute_time_ms"].isdigit()
            assert debug["complete_time_ms"] == ""
            assert poll["images"] == []
    assert final["task"]["progress_percent"] == 100
    assert final["task"]["eta"] == 0
    debug = final["extra"]["debug_info"]
    submitted, executed, completed = (
        int(debug[key]) for key in ("submit_time_ms", "execute_time_ms", "complete_time_ms")
    )
    assert executed - submitted == 500
    assert completed - submitted >= 1200


def test_result_has_the_documented_shape(api: EmulatorApi) -> None:
    task_id = api.submit_ok(resolution="2k", output_format="png")

    result = api.wait(task_id)

    assert set(result) == {"extra", "task", "images", "videos", "audios"}
    assert result["extra"]["enable_nsfw_detection"] is False
    assert result["extra"]["seed"].isdigit()
    assert result["extra"]["debug_info"]["request_info"] == ""
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert result["images"] == [
        {
            "image_url": f"{api.base_url}/outputs/{task_id}.png",
            "image_url_ttl": 3600,
            "image_type": "png",
            "nsfw_detection_result": None,
        }
    ]
    assert result["videos"] == []
    assert result["audios"] == []


@pytest.mark.parametrize(
    ("sample", "output_format", "pillow_format", "content_type", "size"),
    [
        ("landscape.png", "jpeg", "JPEG", "image/jpeg", (2048, 1152)),
        ("landscape.png", "png", "PNG", "image/png", (2048, 1152)),
        ("portrait.jpg", "webp", "WEBP", "image/webp", (1152, 2048)),
        ("square.webp", "png", "PNG", "image/png", (2048, 2048)),
    ],
)
def test_result_is_upscaled_to_2k_in_the_requested_format(
    api: EmulatorApi,
    sample: str,
    output_format: str,
    pillow_format: str,
    content_type: str,
    size: tuple[int, int],
) -> None:
    task_id = api.submit_ok(api.sample_url(sample), resolution="2k", output_format=output_format)

    result = api.wait(task_id)
    response, image = download_image(api, result)

    assert result["images"][0]["image_type"] == output_format
    assert response.headers["content-type"] == content_type
    assert image.format == pillow_format
    assert image.size == size


def test_defaults_are_4k_jpeg(api: EmulatorApi) -> None:
    task_id = api.client.post("/v3/async/image-upscaler", json={"image": api.sample_url()}).json()["task_id"]

    result = api.wait(task_id)
    _, image = download_image(api, result)

    assert result["images"][0]["image_type"] == "jpeg"
    assert image.format == "JPEG"
    assert image.size == (4096, 2304)


def test_transparent_source_becomes_a_jpeg_flattened_on_white(api: EmulatorApi) -> None:
    task_id = api.submit_ok(api.sample_url("transparent.png"), resolution="2k", output_format="jpeg")

    _, image = download_image(api, api.wait(task_id))

    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == (2048, 1536)
    # The sample is fully transparent at its right edge.
    red, green, blue = image.getpixel((2040, 40))  # type: ignore[misc]
    assert min(red, green, blue) > 240


def test_transparent_source_keeps_its_alpha_in_png(api: EmulatorApi) -> None:
    task_id = api.submit_ok(api.sample_url("transparent.png"), resolution="2k", output_format="png")

    _, image = download_image(api, api.wait(task_id))

    assert image.mode == "RGBA"
    assert image.getchannel("A").getextrema() == (0, 255)


def test_samples_are_listed_and_decode_to_their_advertised_size(api: EmulatorApi) -> None:
    listing = httpx.get(f"{api.base_url}/samples/").json()["samples"]

    names = {entry["name"] for entry in listing}
    assert {"landscape.png", "portrait.jpg", "square.webp", "transparent.png"} <= names
    for entry in listing:
        response = httpx.get(entry["url"])
        assert response.status_code == 200
        assert response.headers["content-type"] == entry["content_type"]
        assert len(response.content) == entry["bytes"]
        image = Image.open(io.BytesIO(response.content))
        assert image.size == (entry["width"], entry["height"])


def test_samples_are_deterministic(api_factory: Callable[..., EmulatorApi]) -> None:
    first, second = api_factory(), api_factory()

    for name in ("landscape.png", "portrait.jpg", "square.webp", "transparent.png"):
        assert httpx.get(first.sample_url(name)).content == httpx.get(second.sample_url(name)).content


def test_each_accepted_submission_is_billed(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(credit_balance=10_000, submission_cost=250)
    assert api.client.get("/v3/user").json() == {
        "allow_features": ["image-upscaler"],
        "credit_balance": 10_000,
        "free_trial": {},
    }

    api.submit_ok(resolution="2k")
    api.submit_ok(resolution="2k")
    api.submit(resolution="1k")

    assert api.client.get("/v3/user").json()["credit_balance"] == 9_500
