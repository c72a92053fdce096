"""TaskResultTrigger: waits for a batch of Novita tasks on the triggerer."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.polling import DEFAULT_MAX_POLL_INTERVAL, PollingPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

# How long after the trigger's own deadline Airflow's backstop cancels the deferral.
DEFERRAL_GRACE = 120.0


class TaskResultTrigger(BaseTrigger):
    """
    Polls Novita for a batch of tasks until all are final or the deadline passes, then fires once.

    Everything it needs is in its kwargs, plain JSON data, because the triggerer rebuilds it from
    :meth:`serialize` after every restart. For the same reason the deadline is ``end_time``, an
    absolute wall-clock time: a rebuilt trigger keeps the original deadline instead of starting a
    new one. The API key is not among the kwargs (they are stored in Airflow's database); the
    trigger looks the connection up on the triggerer by its id.

    The event payload is :meth:`BatchOutcome.to_event
    <airflow_provider_novita.events.BatchOutcome.to_event>`: ``status`` (``success``, ``failed``,
    ``timeout`` or ``error``), ``message``, ``task_ids`` and each task's last known result.

    :param task_ids: Novita task ids of the batch.
    :param novita_conn_id: the Airflow connection to Novita.
    :param poll_interval: seconds before the first poll and the shortest wait between polls.
    :param end_time: deadline, seconds since the epoch.
    :param max_poll_interval: the longest wait between polls.
    """

    def __init__(
        self,
        task_ids: Sequence[str],
        novita_conn_id: str,
        poll_interval: float,
        end_time: float,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.task_ids = list(task_ids)
        self.novita_conn_id = novita_conn_id
        self.poll_interval = poll_interval
        self.end_time = end_time
        self.max_poll_interval = max_poll_interval

    @classmethod
    def with_timeout(
        cls, task_ids: Sequence[str], novita_conn_id: str, policy: PollingPolicy, timeout: float
    ) -> tuple[TaskResultTrigger, timedelta]:
        """
        A trigger whose deadline is ``timeout`` seconds from now, and the ``defer()`` timeout to go with it.

        The trigger reports its own deadline as a ``timeout`` event naming the unfinished tasks; the
        longer ``defer()`` timeout is only a backstop for a trigger that cannot run at all.
        """
        trigger = cls(
            task_ids, novita_conn_id, policy.poll_interval, time.time() + timeout, policy.max_poll_interval
        )
        return trigger, timedelta(seconds=timeout + DEFERRAL_GRACE)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "task_ids": self.task_ids,
                "novita_conn_id": self.novita_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "max_poll_interval": self.max_poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The session leases the shared client only while waiting, so the lease ends before the event
        # is yielded: after the yield the triggerer may never resume this generator.
        policy = PollingPolicy(self.poll_interval, max(self.max_poll_interval, self.poll_interval))
        async with NovitaHook(self.novita_conn_id).session() as session:
            outcome = await session.wait_for_tasks(self.task_ids, policy, self.end_time)
        self.log.info(
            "Novita tasks %s: %s (%s)", ", ".join(self.task_ids), outcome.status.value, outcome.message
        )
        yield TriggerEvent(outcome.to_event())  # type: ignore[no-untyped-call]
