"""UpscaleOperator: submits images to Novita's upscaler and, by default, waits for the results."""

from __future__ import annotations

import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_provider_novita.events import BatchOutcome
from airflow_provider_novita.exceptions import NovitaNotFoundError
from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.models import (
    DEFAULT_OUTPUT_FORMAT,
    DEFAULT_RESOLUTION,
    OUTPUT_FORMATS,
    RESOLUTIONS,
    TaskStatus,
    UpscaleRequest,
    validate_choice,
    validate_image_url,
)
from airflow_provider_novita.polling import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    PollingPolicy,
    to_seconds,
)
from airflow_provider_novita.results import finish_batch
from airflow_provider_novita.retry_memory import RetryMemory
from airflow_provider_novita.triggers.task_result import TaskResultTrigger

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import timedelta

    from airflow.sdk import Context, ObjectStoragePath

XCOM_TASK_IDS = "task_ids"
# The task state store key under which submitted task ids wait for a retry.
STATE_STORE_KEY = "novita_submitted_tasks"


def _is_template(value: object) -> bool:
    return isinstance(value, str) and "{{" in value


def _is_literal(image: object) -> bool:
    """False for what only the running task knows: templates and XComArgs."""
    if isinstance(image, str):
        return not _is_template(image)
    return isinstance(image, (list, tuple)) and not any(_is_template(url) for url in image)


def _images(image: str | Sequence[str]) -> list[str]:
    images = [image] if isinstance(image, str) else list(image)
    if not images:
        raise ValueError("image must be one http(s) URL or a non-empty list of them; got an empty list")
    for url in images:
        validate_image_url(url)
    return images


