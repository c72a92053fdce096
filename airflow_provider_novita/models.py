"""
Typed models of Novita's image-upscaler API: what we send, what comes back, and how to read it.

Every field of an answer is untrusted. The documented response is loose (every top-level key
optional, ``image_url_ttl`` seen as int and as string, statuses Novita may extend), and a proxy or a
bug can send anything JSON can hold, including ``NaN``, ``Infinity`` and numbers too large for a
float. Parsing is therefore tolerant here, in one place: a value that is missing, of the wrong type,
not finite or outside a plausible range is *unknown* (None), never an exception that would kill a
wait. Everything downstream works with these frozen dataclasses instead of raw dicts.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_novita.exceptions import NovitaInvalidResponseError, without_url_queries

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

log = logging.getLogger(__name__)

RESOLUTIONS: tuple[str, ...] = ("2k", "4k", "8k")
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp")
DEFAULT_RESOLUTION = "4k"
DEFAULT_OUTPUT_FORMAT = "jpeg"

# Plausible ranges; anything outside is treated as unknown rather than trusted. Upscaling one image
# takes seconds to minutes, and Novita's longest documented link lifetime is an hour.
MAX_ETA = 24 * 3600.0
MAX_URL_TTL = 30 * 24 * 3600.0
# Epoch seconds of 2000-01-01 and 2200-01-01: a completion time outside them is not a real one.
_EARLIEST_TIME, _LATEST_TIME = 946_684_800.0, 7_258_118_400.0
# Long reasons or messages are cut so that one odd answer cannot flood a log line or an XCom.
MAX_TEXT = 500
# Jinja's statement, expression and comment delimiters: a string holding one is rendered later.
_JINJA_DELIMITERS = ("{{", "{%", "{#")


class TaskStatus(str, enum.Enum):
    """``task.status`` of a task result. Only SUCCEED and FAILED are final."""

    QUEUED = "TASK_STATUS_QUEUED"
    PROCESSING = "TASK_STATUS_PROCESSING"
    SUCCEED = "TASK_STATUS_SUCCEED"
    FAILED = "TASK_STATUS_FAILED"
    # Not a Novita value: stands for any status this version does not know. Such a task is treated
    # as still running, so a new status Novita adds delays a DAG instead of failing it.
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, value: object) -> TaskStatus:
        if isinstance(value, str):
            for status in cls:
                if status.value == value:
                    return status
        return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.SUCCEED, TaskStatus.FAILED)


# -- what DAG authors pass ---------------------------------------------------------------------------


def is_plain_literal(value: object) -> bool:
    """
    True for a value written out in the DAG file, which can be checked when the DAG is parsed.

    Anything Airflow resolves later (an XComArg, a MappedArgument, any other object, a string holding
    a Jinja delimiter, or a list containing one of those) is only known when the task starts.
    """
    if isinstance(value, str):
        return not any(delimiter in value for delimiter in _JINJA_DELIMITERS)
    if isinstance(value, (list, tuple)):
        return all(is_plain_literal(item) for item in value)
    return value is None or isinstance(value, (bool, int, float))


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """Raise a ValueError that names the parameter and lists the allowed values."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {_shown(value)}")


# What ``image`` may be, for the messages that refuse something else.
IMAGE_FORMS = (
    "an http(s) URL, an object storage URI such as s3://[conn_id@]bucket/key, gs://bucket/key or "
    "abfs://container/key, or an ObjectStoragePath"
)
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
# Schemes whose user info is a credential (a URL's or a proxy's), not an Airflow connection id.
_NETWORK_SCHEMES = ("http", "https", "socks5", "socks5h")
_LOCAL_SCHEMES = ("file", "local")


def is_storage_uri(source: str) -> bool:
    """Whether a checked source (see :func:`check_image`) is an object storage URI, to be signed."""
    return urlsplit(source).scheme not in ("http", "https")


def check_image(value: object) -> str:
    """
    A source image, stripped of surrounding whitespace, or a ValueError naming ``image``.

    Novita fetches the source itself, so it must be an absolute http(s) URL with a host, or an object
    storage URI naming one object (``s3://[conn_id@]bucket/key``), which the worker signs before it
    is sent. A local path cannot work: Novita cannot reach it. Whitespace around a value is stripped
    (a common copy-paste and template artefact); whitespace or control characters inside one are
    rejected, since no valid URL has them and Novita would fail the task only after billing-relevant
    work. Only the form is checked here; whether a storage URI's object exists and can be signed is
    checked in the worker before anything is submitted.
    """
    if not isinstance(value, str):
        raise ValueError(f"image must be {IMAGE_FORMS}; got {_shown(value)}")
    source = value.strip()
    problem = ""
    if not source:
        problem = "it is empty"
    elif any(char.isspace() or not char.isprintable() for char in source):
        problem = "it contains whitespace or control characters"
    else:
        try:
            parts = urlsplit(source)
            hostname = parts.hostname
        except ValueError:
            parts, hostname = None, None
        scheme = parts.scheme.lower() if parts is not None and "://" in source else ""
        if parts is None or (scheme and not _SCHEME.fullmatch(scheme)):
            problem = "it is not a URL"
        elif scheme in ("", *_LOCAL_SCHEMES):
            problem = (
                "it is a local file, which Novita cannot fetch: put it in object storage and pass its URI"
            )
        elif not hostname:
            problem = "it has no host" if scheme in ("http", "https") else "it names no bucket"
        elif scheme not in ("http", "https") and (not parts.path.strip("/") or parts.path.endswith("/")):
            problem = "it names no object (no key after the bucket), or a folder"
    if problem:
        raise ValueError(f"image must be {IMAGE_FORMS}, but {problem}: {_shown(source)}")
    return source


