"""
How often to ask Novita about a batch of tasks, and what the answers add up to.

One implementation serves the three ways of waiting: :class:`TaskResultTrigger` (async, on the
triggerer), :meth:`NovitaHook.wait_for_tasks` (sync, in the worker) and :class:`TaskResultSensor`
(one round per poke, in any mode). Each of them only fetches the ids :meth:`BatchPoller.pending`
names, hands the answers to :meth:`BatchPoller.record`, and sleeps :meth:`BatchPoller.next_delay`.

Requests are what a wait costs (each is most of a millisecond of the triggerer's CPU), so the pace
spends as few as it can without noticing a finished task late:

* the first poll of a task comes ``poll_interval`` (2 s) after the wait starts, +/-50% jitter, so
  that tasks deferred together (a mapped task, a DAG run fanning out) do not poll in lock-step;
* when Novita reports an ``eta``, the next poll comes when the eta has passed, never before it: its
  jitter only lengthens the wait, by up to 5% plus a quarter second. With an exact eta a task costs
  two requests, one to learn the eta and one to see it done. An eta is followed past
  ``max_poll_interval`` (that cap bounds guessing), but not past :data:`MAX_ETA_WAIT`, in case it
  is wrong;
* without an eta, the wait grows with the time already waited, ``poll_interval + 0.5 * elapsed``,
  up to ``max_poll_interval`` (30 s), +/-20% jitter but never past the cap (at the cap, 24-30 s), so
  a finished task is noticed at most ``max_poll_interval`` late. That is the schedule of
  multiplying each wait by 1.5, but it depends only on the start time, so a sensor in
  ``reschedule`` mode, which is a new process at every poke, keeps the pace without remembering how
  many polls it made.

Every task of a batch keeps its own next poll time, and a round polls only the tasks that are due,
never one whose eta has not passed. Finished tasks are never polled again.
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
from airflow_provider_novita.retries import is_permanent, is_transient

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_MAX_POLL_INTERVAL = 30.0
DEFAULT_TIMEOUT = 3600.0
DEFAULT_MAX_CONSECUTIVE_ERRORS = 5
# The longest wait an eta can ask for: Novita's eta is a forecast, and a wrong one must not hide a
# finished task for long.
MAX_ETA_WAIT = 600.0
# A poll right at the eta may still find the task running; this much later it rarely does.
ETA_MARGIN = 0.25
# Seconds between progress lines while no task of a batch changes status.
PROGRESS_LOG_INTERVAL = 60.0
# The jitter of every batch that brings no generator of its own: one per batch would be one more
# object of 2.5 KB per waiting trigger.
_JITTER = random.Random()


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
    :param jitter: fraction by which each wait without an eta is randomly shortened or lengthened.
    :param first_jitter: the same for the wait before the first poll.
    :param eta_jitter: fraction by which a wait for an eta is randomly lengthened (never shortened).
    """

    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL
    backoff: float = 1.5
    jitter: float = 0.2
    first_jitter: float = 0.5
    eta_jitter: float = 0.05

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

    def first_delay(self, rng: random.Random) -> float:
        """Seconds from the start of the wait to a task's first poll."""
        return self.poll_interval * (1 + self.first_jitter * rng.uniform(-1.0, 1.0))

    def delay(self, elapsed: float, eta: float | None, rng: random.Random) -> float:
        """Seconds to wait before the next poll of a task, ``elapsed`` seconds into the wait."""
        if eta:
            wanted = min(max(eta, self.poll_interval), MAX_ETA_WAIT)
            return wanted * (1 + self.eta_jitter * rng.random()) + ETA_MARGIN
        guessed = self.poll_interval + (self.backoff - 1) * elapsed
        # Jitter never carries a wait past the cap, the promise of how late a finished task can be
        # noticed; at the cap it only shortens, so that waits stay spread there too and a finished
        # task is noticed sooner than by a fixed poke at the cap.
        shortest = min(guessed, self.max_poll_interval) * (1 - self.jitter)
        longest = min(guessed * (1 + self.jitter), self.max_poll_interval)
        return rng.uniform(shortest, longest)


