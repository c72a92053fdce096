"""UpscaleOperator: submits images to Novita's upscaler and, by default, waits for the results."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_novita._compat import conf
from airflow_provider_novita.events import BatchOutcome, OutcomeStatus
from airflow_provider_novita.exceptions import NovitaAPIError, NovitaNotFoundError
from airflow_provider_novita.failing import invalid_arguments_fail_once, permanent_errors_fail_once
from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.ledger import LedgerChunks
from airflow_provider_novita.lineage import operator_lineage
from airflow_provider_novita.models import (
    DEFAULT_OUTPUT_FORMAT,
    DEFAULT_RESOLUTION,
    OUTPUT_FORMATS,
    RESOLUTIONS,
    TaskStatus,
    UpscaleRequest,
    check_choice,
    check_images,
    is_plain_literal,
    redact_url,
)
from airflow_provider_novita.polling import DEFAULT_POLL_INTERVAL, DEFAULT_TIMEOUT, PollingPolicy, to_seconds
from airflow_provider_novita.results import finish_batch, map_index, reused_record
from airflow_provider_novita.retries import may_have_billed
from airflow_provider_novita.retry_memory import Chunks, RetryMemory, StateStoreChunks, earlier_tries
from airflow_provider_novita.sources import DEFAULT_SOURCE_URL_EXPIRY, SourceSigner, as_sources
from airflow_provider_novita.spend import ImageCap, image_cap
from airflow_provider_novita.storage import (
    Destination,
    existing_results,
    output_folder,
    output_root,
    result_paths,
    url_answers,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import timedelta

    from airflow.providers.common.compat.openlineage.facet import Dataset, RunFacet
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context, ObjectStoragePath

XCOM_TASK_IDS = "task_ids"
# The task state store namespace of what each image's submission left for a retry.
STATE_STORE_KEY = "novita_submitted_tasks"
# Submissions of one batch in flight at once. Novita answers 429 when it wants fewer, and the hook
# then waits as told; more than a handful in flight would mostly collect 429s.
DEFAULT_SUBMIT_CONCURRENCY = 8
# A result URL that expires sooner than this is not worth reattaching to: it would be gone before a
# downstream task or the download to output_path could use it.
MIN_URL_LIFETIME = 300.0


class UpscaleOperator(BaseOperator):
    """
    Upscales one image or a batch of images with Novita AI.

    Every image is submitted as its own Novita task; the task ids, in input order, are pushed to
    XCom under ``task_ids`` before any waiting, so they are visible even if the wait fails. With
    ``wait_for_completion`` the operator then waits, on the triggerer when ``deferrable`` (the worker
    slot is freed) or in the worker otherwise, with the same polling policy and outcomes either way,
    and returns one record per image, in input order::

        {"task_id": ..., "image": <source>, "image_url": <result URL>, "image_type": "jpeg",
         "image_url_ttl": 3600, "completed_at": "2026-11-24T07:00:00+00:00" or None}

    ``image_url`` is temporary (``image_url_ttl`` seconds): persist it promptly if you need it later.

    Novita bills every task. What the submissions left is saved in chunks of ``submit_concurrency``
    answers, keyed by digests of the requests (never their URLs): in the task state store where
    Airflow has one (3.3+), and before 3.3 in a hidden ledger under ``output_path`` when the task has
    one (:mod:`airflow_provider_novita.ledger`); a worker lost mid-batch leaves fewer than
    2 x ``submit_concurrency`` created tasks unrecorded. With ``output_path`` the chunks are removed
    once the files are saved. A retry reattaches to tasks that are still queued,
    processing or succeeded with a live result URL instead of submitting again, and warns about a
    submission whose outcome was uncertain (see docs/operator.md, "Retries never bill twice").

    Values written out in the DAG file are validated when the DAG is parsed; anything Airflow
    resolves later (templates, XComArgs, mapped arguments) when the task starts. Either way, a bad
    value fails before anything is submitted.

    :param image: the source image, or a list of them (templated): an http(s) URL, or an object
        storage URI (``s3://[conn_id@]bucket/key``, ``gs://...``, ``abfs://...``) or ``ObjectStoragePath``,
        which the worker signs with the storage connection's credentials right before submitting it
        (see :mod:`airflow_provider_novita.sources`). Records, logs, lineage and file names name the
        source as given, never a signed URL. Surrounding whitespace is stripped.
    :param source_url_expiry: seconds (or timedelta) for which a signed source URL is valid; 3600.
        Novita fetches the source soon after the submission, so an hour leaves room for its queue.
    :param max_images: the most images this task may submit (templated; a whole number of at least
        1). The connection's extra ``max_images_per_task`` sets another cap; the smaller is in force.
        Images reused from ``output_path`` and tasks a retry reattaches to do not count. A task over
        its cap fails before anything is submitted, without retries (see
        :mod:`airflow_provider_novita.spend`).
    :param resolution: ``2k``, ``4k`` or ``8k`` (templated).
    :param output_format: ``jpeg``, ``png`` or ``webp`` (templated).
    :param novita_conn_id: the Airflow connection to Novita (templated).
    :param wait_for_completion: wait for the results; if False, return the task ids at once.
    :param deferrable: wait on the triggerer. Defaults to ``[operators] default_deferrable``.
    :param poll_interval: seconds (or timedelta) before the first poll and the shortest wait between polls.
    :param max_poll_interval: the longest wait between polls; by default 30 s, or ``poll_interval``
        if that is longer.
    :param timeout: how long to wait for the whole batch before failing with the unfinished task ids.
    :param submit_concurrency: submissions of a batch in flight at once (8); task ids keep the input
        order whatever order Novita answers in.
    :param output_path: where to save the images before the task succeeds: an absolute path, a URI or
        an ``ObjectStoragePath`` of a folder (``/data/upscaled``, ``s3://aws_default@bucket/prefix/``,
        anything Airflow's object storage supports; templated). Each record then gains ``path``. See
        :mod:`airflow_provider_novita.storage` for the file names and guarantees.
    :param reuse_existing: with ``output_path``, an image whose file a previous run of this task
        instance saved (same source URL, map index and position; complete) is not submitted again: a
        cleared or re-run DAG run pays only for what is missing. Its record has ``"reused": True``,
        its ``path``, and no Novita ``task_id`` or ``image_url``. A source image that changed at the
        same URL is not noticed; set False to upscale every image anew.
    """

    template_fields: Sequence[str] = (
        "image",
        "resolution",
        "output_format",
        "novita_conn_id",
        "output_path",
        "max_images",
    )
    ui_color = "#7c5cff"
    # The files the finished batch's records name, for lineage. A class default that _finish replaces:
    # every try runs on its own copy of the operator (BaseOperator.prepare_for_execution), so a value
    # never outlives the try that set it.
    _persisted_paths: Sequence[str] = ()

    def __init__(
        self,
        *,
        image: str | Sequence[str],
        resolution: str = DEFAULT_RESOLUTION,
        output_format: str = DEFAULT_OUTPUT_FORMAT,
        novita_conn_id: str = NovitaHook.default_conn_name,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float | timedelta = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float | timedelta | None = None,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        output_path: str | ObjectStoragePath | None = None,
        submit_concurrency: int = DEFAULT_SUBMIT_CONCURRENCY,
        reuse_existing: bool = True,
        source_url_expiry: float | timedelta = DEFAULT_SOURCE_URL_EXPIRY,
        max_images: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (
            isinstance(submit_concurrency, bool)
            or not isinstance(submit_concurrency, int)
            or submit_concurrency < 1
        ):
            raise ValueError(
                f"submit_concurrency must be a whole number of at least 1; got {submit_concurrency!r}"
            )
        self.submit_concurrency = submit_concurrency
        self.reuse_existing = reuse_existing
        self.image = image
        self.output_path = output_path
        self.resolution = resolution
        self.output_format = output_format
        self.novita_conn_id = novita_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.policy = PollingPolicy.from_arguments(poll_interval, max_poll_interval)
        self.timeout = to_seconds("timeout", timeout)
        self.source_url_expiry = to_seconds("source_url_expiry", source_url_expiry)
        self.max_images = max_images
        # Fail at parse time for what the DAG file spells out; the rest is checked when the task starts.
        count = len(check_images(as_sources(image))) if is_plain_literal(as_sources(image)) else None
        cap = image_cap(max_images, "max_images") if is_plain_literal(max_images) else None
        if cap is not None and count is not None and count > cap:
            raise ValueError(ImageCap(cap, "max_images of this task").message(count))
        if is_plain_literal(resolution):
            check_choice("resolution", resolution, RESOLUTIONS)
        if is_plain_literal(output_format):
            check_choice("output_format", output_format, OUTPUT_FORMATS)
        if output_path is not None and is_plain_literal(output_path):
            output_root(output_path)

    @cached_property
    def hook(self) -> NovitaHook:
        return NovitaHook(self.novita_conn_id)

    def _requests(self) -> list[UpscaleRequest]:
        return [
            UpscaleRequest(source, self.resolution, self.output_format)
            for source in check_images(as_sources(self.image))
        ]

    def execute(self, context: Context) -> Any:
        try:
            with permanent_errors_fail_once():
                return self._execute(context)
        finally:
            self.hook.close()

    def _execute(self, context: Context) -> Any:
        with invalid_arguments_fail_once():
            requests = self._requests()
            cap = ImageCap.in_force(
                image_cap(self.max_images, "max_images"),
                self.hook.settings.max_images_per_task,
                self.novita_conn_id,
            )
            if self.output_path:
                output_folder(self.output_path)
        reused = self._reusable(requests, context)
        for position, path in reused.items():
            self.log.info(
                "Reusing %s for %s: not submitting it again", path, redact_url(requests[position].image)
            )
        to_submit = [
            (position, request) for position, request in enumerate(requests) if position not in reused
        ]
        task_ids = self._submit(to_submit, context, cap)
        context["ti"].xcom_push(key=XCOM_TASK_IDS, value=task_ids)
        if not self.wait_for_completion:
            return task_ids
        if not task_ids:
            # Every image was reused: there is nothing to wait for.
            nothing = BatchOutcome(OutcomeStatus.SUCCESS, [], [], "")
            return self._finish(context, nothing, requests, reused)
        if self.deferrable:
            # Imported here: it brings in Airflow's trigger machinery, which parsing a DAG never needs.
            from airflow_provider_novita.triggers.task_result import TaskResultTrigger

            trigger, defer_timeout = TaskResultTrigger.with_timeout(
                task_ids, self.novita_conn_id, self.policy, self.timeout
            )
            # Which files were reused goes with the deferral, so that the resume does not look again.
            self.defer(
                trigger=trigger,
                method_name="execute_complete",
                timeout=defer_timeout,
                kwargs={"reused": sorted(reused)},
            )
        outcome = self.hook.wait_for_tasks(task_ids, self.policy, time.time() + self.timeout)
        return self._finish(context, outcome, requests, reused)

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, reused: list[int] | None = None
    ) -> Any:
        """
        Resume after the trigger fired: validate its event and return the records.

        ``reused`` is what :meth:`execute` found in ``output_path`` before deferring: the positions
        in the batch of the files it reused, whose URIs follow from their names. A deferral made by a
        provider version that did not pass it (None) looks again.
        """
        requests = self._requests()
        if reused is None:
            found = self._reusable(requests, context)
        else:
            found = self._reused_paths(requests, context, reused)
        with permanent_errors_fail_once():
            return self._finish(context, BatchOutcome.from_event(event), requests, found)

    def _finish(
        self, context: Context, outcome: BatchOutcome, requests: list[UpscaleRequest], reused: dict[int, str]
    ) -> list[dict[str, Any]]:
        sources = [request.image for request in requests]
        records = finish_batch(
            context,
            outcome,
            sources=sources,
            resolution=self.resolution,
            timeout_description=f"Timed out after {self.timeout:g}s waiting for Novita",
            output_path=self.output_path,
            outlets=self.outlets,
            proxy=self.hook.settings.proxy if self.output_path else None,
            reused={
                position: reused_record(sources[position], path, self.output_format)
                for position, path in reused.items()
            },
        )
        self._persisted_paths = [record["path"] for record in records if "path" in record]
        if self.output_path:
            # The files are the memory now: a re-run reuses them (reuse_existing) or means to redo them.
            self._memory(context).forget()
        return records

    def _memory(self, context: Context) -> RetryMemory:
        """
        Where this task instance's submissions are recorded for its retries, a chunk of
        ``submit_concurrency`` at a time: the task state store (Airflow 3.3+), kept for the wait's
        timeout and 4 hours more; before 3.3 a ledger in ``output_path``
        (:mod:`airflow_provider_novita.ledger`) when the task saves its files; otherwise nowhere.
        """
        store = context.get("task_state_store")
        chunks: Chunks | None = None
        if store is not None:
            chunks = StateStoreChunks(store, STATE_STORE_KEY, self.timeout)
        elif self.output_path and self.wait_for_completion:
            chunks = LedgerChunks(output_root(self.output_path), context["ti"])
        return RetryMemory(chunks, self.submit_concurrency)

    def get_openlineage_facets_on_complete(self, task_instance: object) -> OperatorLineage[Dataset, RunFacet]:
        """
        What this try read and wrote, for the OpenLineage provider (an optional install, which calls
        this when the task ends, and also when it failed since there is no ``..._on_failure``).

        Inputs are the batch's source URLs, outputs the files its records name (only once it
        succeeded with ``output_path``). The provider reports these instead of the hook-level lineage
        that Airflow's object storage collects, which names the temporary ``.partial`` files the
        downloads go to and, on a re-run, the kept files as *inputs*; it falls back to that only when
        both lists here are empty (a batch refused before anything was submitted, which wrote nothing).

        An image reused from an earlier run is on both sides although this try neither fetched its
        source nor wrote its file: the run's result is still that file made from that source, and
        lineage consumers (Marquez, DataHub) draw a job's edges from its latest run, so leaving it out
        would erase a true edge on every re-run that had nothing to pay for. Which files were reused
        is in the records (``"reused": True``).
        """
        try:
            sources = check_images(as_sources(self.image))
        except ValueError:
            sources = []
        return operator_lineage(sources, self._persisted_paths)

    def _reusable(self, requests: list[UpscaleRequest], context: Context) -> dict[int, str]:
        """Positions in the batch whose file a previous run left complete in ``output_path``, with its URI."""
        if not (self.output_path and self.reuse_existing):
            return {}
        return existing_results(
            self.output_path, self.output_format, self._destinations(requests), map_index(context)
        )

    def _reused_paths(
        self, requests: list[UpscaleRequest], context: Context, positions: Iterable[int]
    ) -> dict[int, str]:
        """The URIs of the files :meth:`_reusable` found at ``positions``, without looking again."""
        if not self.output_path:
            return {}
        destinations = self._destinations(requests)
        reused = [destinations[position] for position in positions]
        paths = result_paths(output_root(self.output_path), self.output_format, reused, map_index(context))
        return {destination.position: str(path) for destination, path in zip(reused, paths, strict=True)}

    def _destinations(self, requests: list[UpscaleRequest]) -> list[Destination]:
        return [
            Destination(request.image, self.resolution, position) for position, request in enumerate(requests)
        ]

    def _submit(
        self, requests: list[tuple[int, UpscaleRequest]], context: Context, cap: ImageCap | None
    ) -> list[str]:
        """
        Submit every request (given with its position in the batch, which identifies it for retries),
        reattaching a retry to the tasks an earlier try already created.

        Reattaching comes first: it bills nothing, so only the images left after it count against
        ``cap``, and a batch over its cap submits nothing. Up to ``submit_concurrency`` requests are in
        flight at once, in threads sharing the hook's connection pool, so a batch holds the worker
        slot for the time of a few requests rather than of all of them in a row. The memory is only
        written from this thread (the state store's channel to the supervisor is not made for
        threads), a chunk of ``submit_concurrency`` answers at a time, and no new submission starts
        while a chunk is being written. After a failure no new submission starts; those already sent
        are recorded, then the first error is raised.
        """
        memory = self._memory(context)
        names = [request.identity(position) for position, request in requests]
        earlier = memory.recall(names) if earlier_tries(context) else [{} for _ in names]
        # Everything that talks to the supervisor happens here, once, before the threads start: the
        # storage connections and filesystems of the sources, and the Novita connection and its pool.
        signer = SourceSigner(self.source_url_expiry)
        with invalid_arguments_fail_once():
            signer.prepare(
                (request.image, "task_id" not in before)
                for (_, request), before in zip(requests, earlier, strict=True)
            )
        self.hook.client  # noqa: B018
        task_ids: list[str | None] = [None] * len(requests)
        failure: Exception | None = None
        with ThreadPoolExecutor(self.submit_concurrency, thread_name_prefix="novita-submit") as pool:
            reattaching = {
                index: pool.submit(self._reattach, request, before)
                for index, ((_, request), before) in enumerate(zip(requests, earlier, strict=True))
                if before
            }
            for index, future in reattaching.items():
                task_ids[index] = future.result()
            new = [index for index, task_id in enumerate(task_ids) if task_id is None]
            if cap is not None:
                cap.check(len(new))
            # Answers wait in the memory's buffer for their chunk (at most submit_concurrency of
            # them, the chunk being written included) while at most submit_concurrency submissions
            # are in flight: a worker lost mid-batch leaves at most 2 x submit_concurrency created
            # tasks unrecorded (for the retry to bill again), however far recording (a request to
            # Airflow's API server, or a PUT to output_path) lags behind Novita.
            waiting = deque(new)
            pending: dict[Future[str], int] = {}
            while waiting or pending:
                while waiting and failure is None and len(pending) < self.submit_concurrency:
                    index = waiting.popleft()
                    pending[pool.submit(self._submit_new, requests[index][1], signer)] = index
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for submission in done:
                    index = pending.pop(submission)
                    try:
                        task_ids[index] = submission.result()
                    except Exception as err:
                        if may_have_billed(err):
                            memory.record(names[index], {"uncertain": _failure_kind(err)})
                        failure = failure or err
                        continue
                    memory.record(names[index], {"task_id": task_ids[index]})
        memory.flush()
        if failure is not None:
            raise failure
        return [task_id for task_id in task_ids if task_id is not None]

    def _submit_new(self, request: UpscaleRequest, signer: SourceSigner) -> str:
        """A new Novita task for ``request``: billed."""
        task_id = self.hook.submit_upscale(request.with_image(signer.url(request.image)))
        self.log.info("Submitted %s to Novita as task %s", redact_url(request.image), task_id)
        return task_id

    def _reattach(self, request: UpscaleRequest, earlier: dict[str, Any]) -> str | None:
        """The task an earlier try created for ``request``, if it is still worth waiting for."""
        image = redact_url(request.image)
        if "uncertain" in earlier:
            self.log.warning(
                "An earlier try's submission of %s ended uncertain (%s): Novita may have created and "
                "billed a task whose id never arrived. Submitting it again.",
                image,
                earlier["uncertain"],
            )
            return None
        task_id = earlier.get("task_id")
        if not isinstance(task_id, str):
            return None
        why_not = self._why_not_reattach(task_id)
        if why_not:
            self.log.info(
                "Not reattaching to Novita task %s from an earlier try for %s: %s. Submitting again.",
                task_id,
                image,
                why_not,
            )
            return None
        self.log.info("Reattaching to Novita task %s submitted by an earlier try for %s", task_id, image)
        return task_id

    def _why_not_reattach(self, task_id: str) -> str:
        """Why an earlier task is not worth waiting for, or an empty string if it is."""
        try:
            result = self.hook.get_task_result(task_id)
        except NovitaNotFoundError:
            return "Novita no longer knows it"
        if result.status is TaskStatus.FAILED:
            return f"it failed ({result.reason or 'no reason given'})"
        if result.status is not TaskStatus.SUCCEED:
            return ""
        if not result.images:
            return "it succeeded without an image"
        expires_at = result.url_expires_at
        if expires_at is not None:
            return (
                ""
                if time.time() + MIN_URL_LIFETIME < expires_at
                else "its result URL has expired or soon will"
            )
        # Novita's documented answers often give no completion time or no lifetime: ask the URL itself.
        if url_answers(result.images[0].image_url, proxy=self.hook.settings.proxy):
            return ""
        return "its result URL no longer answers (Novita gave no expiry time)"


def _failure_kind(err: Exception) -> str:
    """What went wrong, in words that name no URL and no key: it is stored for days."""
    if isinstance(err, NovitaAPIError):
        return f"HTTP {err.http_status} {err.reason}".strip()
    cause = err.__cause__
    return type(cause).__name__ if cause is not None else type(err).__name__
