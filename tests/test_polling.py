"""The polling policy and the batch state shared by trigger, sensor and synchronous wait."""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_novita.events import OutcomeStatus
from airflow_provider_novita.exceptions import (
    NovitaAuthError,
    NovitaNotFoundError,
    NovitaServerError,
    NovitaTimeoutError,
)
from airflow_provider_novita.models import TaskResult, TaskStatus
from airflow_provider_novita.polling import (
    ETA_MARGIN,
    MAX_ETA_WAIT,
    BatchPoller,
    PollingPolicy,
    to_seconds,
)

NO_JITTER = PollingPolicy(poll_interval=2, max_poll_interval=30, jitter=0, first_jitter=0, eta_jitter=0)


def result(task_id: str, status: TaskStatus, eta: float | None = None) -> TaskResult:
    return TaskResult(task_id, status, eta=eta)


class TestPolicy:
    def test_without_eta_the_wait_grows_with_the_time_waited_to_the_cap(self) -> None:
        rng = random.Random(0)
        elapsed, waits = 0.0, []
        for _ in range(10):
            wait = NO_JITTER.delay(elapsed, None, rng)
            waits.append(round(wait, 2))
            elapsed += wait
        # The same schedule as multiplying each wait by 1.5, but derived from the elapsed time alone.
        assert waits == [2.0, 3.0, 4.5, 6.75, 10.12, 15.19, 22.78, 30.0, 30.0, 30.0]

    def test_an_eta_is_waited_out_even_past_the_cap_up_to_its_own_limit(self) -> None:
        rng = random.Random(0)
        assert NO_JITTER.delay(0, 12, rng) == 12 + ETA_MARGIN
        assert NO_JITTER.delay(0, 58, rng) == 58 + ETA_MARGIN  # beyond max_poll_interval (30 s)
        assert NO_JITTER.delay(0, 5000, rng) == MAX_ETA_WAIT + ETA_MARGIN
        assert NO_JITTER.delay(500, 1, rng) == 2 + ETA_MARGIN  # never more often than poll_interval

    @settings(max_examples=300, derandomize=True, database=None)
    @given(
        eta=st.floats(min_value=0.01, max_value=MAX_ETA_WAIT),
        elapsed=st.floats(min_value=0, max_value=10_000),
        seed=st.integers(min_value=0, max_value=2**32),
    )
    def test_never_polls_before_the_eta_and_only_a_little_after(
        self, eta: float, elapsed: float, seed: int
    ) -> None:
        wait = PollingPolicy().delay(elapsed, eta, random.Random(seed))
        wanted = max(eta, PollingPolicy().poll_interval)
        assert wanted < wait <= wanted * 1.05 + ETA_MARGIN

    @settings(max_examples=300, derandomize=True, database=None)
    @given(elapsed=st.floats(min_value=0, max_value=100_000), seed=st.integers(min_value=0, max_value=2**32))
    def test_a_guessed_wait_never_passes_the_cap(self, elapsed: float, seed: int) -> None:
        assert PollingPolicy().delay(elapsed, None, random.Random(seed)) <= PollingPolicy().max_poll_interval

    def test_jitter_spreads_guessed_waits_within_its_fraction(self) -> None:
        rng = random.Random(42)
        delays = [
            PollingPolicy(poll_interval=10, max_poll_interval=20).delay(0, None, rng) for _ in range(200)
        ]
        assert 8.0 <= min(delays) < 8.5
        assert 11.5 < max(delays) <= 12.0

    def test_at_the_cap_jitter_only_shortens_a_wait(self) -> None:
        """Waits stay spread at the cap, and a finished task is noticed sooner than by a fixed poke there."""
        rng = random.Random(42)
        delays = [PollingPolicy().delay(10_000, None, rng) for _ in range(200)]
        assert 24.0 <= min(delays) < 24.5
        assert 29.5 < max(delays) < 30.0

    def test_the_first_poll_is_spread_widest(self) -> None:
        rng = random.Random(42)
        delays = [PollingPolicy(poll_interval=10).first_delay(rng) for _ in range(200)]
        assert 5.0 <= min(delays) < 5.5
        assert 14.5 < max(delays) <= 15.0

    def test_cap_below_interval_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="must not be below poll_interval"):
            PollingPolicy(poll_interval=10, max_poll_interval=5)