def check_images(image: object) -> list[str]:
    """The sources of ``image`` (one source or a non-empty list of them), checked and stripped."""
    if isinstance(image, str):
        return [check_image(image)]
    if not isinstance(image, (list, tuple)) or not image:
        raise ValueError(
            "image must be one source or a non-empty list of them; got "
            + ("an empty list" if isinstance(image, (list, tuple)) else f"a {type(image).__name__}")
        )
    sources = []
    for position, source in enumerate(image):
        try:
            sources.append(check_image(source))
        except ValueError as err:
            raise ValueError(f"{err} (at position {position} of the image list)") from None
    return sources


def redact_url(url: object) -> str:
    """
    A URL as it may appear in a log line or a message: scheme, host, port and path only, and for an
    object storage URI the Airflow connection it names (``s3://aws_default@bucket/key``, as
    ``ObjectStoragePath`` shows it), so that every message names a source the same way.

    Source and result URLs are often pre-signed; their query string is a credential, and so is the
    user info before the host of an http(s) URL or a proxy URL. A storage URI's user is a connection
    id, which is not; a password after it is never shown.
    """
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme:
        return parts.path[:MAX_TEXT]
    scheme = parts.scheme.lower()
    conn_id = f"{parts.username}@" if parts.username and scheme not in _NETWORK_SCHEMES else ""
    return f"{parts.scheme}://{conn_id}{host}{port}{parts.path}"[:MAX_TEXT]


def _shown(value: object) -> str:
    """How a rejected value appears in an error: short, and with no URL credential in it."""
    if isinstance(value, str):
        return repr(redact_url(value) if "://" in value else value[:MAX_TEXT])
    return f"{type(value).__name__} {repr(value)[:MAX_TEXT]}"


@dataclass(frozen=True)
class UpscaleRequest:
    """
    One image to upscale, validated on construction: the body of ``POST /v3/async/image-upscaler``.

    ``image`` is the source as the DAG names it. An object storage URI is signed into an http(s) URL
    (:meth:`with_image`) right before it is sent; only a request whose image is an http(s) URL
    becomes a body.
    """

    image: str
    resolution: str = DEFAULT_RESOLUTION
    output_format: str = DEFAULT_OUTPUT_FORMAT

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", check_image(self.image))
        check_choice("resolution", self.resolution, RESOLUTIONS)
        check_choice("output_format", self.output_format, OUTPUT_FORMATS)

    def with_image(self, url: str) -> UpscaleRequest:
        """The same request for the URL Novita fetches (a signed URL of this request's source)."""
        return dataclasses.replace(self, image=url)

    def to_json(self) -> dict[str, str]:
        if is_storage_uri(self.image):
            raise ValueError(
                f"image {_shown(self.image)} must be signed into an http(s) URL before it is sent"
            )
        return {"image": self.image, "resolution": self.resolution, "output_format": self.output_format}

    def identity(self, position: int) -> str:
        """
        What makes this request at ``position`` in its batch the same one in a retry.

        The position keeps two identical images of one batch apart; the other fields make sure a
        retry whose templates rendered differently does not inherit another request's task.
        """
        return f"{position}\n{self.image}\n{self.resolution}\n{self.output_format}"


# -- what Novita answers -----------------------------------------------------------------------------