class UpscaleOperator(BaseOperator):
    """
    Upscales one image or a batch of images with Novita AI.

    Every image is submitted as its own Novita task; the task ids, in input order, are pushed to
    XCom under ``task_ids`` before any waiting, so they are visible even if the wait fails. With
    ``wait_for_completion`` the operator then waits, on the triggerer when ``deferrable`` (the worker
    slot is freed) or in the worker otherwise, with the same polling policy and outcomes either way,
    and returns one record per image, in input order::

        {"task_id": ..., "image": <source URL>, "image_url": <result URL>, "image_type": "jpeg",
         "image_url_ttl": 3600, "completed_at": "2026-11-24T07:00:00+00:00" or None}

    ``image_url`` is temporary (``image_url_ttl`` seconds): persist it promptly if you need it later.

    Novita bills every task. Where Airflow has a task state store (3.3+), submitted ids are saved
    there as soon as each is created, and a retry of the same task instance reattaches to tasks
    that are still queued, processing or succeeded (with a live URL) instead of submitting again.

    Literal values are validated when the DAG is parsed, templated ones when the task starts; in
    both cases before anything is submitted.

    :param image: URL of the source image, or a list of URLs (templated).
    :param resolution: ``2k``, ``4k`` or ``8k`` (templated).
    :param output_format: ``jpeg``, ``png`` or ``webp`` (templated).
    :param novita_conn_id: the Airflow connection to Novita (templated).
    :param wait_for_completion: wait for the results; if False, return the task ids at once.
    :param deferrable: wait on the triggerer. Defaults to ``[operators] default_deferrable``.
    :param poll_interval: seconds (or timedelta) before the first poll and the shortest wait between polls.
    :param max_poll_interval: the longest wait between polls.
    :param timeout: how long to wait for the whole batch before failing with the unfinished task ids.
    :param output_path: where to save the images before the task succeeds: a URI or
        ``ObjectStoragePath`` of a folder (``file:///data/upscaled/``, ``s3://aws_default@bucket/prefix/``,
        anything Airflow's object storage supports; templated). Each record then gains ``path``. See
        :mod:`airflow_provider_novita.storage` for the file names and guarantees.
    """

    template_fields: Sequence[str] = ("image", "resolution", "output_format", "novita_conn_id", "output_path")
    ui_color = "#7c5cff"

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
        max_poll_interval: float | timedelta = DEFAULT_MAX_POLL_INTERVAL,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        output_path: str | ObjectStoragePath | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image = image
        self.output_path = output_path
        self.resolution = resolution
        self.output_format = output_format
        self.novita_conn_id = novita_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.policy = PollingPolicy(
            to_seconds("poll_interval", poll_interval), to_seconds("max_poll_interval", max_poll_interval)
        )
        self.timeout = to_seconds("timeout", timeout)
        # Fail at parse time for what is already known; templates are checked when the task starts.
        if not _is_template(resolution):
            validate_choice("resolution", resolution, RESOLUTIONS)
        if not _is_template(output_format):
            validate_choice("output_format", output_format, OUTPUT_FORMATS)
        if _is_literal(image):
            _images(image)

    @cached_property
    def hook(self) -> NovitaHook:
        return NovitaHook(self.novita_conn_id)

    def _requests(self) -> list[UpscaleRequest]:
        return [UpscaleRequest(url, self.resolution, self.output_format) for url in _images(self.image)]

    def execute(self, context: Context) -> Any:
        requests = self._requests()
        task_ids = self._submit(requests, context)
        context["ti"].xcom_push(key=XCOM_TASK_IDS, value=task_ids)
        if not self.wait_for_completion:
            return task_ids
        if self.deferrable:
            trigger, defer_timeout = TaskResultTrigger.with_timeout(
                task_ids, self.novita_conn_id, self.policy, self.timeout
            )
            self.defer(trigger=trigger, method_name="execute_complete", timeout=defer_timeout)
        return self._finish(
            context, self.hook.wait_for_tasks(task_ids, self.policy, time.time() + self.timeout)
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger fired: validate its event and return the records."""
        return self._finish(context, BatchOutcome.from_event(event))

    def _finish(self, context: Context, outcome: BatchOutcome) -> list[dict[str, Any]]:
        return finish_batch(
            context,
            outcome,
            sources=[request.image for request in self._requests()],
            resolution=self.resolution,
            timeout_description=f"Timed out after {self.timeout:g}s waiting for Novita",
            output_path=self.output_path,
            outlets=self.outlets,
        )

    def _submit(self, requests: list[UpscaleRequest], context: Context) -> list[str]:
        """Submit every request, reattaching a retry to the tasks an earlier try already created."""
        memory = RetryMemory(context, STATE_STORE_KEY)
        previous = {str(key): str(task_id) for key, task_id in memory.load().items()}
        submitted: dict[str, Any] = {}
        task_ids: list[str] = []
        for index, request in enumerate(requests):
            # The index keeps two identical images of one batch apart; the request fields make sure a
            # retry whose templates rendered differently does not inherit the wrong task.
            key = f"{index}|{request.image}|{request.resolution}|{request.output_format}"
            task_id = previous.get(key)
            if task_id and self._can_reattach(task_id):
                self.log.info(
                    "Reattaching to Novita task %s submitted by an earlier try for %s", task_id, request.image
                )
            else:
                task_id = self.hook.submit_upscale(request)
                self.log.info("Submitted %s to Novita as task %s", request.image, task_id)
            submitted[key] = task_id
            task_ids.append(task_id)
            memory.save(submitted)
        return task_ids

    def _can_reattach(self, task_id: str) -> bool:
        try:
            result = self.hook.get_task_result(task_id)
        except NovitaNotFoundError:
            return False
        if result.status is TaskStatus.FAILED:
            return False
        if result.status is TaskStatus.SUCCEED:
            # A success whose result URL has already expired is worth nothing downstream.
            image = result.images[0] if result.images else None
            if image is None:
                return False
            if result.completed_at_ms and image.image_url_ttl:
                return time.time() < result.completed_at_ms / 1000 + image.image_url_ttl
        return True
