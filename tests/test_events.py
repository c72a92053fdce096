"""The trigger event: what it carries, and how a resumed task validates it."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_novita.events import BatchOutcome, OutcomeStatus
from airflow_provider_novita.exceptions import NovitaError, NovitaTaskFailedError, NovitaTimeoutError
from airflow_provider_novita.models import ResultImage, TaskResult, TaskStatus


def done(task_id: str) -> TaskResult:
    image = ResultImage(f"https://o.test/{task_id}.png", "png", 3600)
    return TaskResult(task_id, TaskStatus.SUCCEED, images=(image,), completed_at=1764000000.0)


def outcome(status: OutcomeStatus, *results: TaskResult | None) -> BatchOutcome:
    ids = [r.task_id if r else "unseen" for r in results]
    return BatchOutcome(status, ids, list(results), "msg")


def test_event_round_trip_is_plain_json() -> None:
    import json

    original = outcome(OutcomeStatus.SUCCESS, done("a"), done("b"))
    event = json.loads(json.dumps(original.to_event()))
    assert BatchOutcome.from_event(event) == BatchOutcome(
        OutcomeStatus.SUCCESS, ["a", "b"], [done("a"), done("b")], "msg"
    )


@pytest.mark.parametrize(
    "event",
    [
        None,
        "success",
        {},
        {"status": "cancelled", "task_ids": [], "results": []},
        {"status": "success", "task_ids": ["a"]},
        {"status": "success", "task_ids": ["a"], "results": []},
    ],
)
def test_anything_but_a_wellformed_event_raises(event: Any) -> None:
    with pytest.raises(NovitaError):
        BatchOutcome.from_event(event)


def test_failed_tasks_are_named_with_their_reasons() -> None:
    failed = TaskResult("b", TaskStatus.FAILED, reason="INVALID_IMAGE_FORMAT")
    with pytest.raises(
        NovitaTaskFailedError, match="1 Novita task\\(s\\) failed: b: INVALID_IMAGE_FORMAT"
    ) as info:
        outcome(OutcomeStatus.FAILED, done("a"), failed).results_or_raise("t")
    assert info.value.failures == {"b": "INVALID_IMAGE_FORMAT"}


def test_timeout_names_the_unfinished_tasks() -> None:
    running = TaskResult("b", TaskStatus.PROCESSING)
    with pytest.raises(
        NovitaTimeoutError, match="Timed out after 60s; 2 Novita task\\(s\\) still unfinished: b, unseen"
    ):
        outcome(OutcomeStatus.TIMEOUT, done("a"), running, None).results_or_raise("Timed out after 60s")


def test_error_event_raises_with_its_message() -> None:
    with pytest.raises(NovitaError, match="Waiting for Novita tasks a failed: msg"):
        outcome(OutcomeStatus.ERROR, done("a")).results_or_raise("t")


def test_success_without_image_is_not_a_success() -> None:
    with pytest.raises(NovitaError, match="reported successful but returned no image"):
        outcome(OutcomeStatus.SUCCESS, TaskResult("a", TaskStatus.SUCCEED)).results_or_raise("t")


def test_a_success_event_hiding_a_failure_still_raises() -> None:
    # Allow-list: the status word alone never makes a batch successful.
    failed = TaskResult("a", TaskStatus.FAILED, reason="x")
    with pytest.raises(NovitaTaskFailedError):
        outcome(OutcomeStatus.SUCCESS, failed).results_or_raise("t")