class TestPolicyFromArguments:
    def test_a_cap_left_at_its_default_follows_a_longer_interval(self) -> None:
        policy = PollingPolicy.from_arguments(60, None)
        assert (policy.poll_interval, policy.max_poll_interval) == (60, 60)

    def test_a_cap_left_at_its_default_is_30s_for_short_intervals(self) -> None:
        assert PollingPolicy.from_arguments(2, None).max_poll_interval == 30

    def test_a_cap_set_below_the_interval_names_both(self) -> None:
        with pytest.raises(
            ValueError, match=r"max_poll_interval \(30s\) must not be below poke_interval \(60s\)"
        ):
            PollingPolicy.from_arguments(60, 30, interval_name="poke_interval")

    def test_a_cap_equal_to_the_interval_is_a_fixed_pace(self) -> None:
        policy = PollingPolicy.from_arguments(60, 60)
        assert (policy.poll_interval, policy.max_poll_interval) == (60, 60)

    def test_an_invalid_cap_is_named(self) -> None:
        with pytest.raises(ValueError, match=r"^max_poll_interval must be a positive number of seconds"):
            PollingPolicy.from_arguments(5, 0)

    def test_durations_may_be_timedeltas(self) -> None:
        policy = PollingPolicy.from_arguments(timedelta(seconds=5), timedelta(minutes=1))
        assert (policy.poll_interval, policy.max_poll_interval) == (5, 60)

    @pytest.mark.parametrize(("value", "seconds"), [(3, 3.0), (0.5, 0.5), (timedelta(minutes=2), 120.0)])
    def test_durations_accept_seconds_and_timedelta(self, value: float | timedelta, seconds: float) -> None:
        assert to_seconds("timeout", value) == seconds

    @pytest.mark.parametrize("value", [0, -1, "10", True, float("nan"), float("inf")])
    def test_durations_reject_the_rest(self, value: object) -> None:
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds or a timedelta"):
            to_seconds("timeout", value)  # type: ignore[arg-type]


def poller(task_ids: list[str], **kwargs: Any) -> BatchPoller:
    """A poller whose tasks are all first due at t=0, started at t=0."""
    kwargs.setdefault("end_time", 1000)
    return BatchPoller(task_ids, NO_JITTER, started_at=0, first_poll_at=0, **kwargs)


def round_at(waiting: BatchPoller, now: float, *answers: TaskResult | BaseException) -> list[str]:
    """Polls what is due at ``now`` with the given answers, in order; returns the ids polled."""
    polled = waiting.due(now)
    waiting.record(polled, list(answers), now)
    return polled


