"""Counters that let tests prove what a client did, and resetting them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_novita.emulator import EmulatorServer

    from .conftest import EmulatorApi


def test_counters_track_every_request_and_each_accepted_submission(api: EmulatorApi) -> None:
    landscape, portrait = api.sample_url("landscape.png"), api.sample_url("portrait.jpg")
    first = api.submit_ok(landscape, resolution="2k")
    api.submit_ok(landscape, resolution="2k")
    api.submit_ok(portrait, resolution="2k")
    api.submit(landscape, resolution="3k")
    httpx.post(f"{api.base_url}/v3/async/image-upscaler", json={"image": landscape})
    api.client.get("/v3/user")
    result = api.wait(first)
    polls = api.stats()["requests"]["task-result"]
    httpx.get(result["images"][0]["image_url"])
    httpx.get(result["images"][0]["image_url"])

    stats = api.stats()

    assert stats["requests"] == {"image-upscaler": 5, "task-result": polls, "user": 1, "outputs": 2}
    assert polls >= 1
    assert stats["accepted_submissions"] == 3
    assert stats["submissions_by_image"] == {landscape: 2, portrait: 1}
    assert stats["downloads_by_output"] == {f"{first}.jpeg": 2}
    assert sum(stats["tasks_by_status"].values()) == 3
    assert stats["tasks_by_status"]["TASK_STATUS_SUCCEED"] >= 1


def test_python_stats_match_http_stats(novita_emulator: EmulatorServer) -> None:
    headers = {"Authorization": f"Bearer {novita_emulator.api_key}"}
    httpx.get(f"{novita_emulator.base_url}/v3/user", headers=headers)
    httpx.get(f"{novita_emulator.base_url}/v3/user")

    http_stats = httpx.get(f"{novita_emulator.base_url}/_emulator/stats").json()

    assert novita_emulator.stats() == http_stats
    assert http_stats["requests"]["user"] == 2


def test_http_reset_forgets_tasks_and_counters(api: EmulatorApi) -> None:
    task_id = api.submit_ok(resolution="2k")
    api.client.get("/v3/user")

    after_reset = httpx.post(f"{api.base_url}/_emulator/reset").json()

    assert after_reset == api.stats()
    assert after_reset["requests"] == {"image-upscaler": 0, "task-result": 0, "user": 0, "outputs": 0}
    assert after_reset["accepted_submissions"] == 0
    assert after_reset["submissions_by_image"] == {}
    assert sum(after_reset["tasks_by_status"].values()) == 0
    assert api.result(task_id).status_code == 404
    assert api.client.get("/v3/user").json()["credit_balance"] == api.server.config.credit_balance


def test_python_reset_restarts_injected_faults(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(rate_limit_first=1)
    assert api.client.get("/v3/user").status_code == 429
    assert api.client.get("/v3/user").status_code == 200

    api.server.reset()

    assert api.client.get("/v3/user").status_code == 429
    assert api.stats()["requests"]["user"] == 1


def test_tasks_lists_every_task_in_order_with_its_status_reason_and_times(
    api_factory: Callable[..., EmulatorApi],
) -> None:
    api = api_factory(failure_rate=1.0)
    landscape, portrait = api.sample_url("landscape.png"), api.sample_url("portrait.jpg")
    first, second = api.submit_ok(landscape, resolution="2k"), api.submit_ok(portrait, resolution="2k")
    api.wait(first), api.wait(second)

    tasks = api.server.tasks()
    submitted_at = [task.pop("submitted_at") for task in tasks]
    finish_at = [task.pop("finish_at") for task in tasks]
    assert tasks == [
        {
            "task_id": first,
            "image": landscape,
            "status": "TASK_STATUS_FAILED",
            "reason": "TASK_FAILED: injected failure",
        },
        {
            "task_id": second,
            "image": portrait,
            "status": "TASK_STATUS_FAILED",
            "reason": "TASK_FAILED: injected failure",
        },
    ]
    assert submitted_at[0] <= submitted_at[1] <= time.monotonic()
    # Both waited for: each turned terminal after it was created, and before now.
    assert all(
        created < done <= time.monotonic() for created, done in zip(submitted_at, finish_at, strict=True)
    )
