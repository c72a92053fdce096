"""TaskResultSensor: waits for Novita tasks that were submitted elsewhere."""

from __future__ import annotations

import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_novita._compat import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    conf,
)
from airflow_provider_novita.events import BatchOutcome
from airflow_provider_novita.exceptions import NovitaError, NovitaTaskFailedError, NovitaTimeoutError
from airflow_provider_novita.failing import invalid_arguments_fail_once
from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.lineage import operator_lineage
from airflow_provider_novita.models import TaskResult, check_images, is_plain_literal
from airflow_provider_novita.polling import DEFAULT_POLL_INTERVAL, DEFAULT_TIMEOUT, BatchPoller, PollingPolicy
from airflow_provider_novita.results import finish_batch
from airflow_provider_novita.retries import is_permanent
from airflow_provider_novita.retry_memory import RetryMemory, StateStoreChunks
from airflow_provider_novita.sources import as_sources
from airflow_provider_novita.storage import output_folder, output_root

if TYPE_CHECKING:
    import datetime
    from collections.abc import Sequence

    from airflow.providers.common.compat.openlineage.facet import Dataset, RunFacet
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context, ObjectStoragePath

# Task state store namespace of what a rescheduled sensor knows between pokes.
STATE_STORE_KEY = "novita_sensor"
# The name, among the task ids, of the count of consecutive failed polls.
_ERRORS = "errors"


def task_id_list(task_ids: object) -> list[str]:
    """The Novita task ids of ``task_ids`` (one id or a non-empty list of them), stripped."""
    ids = [task_ids] if isinstance(task_ids, str) else task_ids
    if (
        not isinstance(ids, (list, tuple))
        or not ids
        or not all(isinstance(i, str) and i.strip() for i in ids)
    ):
        raise ValueError(
            f"task_ids must be a Novita task id or a non-empty list of them; got {str(task_ids)[:200]!r}"
        )
    return [task_id.strip() for task_id in ids]


def source_list(images: object, count: int | None) -> list[str]:
    """The sources of ``images``, one per task id when ``count`` is known, checked and stripped."""
    sources = check_images(as_sources(images))
    if count is not None and len(sources) != count:
        raise ValueError(f"images must hold one source per task id ({count}); got {len(sources)}")
    return sources


