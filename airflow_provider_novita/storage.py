"""
Persisting upscaled images to object storage before Novita's temporary URLs expire.

Runs in the worker only (never on the triggerer: downloads are blocking I/O of megabytes).

``output_path`` is a URI (``file:///data/out``, ``s3://conn@bucket/prefix``) or a plain absolute path,
which means the local folder, exactly as ``file://`` + that path. A relative path is refused by
:func:`output_root` before anything is submitted, because it would resolve against whatever the
worker's current directory happens to be.

Each result is streamed in chunks of :data:`CHUNK_SIZE` into a temporary file (on a local disk a
hidden ``.partial`` file next to its final name, for an object store a local one), checked against
the ``Content-Length`` the server announced, and only then renamed to its final name, or uploaded to
it in one request with the image's content type, so a final name always holds a complete image and
a broken download leaves nothing behind. ``Content-Length``
counts the bytes on the wire: a result served with ``Content-Encoding: gzip`` is checked against the
compressed bytes received and saved decoded.

File names are ``<stem>-<resolution>-<digest>.<ext>``, made only from what the task knows before it
submits, so that a re-run finds the file without asking Novita anything: ``stem`` is the source
image's file name without extension, or :data:`FALLBACK_STEM` when the source gives none that is
usable (a query-only URL such as ``https://cdn.example.com/?id=42``, a bare host, a name of dots or
of non-ASCII letters); ``resolution`` is omitted when unknown (the sensor does not know it); ``ext`` is
the result's format; and ``digest`` is the first 8 hex digits of the SHA-256 of the source (its URL or
object storage URI, as the DAG gave it, never a signed URL), the map index and the position in the
batch. The digest keeps apart the names that share a stem: two images of one batch or of one mapped
task never share a name, and a re-run of the same DAG run writes to the same names. Only a sensor
given no source images names its files after the Novita task ids it was given, which it also knows
before it starts.

Sources and task ids are untrusted text: every part of a name keeps only ``A-Za-z0-9._-`` (other
runs become ``_``, runs of dots one dot, leading and trailing ``._-`` are dropped, the stem is
capped at :data:`STEM_LIMIT` characters), and the extension is ``jpg``, ``png`` or ``webp`` when the
format is one of those and ``bin`` otherwise. A name therefore never contains a path separator or
``..`` and always lands inside ``output_path``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import httpx
import pendulum
from airflow.sdk import ObjectStoragePath

from airflow_provider_novita.exceptions import NovitaError
from airflow_provider_novita.hooks.clients import shared_ssl_context
from airflow_provider_novita.models import redact_url

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow_provider_novita.models import TaskResult

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
STEM_LIMIT = 80
# The stem of a file whose source gives no usable name; the digest keeps such files apart.
FALLBACK_STEM = "image"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
_QUERY = re.compile(r"\?[^\s'\"<>]*")
_EXTENSIONS = {
    "jpeg": "jpg",
    "jpg": "jpg",
    "image/jpeg": "jpg",
    "png": "png",
    "image/png": "png",
    "webp": "webp",
    "image/webp": "webp",
}


@dataclass(frozen=True)
class Destination:
    """Where one result goes: the source it came from and its place in the batch."""

    source_image: str | None
    resolution: str | None
    position: int


def output_root(output_path: str | ObjectStoragePath) -> ObjectStoragePath:
    """
    The folder ``output_path`` names, refused early when it names none.

    Called before anything is submitted, so that a bad path costs nothing: a relative path would
    otherwise land wherever the worker process happens to run, and a bare ``/data/out`` would only
    fail after the images were upscaled and billed.
    """
    if isinstance(output_path, ObjectStoragePath):
        return output_path
    value = output_path.strip()
    # Before the "://" test: a URI never starts with "/", while a folder's name may contain "://".
    if value.startswith("/"):
        return ObjectStoragePath(f"file://{value}")
    if "://" in value:
        try:
            return ObjectStoragePath(value)
        except ValueError as err:  # universal_pathlib's "Unsupported filesystem"
            raise _unwritable(value, err) from None
    raise ValueError(
        f"output_path must be an absolute path or a URI such as file:///data/out or "
        f"s3://conn@bucket/prefix, got {output_path!r}"
    )


def output_folder(output_path: str | ObjectStoragePath) -> ObjectStoragePath:
    """
    :func:`output_root`, and its filesystem made, when the task starts: an ``output_path`` that no
    filesystem handles (an unknown scheme, a provider not installed, a connection that does not
    exist) is refused with a ValueError before anything is submitted, not after Novita billed the
    images whose files could not be written.
    """
    root = output_root(output_path)
    try:
        root.fs  # noqa: B018
    except Exception as err:
        raise _unwritable(str(output_path).strip(), err) from None
    return root


def _unwritable(output_path: str, err: Exception) -> ValueError:
    return ValueError(
        f"output_path {redact_url(output_path)!r} cannot be written: no filesystem for it could be made "
        f"({without_queries(f'{type(err).__name__}: {str(err)[:200]}')}); use a local path or a URI "
        "of a store whose Airflow provider is installed, with an existing connection"
    )


def output_name(task_id: str, image_type: str | None, destination: Destination, map_index: int) -> str:
    """
    The documented, deterministic file name of one result (see the module docstring).

    ``task_id`` names the file only when the source is unknown (``source_image`` None): a result whose
    source was given must be found again by a re-run that has no task id to look it up with.
    """
    source = destination.source_image
    if source is None:
        stem = _safe(task_id)
    else:
        stem = _safe(unquote(urlsplit(source).path.rstrip("/").rsplit("/", 1)[-1]).rsplit(".", 1)[0])
    stem = stem or FALLBACK_STEM
    resolution = _safe(destination.resolution or "")
    digest = hashlib.sha256(f"{source}|{map_index}|{destination.position}".encode()).hexdigest()[:8]
    parts = [stem, resolution, digest] if resolution else [stem, digest]
    extension = _EXTENSIONS.get((image_type or "").strip().lower(), "bin")
    return f"{'-'.join(parts)}.{extension}"


def _safe(text: str) -> str:
    """``text`` cut down to a part of a file name that cannot leave its folder or hide itself."""
    return _DOTS.sub(".", _UNSAFE.sub("_", text)).strip("._-")[:STEM_LIMIT].rstrip("._-")


def existing_results(
    output_path: str | ObjectStoragePath,
    image_type: str,
    destinations: Sequence[Destination],
    map_index: int,
) -> dict[int, str]:
    """
    The URIs of the files a previous run saved for ``destinations``, by index, where they are complete.

    The names are the ones :func:`persist_results` gives results of ``image_type`` (they depend on the
    source URL, the map index and the position only, so a re-run finds them). One listing of the
    folder finds them with their sizes, whatever the batch's size; only a file whose name is expected
    is read, and it counts only if it could be the whole image: see :func:`looks_complete`. Leftover
    ``.partial`` files have other names and are never considered.
    """
    root = output_root(output_path)
    sizes = folder_sizes(root)
    found = {}
    for index, path in enumerate(result_paths(root, image_type, destinations, map_index)):
        size = sizes.get(path.name)
        if size and looks_complete(path, image_type, size):
            found[index] = str(path)
    return found


def result_paths(
    root: ObjectStoragePath, image_type: str, destinations: Sequence[Destination], map_index: int
) -> list[ObjectStoragePath]:
    """Where the results of ``destinations`` are saved, in ``root``: what :func:`existing_results` finds."""
    return [root / output_name("", image_type, destination, map_index) for destination in destinations]


def folder_sizes(folder: ObjectStoragePath) -> dict[str, int]:
    """
    The name and size of every file directly in ``folder``, from one listing (on an object store one
    request per 1,000 objects); empty when the folder does not exist.
    """
    fs = folder.fs
    fs.invalidate_cache(folder.path)  # type: ignore[no-untyped-call]  # another process may have written
    try:
        entries = fs.ls(folder.path, detail=True)  # type: ignore[no-untyped-call]
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {
        str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0)
        for entry in entries
        if entry.get("type") == "file"
    }


# Markers every complete file of a format has at its start and end; a truncated file lacks the end.
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_TAIL = 64


def looks_complete(path: ObjectStoragePath, image_type: str, size: int) -> bool:
    """
    Whether ``path``, of ``size`` bytes (from a listing), holds a whole image of ``image_type``, judged
    from its head and tail.

    JPEG from SOI to a final EOI marker; PNG from its signature to the IEND chunk; WebP a RIFF
    container whose declared size is the file's. Cheap on object storage: two small ranged reads, no
    decoding. A file cut short, by a crash or by anyone else, fails it; a file of another format too.
    """
    try:
        with path.fs.open(path.path, "rb", size=size, cache_type="none") as file:  # type: ignore[no-untyped-call]
            head: bytes = file.read(12)
            file.seek(max(0, size - _TAIL))
            tail: bytes = file.read(_TAIL)
    except OSError:
        return False
    extension = _EXTENSIONS.get(image_type.strip().lower())
    if extension == "jpg":
        # Some encoders pad after EOI; none pads more than a few bytes.
        return head.startswith(_JPEG_START) and _JPEG_END in tail[-16:]
    if extension == "png":
        return head.startswith(_PNG_START) and tail.endswith(_PNG_END)
    if extension == "webp":
        declared = int.from_bytes(head[4:8], "little") + 8
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP" and declared == size
    return False


def persist_results(
    results: Sequence[TaskResult],
    destinations: Sequence[Destination],
    output_path: str | ObjectStoragePath,
    *,
    map_index: int,
    proxy: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[str]:
    """
    Stream the (first) image of every result into ``output_path`` and return the files' URIs, in order.

    :param output_path: as :func:`output_root` accepts it.
    :param proxy: the proxy for the downloads (the Novita connection's ``proxy`` extra); None leaves it
        to the proxy environment variables.
    :param transport: what carries the downloads; tests pass one to serve results without a network.
    """
    root = output_root(output_path)
    make_folder(root)
    paths = []
    with _plain_client(DOWNLOAD_TIMEOUT, proxy, transport) as client:
        for result, destination in zip(results, destinations, strict=True):
            target = root / output_name(result.task_id, result.images[0].image_type, destination, map_index)
            size = _download(client, result, target)
            log.info("Saved Novita task %s result to %s (%d bytes)", result.task_id, target, size)
            paths.append(str(target))
    return paths


def make_folder(folder: ObjectStoragePath) -> None:
    """Create ``folder`` where folders exist (a local disk); object stores have none to create."""
    if folder.protocol in ("file", "local"):
        folder.mkdir(parents=True, exist_ok=True)


def url_answers(
    url: str,
    *,
    timeout: float = 10.0,
    proxy: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> bool:
    """
    Whether a result URL still serves its image, asked for one byte so that nothing big is fetched.

    Lets a retry tell a result it can still download from one whose presigned URL has expired, before
    it reattaches to the task. A server that ignores ``Range`` answers 200 with the whole body, which
    is never read: the response is closed unread.
    """
    where = redact_url(url)
    try:
        with (
            _plain_client(timeout, proxy, transport) as client,
            client.stream("GET", url, headers={"Range": "bytes=0-0"}) as response,
        ):
            status = response.status_code
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        log.info("Result URL %s did not answer: %s", where, without_queries(f"{type(err).__name__}: {err}"))
        return False
    log.info("Result URL %s answered HTTP %d", where, status)
    return status in (200, 206)


def _plain_client(
    timeout: float | httpx.Timeout, proxy: str | None, transport: httpx.BaseTransport | None
) -> httpx.Client:
    # A plain client on purpose: result URLs are presigned links on other hosts, which must never see
    # the Novita API key. A test transport answers everything itself, so no proxy stands in front of it.
    if transport is not None:
        return httpx.Client(timeout=timeout, follow_redirects=True, transport=transport)
    return httpx.Client(timeout=timeout, verify=shared_ssl_context(), follow_redirects=True, proxy=proxy)


def _download(client: httpx.Client, result: TaskResult, target: ObjectStoragePath) -> int:
    """
    Save one result decoded and return its size; on any failure, save nothing.

    On a local disk the bytes go to a hidden ``.partial`` file beside the target, renamed once
    complete. An object store shows an object whole or not at all, and a rename there is a copy and a
    delete, so the bytes go to a local temporary file first and become the object in one upload (one
    PUT up to the store's multipart threshold): no partial object, no probe, no copy.
    """
    if target.protocol in ("file", "local"):
        partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
        try:
            with partial.open("wb") as out:  # type: ignore[no-untyped-call]
                written = _fetch(client, result, out)
            partial.rename(target)
            return written
        finally:
            if partial.exists():
                partial.unlink()
    with tempfile.NamedTemporaryFile(prefix="novita-", suffix=".partial") as local:
        written = _fetch(client, result, local)
        local.flush()
        target.fs.put_file(local.name, target.path, **_content_type(target))  # type: ignore[no-untyped-call]
    return written


def _fetch(client: httpx.Client, result: TaskResult, out: IO[bytes]) -> int:
    """Stream the result into ``out``, checked against the announced length; the bytes written."""
    url = result.images[0].image_url
    try:
        with client.stream("GET", url) as response:
            if response.is_error:
                raise _unavailable(result, f"HTTP {response.status_code}")
            announced = response.headers.get("Content-Length")
            written = 0
            for chunk in response.iter_bytes(CHUNK_SIZE):
                out.write(chunk)
                written += len(chunk)
            # Content-Length counts the bytes on the wire, which differ from those written when the
            # server compressed the body (Content-Encoding) and httpx decoded it.
            received = response.num_bytes_downloaded
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        raise _unavailable(result, without_queries(f"{type(err).__name__}: {err}")) from err
    if announced is not None and received != int(announced):
        raise _unavailable(result, f"download broke off after {received} of {announced} bytes")
    return written


# How each object store takes an object's content type when it is uploaded. Other stores and local
# files keep none.
_CONTENT_TYPE_OPTION = {
    "s3": "ContentType",
    "s3a": "ContentType",
    "gs": "content_type",
    "gcs": "content_type",
}
_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def _content_type(target: ObjectStoragePath) -> dict[str, str]:
    """The upload option that gives ``target`` its image's content type, where its store keeps one."""
    option = _CONTENT_TYPE_OPTION.get(target.protocol)
    content_type = _CONTENT_TYPES.get(target.suffix.lstrip("."))
    return {option: content_type} if option and content_type else {}


def _unavailable(result: TaskResult, problem: str) -> NovitaError:
    """An error naming the task, the host (never the presigned query string) and the result's age."""
    where = redact_url(result.images[0].image_url)
    age = ""
    if result.completed_at is not None:
        age = f"; the task finished {_duration(time.time() - result.completed_at)} ago"
    expires_at = result.url_expires_at
    if expires_at is not None:
        age += f" and its URL {'expired' if expires_at <= time.time() else 'expires'} at " + (
            pendulum.from_timestamp(expires_at, tz="UTC").to_iso8601_string()
        )
    return NovitaError(
        f"Result of Novita task {result.task_id} could not be downloaded from {where}: {problem}{age}"
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"


def without_queries(text: str) -> str:
    """
    ``text`` with every query string cut out.

    An httpx or object storage error may quote a URL, its own or one it was redirected to, and the
    query string of a presigned URL is a credential.
    """
    return _QUERY.sub("?…", text)
