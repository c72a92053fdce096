"""
How often to ask Novita about a batch of tasks, and what the answers add up to.

One implementation serves the three ways of waiting: :class:`TaskResultTrigger` (async, on the
triggerer), :meth:`NovitaHook.wait_for_tasks` (sync, in the worker) and :class:`TaskResultSensor`
(one round per poke, in any mode). Each of them only fetches the ids :meth:`BatchPoller.pending`
names, hands the answers to :meth:`BatchPoller.record`, and sleeps :meth:`BatchPoller.next_delay`.

The default pace: the first poll comes ``poll_interval`` (2 s) after the wait starts; after that the
wait between polls grows with the time already waited, ``poll_interval + 0.5 * elapsed``, up to
``max_poll_interval`` (30 s). That is the same schedule as multiplying each wait by 1.5, but it
depends only on the start time, so a sensor in ``reschedule`` mode, which is a new process at every
poke, keeps the pace without remembering how many polls it made. When Novita reports an ``eta`` for
a task, the wait is that eta instead, kept within the same bounds. Waits carry +/-20% jitter, the
first one +/-50%: tasks deferred together (a mapped task, a DAG run fanning out) would otherwise
poll in lock-step, and a burst of simultaneous polls is what stalls a triggerer's event loop. A
batch is one request per unfinished task per round: finished tasks are never polled again.
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
from airflow_provider_novita.exceptions import NovitaError, NovitaTimeoutError
from airflow_provider_novita.models import TaskResult, failures, unfinished
from airflow_provider_novita.retries import is_transient

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

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
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds or a timedelta; got {value!r}")
    return float(seconds)


@dataclass(frozen=True)
class PollingPolicy:
    """
    The pace of polling.

    :param poll_interval: seconds before the first poll, and the shortest wait between two polls.
    :param max_poll_interval: the longest wait between two polls.
    :param backoff: factor by which the wait grows from one poll to the next while Novita gives no eta.
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
                f"max_poll_interval ({self.max_poll_interval:g}s) must not be below "
                f"poll_interval ({self.poll_interval:g}s)"
            )

    @classmethod
    def from_arguments(
        cls,
        poll_interval: float | timedelta,
        max_poll_interval: float | timedelta | None,
        *,
        interval_name: str = "poll_interval",
    ) -> PollingPolicy:
        """
        The policy for an operator's arguments. A cap left at its default (None) follows the interval,
        so ``poll_interval=60`` alone is valid; only a cap set below the interval is an error.
        """
        interval = to_seconds(interval_name, poll_interval)
        if max_poll_interval is None:
            return cls(interval, max(interval, DEFAULT_MAX_POLL_INTERVAL))
        cap = to_seconds("max_poll_interval", max_poll_interval)
        if cap < interval:
            raise ValueError(
                f"max_poll_interval ({cap:g}s) must not be below {interval_name} ({interval:g}s); "
                f"leave max_poll_interval unset to let it follow {interval_name}"
            )
        return cls(interval, cap)

    def delay(self, elapsed: float, eta: float | None, rng: random.Random, *, first: bool = False) -> float:
        """Seconds to wait before the next poll of a task, ``elapsed`` seconds into the wait."""
        wanted = eta if eta else self.poll_interval + (self.backoff - 1) * elapsed
        bounded = min(max(wanted, self.poll_interval), self.max_poll_interval)
        jitter = self.first_jitter if first else self.jitter
        return bounded * (1 + jitter * rng.uniform(-1.0, 1.0))


class BatchPoller:
    """
    The state of waiting for one batch of Novita tasks, free of any I/O.

    :param task_ids: the batch, in the order results are reported.
    :param policy: the pace.
    :param end_time: wall-clock deadline, epoch seconds. Absolute, so that a trigger rebuilt after a
        triggerer restart keeps the deadline of the original wait.
    :param started_at: when the wait began (epoch seconds); the pace grows with the time since.
    :param results: results already known, for a wait that resumes (a rescheduled sensor).
    :param consecutive_errors: failed rounds in a row already counted, likewise.
    :param max_consecutive_errors: rounds in a row whose polls failed transiently (after the hook's own
        retries) before the wait gives up.
    :param rng: source of jitter; seeded in tests.
    """

    def __init__(
        self,
        task_ids: Sequence[str],
        policy: PollingPolicy,
        end_time: float,
        *,
        started_at: float | None = None,
        results: Mapping[str, TaskResult] | None = None,
        consecutive_errors: int = 0,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
        rng: random.Random | None = None,
    ) -> None:
        self.task_ids = list(task_ids)
        self.policy = policy
        self.end_time = end_time
        self.started_at = time.time() if started_at is None else started_at
        self.results: dict[str, TaskResult] = dict(results or {})
        self.consecutive_errors = consecutive_errors
        self.max_consecutive_errors = max_consecutive_errors
        self.rng = rng or random.Random()
        self.rounds = 0
        self._fatal: str | None = None
        self._last_statuses = ""
        self._last_logged = 0.0

    def pending(self) -> list[str]:
        """Task ids whose last known status is not final, in batch order, each once."""
        return unfinished(self.task_ids, self.results)

    def record(self, answers: Iterable[TaskResult | BaseException]) -> None:
        """Take in one round of answers: a result per polled task, or the error its poll ended with."""
        failed_transiently = False
        for answer in answers:
            if isinstance(answer, TaskResult):
                self.results[answer.task_id] = answer
            elif isinstance(answer, NovitaTimeoutError):
                # The deadline came before an answer; outcome() reports the timeout.
                continue
            elif is_transient(answer):
                failed_transiently = True
                log.warning("Polling Novita failed, will try again: %s", answer)
            elif isinstance(answer, NovitaError):
                self._fatal = str(answer)
            else:
                raise answer
        self.rounds += 1
        self.consecutive_errors = self.consecutive_errors + 1 if failed_transiently else 0
        if self.consecutive_errors >= self.max_consecutive_errors:
            self._fatal = f"polling Novita failed in {self.consecutive_errors} consecutive rounds"
        self._log_progress()

    def outcome(self, now: float) -> BatchOutcome | None:
        """The final outcome, or None while the batch should still be polled."""
        results = [self.results.get(task_id) for task_id in self.task_ids]
        if self._fatal is not None:
            return BatchOutcome(OutcomeStatus.ERROR, self.task_ids, results, self._fatal)
        pending = self.pending()
        if not pending:
            if failed := failures(results):
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
        elapsed = max(0.0, now - self.started_at)
        first = self.rounds == 0 and not self.results
        delays = [
            self.policy.delay(
                elapsed, self.results[t].eta if t in self.results else None, self.rng, first=first
            )
            for t in self.pending()
        ]
        return max(0.0, min([*delays, self.end_time - now]))

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
        progress = [r.progress_percent for r in running if r.progress_percent is not None]
        etas = [r.eta for r in running if r.eta is not None]
        detail = (f"; progress {min(progress):g}%" if progress else "") + (
            f", max eta {max(etas):g}s" if etas else ""
        )
        log.info("Novita batch of %d task(s): %s%s", len(self.task_ids), statuses, detail)
        self._last_statuses = statuses
        self._last_logged = now
