"""
Typed models of Novita's image-upscaler API: what we send, what comes back, and how to read it.

The documented response is loose (every top-level key optional, ``image_url_ttl`` seen as int and
as string, statuses Novita may extend), so parsing is tolerant here, in one place, and everything
downstream works with these frozen dataclasses instead of raw dicts.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

RESOLUTIONS: tuple[str, ...] = ("2k", "4k", "8k")
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp")
DEFAULT_RESOLUTION = "4k"
DEFAULT_OUTPUT_FORMAT = "jpeg"


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
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.SUCCEED, TaskStatus.FAILED)


def validate_choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise a ValueError that lists them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def validate_image_url(value: object) -> str:
    """Novita fetches the source itself, so only an absolute http(s) URL can work."""
    if (
        not isinstance(value, str)
        or urlsplit(value).scheme not in ("http", "https")
        or not urlsplit(value).netloc
    ):
        raise ValueError(f"image must be an http(s) URL of the source image; got {value!r}")
    return value


@dataclass(frozen=True)
class UpscaleRequest:
    """The body of ``POST /v3/async/image-upscaler``, validated on construction."""

    image: str
    resolution: str = DEFAULT_RESOLUTION
    output_format: str = DEFAULT_OUTPUT_FORMAT

    def __post_init__(self) -> None:
        validate_image_url(self.image)
        validate_choice("resolution", self.resolution, RESOLUTIONS)
        validate_choice("output_format", self.output_format, OUTPUT_FORMATS)

    def to_json(self) -> dict[str, str]:
        return {"image": self.image, "resolution": self.resolution, "output_format": self.output_format}


def _as_int(value: object) -> int | None:
    """Novita sends some numbers as strings (``"3600"``) and some strings empty; None means unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str) and value.strip():
        try:
            return int(float(value))
        except ValueError:
            return None
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class ResultImage:
    """One output image of a finished task. ``image_url`` is temporary: download it promptly."""

    image_url: str
    image_type: str
    image_url_ttl: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_url": self.image_url,
            "image_type": self.image_type,
            "image_url_ttl": self.image_url_ttl,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultImage:
        return cls(
            image_url=str(data.get("image_url") or ""),
            image_type=str(data.get("image_type") or ""),
            image_url_ttl=_as_int(data.get("image_url_ttl")),
        )


@dataclass(frozen=True)
class TaskResult:
    """
    The parsed answer of ``GET /v3/async/task-result`` for one task.

    ``raw_status`` keeps Novita's own word when ``status`` is UNKNOWN, for the logs. ``completed_at_ms``
    is Novita's completion time (epoch milliseconds) when its debug info carries one.
    """

    task_id: str
    status: TaskStatus
    raw_status: str = ""
    reason: str = ""
    eta: int = 0
    progress_percent: int = 0
    images: tuple[ResultImage, ...] = field(default_factory=tuple)
    completed_at_ms: int | None = None

    @classmethod
    def from_api(cls, payload: object, task_id: str) -> TaskResult:
        """Parse a task-result body; missing keys mean empty, an unknown status means not finished."""
        body = _mapping(payload)
        task = _mapping(body.get("task"))
        raw_status = str(task.get("status") or "")
        status = TaskStatus.parse(raw_status)
        if status is TaskStatus.UNKNOWN:
            log.warning("Novita task %s has a status this provider does not know: %r", task_id, raw_status)
        images = body.get("images")
        debug_info = _mapping(_mapping(body.get("extra")).get("debug_info"))
        return cls(
            task_id=str(task.get("task_id") or task_id),
            status=status,
            raw_status=raw_status,
            reason=str(task.get("reason") or ""),
            eta=max(0, _as_int(task.get("eta")) or 0),
            progress_percent=max(0, min(100, _as_int(task.get("progress_percent")) or 0)),
            images=tuple(
                ResultImage.from_dict(item)
                for item in (images if isinstance(images, list) else [])
                if isinstance(item, Mapping) and item.get("image_url")
            ),
            completed_at_ms=_as_int(debug_info.get("complete_time_ms")),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, as carried in trigger events."""
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "raw_status": self.raw_status,
            "reason": self.reason,
            "eta": self.eta,
            "progress_percent": self.progress_percent,
            "images": [image.to_dict() for image in self.images],
            "completed_at_ms": self.completed_at_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskResult:
        return cls(
            task_id=str(data["task_id"]),
            status=TaskStatus.parse(data.get("status")),
            raw_status=str(data.get("raw_status") or ""),
            reason=str(data.get("reason") or ""),
            eta=_as_int(data.get("eta")) or 0,
            progress_percent=_as_int(data.get("progress_percent")) or 0,
            images=tuple(ResultImage.from_dict(item) for item in data.get("images") or ()),
            completed_at_ms=_as_int(data.get("completed_at_ms")),
        )