class TestBatchPoller:
    def test_the_first_polls_of_a_batch_are_spread_per_task(self) -> None:
        waiting = BatchPoller(
            ["a", "b", "c", "d"], PollingPolicy(10), end_time=100, started_at=0, rng=random.Random(1)
        )
        firsts = sorted(waiting._due.values())
        assert len(set(firsts)) == 4
        assert all(5 <= at <= 15 for at in firsts)

    def test_a_round_polls_only_the_tasks_that_are_due(self) -> None:
        waiting = poller(["a", "b", "c"])
        assert round_at(
            waiting,
            0,
            result("a", TaskStatus.PROCESSING, eta=20),
            result("b", TaskStatus.PROCESSING, eta=5),
            result("c", TaskStatus.PROCESSING, eta=60),
        ) == ["a", "b", "c"]
        assert waiting.next_delay(0) == 5 + ETA_MARGIN
        assert round_at(waiting, 5.25, result("b", TaskStatus.SUCCEED)) == ["b"]
        assert waiting.next_delay(5.25) == pytest.approx(20 + ETA_MARGIN - 5.25)
        assert round_at(waiting, 20.25, result("a", TaskStatus.SUCCEED)) == ["a"]
        assert waiting.pending() == ["c"]
        assert waiting.due(30) == []

    def test_a_task_whose_eta_has_not_passed_is_not_polled_with_one_that_is_due(self) -> None:
        waiting = poller(["a", "b"])
        round_at(
            waiting,
            0,
            result("a", TaskStatus.PROCESSING, eta=10),
            result("b", TaskStatus.PROCESSING, eta=10.3),
        )
        assert waiting.due(10.25) == ["a"]
        assert waiting.due(10.55) == ["a", "b"]

    def test_success_when_all_succeeded(self) -> None:
        waiting = poller(["a", "b"])
        round_at(waiting, 0, result("a", TaskStatus.SUCCEED), result("b", TaskStatus.SUCCEED))
        outcome = waiting.outcome(now=0)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.SUCCESS
        assert [r.task_id for r in outcome.results if r] == ["a", "b"]
        assert outcome.message == "all tasks succeeded"

    def test_failed_only_once_every_task_is_final(self) -> None:
        waiting = poller(["a", "b"])
        round_at(waiting, 0, result("a", TaskStatus.FAILED), result("b", TaskStatus.QUEUED))
        assert waiting.outcome(now=0) is None
        round_at(waiting, 10, result("b", TaskStatus.SUCCEED))
        outcome = waiting.outcome(now=10)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.FAILED
        assert outcome.message == "1 task(s) failed"

    def test_timeout_at_the_absolute_deadline(self) -> None:
        waiting = poller(["a", "b"], end_time=100)
        round_at(waiting, 0, result("a", TaskStatus.SUCCEED), result("b", TaskStatus.PROCESSING))
        assert waiting.outcome(now=99.9) is None
        outcome = waiting.outcome(now=100)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.TIMEOUT

    def test_next_delay_never_passes_the_deadline(self) -> None:
        waiting = BatchPoller(["a"], NO_JITTER, end_time=101, started_at=100)
        assert waiting.next_delay(now=100) == 1
        assert waiting.next_delay(now=200) == 0

    def test_answers_cut_off_by_the_deadline_end_in_a_timeout_not_an_error(self) -> None:
        waiting = poller(["a", "b"], end_time=100)
        round_at(waiting, 0, result("a", TaskStatus.SUCCEED), NovitaTimeoutError(["b"], "Deadline passed"))
        assert waiting.outcome(now=99) is None
        outcome = waiting.outcome(now=100)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.TIMEOUT

    def test_a_round_cut_off_by_the_deadline_still_records_the_answers_that_came(self) -> None:
        waiting = poller(["a", "b", "c"], end_time=100)
        round_at(
            waiting,
            100,
            NovitaTimeoutError(["a"], "Deadline passed"),
            result("b", TaskStatus.SUCCEED),
            result("c", TaskStatus.PROCESSING),
        )
        outcome = waiting.outcome(now=100)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.TIMEOUT
        assert [r.status if r else None for r in outcome.results] == [
            None,
            TaskStatus.SUCCEED,
            TaskStatus.PROCESSING,
        ]
        assert outcome.message == "deadline passed with 2 unfinished"

    def test_right_at_the_start_the_next_wait_is_the_poll_interval(self) -> None:
        waiting = poller(["a"])
        round_at(waiting, 0, result("a", TaskStatus.PROCESSING))
        assert waiting.next_delay(now=0) == 2

    def test_a_resumed_wait_keeps_its_finished_tasks_and_its_pace(self) -> None:
        waiting = poller(["a", "b"], results={"a": result("a", TaskStatus.SUCCEED)}, consecutive_errors=2)
        assert waiting.pending() == ["b"]
        assert waiting.consecutive_errors == 2
        # 20 s into the wait and without an eta, the next wait is 2 + 0.5 * 20, not the first poll's 2 s.
        round_at(waiting, 20, result("b", TaskStatus.PROCESSING))
        assert waiting.next_delay(now=20) == 12

    def test_an_id_listed_twice_is_polled_once(self) -> None:
        waiting = poller(["a", "a", "b"])
        assert waiting.pending() == ["a", "b"]
        assert waiting.due(0) == ["a", "b"]

    def test_tolerates_a_bounded_run_of_transient_failures(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="airflow_provider_novita.polling")
        waiting = poller(["a"], max_consecutive_errors=3)
        flaky = NovitaServerError(503, "", "overloaded", "a")
        for now, answer in [
            (0, flaky),
            (10, flaky),
            (20, result("a", TaskStatus.PROCESSING)),
            (30, flaky),
            (40, flaky),
        ]:
            waiting.record(["a"], [answer], now)  # a success resets the count
        assert waiting.outcome(now=40) is None
        waiting.record(["a"], [flaky], 50)
        outcome = waiting.outcome(now=50)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.ERROR
        assert "3 consecutive rounds" in outcome.message
        assert not outcome.permanent, "a Novita that failed for a while may answer the task's retry"
        assert caplog.messages[0] == f"Polling Novita failed, will try again: {flaky}"

    def test_a_permanent_error_ends_the_wait_at_once(self) -> None:
        waiting = poller(["a"])
        round_at(waiting, 0, NovitaAuthError(403, "INVALID_API_KEY", "invalid api-key", "a"))
        outcome = waiting.outcome(now=0)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.ERROR
        assert "INVALID_API_KEY" in outcome.message
        assert outcome.permanent, "no retry of the Airflow task changes a refused key"

    def test_an_unknown_task_ends_the_wait_but_not_for_good(self) -> None:
        waiting = poller(["a"])
        round_at(waiting, 0, NovitaNotFoundError(404, "TASK_NOT_FOUND", "no such task", "a"))
        outcome = waiting.outcome(now=0)
        assert outcome is not None
        assert (outcome.status, outcome.permanent) == (OutcomeStatus.ERROR, False)


def test_progress_names_the_tasks_not_seen_yet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_novita.polling")
    waiting = poller(["a", "b", "c"])
    waiting.record(["a"], [result("a", TaskStatus.QUEUED)], 0)
    assert caplog.messages == ["Novita batch of 3 task(s): queued 1, not yet seen 2"]


def test_progress_is_logged_when_a_status_changes_not_every_round(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_novita.polling")
    waiting = poller(["a", "b"])
    running = [result("a", TaskStatus.PROCESSING, eta=9), result("b", TaskStatus.QUEUED)]
    waiting.record(["a", "b"], running, 0)
    waiting.record(["a", "b"], running, 10)  # same statuses: no new line
    succeeded = [result("a", TaskStatus.SUCCEED), TaskResult("b", TaskStatus.PROCESSING, progress_percent=40)]
    waiting.record(["a", "b"], succeeded, 20)
    assert [r.getMessage() for r in caplog.records] == [
        "Novita batch of 2 task(s): processing 1, queued 1, max eta 9s",
        "Novita batch of 2 task(s): processing 1, succeed 1; progress 40%",
    ]
