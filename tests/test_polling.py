"""The polling policy and the batch state shared by trigger, sensor and synchronous wait."""

from __future__ import annotations

import logging
import random
from datetime import timedelta

import pytest

from airflow_provider_novita.events import OutcomeStatus
from airflow_provider_novita.exceptions import NovitaAuthError, NovitaServerError, NovitaTimeoutError
from airflow_provider_novita.models import TaskResult, TaskStatus
from airflow_provider_novita.polling import BatchPoller, PollingPolicy, to_seconds

NO_JITTER = PollingPolicy(poll_interval=2, max_poll_interval=30, jitter=0, first_jitter=0)


def result(task_id: str, status: TaskStatus, eta: float | None = None) -> TaskResult:
    return TaskResult(task_id, status, eta=eta)


class TestPolicy:
    def test_the_wait_grows_with_the_time_waited_from_the_interval_to_the_cap(self) -> None:
        rng = random.Random(0)
        elapsed, waits = 0.0, []
        for _ in range(10):
            wait = NO_JITTER.delay(elapsed, None, rng)
            waits.append(round(wait, 2))
            elapsed += wait
        # The same schedule as multiplying each wait by 1.5, but derived from the elapsed time alone.
        assert waits == [2.0, 3.0, 4.5, 6.75, 10.12, 15.19, 22.78, 30.0, 30.0, 30.0]

    def test_follows_the_eta_within_bounds(self) -> None:
        rng = random.Random(0)
        assert NO_JITTER.delay(0, 12, rng) == 12
        assert NO_JITTER.delay(500, 1, rng) == 2  # never more often than poll_interval
        assert NO_JITTER.delay(0, 600, rng) == 30  # never longer than the cap

    def test_jitter_spreads_delays_within_its_fraction(self) -> None:
        rng = random.Random(42)
        delays = [
            PollingPolicy(poll_interval=10, max_poll_interval=10).delay(30, None, rng) for _ in range(200)
        ]
        assert 8.0 <= min(delays) < 8.5
        assert 11.5 < max(delays) <= 12.0

    def test_the_first_poll_is_spread_widest(self) -> None:
        rng = random.Random(42)
        delays = [PollingPolicy(poll_interval=10).delay(0, None, rng, first=True) for _ in range(200)]
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


class TestBatchPoller:
    def test_polls_only_unfinished_tasks_in_order(self) -> None:
        poller = BatchPoller(["a", "b", "c"], NO_JITTER, end_time=100)
        assert poller.pending() == ["a", "b", "c"]
        poller.record(
            [
                result("a", TaskStatus.SUCCEED),
                result("b", TaskStatus.PROCESSING),
                result("c", TaskStatus.FAILED),
            ]
        )
        assert poller.pending() == ["b"]
        assert poller.outcome(now=0) is None

    def test_success_when_all_succeeded(self) -> None:
        poller = BatchPoller(["a", "b"], NO_JITTER, end_time=100)
        poller.record([result("a", TaskStatus.SUCCEED), result("b", TaskStatus.SUCCEED)])
        outcome = poller.outcome(now=0)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.SUCCESS
        assert [r.task_id for r in outcome.results if r] == ["a", "b"]

    def test_failed_only_once_every_task_is_final(self) -> None:
        poller = BatchPoller(["a", "b"], NO_JITTER, end_time=100)
        poller.record([result("a", TaskStatus.FAILED), result("b", TaskStatus.QUEUED)])
        assert poller.outcome(now=0) is None
        poller.record([result("b", TaskStatus.SUCCEED)])
        outcome = poller.outcome(now=0)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.FAILED

    def test_timeout_at_the_absolute_deadline(self) -> None:
        poller = BatchPoller(["a", "b"], NO_JITTER, end_time=100)
        poller.record([result("a", TaskStatus.SUCCEED), result("b", TaskStatus.PROCESSING)])
        assert poller.outcome(now=99.9) is None
        outcome = poller.outcome(now=100)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.TIMEOUT

    def test_next_delay_never_passes_the_deadline(self) -> None:
        poller = BatchPoller(["a"], NO_JITTER, end_time=101, started_at=100)
        assert poller.next_delay(now=100) == 1
        assert poller.next_delay(now=200) == 0

    def test_answers_cut_off_by_the_deadline_end_in_a_timeout_not_an_error(self) -> None:
        poller = BatchPoller(["a", "b"], NO_JITTER, end_time=100)
        poller.record([result("a", TaskStatus.SUCCEED), NovitaTimeoutError(["b"], "Deadline passed")])
        assert poller.outcome(now=99) is None
        outcome = poller.outcome(now=100)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.TIMEOUT

    def test_a_resumed_wait_keeps_its_finished_tasks_and_its_pace(self) -> None:
        poller = BatchPoller(
            ["a", "b"],
            NO_JITTER,
            end_time=1000,
            started_at=0,
            results={"a": result("a", TaskStatus.SUCCEED)},
            consecutive_errors=2,
        )
        assert poller.pending() == ["b"]
        assert poller.consecutive_errors == 2
        # 20 s into the wait, the wait is 2 + 0.5 * 20, not the first poll's 2 s.
        assert poller.next_delay(now=20) == 12

    def test_an_id_listed_twice_is_polled_once(self) -> None:
        assert BatchPoller(["a", "a", "b"], NO_JITTER, end_time=100).pending() == ["a", "b"]

    def test_next_delay_is_the_soonest_any_task_wants(self) -> None:
        poller = BatchPoller(["a", "b"], NO_JITTER, end_time=1000, started_at=0)
        poller.record([result("a", TaskStatus.PROCESSING, eta=20), result("b", TaskStatus.PROCESSING, eta=5)])
        assert poller.next_delay(now=0) == 5

    def test_tolerates_a_bounded_run_of_transient_failures(self) -> None:
        poller = BatchPoller(["a"], NO_JITTER, end_time=1000, max_consecutive_errors=3)
        flaky = NovitaServerError(503, "", "overloaded", "a")
        poller.record([flaky])
        poller.record([flaky])
        poller.record([result("a", TaskStatus.PROCESSING)])  # a success resets the count
        poller.record([flaky])
        poller.record([flaky])
        assert poller.outcome(now=0) is None
        poller.record([flaky])
        outcome = poller.outcome(now=0)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.ERROR
        assert "3 consecutive rounds" in outcome.message

    def test_a_permanent_error_ends_the_wait_at_once(self) -> None:
        poller = BatchPoller(["a"], NO_JITTER, end_time=1000)
        poller.record([NovitaAuthError(403, "INVALID_API_KEY", "invalid api-key", "a")])
        outcome = poller.outcome(now=0)
        assert outcome is not None
        assert outcome.status is OutcomeStatus.ERROR
        assert "INVALID_API_KEY" in outcome.message


def test_progress_is_logged_when_a_status_changes_not_every_round(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_novita.polling")
    poller = BatchPoller(["a", "b"], NO_JITTER, end_time=1000)
    running = [result("a", TaskStatus.PROCESSING, eta=9), result("b", TaskStatus.QUEUED)]
    poller.record(running)
    poller.record(running)  # same statuses: no new line
    poller.record(
        [result("a", TaskStatus.SUCCEED), TaskResult("b", TaskStatus.PROCESSING, progress_percent=40)]
    )
    assert [r.getMessage() for r in caplog.records] == [
        "Novita batch of 2 task(s): processing 1, queued 1, max eta 9s",
        "Novita batch of 2 task(s): processing 1, succeed 1; progress 40%",
    ]
