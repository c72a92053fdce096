"""
What a finished batch becomes in the task: result records, files in object storage, asset events.

Shared by :class:`UpscaleOperator` and :class:`TaskResultSensor`, so both return the same records,
persist them the same way and annotate their outlets the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pendulum
from airflow.sdk import Asset

from airflow_provider_novita.exceptions import NovitaError
from airflow_provider_novita.storage import Destination, persist_results

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_novita.events import BatchOutcome
    from airflow_provider_novita.models import TaskResult


def result_record(result: TaskResult, source_image: str | None) -> dict[str, Any]:
    """
    The XCom record of one upscaled image.

    ``completed_at`` is Novita's completion time when it reports one; the URL expires
    ``image_url_ttl`` seconds after it, so downstream tasks can tell how fresh a link is.
    """
    image = result.images[0]
    completed_at = (
        pendulum.from_timestamp(result.completed_at, tz="UTC").isoformat()
        if result.completed_at is not None
        else None
    )
    return {
        "task_id": result.task_id,
        "image": source_image,
        "image_url": image.image_url,
        "image_type": image.image_type,
        "image_url_ttl": image.image_url_ttl,
        "completed_at": completed_at,
    }


def reused_record(source_image: str, path: str, image_type: str) -> dict[str, Any]:
    """The XCom record of an image not submitted because a previous run's file is still there."""
    return {
        "task_id": None,
        "image": source_image,
        "image_url": None,
        "image_type": image_type,
        "image_url_ttl": None,
        "completed_at": None,
        "path": path,
        "reused": True,
    }


def finish_batch(
    context: Context,
    outcome: BatchOutcome,
    *,
    sources: Sequence[str | None],
    resolution: str | None,
    timeout_description: str,
    output_path: str | ObjectStoragePath | None,
    outlets: Sequence[object],
    reused: Mapping[int, dict[str, Any]] | None = None,
    proxy: str | None = None,
) -> list[dict[str, Any]]:
    """
    Turn the outcome into the task's return value: one record per image, in batch order.

    Raises for anything but full success. With ``output_path`` every image is first persisted and its
    record gains ``path`` (and ``"reused": False``); ``reused`` holds the records, by position in the
    batch, of images that were not submitted because their file was already there, and the outcome's
    results are those of the other positions, in order. Every :class:`~airflow.sdk.Asset` outlet's
    event gets ``count``, the Novita ``task_ids`` and, with ``output_path``, the ``paths`` in its extra.
    ``proxy`` is the Novita connection's, for the downloads (None: the proxy environment variables).
    """
    reused = reused or {}
    results = outcome.results_or_raise(timeout_description)
    positions = [position for position in range(len(sources)) if position not in reused]
    if len(positions) != len(results):
        raise NovitaError(f"{len(results)} results for {len(positions)} submitted source images")
    submitted = [sources[position] for position in positions]
    fresh = [result_record(result, source) for result, source in zip(results, submitted, strict=True)]
    if output_path:
        paths = _persist(context, results, submitted, positions, resolution, output_path, proxy)
        for record, path in zip(fresh, paths, strict=True):
            record["path"] = path
            record["reused"] = False
    by_position = dict(zip(positions, fresh, strict=True)) | dict(reused)
    records = [by_position[position] for position in range(len(sources))]
    for outlet in outlets:
        if isinstance(outlet, Asset):
            extra = context["outlet_events"][outlet].extra
            extra["count"] = len(records)
            extra["task_ids"] = [record["task_id"] for record in records if record["task_id"] is not None]
            if output_path:
                extra["paths"] = [record["path"] for record in records]
    return records


def map_index(context: Context) -> int:
    """The task instance's map index as file names carry it: -1 when it is not mapped, as in Airflow."""
    index = context["ti"].map_index
    return index if index is not None else -1


def _persist(
    context: Context,
    results: Sequence[TaskResult],
    sources: Sequence[str | None],
    positions: Sequence[int],
    resolution: str | None,
    output_path: str | ObjectStoragePath,
    proxy: str | None,
) -> list[str]:
    return persist_results(
        results,
        [
            Destination(source, resolution, position)
            for position, source in zip(positions, sources, strict=True)
        ],
        output_path,
        map_index=map_index(context),
        proxy=proxy,
    )
