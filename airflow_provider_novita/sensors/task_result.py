"""TaskResultSensor: waits for Novita tasks that were submitted elsewhere."""

from __future__ import annotations

import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_provider_novita.events import BatchOutcome
from airflow_provider_novita.exceptions import NovitaTimeoutError
from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.polling import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    BatchPoller,
    PollingPolicy,
    to_seconds,
)
from airflow_provider_novita.results import finish_batch
from airflow_provider_novita.triggers.task_result import TaskResultTrigger

if TYPE_CHECKING:
    import datetime
    from collections.abc import Callable, Sequence

    from airflow.sdk import Context, ObjectStoragePath


class TaskResultSensor(BaseSensorOperator):
    """
    Waits until Novita tasks finish and returns the same records as :class:`UpscaleOperator`.

    Typical use is after ``UpscaleOperator(wait_for_completion=False)``, with ``task_ids`` taken
    from its XCom (``submit.output`` or ``XComArg(submit, key="task_ids")``).

    Deferrable, it hands the wait to :class:`TaskResultTrigger`. Otherwise each poke polls the
    unfinished tasks once, and the wait between pokes follows the provider's polling policy (the
    task's eta, else a backoff from ``poke_interval`` to ``max_poll_interval``) instead of a fixed
    ``poke_interval``; ``mode="reschedule"`` frees the worker slot between pokes. ``timeout``
    defaults to one hour rather than the sensor default of seven days: result URLs expire.

    :param task_ids: one Novita task id or a list of them (templated).
    :param images: the source image URL of each task, in the same order, to fill the records'
        ``image`` field; None leaves it empty (templated).
    :param novita_conn_id: the Airflow connection to Novita (templated).
    :param deferrable: wait on the triggerer. Defaults to ``[operators] default_deferrable``.
    :param poke_interval: seconds before the first poll and the shortest wait between polls.
    :param max_poll_interval: the longest wait between polls.
    :param output_path: where to save the images before the task succeeds, as for
        :class:`UpscaleOperator` (templated). Names carry no resolution: the sensor does not know it.
    """

    template_fields: Sequence[str] = ("task_ids", "images", "novita_conn_id", "output_path")

    def __init__(
        self,
        *,
        task_ids: str | Sequence[str],
        images: str | Sequence[str] | None = None,
        novita_conn_id: str = NovitaHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float | datetime.timedelta = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float | datetime.timedelta = DEFAULT_MAX_POLL_INTERVAL,
        timeout: float | datetime.timedelta = DEFAULT_TIMEOUT,
        output_path: str | ObjectStoragePath | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.task_ids = task_ids
        self.output_path = output_path
        self.images = images
        self.novita_conn_id = novita_conn_id
        self.deferrable = deferrable
        self.policy = PollingPolicy(self.poke_interval, to_seconds("max_poll_interval", max_poll_interval))

    def _task_ids(self) -> list[str]:
        ids = [self.task_ids] if isinstance(self.task_ids, str) else list(self.task_ids)
        if not ids or not all(isinstance(task_id, str) and task_id for task_id in ids):
            raise ValueError(
                f"task_ids must be a Novita task id or a non-empty list of them; got {self.task_ids!r}"
            )
        return ids

    def _sources(self) -> list[str | None]:
        if self.images is None:
            return [None] * len(self._task_ids())
        return [self.images] if isinstance(self.images, str) else list(self.images)

    @cached_property
    def hook(self) -> NovitaHook:
        """One hook, and so one HTTP client, for all pokes of this sensor instance."""
        return NovitaHook(self.novita_conn_id)

    @cached_property
    def _poller(self) -> BatchPoller:
        # The sensor's own ``timeout`` ends a non-deferrable wait, so the poller needs no deadline.
        return BatchPoller(self._task_ids(), self.policy, end_time=float("inf"))

    def execute(self, context: Context) -> Any:
        task_ids = self._task_ids()
        if len(self._sources()) != len(task_ids):
            raise ValueError(f"images has {len(self._sources())} entries for {len(task_ids)} task ids")
        if not self.deferrable:
            return super().execute(context)
        trigger, defer_timeout = TaskResultTrigger.with_timeout(
            task_ids, self.novita_conn_id, self.policy, self.timeout
        )
        self.defer(trigger=trigger, method_name="execute_complete", timeout=defer_timeout)

    def poke(self, context: Context) -> bool | PokeReturnValue:
        self._poller.record(self.hook.get_task_results(self._poller.pending()))
        outcome = self._poller.outcome(time.time())
        if outcome is None:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._finish(context, outcome))

    def _get_next_poke_interval(
        self,
        started_at: datetime.datetime | float,
        run_duration: Callable[[], float],
        poke_count: int,
    ) -> float:
        # BaseSensorOperator's pacing hook: the shared policy (eta, backoff, jitter) replaces its own.
        return self._poller.next_delay(time.time())

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger fired: validate its event and return the records."""
        return self._finish(context, BatchOutcome.from_event(event))

    def _finish(self, context: Context, outcome: BatchOutcome) -> list[dict[str, Any]]:
        try:
            return finish_batch(
                context,
                outcome,
                sources=self._sources(),
                resolution=None,
                timeout_description=f"Sensor timed out after {self.timeout:g}s",
                output_path=self.output_path,
                outlets=self.outlets,
            )
        except NovitaTimeoutError as err:
            # As a sensor timeout, ``soft_fail`` and ``never_fail`` apply to it as users expect.
            raise AirflowSensorTimeout(str(err)) from err
