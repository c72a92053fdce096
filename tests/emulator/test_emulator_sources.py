"""Sources that cannot become a result end the task FAILED with a reason, never with a crash."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import EmulatorApi


def assert_failed(api: EmulatorApi, task_id: str, *reason_parts: str) -> None:
    result = api.wait(task_id)
    task = result["task"]
    assert task["status"] == "TASK_STATUS_FAILED"
    for part in reason_parts:
        assert part in task["reason"]
    assert task["eta"] == 0
    assert result["images"] == []
    assert result["extra"]["debug_info"]["complete_time_ms"].isdigit()


def test_missing_source_fails_the_task(api: EmulatorApi) -> None:
    task_id = api.submit_ok(api.sample_url("missing.png"), resolution="2k")

    assert_failed(api, task_id, "source image could not be fetched", "HTTP 404")


def test_unreachable_source_fails_the_task(api: EmulatorApi, closed_port_url: str) -> None:
    task_id = api.submit_ok(closed_port_url, resolution="2k")

    assert_failed(api, task_id, "source image could not be fetched", "ConnectError")


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/image.png", "not a url", "file:///etc/hostname", "http://[bad/x.png"]
)
def test_non_http_source_fails_the_task(api: EmulatorApi, url: str) -> None:
    task_id = api.submit_ok(url, resolution="2k")

    assert_failed(api, task_id, "source image could not be fetched")


def test_undecodable_source_fails_the_task(api: EmulatorApi) -> None:
    task_id = api.submit_ok(f"{api.base_url}/_emulator/stats", resolution="2k")

    assert_failed(api, task_id, "INVALID_IMAGE_FORMAT", "not a decodable image")


def test_source_over_the_byte_cap_fails_the_task(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(max_source_bytes=1000)

    task_id = api.submit_ok(resolution="2k")

    assert_failed(api, task_id, "IMAGE_FILE_EXCEEDS_MAX_SIZE", "1000 bytes")


def test_source_over_the_pixel_cap_fails_before_decoding(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(max_source_pixels=640 * 360 - 1)

    task_id = api.submit_ok(api.sample_url("landscape.png"), resolution="2k")

    assert_failed(api, task_id, "IMAGE_EXCEEDS_MAX_RESOLUTION", "640x360")


def test_source_exactly_at_the_pixel_cap_is_accepted(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(max_source_pixels=640 * 360)

    task_id = api.submit_ok(api.sample_url("landscape.png"), resolution="2k")

    assert api.wait(task_id)["task"]["status"] == "TASK_STATUS_SUCCEED"


def test_slow_source_times_out(api_factory: Callable[..., EmulatorApi]) -> None:
    # The /v3 routes of an emulator with latency answer late: a source that never arrives in time.
    slow = api_factory(latency=1.0)
    api = api_factory(fetch_timeout=0.2)

    task_id = api.submit_ok(f"{slow.base_url}/v3/user", resolution="2k")

    assert_failed(api, task_id, "source image could not be fetched", "timed out after 0.2 s")


def test_source_answering_an_api_error_fails_the_task(api: EmulatorApi) -> None:
    task_id = api.submit_ok(f"{api.base_url}/v3/user", resolution="2k")

    assert_failed(api, task_id, "HTTP 403")