class TaskResultSensor(BaseSensorOperator):
    """
    Waits until Novita tasks finish and returns the same records as :class:`UpscaleOperator`.

    Typical use is after ``UpscaleOperator(wait_for_completion=False)``, with ``task_ids`` taken
    from its XCom (``submit.output`` or ``XComArg(submit, key="task_ids")``).

    It behaves the same in every mode. Deferrable, it hands the wait to :class:`TaskResultTrigger`.
    Otherwise each poke polls the unfinished tasks once, and sets ``poke_interval`` for the next poke
    from the provider's polling policy (the task's eta, else a wait that grows with the time since
    the first poke, up to ``max_poll_interval``). ``mode="reschedule"`` frees the worker slot between
    pokes; what one poke learnt (finished tasks, failed rounds) is kept in the task state store
    (Airflow 3.3+), so finished tasks are not polled again. ``timeout`` defaults to one hour rather
    than the sensor default of seven days: result URLs expire.

    Outcomes: all succeeded returns the records. A FAILED Novita task fails the sensor without
    retries (it cannot resubmit), and so does the deadline; both name the task ids. With
    ``soft_fail``, any of these failures, and any other provider error, skips the task instead.

    :param task_ids: one Novita task id or a list of them (templated).
    :param images: the source image of each task, in the same order, to fill the records' ``image``
        field: http(s) URLs, object storage URIs or ``ObjectStoragePath`` objects, as
        :class:`UpscaleOperator` accepts them (nothing is signed here); None leaves it empty (templated).
    :param novita_conn_id: the Airflow connection to Novita (templated).
    :param deferrable: wait on the triggerer. Defaults to ``[operators] default_deferrable``.
    :param poke_interval: seconds before the first poll and the shortest wait between polls.
    :param max_poll_interval: the longest wait between polls; by default 30 s, or ``poke_interval``
        if that is longer.
    :param output_path: where to save the images before the task succeeds, as for
        :class:`UpscaleOperator` (templated). Names carry no resolution: the sensor does not know it.
    """

    template_fields: Sequence[str] = ("task_ids", "images", "novita_conn_id", "output_path")
    # Class defaults that a try replaces on its own copy of the sensor (BaseOperator.prepare_for_execution),
    # so a value never outlives the try: the files it persisted, for lineage, and what its pokes learnt.
    _persisted_paths: Sequence[str] = ()
    _batch_poller: BatchPoller | None = None
    _sensor_memory: RetryMemory | None = None

    def __init__(
        self,
        *,
        task_ids: str | Sequence[str],
        images: str | Sequence[str] | None = None,
        novita_conn_id: str = NovitaHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float | datetime.timedelta = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float | datetime.timedelta | None = None,
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
        self.policy = PollingPolicy.from_arguments(
            poke_interval, max_poll_interval, interval_name="poke_interval"
        )
        if is_plain_literal(task_ids):
            task_id_list(task_ids)
        if images is not None and is_plain_literal(as_sources(images)):
            source_list(images, len(task_id_list(task_ids)) if is_plain_literal(task_ids) else None)
        if output_path is not None and is_plain_literal(output_path):
            output_root(output_path)

    @property
    def poke_interval(self) -> float:
        """
        Seconds until the next poke, which BaseSensorOperator sleeps or reschedules for: the shared
        polling policy's next delay once a poke has run (the tasks' eta, else a wait that grows,
        cut at the deadline), the configured ``poke_interval`` before.
        """
        poller = self._batch_poller
        return self._poke_interval if poller is None else poller.next_delay(time.time())

    @poke_interval.setter
    def poke_interval(self, seconds: float) -> None:
        self._poke_interval = seconds

    def _sources(self) -> list[str | None]:
        count = len(task_id_list(self.task_ids))
        return [None] * count if self.images is None else list(source_list(self.images, count))

    @cached_property
    def hook(self) -> NovitaHook:
        """One hook, and so one HTTP client, for all pokes of this sensor instance."""
        return NovitaHook(self.novita_conn_id)

    def execute(self, context: Context) -> Any:
        try:
            with invalid_arguments_fail_once():
                task_ids = task_id_list(self.task_ids)
                self._sources()
                if self.output_path:
                    output_folder(self.output_path)
            if self.deferrable:
                # Imported here: it brings in Airflow's trigger machinery, which parsing a DAG never needs.
                from airflow_provider_novita.triggers.task_result import TaskResultTrigger

                trigger, defer_timeout = TaskResultTrigger.with_timeout(
                    task_ids, self.novita_conn_id, self.policy, self.timeout
                )
                self.defer(trigger=trigger, method_name="execute_complete", timeout=defer_timeout)
            self._started_at = self._wait_started_at(context)
            return super().execute(context)
        finally:
            self.hook.close()

    def _wait_started_at(self, context: Context) -> float:
        """
        When this wait began, epoch seconds: the deadline and the pace count from it. A rescheduled
        poke reads the same first-poke time that ``BaseSensorOperator`` reads for its own timeout.
        """
        if self.reschedule and context.get("task_reschedule_count", 0):
            first = context["ti"].get_first_reschedule_date(context)
            if first is not None:
                return first.timestamp()
        return time.time()

    def poke(self, context: Context) -> bool | PokeReturnValue:
        poller = self._poller(context)
        pending, errors_before = poller.pending(), poller.consecutive_errors
        if polled := poller.due(time.time()):
            poller.record(polled, self.hook.get_task_results(polled, deadline=poller.end_time), time.time())
        self._remember(context, poller, set(pending) - set(poller.pending()), errors_before)
        outcome = poller.outcome(time.time())
        if outcome is None:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._finish(context, outcome))

    def _poller(self, context: Context) -> BatchPoller:
        """This instance's poller; a rescheduled poke restores what earlier pokes learnt."""
        if self._batch_poller is None:
            task_ids = task_id_list(self.task_ids)
            results = {}
            errors: dict[str, Any] = {}
            if self.reschedule:
                *saved, errors = self._memory(context).recall([*task_ids, _ERRORS])
                results = {
                    task_id: TaskResult.from_dict(value)
                    for task_id, value in zip(task_ids, saved, strict=True)
                    if value
                }
            same_try = errors.get("try") == context["ti"].try_number
            self._batch_poller = BatchPoller(
                task_ids,
                self.policy,
                end_time=self._started_at + self.timeout,
                started_at=self._started_at,
                # A sensor pokes when it starts, and a rescheduled poke was timed for the tasks it polls.
                first_poll_at=time.time(),
                results=results,
                consecutive_errors=int(errors.get("count", 0)) if same_try else 0,
            )
        return self._batch_poller

    def _remember(
        self, context: Context, poller: BatchPoller, finished: set[str], errors_before: int
    ) -> None:
        """Save what this poke changed for the next poke of a rescheduled sensor: one chunk, if anything."""
        if not self.reschedule:
            return
        memory = self._memory(context)
        for task_id in finished:
            memory.record(task_id, poller.results[task_id].to_dict())
        if poller.consecutive_errors != errors_before:
            memory.record(_ERRORS, {"try": context["ti"].try_number, "count": poller.consecutive_errors})
        memory.flush()

    def _memory(self, context: Context) -> RetryMemory:
        """
        What a rescheduled sensor's pokes pass on, in the task state store (Airflow 3.3+): a chunk per
        poke that learnt something, read by the next poke. The poller of a poke reads them before
        this writes, so the chunk numbers continue where they ended.
        """
        store = context.get("task_state_store")
        if store is None:
            return RetryMemory(None, 1)
        if self._sensor_memory is None:
            chunks = StateStoreChunks(store, STATE_STORE_KEY, self.timeout)
            self._sensor_memory = RetryMemory(chunks, chunk_size=len(task_id_list(self.task_ids)) + 1)
        return self._sensor_memory

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger fired: validate its event and return the records."""
        return self._finish(context, BatchOutcome.from_event(event))

    def get_openlineage_facets_on_complete(self, task_instance: object) -> OperatorLineage[Dataset, RunFacet]:
        """
        What this try read and wrote, for the OpenLineage provider: the sources given in ``images``
        (as given, never signed) and the files it persisted (never the temporary ``.partial`` files
        that the object storage's own lineage would report).
        """
        try:
            sources = source_list(self.images, None) if self.images is not None else []
        except ValueError:
            sources = []
        return operator_lineage(sources, self._persisted_paths)

    def _finish(self, context: Context, outcome: BatchOutcome) -> list[dict[str, Any]]:
        try:
            records = finish_batch(
                context,
                outcome,
                sources=self._sources(),
                resolution=None,
                timeout_description=f"Sensor timed out after {self.timeout:g}s",
                output_path=self.output_path,
                outlets=self.outlets,
                proxy=self.hook.settings.proxy if self.output_path else None,
            )
        except NovitaError as err:
            # One outcome in every mode. BaseSensorOperator applies soft_fail only to some exception
            # types in poke mode, but to all of them when deferred, so the choice is made here.
            if self.soft_fail:
                raise AirflowSkipException(f"Skipping, as soft_fail is set: {err}") from err
            if isinstance(err, NovitaTimeoutError):
                raise AirflowSensorTimeout(str(err)) from err
            if isinstance(err, NovitaTaskFailedError) or is_permanent(err):
                raise AirflowFailException(str(err)) from err
            raise
        self._persisted_paths = [record["path"] for record in records if "path" in record]
        if self.output_path and self.reschedule:
            self._memory(context).forget()  # the files are saved: nothing is left to pass on
        return records
