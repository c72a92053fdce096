"""
How often to ask Novita about a batch of tasks, and what the answers add up to.

One implementation serves the three ways of waiting: :class:`TaskResultTrigger` (async, on the
triggerer), :meth:`NovitaHook.wait_for_tasks` (sync, in the worker) and :class:`TaskResultSensor`
(one round per poke). Each of them only fetches the ids :meth:`BatchPoller.pending` names, hands the
answers to :meth:`BatchPoller.record`, and sleeps :meth:`BatchPoller.next_delay`.

The default pace: the first poll comes ``poll_interval`` (2 s) after submission, then waits grow
by 1.5x up to ``max_poll_interval`` (30 s). When Novita reports an ``eta`` for a task, the wait is
that eta instead, kept within the same bounds. Waits carry +/-20% jitter, the first one +/-50%:
tasks deferred together (a mapped task, a DAG run fanning out) would otherwise poll in lock-step,
and a burst of simultaneous polls is what stalls a triggerer's event loop. A batch is one request
per unfinished task per round: finished tasks are never polled again.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from airflow_provider_novita.events import BatchOutcome, OutcomeStatus
from airflow_provider_novita.exceptions import NovitaError
from airflow_provider_novita.models import TaskResult, TaskStatus
from airflow_provider_novita.retries import is_transient

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_MAX_POLL_INTERVAL = 30.0
DEFAULT_TIMEOUT = 3600.0
DEFAULT_MAX_CONSECUTIVE_ERRORS = 5
# Seconds between progress lines while no task of a batch changes status.
PROGRESS_LOG_INTERVAL = 60.0


def to_seconds(name: str, value: float | timedelta) -> float:
    """Durations are accepted as seconds or ``timedelta``, like ``BaseSensorOperator`` does."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ValueError(f"{name} must be a positive number of seconds or a timedelta; got {value!r}")
    return float(seconds)


@dataclass(frozen=True)
class PollingPolicy:
    """
    The pace of polling.

    :param poll_interval: seconds before the first poll, and the shortest wait between two polls.
    :param max_poll_interval: the longest wait between two polls.
    :param backoff: factor by which the wait grows while Novita gives no eta.
    :param jitter: fraction by which each wait is randomly shortened or lengthened.
    :param first_jitter: the same for the wait before the first poll.
    """

    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL
    backoff: float = 1.5
    jitter: float = 0.2
    first_jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_poll_interval < self.poll_interval:
            raise ValueError(
                f"max_poll_interval ({self.max_poll_interval}) must not be below "
                f"poll_interval ({self.poll_interval})"
            )

    def delay(self, attempt: int, eta: int, rng: random.Random) -> float:
        """Seconds to wait before poll number ``attempt + 1`` of a task that reported ``eta``."""
        wanted = eta if eta > 0 else self.poll_interval * self.backoff**attempt
        bounded = min(max(wanted, self.poll_interval), self.max_poll_interval)
        jitter = self.first_jitter if attempt == 0 else self.jitter
        return bounded * (1 + jitter * rng.uniform(-1.0, 1.0))


class BatchPoller:
    """
    The state of waiting for one batch of Novita tasks, free of any I/O.

    :param task_ids: the batch, in the order results are reported.
    :param policy: the pace.
    :param end_time: wall-clock deadline, epoch seconds. Absolute, so that a trigger rebuilt after a
        triggerer restart keeps the deadline of the original wait.
    :param max_consecutive_errors: rounds in a row whose polls failed transiently (after the hook's own
        retries) before the wait gives up.
    :param rng: source of jitter; seeded in tests.
    """

    def __init__(
        self,
        task_ids: Sequence[str],
        policy: PollingPolicy,
        end_time: float,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
        rng: random.Random | None = None,
    ) -> None:
        self.task_ids = list(task_ids)
        self.policy = policy
        self.end_time = end_time
        self.max_consecutive_errors = max_consecutive_errors
        self.rng = rng or random.Random()
        self.results: dict[str, TaskResult] = {}
        self.attempt = 0
        self.consecutive_errors = 0
        self._fatal: str | None = None
        self._last_statuses = ""
        self._last_logged = 0.0

    def pending(self) -> list[str]:
        """Task ids whose last known status is not final, in batch order."""
        return [
            task_id
            for task_id in self.task_ids
            if task_id not in self.results or not self.results[task_id].status.is_terminal
        ]

    def record(self, answers: Iterable[TaskResult | BaseException]) -> None:
        """Take in one round of answers: a result per polled task, or the error its poll ended with."""
        failed_transiently = False
        for answer in answers:
            if isinstance(answer, TaskResult):
                self.results[answer.task_id] = answer
            elif is_transient(answer):
                failed_transiently = True
                log.warning("Polling Novita failed, will try again: %s", answer)
            elif isinstance(answer, NovitaError):
                self._fatal = str(answer)
            else:
                raise answer
        self.attempt += 1
        self.consecutive_errors = self.consecutive_errors + 1 if failed_transiently else 0
        if self.consecutive_errors >= self.max_consecutive_errors:
            self._fatal = f"polling Novita failed in {self.consecutive_errors} consecutive rounds"
        self._log_progress()

    def outcome(self, now: float) -> BatchOutcome | None:
        """The final outcome, or None while the batch should still be polled."""
        if self._fatal is not None:
            return BatchOutcome(OutcomeStatus.ERROR, self.task_ids, self._ordered_results(), self._fatal)
        pending = self.pending()
        results = self._ordered_results()
        if not pending:
            failed = [r.task_id for r in results if r is not None and r.status is TaskStatus.FAILED]
            if failed:
                return BatchOutcome(
                    OutcomeStatus.FAILED, self.task_ids, results, f"{len(failed)} task(s) failed"
                )
            return BatchOutcome(OutcomeStatus.SUCCESS, self.task_ids, results, "all tasks succeeded")
        if now >= self.end_time:
            return BatchOutcome(
                OutcomeStatus.TIMEOUT,
                self.task_ids,
                results,
                f"deadline passed with {len(pending)} unfinished",
            )
        return None

    def next_delay(self, now: float) -> float:
        """Seconds until the next round: the soonest any unfinished task wants, never past the deadline."""
        delays = [
            self.policy.delay(self.attempt, self.results[t].eta if t in self.results else 0, self.rng)
            for t in self.pending()
        ]
        return max(0.0, min([*delays, self.end_time - now]))

    def _ordered_results(self) -> list[TaskResult | None]:
        return [self.results.get(task_id) for task_id in self.task_ids]

    def _log_progress(self) -> None:
        # A line when a task changes status, else one a minute: progress moves every round, and a
        # line per round per trigger drowns a triggerer's logs (13,000 lines for 1,000 jobs).
        counts = Counter(r.status.name for r in self.results.values())
        unseen = len(self.task_ids) - len(self.results)
        parts = [f"{name.lower()} {count}" for name, count in sorted(counts.items())]
        if unseen:
            parts.append(f"not yet seen {unseen}")
        statuses = ", ".join(parts)
        now = time.monotonic()
        if statuses == self._last_statuses and now - self._last_logged < PROGRESS_LOG_INTERVAL:
            return
        running = [r for r in self.results.values() if not r.status.is_terminal]
        if running:
            statuses += f"; progress {min(r.progress_percent for r in running)}%"
            statuses += f", max eta {max(r.eta for r in running)}s"
        log.info("Novita batch of %d task(s): %s", len(self.task_ids), statuses)
        self._last_statuses = ", ".join(parts)
        self._last_logged = now