class BatchPoller:
    """
    The state of waiting for one batch of Novita tasks, free of any I/O.

    :param task_ids: the batch, in the order results are reported.
    :param policy: the pace.
    :param end_time: wall-clock deadline, epoch seconds. Absolute, so that a trigger rebuilt after a
        triggerer restart keeps the deadline of the original wait.
    :param started_at: when the wait began (epoch seconds); the pace grows with the time since.
    :param first_poll_at: when every task is first due; by default the policy's first delay after
        ``started_at``, drawn per task. A sensor, which pokes at once, passes the current time.
    :param results: results already known, for a wait that resumes (a rescheduled sensor).
    :param consecutive_errors: failed rounds in a row already counted, likewise.
    :param max_consecutive_errors: rounds in a row whose polls failed transiently (after the hook's own
        retries) before the wait gives up.
    :param rng: source of jitter, seeded in tests; by default one shared by all batches.
    """

    def __init__(
        self,
        task_ids: Sequence[str],
        policy: PollingPolicy,
        end_time: float,
        *,
        started_at: float | None = None,
        first_poll_at: float | None = None,
        results: Mapping[str, TaskResult] | None = None,
        consecutive_errors: int = 0,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
        rng: random.Random | None = None,
    ) -> None:
        # A tuple of strings, which the garbage collector stops tracking: a waiting trigger keeps this.
        self.task_ids = tuple(task_ids)
        self.policy = policy
        self.end_time = end_time
        self.started_at = time.time() if started_at is None else started_at
        self.results: dict[str, TaskResult] = dict(results or {})
        self.consecutive_errors = consecutive_errors
        self.max_consecutive_errors = max_consecutive_errors
        self.rng = rng or _JITTER
        # Task id -> when its next poll is due (epoch seconds), for unfinished tasks only.
        self._due = {
            task_id: self.started_at + policy.first_delay(self.rng)
            if first_poll_at is None
            else first_poll_at
            for task_id in self.pending()
        }
        self._fatal: str | None = None
        self._fatal_is_permanent = False
        self._last_logged = 0.0

    def pending(self) -> list[str]:
        """Task ids whose last known status is not final, in batch order, each once."""
        return unfinished(self.task_ids, self.results)

    def due(self, now: float) -> list[str]:
        """The unfinished task ids a round at ``now`` polls: those due by then."""
        return [task_id for task_id, at in self._due.items() if at <= now]

    def record(
        self, polled: Sequence[str], answers: Sequence[TaskResult | BaseException], now: float
    ) -> None:
        """Take in one round: the ids polled, answered by ``now``, and each one's result or error."""
        failed_transiently = changed = False
        elapsed = max(0.0, now - self.started_at)
        for task_id, answer in zip(polled, answers, strict=True):
            eta = None
            if isinstance(answer, TaskResult):
                known = self.results.get(task_id)
                changed = changed or known is None or known.status is not answer.status
                self.results[task_id] = answer
                if answer.status.is_terminal:
                    self._due.pop(task_id, None)
                    continue
                eta = answer.eta
            elif isinstance(answer, NovitaTimeoutError):
                # The deadline came before an answer; outcome() reports the timeout.
                continue
            elif is_transient(answer):
                failed_transiently = True
                log.warning("Polling Novita failed, will try again: %s", answer)
            elif isinstance(answer, NovitaError):
                self._fatal, self._fatal_is_permanent = str(answer), is_permanent(answer)
            else:
                raise answer
            self._due[task_id] = now + self.policy.delay(elapsed, eta, self.rng)
        self.consecutive_errors = self.consecutive_errors + 1 if failed_transiently else 0
        if self.consecutive_errors >= self.max_consecutive_errors:
            self._fatal = f"polling Novita failed in {self.consecutive_errors} consecutive rounds"
        self._log_progress(changed)

    def outcome(self, now: float) -> BatchOutcome | None:
        """The final outcome, or None while the batch should still be polled."""
        if self._fatal is not None:
            return BatchOutcome(
                OutcomeStatus.ERROR, self.task_ids, self._in_order(), self._fatal, self._fatal_is_permanent
            )
        if not self._due:
            results = self._in_order()
            if failed := failures(results):
                return BatchOutcome(
                    OutcomeStatus.FAILED, self.task_ids, results, f"{len(failed)} task(s) failed"
                )
            return BatchOutcome(OutcomeStatus.SUCCESS, self.task_ids, results, "all tasks succeeded")
        if now >= self.end_time:
            return BatchOutcome(
                OutcomeStatus.TIMEOUT,
                self.task_ids,
                self._in_order(),
                f"deadline passed with {len(self._due)} unfinished",
            )
        return None

    def _in_order(self) -> list[TaskResult | None]:
        return [self.results.get(task_id) for task_id in self.task_ids]

    def next_delay(self, now: float) -> float:
        """Seconds until the next round: until the soonest task is due, never past the deadline."""
        return max(0.0, min(*self._due.values(), self.end_time) - now) if self._due else 0.0

    def _log_progress(self, changed: bool) -> None:
        # A line when a task changes status, else one a minute: progress moves every round, and a
        # line per round per trigger drowns a triggerer's logs (13,000 lines for 1,000 jobs). Nothing
        # is counted in a round that logs nothing: a batch's rounds are most of its CPU.
        now = time.monotonic()
        if not changed and now - self._last_logged < PROGRESS_LOG_INTERVAL:
            return
        self._last_logged = now
        if not log.isEnabledFor(logging.INFO):
            # Nor is a line built that no handler would see.
            return
        counts = Counter(r.status.name for r in self.results.values())
        unseen = len(self.task_ids) - len(self.results)
        parts = [f"{name.lower()} {count}" for name, count in sorted(counts.items())]
        if unseen:
            parts.append(f"not yet seen {unseen}")
        running = [r for r in self.results.values() if not r.status.is_terminal]
        progress = [r.progress_percent for r in running if r.progress_percent is not None]
        etas = [r.eta for r in running if r.eta is not None]
        detail = (f"; progress {min(progress):g}%" if progress else "") + (
            f", max eta {max(etas):g}s" if etas else ""
        )
        log.info("Novita batch of %d task(s): %s%s", len(self.task_ids), ", ".join(parts), detail)
