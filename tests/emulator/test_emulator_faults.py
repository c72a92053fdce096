"""Fault injection: failed tasks, 429/503 answers, latency, truncated and expired downloads."""

from __future__ import annotations

import io
import logging
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from PIL import Image

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import EmulatorApi


def test_failure_rate_one_fails_every_task(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(failure_rate=1.0)

    task_ids = [api.submit_ok(resolution="2k") for _ in range(3)]
    results = [api.wait(task_id) for task_id in task_ids]

    for result in results:
        assert result["task"]["status"] == "TASK_STATUS_FAILED"
        assert result["task"]["reason"] == "TASK_FAILED: injected failure"
        assert result["images"] == []
    assert api.stats()["tasks_by_status"]["TASK_STATUS_FAILED"] == 3


@pytest.mark.parametrize(("retry_after", "header"), [(None, None), (2, "2"), (0.5, "0.5")])
def test_first_requests_are_rate_limited_and_not_submitted(
    api_factory: Callable[..., EmulatorApi], retry_after: float | None, header: str | None
) -> None:
    api = api_factory(rate_limit_first=2, retry_after=retry_after)
    image = api.sample_url()

    rejected = [api.submit(image, resolution="2k") for _ in range(2)]
    accepted = api.submit(image, resolution="2k")

    for response in rejected:
        assert response.status_code == 429
        assert response.json() == {
            "code": 429,
            "reason": "RATE_LIMIT_EXCEEDED",
            "message": response.json()["message"],
            "metadata": {},
        }
        assert response.headers.get("retry-after") == header
    assert accepted.status_code == 200
    stats = api.stats()
    assert stats["requests"]["image-upscaler"] == 3
    assert stats["accepted_submissions"] == 1
    assert stats["submissions_by_image"] == {image: 1}
    assert sum(stats["tasks_by_status"].values()) == 1


def test_rate_limit_first_counts_each_endpoint_separately(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(rate_limit_first=1)

    assert api.client.get("/v3/user").status_code == 429
    assert api.client.get("/v3/user").status_code == 200
    assert api.submit(resolution="2k").status_code == 429
    task_id = api.submit_ok(resolution="2k")
    assert api.result(task_id).status_code == 429
    assert api.result(task_id).status_code == 200


def test_error_first_answers_503_and_creates_nothing(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(error_first=1)

    failed = api.submit(resolution="2k")
    user = api.client.get("/v3/user")

    assert failed.status_code == 503
    assert failed.json()["code"] == 503
    assert failed.json()["reason"] == "SERVICE_UNAVAILABLE"
    assert user.status_code == 503
    assert api.stats()["accepted_submissions"] == 0
    assert api.submit(resolution="2k").status_code == 200
    assert api.stats()["accepted_submissions"] == 1


def test_rate_limits_come_before_errors(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(rate_limit_first=1, error_first=2)

    statuses = [api.client.get("/v3/user").status_code for _ in range(5)]

    assert statuses == [429, 503, 503, 200, 200]


def test_random_faults_are_reproducible_from_the_seed(api_factory: Callable[..., EmulatorApi]) -> None:
    def statuses(seed: int) -> list[int]:
        api = api_factory(seed=seed, rate_limit_rate=0.3, error_rate=0.3)
        return [api.client.get("/v3/user").status_code for _ in range(30)]

    first = statuses(seed=11)

    assert statuses(seed=11) == first
    assert {200, 429, 503} <= set(first)
    assert statuses(seed=12) != first


def test_authentication_failures_are_not_rate_limited(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(rate_limit_first=1)

    unauthenticated = httpx.get(f"{api.base_url}/v3/user")

    assert unauthenticated.status_code == 403
    assert api.client.get("/v3/user").status_code == 429


def test_latency_delays_v3_answers(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(latency=0.6)
    headers = {"Authorization": f"Bearer {api.server.api_key}"}

    # The answer cannot arrive before the injected delay, so a shorter read timeout must expire.
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{api.base_url}/v3/user", headers=headers, timeout=httpx.Timeout(5.0, read=0.1))

    assert httpx.get(f"{api.base_url}/v3/user", headers=headers, timeout=30).status_code == 200


def test_truncated_download_is_shorter_than_announced(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(truncate_downloads=1)
    result = api.wait(api.submit_ok(resolution="2k", output_format="png"))
    url = result["images"][0]["image_url"]
    received = bytearray()
    announced = 0

    def download() -> None:
        nonlocal announced
        with httpx.stream("GET", url) as response:
            announced = int(response.headers["content-length"])
            for chunk in response.iter_raw():
                received.extend(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        download()

    assert 0 < len(received) < announced
    second = httpx.get(url)
    assert second.status_code == 200
    assert len(second.content) == announced
    assert Image.open(io.BytesIO(second.content)).size == (2048, 1152)
    name = url.rsplit("/", 1)[1]
    assert api.stats()["downloads_by_output"] == {name: 2}


def test_result_link_expires_like_a_presigned_url(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(output_ttl=0.3)
    result = api.wait(api.submit_ok(resolution="2k"))
    url = result["images"][0]["image_url"]
    assert result["images"][0]["image_url_ttl"] == 1

    deadline = time.monotonic() + 30
    response = httpx.get(url)
    while response.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        response = httpx.get(url)

    assert response.status_code == 403
    assert "Request has expired" in response.text
    assert response.headers["content-type"] == "application/xml"


def test_unknown_output_is_not_found_like_s3(api: EmulatorApi) -> None:
    response = httpx.get(f"{api.base_url}/outputs/unknown.jpeg")

    assert response.status_code == 404
    assert "NoSuchKey" in response.text
    assert api.stats()["requests"]["outputs"] == 1


def test_ttl_can_be_sent_as_a_string(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(ttl_as_string=True)

    result = api.wait(api.submit_ok(resolution="2k"))

    assert result["images"][0]["image_url_ttl"] == "3600"


def test_retry_after_share_puts_the_header_on_that_fraction_of_429s(
    api_factory: Callable[..., EmulatorApi],
) -> None:
    api = api_factory(rate_limit_rate=1.0, retry_after=1, retry_after_share=0.5, seed=11)

    headers = [api.submit(resolution="2k").headers.get("retry-after") for _ in range(200)]

    assert set(headers) == {"1", None}
    assert 60 <= headers.count("1") <= 140  # seeded: the same split on every run


def test_a_dropped_connection_creates_and_bills_nothing(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(drop_rate=1.0)

    with pytest.raises(httpx.RemoteProtocolError):
        api.submit(resolution="2k")
    with pytest.raises(httpx.RemoteProtocolError):
        api.result("any-task")

    stats = api.stats()
    assert stats["dropped_connections"] == 2
    assert stats["accepted_submissions"] == 0
    assert stats["submissions_by_image"] == {}


def test_a_lost_answer_bills_a_task_the_client_never_learns_of(
    api_factory: Callable[..., EmulatorApi],
) -> None:
    api = api_factory(lost_answer_rate=1.0, job_duration=0.1)
    image = api.sample_url()

    with pytest.raises(httpx.RemoteProtocolError):
        api.submit(image, resolution="2k")

    stats = api.stats()
    assert stats["accepted_submissions"] == 1
    assert stats["submissions_by_image"] == {image: 1}
    assert stats["lost_answers_by_image"] == {image: 1}
    assert stats["dropped_connections"] == 0
    assert sum(stats["tasks_by_status"].values()) == 1


def test_injected_faults_are_counted_by_kind_and_not_logged_as_server_errors(
    api_factory: Callable[..., EmulatorApi], caplog: pytest.LogCaptureFixture
) -> None:
    dropping = api_factory(drop_rate=1.0)
    losing = api_factory(lost_answer_rate=1.0, job_duration=0.1)
    limiting = api_factory(rate_limit_first=2, error_first=1)

    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        for api in (dropping, losing):
            with pytest.raises(httpx.RemoteProtocolError):
                api.submit(resolution="2k")
        statuses = [limiting.submit(resolution="2k").status_code for _ in range(3)]

    assert statuses == [429, 429, 503]
    assert dropping.stats()["faults_injected"] == {"dropped_connection": 1}
    assert losing.stats()["faults_injected"] == {"lost_answer": 1}
    assert limiting.stats()["faults_injected"] == {"429": 2, "503": 1}
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


def test_faults_are_drawn_per_request_from_the_seed(api_factory: Callable[..., EmulatorApi]) -> None:
    def outcomes(api: EmulatorApi) -> list[str]:
        seen = []
        for _ in range(60):
            try:
                seen.append(str(api.submit(resolution="2k").status_code))
            except httpx.RemoteProtocolError:
                seen.append("dropped")
        return seen

    config = {"drop_rate": 0.2, "lost_answer_rate": 0.2, "rate_limit_rate": 0.1, "seed": 5}
    first, second = outcomes(api_factory(**config)), outcomes(api_factory(**config))

    assert first == second
    assert {"dropped", "200", "429"} <= set(first)


def test_a_submission_whose_client_left_during_the_latency_creates_nothing(
    api_factory: Callable[..., EmulatorApi],
) -> None:
    api = api_factory(latency=1.0)

    with pytest.raises(httpx.ReadTimeout):
        api.client.post("/v3/async/image-upscaler", json={"image": api.sample_url()}, timeout=0.2)
    time.sleep(1.5)  # the handler wakes from its latency and finds the client gone

    stats = api.stats()
    assert stats["abandoned_submissions"] == 1
    assert stats["accepted_submissions"] == 0
