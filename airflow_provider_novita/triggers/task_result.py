"""TaskResultTrigger: waits for a batch of Novita tasks on the triggerer."""

from __future__ import annotations

import asyncio
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
# Seconds from the deferral before the event may be yielded: see TaskResultTrigger.earliest_event_time.
EVENT_HOLD = 10.0


class TaskResultTrigger(BaseTrigger):
    """
    Polls Novita for a batch of tasks until all are final or the deadline passes, then fires once.

    Everything it needs is in its kwargs, plain JSON data, because the triggerer rebuilds it from
    :meth:`serialize` after every restart. For the same reason the deadline is ``end_time``, an
    absolute wall-clock time: a rebuilt trigger keeps the original deadline instead of starting a
    new one. The API key is not among the kwargs (they are stored in Airflow's database); the
    trigger looks the connection up on the triggerer by its id.

    The event is never yielded before :meth:`earliest_event_time`, :data:`EVENT_HOLD` seconds after
    the deferral (``deferred_at``), however soon the tasks finish: Airflow fails a deferred try whose
    trigger fires before the scheduler has seen the worker's exit from ``defer()``.

    The event payload is :meth:`BatchOutcome.to_event
    <airflow_provider_novita.events.BatchOutcome.to_event>`: ``status`` (``success``, ``failed``,
    ``timeout`` or ``error``), ``message``, ``task_ids`` and each task's last known result.

    :param task_ids: Novita task ids of the batch.
    :param novita_conn_id: the Airflow connection to Novita.
    :param poll_interval: seconds before the first poll and the shortest wait between polls.
    :param end_time: deadline, seconds since the epoch.
    :param max_poll_interval: the longest wait between polls.
    :param deferred_at: when the task deferred, seconds since the epoch; None (the kwargs of a
        trigger serialized before this parameter existed) holds nothing back.
    """

    def __init__(
        self,
        task_ids: Sequence[str],
        novita_conn_id: str,
        poll_interval: float,
        end_time: float,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        deferred_at: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.task_ids = list(task_ids)
        self.novita_conn_id = novita_conn_id
        self.poll_interval = poll_interval
        self.end_time = end_time
        self.max_poll_interval = max_poll_interval
        self.deferred_at = deferred_at

    @classmethod
    def with_timeout(
        cls, task_ids: Sequence[str], novita_conn_id: str, policy: PollingPolicy, timeout: float
    ) -> tuple[TaskResultTrigger, timedelta]:
        """
        A trigger whose deadline is ``timeout`` seconds from now, and the ``defer()`` timeout to go with it.

        The trigger reports its own deadline as a ``timeout`` event naming the unfinished tasks; the
        longer ``defer()`` timeout is only a backstop for a trigger that cannot run at all. Now is
        also the deferral, from which the event is held back (:meth:`earliest_event_time`).
        """
        now = time.time()
        trigger = cls(
            task_ids,
            novita_conn_id,
            policy.poll_interval,
            now + timeout,
            policy.max_poll_interval,
            deferred_at=now,
        )
        return trigger, timedelta(seconds=timeout + DEFERRAL_GRACE)

    def earliest_event_time(self) -> float:
        """
        The earliest time, in seconds since the epoch, at which the event may be yielded: the one
        rule of the hold.

        Contract: no event (of any status) before ``deferred_at + EVENT_HOLD``, and the hold never
        carries an event past ``end_time``, the deadline that bounds every wait. A trigger without
        ``deferred_at`` (its kwargs were serialized by an earlier version) holds nothing back. Both
        times are in the kwargs, so a trigger rebuilt on another triggerer holds only what is left.

        Why: the worker's exit on ``defer()`` reaches Airflow's scheduler as an executor event some
        seconds after the deferral (the worker's supervisor may wait out a heartbeat interval,
        ``[workers] min_heartbeat_interval``, 5 s by default, before it exits; then the scheduler has
        to read the executor). If the trigger has fired by then and the task instance has moved on,
        the scheduler takes that exit for an external kill ("state mismatch") and fails the try:
        while the task instance is SCHEDULED again on Airflow before 3.2.2 (apache/airflow#66374),
        QUEUED (#67287) or RUNNING (#72716). With ``retries=0``, Airflow's default, the task fails.
        :data:`EVENT_HOLD` outlasts that heartbeat interval with room for a busy scheduler. A job
        that takes longer than the hold is not delayed at all, and a held event costs latency on the
        triggerer, never a worker slot. A scheduler slower than the hold can still fail a try: only
        ``retries`` covers that (a retry reattaches to what was submitted).
        """
        if self.deferred_at is None:
            return float("-inf")
        return min(self.deferred_at + EVENT_HOLD, self.end_time)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "task_ids": self.task_ids,
                "novita_conn_id": self.novita_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "max_poll_interval": self.max_poll_interval,
                "deferred_at": self.deferred_at,
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
        hold = self.earliest_event_time() - time.time()
        if hold > 0:
            self.log.info(
                "Holding the event %.1fs, until %gs after the deferral: Airflow may fail a deferred task "
                "whose trigger fires sooner (apache/airflow#66374)",
                hold,
                EVENT_HOLD,
            )
            await asyncio.sleep(hold)
        yield TriggerEvent(outcome.to_event())  # type: ignore[no-untyped-call]
