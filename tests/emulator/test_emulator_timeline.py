"""The task timeline and its seeded decisions, checked exactly with a hand-driven clock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from airflow_provider_novita.emulator import EmulatorConfig
from airflow_provider_novita.emulator.tasks import TaskStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import EmulatorApi


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def store(config: EmulatorConfig) -> tuple[TaskStore, ManualClock]:
    clock = ManualClock()
    return TaskStore(config, clock=clock, wall_clock=lambda: 1_700_000_000.0), clock


def test_status_progress_and_eta_follow_the_clock() -> None:
    tasks, clock = store(EmulatorConfig(queue_seconds=2.0, job_duration=10.0))
    task = tasks.create("http://source/x.png", "2k", "jpeg")
    observed = []
    for now in (100.0, 101.9, 102.0, 105.0, 109.5, 112.0):
        clock.now = now
        view = tasks.view(task)
        observed.append((view.status, view.progress_percent, view.eta))
    clock.now = 112.5
    finish_at = tasks.finish(task, output_name=f"{task.task_id}.jpeg")

    assert observed == [
        ("TASK_STATUS_QUEUED", 0, 10),
        ("TASK_STATUS_QUEUED", 0, 9),
        ("TASK_STATUS_PROCESSING", 20, 8),
        ("TASK_STATUS_PROCESSING", 50, 5),
        ("TASK_STATUS_PROCESSING", 95, 1),
        # Past the planned duration but the image is not ready yet: still processing.
        ("TASK_STATUS_PROCESSING", 99, 1),
    ]
    assert finish_at == 112.5
    done = tasks.view(task)
    assert (done.status, done.progress_percent, done.eta) == ("TASK_STATUS_SUCCEED", 100, 0)
    assert done.execute_time_ms == "1700000002000"
    assert done.complete_time_ms == "1700000012500"


def test_a_fast_image_still_waits_for_the_job_duration() -> None:
    tasks, clock = store(EmulatorConfig(queue_seconds=1.0, job_duration=4.0))
    task = tasks.create("http://source/x.png", "2k", "png")
    clock.now = 100.5
    finish_at = tasks.finish(task, failure_reason="TASK_FAILED: injected failure")

    clock.now = 103.99
    before = tasks.view(task)
    clock.now = 104.0
    after = tasks.view(task)

    assert finish_at == 104.0
    assert before.status == "TASK_STATUS_PROCESSING"
    assert (after.status, after.reason, after.eta) == (
        "TASK_STATUS_FAILED",
        "TASK_FAILED: injected failure",
        0,
    )
    assert tasks.count_by_status() == {
        "TASK_STATUS_QUEUED": 0,
        "TASK_STATUS_PROCESSING": 0,
        "TASK_STATUS_SUCCEED": 0,
        "TASK_STATUS_FAILED": 1,
    }


def planned(seed: int, failure_rate: float = 0.5) -> list[tuple[float, bool, str]]:
    tasks, _ = store(EmulatorConfig(seed=seed, job_duration=(2.0, 6.0), failure_rate=failure_rate))
    created = [tasks.create("http://source/x.png", "2k", "jpeg") for _ in range(20)]
    return [
        (task.earliest_finish_at - task.submitted_at, task.injected_failure, task.seed) for task in created
    ]


def test_same_seed_gives_same_durations_failures_and_seeds() -> None:
    first = planned(seed=5)

    assert planned(seed=5) == first
    assert planned(seed=6) != first
    durations = [duration for duration, _, _ in first]
    assert all(2.0 <= duration <= 6.0 for duration in durations)
    assert len(set(durations)) == len(durations)
    assert {failed for _, failed, _ in first} == {True, False}


def test_failure_rate_does_not_change_the_durations_of_a_seed() -> None:
    with_failures = [duration for duration, _, _ in planned(seed=5)]
    without_failures = [duration for duration, _, _ in planned(seed=5, failure_rate=0.0)]

    assert with_failures == without_failures


def test_same_seed_fails_the_same_tasks_over_http(
    api_factory: Callable[..., EmulatorApi], closed_port_url: str
) -> None:
    # Unfetchable sources keep this fast: injected failures and fetch failures differ by reason only.
    def injected_pattern(seed: int) -> list[bool]:
        api = api_factory(seed=seed, failure_rate=0.5, job_duration=0.05, queue_seconds=0.0)
        task_ids = [api.submit_ok(closed_port_url, resolution="2k") for _ in range(10)]
        return [
            api.wait(task_id)["task"]["reason"] == "TASK_FAILED: injected failure" for task_id in task_ids
        ]

    first = injected_pattern(seed=21)

    assert injected_pattern(seed=21) == first
    assert injected_pattern(seed=22) != first
    assert set(first) == {True, False}


@pytest.mark.parametrize(
    "overrides",
    [
        {"failure_rate": 1.5},
        {"rate_limit_rate": -0.1},
        {"job_duration": (3.0, 1.0)},
        {"workers": 0},
        {"api_key": ""},
        {"output_ttl": 0},
        {"truncate_downloads": -1},
    ],
)
def test_invalid_config_is_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must"):
        EmulatorConfig(**overrides)  # type: ignore[arg-type]
