"""
The payload of the trigger's event, and how a resumed task turns it into results or an error.

The trigger, the synchronous wait and the sensor all end in a :class:`BatchOutcome`; the operator and
the sensor turn it into their return value with :meth:`BatchOutcome.results_or_raise`. The event is
validated against an allow-list: only an intact ``success`` payload yields results, anything else,
including ``None`` or a payload from another version of this provider, raises.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_novita.exceptions import (
    NovitaError,
    NovitaTaskFailedError,
    NovitaTimeoutError,
    NovitaWaitRefusedError,
)
from airflow_provider_novita.models import TaskResult, TaskStatus, failures, unfinished

if TYPE_CHECKING:
    from collections.abc import Sequence


class OutcomeStatus(str, enum.Enum):
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True)
class BatchOutcome:
    """
    How waiting for a batch ended.

    :param results: the last known result of each task, in batch order; None for a task never seen.
    :param permanent: for an ``error``, whether no retry of the Airflow task can change it (see
        :func:`~airflow_provider_novita.retries.is_permanent`).
    """

    status: OutcomeStatus
    task_ids: Sequence[str]
    results: Sequence[TaskResult | None]
    message: str
    permanent: bool = False

    def to_event(self) -> dict[str, Any]:
        """Plain JSON data: the ``TriggerEvent`` payload; ``permanent`` only when it is true."""
        event: dict[str, Any] = {
            "status": self.status.value,
            "message": self.message,
            "task_ids": list(self.task_ids),
            "results": [None if r is None else r.to_dict() for r in self.results],
        }
        if self.permanent:
            event["permanent"] = True
        return event

    @classmethod
    def from_event(cls, event: object) -> BatchOutcome:
        """Validate a trigger event payload; a malformed one raises :class:`NovitaError`."""
        if not isinstance(event, dict):
            raise NovitaError(f"Unexpected trigger event from TaskResultTrigger: {event!r}")
        try:
            status = OutcomeStatus(event["status"])
            task_ids = [str(task_id) for task_id in event["task_ids"]]
            results = [None if r is None else TaskResult.from_dict(r) for r in event["results"]]
            message = str(event.get("message", ""))
            permanent = event.get("permanent", False) is True
        except (KeyError, TypeError, ValueError) as err:
            raise NovitaError(f"Malformed trigger event from TaskResultTrigger: {event!r}") from err
        if len(results) != len(task_ids):
            raise NovitaError(f"Trigger event has {len(results)} results for {len(task_ids)} task ids")
        return cls(status, task_ids, results, message, permanent)

    def results_or_raise(self, timeout_description: str) -> list[TaskResult]:
        """
        The results of a fully successful batch, in batch order; otherwise the matching error.

        A batch with any failed task raises :class:`NovitaTaskFailedError` naming every failure,
        because a partial batch silently passed downstream is worse than a visible failure.
        """
        if self.status is OutcomeStatus.TIMEOUT:
            known = {r.task_id: r for r in self.results if r is not None}
            raise NovitaTimeoutError(unfinished(self.task_ids, known), timeout_description)
        if self.status is OutcomeStatus.ERROR:
            error = NovitaWaitRefusedError if self.permanent else NovitaError
            raise error(f"Waiting for Novita tasks {', '.join(self.task_ids)} failed: {self.message}")
        failed = failures(self.results)
        if failed or self.status is OutcomeStatus.FAILED:
            raise NovitaTaskFailedError(failed)
        done: list[TaskResult] = []
        for task_id, result in zip(self.task_ids, self.results, strict=True):
            if result is None or result.status is not TaskStatus.SUCCEED or not result.images:
                raise NovitaError(f"Novita task {task_id} is reported successful but returned no image")
            done.append(result)
        return done
