"""Task records and their state machine: QUEUED -> PROCESSING -> SUCCEED or FAILED.

A task's status is not stored; it is computed from timestamps whenever someone asks. That keeps
thousands of polls cheap (no timers, no background ticking) and makes the timeline exact:

* ``TASK_STATUS_QUEUED`` for ``queue_seconds`` after submission,
* then ``TASK_STATUS_PROCESSING``, with ``progress_percent`` growing with elapsed / duration (at most 99)
  and ``eta`` the whole seconds left (at least 1),
* then terminal, at ``max(submission + max(duration, queue_seconds), end of the image work)``: a task
  never completes before its output really exists, however short ``job_duration`` is. A succeeded task
  reports progress 100, a failed one 0; both report eta 0.

The store is used from the server's event loop only, so it needs no locking.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import EmulatorConfig

QUEUED = "TASK_STATUS_QUEUED"
PROCESSING = "TASK_STATUS_PROCESSING"
SUCCEED = "TASK_STATUS_SUCCEED"
FAILED = "TASK_STATUS_FAILED"
ALL_STATUSES = (QUEUED, PROCESSING, SUCCEED, FAILED)

INJECTED_FAILURE_REASON = "TASK_FAILED: injected failure"


@dataclass
class Task:
    task_id: str
    image: str
    resolution: str
    output_format: str
    seed: str
    submitted_at: float
    submitted_ms: int
    earliest_finish_at: float
    injected_failure: bool
    work_done_at: float | None = None
    output_name: str | None = None
    failure_reason: str = ""

    @property
    def finish_at(self) -> float | None:
        """When the task turns terminal, once its image work is over; unknown before that."""
        if self.work_done_at is None:
            return None
        return max(self.earliest_finish_at, self.work_done_at)


@dataclass(frozen=True)
class TaskView:
    """What one poll reports about a task at one instant."""

    status: str
    progress_percent: int
    eta: int
    execute_time_ms: str
    complete_time_ms: str
    reason: str
    output_name: str | None


class TaskStore:
    """Creates tasks with seeded durations and failure decisions, and reports their state over time.

    ``clock`` must be monotonic (it orders the timeline); ``wall_clock`` only feeds the epoch-millisecond
    ``debug_info`` strings. Both are parameters so the timeline can be checked without sleeping.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self.reset()

    def reset(self) -> None:
        self._tasks: dict[str, Task] = {}
        # One generator per decision, each drawn exactly once per task, so that e.g. turning on
        # failure_rate does not change the durations a given seed produces.
        seed = self._config.seed
        self._duration_rng = random.Random(f"{seed}:durations")
        self._failure_rng = random.Random(f"{seed}:failures")
        self._seed_rng = random.Random(f"{seed}:task-seeds")

    def create(self, image: str, resolution: str, output_format: str) -> Task:
        config = self._config
        duration = self._duration_rng.uniform(*config.job_duration_range)
        injected_failure = self._failure_rng.random() < config.failure_rate
        now = self._clock()
        task = Task(
            task_id=str(uuid.uuid4()),
            image=image,
            resolution=resolution,
            output_format=output_format,
            seed=str(self._seed_rng.randrange(2**32)),
            submitted_at=now,
            submitted_ms=int(self._wall_clock() * 1000),
            earliest_finish_at=now + max(duration, config.queue_seconds),
            injected_failure=injected_failure,
        )
        self._tasks[task.task_id] = task
        return task

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def all(self) -> list[Task]:
        """Every task, in the order of creation."""
        return list(self._tasks.values())

    def finish(self, task: Task, output_name: str | None = None, failure_reason: str = "") -> float:
        """Record the end of the image work; returns the instant the task becomes terminal."""
        work_done_at = self._clock()
        task.work_done_at = work_done_at
        task.output_name = output_name
        task.failure_reason = failure_reason
        return max(task.earliest_finish_at, work_done_at)

    def view(self, task: Task) -> TaskView:
        now = self._clock()
        elapsed = now - task.submitted_at
        finish_at = task.finish_at
        if finish_at is not None and now >= finish_at:
            succeeded = task.output_name is not None
            return TaskView(
                status=SUCCEED if succeeded else FAILED,
                progress_percent=100 if succeeded else 0,
                eta=0,
                execute_time_ms=self._wall_ms(task, self._config.queue_seconds),
                complete_time_ms=self._wall_ms(task, finish_at - task.submitted_at),
                reason=task.failure_reason,
                output_name=task.output_name,
            )
        eta = max(1, math.ceil(task.earliest_finish_at - now))
        if elapsed < self._config.queue_seconds:
            return TaskView(QUEUED, 0, eta, "", "", "", None)
        duration = task.earliest_finish_at - task.submitted_at
        progress = min(99, int(100 * elapsed / duration)) if duration > 0 else 99
        return TaskView(
            status=PROCESSING,
            progress_percent=progress,
            eta=eta,
            execute_time_ms=self._wall_ms(task, self._config.queue_seconds),
            complete_time_ms="",
            reason="",
            output_name=None,
        )

    def count_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(ALL_STATUSES, 0)
        for task in self._tasks.values():
            counts[self.view(task).status] += 1
        return counts

    @staticmethod
    def _wall_ms(task: Task, seconds_after_submit: float) -> str:
        return str(task.submitted_ms + round(seconds_after_submit * 1000))
