"""The trigger event: what it carries, and how a resumed task validates it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from airflow_provider_novita.events import BatchOutcome, OutcomeStatus
from airflow_provider_novita.exceptions import (
    NovitaError,
    NovitaTaskFailedError,
    NovitaTimeoutError,
    NovitaWaitRefusedError,
)
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
    ("event", "message"),
    [
        (None, "Unexpected trigger event from TaskResultTrigger: None"),
        ("success", "Unexpected trigger event from TaskResultTrigger: 'success'"),
        ({}, "Malformed trigger event from TaskResultTrigger: {}"),
        ({"status": "cancelled", "task_ids": [], "results": []}, "Malformed trigger event"),
        ({"status": "success", "task_ids": ["a"]}, "Malformed trigger event"),
        (
            {"status": "success", "task_ids": ["a"], "results": []},
            "Trigger event has 0 results for 1 task ids",
        ),
    ],
)
def test_anything_but_a_wellformed_event_raises_saying_what_is_wrong(event: Any, message: str) -> None:
    with pytest.raises(NovitaError, match=f"^{re.escape(message)}"):
        BatchOutcome.from_event(event)


def test_an_error_no_retry_can_change_travels_through_the_event_and_is_raised_as_such() -> None:
    import json

    refused = BatchOutcome(OutcomeStatus.ERROR, ["a"], [None], "HTTP 403 INVALID_API_KEY", permanent=True)
    event = json.loads(json.dumps(refused.to_event()))
    assert event["permanent"] is True
    assert BatchOutcome.from_event(event) == refused
    with pytest.raises(NovitaWaitRefusedError, match=r"^Waiting for Novita tasks a failed: HTTP 403 INVALID"):
        BatchOutcome.from_event(event).results_or_raise("timeout")


@pytest.mark.parametrize("permanent", [None, "true", 1, False])
def test_an_event_of_an_earlier_version_or_with_a_bogus_flag_is_an_ordinary_error(permanent: object) -> None:
    event = BatchOutcome(OutcomeStatus.ERROR, ["a"], [None], "polling failed").to_event()
    assert "permanent" not in event
    if permanent is not None:
        event["permanent"] = permanent
    with pytest.raises(NovitaError) as info:
        BatchOutcome.from_event(event).results_or_raise("timeout")
    assert type(info.value) is NovitaError


def test_an_event_without_a_message_has_an_empty_one() -> None:
    event = outcome(OutcomeStatus.SUCCESS, done("a")).to_event()
    del event["message"]
    assert BatchOutcome.from_event(event).message == ""


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
    with pytest.raises(NovitaError, match=r"^Waiting for Novita tasks a, b failed: msg$"):
        outcome(OutcomeStatus.ERROR, done("a"), done("b")).results_or_raise("t")


@pytest.mark.parametrize(
    "result",
    [
        TaskResult("a", TaskStatus.SUCCEED),
        None,
        TaskResult("a", TaskStatus.PROCESSING, images=done("a").images),
    ],
)
def test_success_without_a_finished_task_with_an_image_is_not_a_success(result: TaskResult | None) -> None:
    with pytest.raises(NovitaError, match=r"^Novita task a is reported successful but returned no image$"):
        BatchOutcome(OutcomeStatus.SUCCESS, ["a"], [result], "msg").results_or_raise("t")


def test_a_success_event_hiding_a_failure_still_raises() -> None:
    # Allow-list: the status word alone never makes a batch successful.
    failed = TaskResult("a", TaskStatus.FAILED, reason="x")
    with pytest.raises(NovitaTaskFailedError):
        outcome(OutcomeStatus.SUCCESS, failed).results_or_raise("t")
