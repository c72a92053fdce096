"""
Persisting upscaled images to object storage before Novita's temporary URLs expire.

Runs in the worker only (never on the triggerer: downloads are blocking I/O of megabytes). Each
result is streamed in chunks of :data:`CHUNK_SIZE` into a temporary object next to its final name,
checked against the ``Content-Length`` the server announced, and only then renamed to its final
name, so a final name always holds a complete image and a broken download leaves nothing behind.

File names are ``<stem>-<resolution>-<digest>.<ext>``: ``stem`` is the source image's file name
without extension (the Novita task id when the source is unknown), ``resolution`` is omitted when
unknown (the sensor does not know it), ``ext`` is the result's format, and ``digest`` is the first
8 hex digits of the SHA-256 of the source URL, the map index and the position in the batch. Two
images of one batch or of one mapped task therefore never share a name, and a re-run of the same
DAG run writes to the same names.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import httpx
import pendulum
from airflow.sdk import ObjectStoragePath

from airflow_provider_novita.exceptions import NovitaError
from airflow_provider_novita.hooks.clients import shared_ssl_context

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Destination:
    """Where one result goes: the source it came from and its place in the batch."""

    source_image: str | None
    resolution: str | None
    position: int


def output_name(record: Mapping[str, Any], destination: Destination, map_index: int) -> str:
    """The documented, deterministic file name of one result (see the module docstring)."""
    source = destination.source_image
    stem = ""
    if source:
        stem = unquote(urlsplit(source).path.rstrip("/").rsplit("/", 1)[-1]).rsplit(".", 1)[0]
    stem = _UNSAFE.sub("_", stem).strip("._-")[:80] or str(record["task_id"])
    digest = hashlib.sha256(f"{source}|{map_index}|{destination.position}".encode()).hexdigest()[:8]
    parts = [stem, destination.resolution, digest] if destination.resolution else [stem, digest]
    extension = "jpg" if record["image_type"] == "jpeg" else str(record["image_type"] or "bin")
    return f"{'-'.join(parts)}.{extension}"


def persist_results(
    records: Sequence[dict[str, Any]],
    destinations: Sequence[Destination],
    output_path: str | ObjectStoragePath,
    *,
    map_index: int,
    written_before: Mapping[str, Any],
    on_written: Callable[[str, dict[str, Any]], None],
) -> None:
    """
    Stream every result image into ``output_path`` and add its URI to the record as ``path``.

    :param written_before: Novita task id -> ``{"path", "size"}`` of files an earlier try of this task
        instance completed. Such a file that still has that size is not downloaded again.
    :param on_written: called with the task id and ``{"path", "size"}`` as soon as a file is complete.
    """
    root = output_path if isinstance(output_path, ObjectStoragePath) else ObjectStoragePath(output_path)
    if root.protocol in ("file", "local"):
        root.mkdir(parents=True, exist_ok=True)
    # A plain client on purpose: result URLs are presigned links on other hosts, which must never see
    # the Novita API key.
    with httpx.Client(timeout=DOWNLOAD_TIMEOUT, verify=shared_ssl_context(), follow_redirects=True) as client:
        for record, destination in zip(records, destinations, strict=True):
            task_id = record["task_id"]
            target = root / output_name(record, destination, map_index)
            if _is_complete(target, written_before.get(task_id)):
                log.info("Keeping %s, written by an earlier try for Novita task %s", target, task_id)
            else:
                size = _download(client, record, target)
                on_written(task_id, {"path": str(target), "size": size})
                log.info("Saved Novita task %s result to %s (%d bytes)", task_id, target, size)
            record["path"] = str(target)


def _is_complete(target: ObjectStoragePath, written: object) -> bool:
    return (
        isinstance(written, dict)
        and written.get("path") == str(target)
        and _size(target) == written.get("size")
    )


def _size(path: ObjectStoragePath) -> int | None:
    try:
        return int(path.stat().st_size)
    except (FileNotFoundError, OSError):
        return None


def _download(client: httpx.Client, record: Mapping[str, Any], target: ObjectStoragePath) -> int:
    url = str(record["image_url"])
    partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        with client.stream("GET", url) as response:
            if response.is_error:
                raise _unavailable(record, f"HTTP {response.status_code}")
            announced = response.headers.get("Content-Length")
            written = 0
            with partial.open("wb") as out:  # type: ignore[no-untyped-call]
                for chunk in response.iter_bytes(CHUNK_SIZE):
                    out.write(chunk)
                    written += len(chunk)
        if announced is not None and written != int(announced):
            raise _unavailable(record, f"download broke off after {written} of {announced} bytes")
        partial.rename(target)
        return written
    except httpx.HTTPError as err:
        raise _unavailable(record, f"{type(err).__name__}: {err}") from err
    finally:
        if partial.exists():
            partial.unlink()


def _unavailable(record: Mapping[str, Any], problem: str) -> NovitaError:
    """An error naming the task, the host (never the presigned query string) and the result's age."""
    host = urlsplit(str(record["image_url"])).netloc
    age = ""
    if record.get("completed_at"):
        finished = pendulum.parse(str(record["completed_at"]))
        assert isinstance(finished, pendulum.DateTime)
        age = f"; the task finished {_duration(time.time() - finished.timestamp())} ago"
    ttl = f" and its URL was valid for {record['image_url_ttl']}s" if record.get("image_url_ttl") else ""
    return NovitaError(
        f"Result of Novita task {record['task_id']} could not be downloaded from {host}: {problem}{age}{ttl}"
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"