def _number(value: object, maximum: float, *, minimum: float = 0.0) -> float | None:
    """A finite number within ``[minimum, maximum]``, from a JSON number or numeric string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int):
        # Compared as an int first: a huge JSON integer does not fit a float.
        return float(value) if minimum <= value <= maximum else None
    if isinstance(value, float) and math.isfinite(value) and minimum <= value <= maximum:
        return value
    return None


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    return without_url_queries(str(value)[:MAX_TEXT])


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class ResultImage:
    """One output image of a finished task. ``image_url`` is temporary: download it promptly."""

    image_url: str
    image_type: str
    image_url_ttl: int | None = None

    @classmethod
    def parse(cls, data: object) -> ResultImage | None:
        """An image entry, or None for one without a usable http(s) URL."""
        item = _mapping(data)
        url = item.get("image_url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            return None
        ttl = _number(item.get("image_url_ttl"), MAX_URL_TTL)
        # "0" is what Novita's newer CDN links say: no documented lifetime, so unknown.
        return cls(url, _text(item.get("image_type")), int(ttl) if ttl else None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_url": self.image_url,
            "image_type": self.image_type,
            "image_url_ttl": self.image_url_ttl,
        }


# Slots: a triggerer holds one per task in flight, tens of thousands of them.
@dataclass(frozen=True, slots=True)
class TaskResult:
    """
    The parsed answer of ``GET /v3/async/task-result`` for one task.

    ``eta`` (seconds) and ``progress_percent`` are None when Novita gave no usable value.
    ``completed_at`` is Novita's completion time (epoch seconds) when its debug info carries one.
    """

    task_id: str
    status: TaskStatus
    reason: str = ""
    eta: float | None = None
    progress_percent: float | None = None
    images: tuple[ResultImage, ...] = field(default_factory=tuple)
    completed_at: float | None = None

    @classmethod
    def from_api(cls, payload: object, task_id: str) -> TaskResult:
        """
        Parse a task-result body for the task that was polled.

        The result is filed under ``task_id``, the id that was asked for, whatever id the body
        names: a waiter only ever looks its tasks up by the ids it polled. A body that is not a JSON
        object raises :class:`NovitaInvalidResponseError`; within an object, a missing or odd field
        is unknown, and an unknown status means not finished.
        """
        if not isinstance(payload, Mapping):
            raise NovitaInvalidResponseError(
                f"Novita answered the task-result request for task {task_id} with a "
                f"{type(payload).__name__} instead of a JSON object"
            )
        task = _mapping(payload.get("task"))
        status = TaskStatus.parse(task.get("status"))
        if status is TaskStatus.UNKNOWN:
            log.warning(
                "Novita task %s has a status this provider does not know: %s",
                task_id,
                _text(task.get("status")) or "(none)",
            )
        answered_id = task.get("task_id")
        if answered_id not in (None, "", task_id):
            log.warning(
                "Novita answered the poll of task %s with task id %s; filing it under %s",
                task_id,
                _text(answered_id),
                task_id,
            )
        images = payload.get("images")
        debug_info = _mapping(_mapping(payload.get("extra")).get("debug_info"))
        completed_ms = _number(
            debug_info.get("complete_time_ms"), _LATEST_TIME * 1000, minimum=_EARLIEST_TIME * 1000
        )
        parsed_images = (ResultImage.parse(item) for item in (images if isinstance(images, list) else ()))
        return cls(
            task_id=task_id,
            status=status,
            reason=_text(task.get("reason")),
            eta=_number(task.get("eta"), MAX_ETA) or None,
            progress_percent=_number(task.get("progress_percent"), 100.0),
            images=tuple(image for image in parsed_images if image is not None),
            completed_at=None if completed_ms is None else completed_ms / 1000,
        )

    @property
    def url_expires_at(self) -> float | None:
        """
        When the first image's URL stops working (epoch seconds), or None when that cannot be known.

        Novita's documented example sends no completion time, and newer links have no lifetime.
        """
        if self.completed_at is None or not self.images or self.images[0].image_url_ttl is None:
            return None
        return self.completed_at + self.images[0].image_url_ttl

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, as carried in trigger events."""
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "reason": self.reason,
            "eta": self.eta,
            "progress_percent": self.progress_percent,
            "images": [image.to_dict() for image in self.images],
            "completed_at": self.completed_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskResult:
        """The inverse of :meth:`to_dict`; values are re-checked, as an event is stored data."""
        images = data.get("images")
        parsed_images = (ResultImage.parse(item) for item in (images if isinstance(images, list) else ()))
        return cls(
            task_id=str(data["task_id"]),
            status=TaskStatus.parse(data.get("status")),
            reason=_text(data.get("reason")),
            eta=_number(data.get("eta"), MAX_ETA),
            progress_percent=_number(data.get("progress_percent"), 100.0),
            images=tuple(image for image in parsed_images if image is not None),
            completed_at=_number(data.get("completed_at"), _LATEST_TIME, minimum=_EARLIEST_TIME),
        )


def unfinished(task_ids: Iterable[str], results: Mapping[str, TaskResult]) -> list[str]:
    """The ids, in order and without repeats, whose last known status is not final."""
    return [
        task_id
        for task_id in dict.fromkeys(task_ids)
        if task_id not in results or not results[task_id].status.is_terminal
    ]


def failures(results: Iterable[TaskResult | None]) -> dict[str, str]:
    """Task id -> Novita's reason, for every task that ended FAILED."""
    return {r.task_id: r.reason for r in results if r is not None and r.status is TaskStatus.FAILED}
