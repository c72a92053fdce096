"""Finished result images, served like the S3 presigned links the real API hands out.

Results are kept in memory rather than in a temporary directory: nothing is left on disk if the process
is killed, and memory stays bounded because a result's bytes are dropped as soon as its link expires
(only a marker remains, so the link keeps answering 403 "expired" instead of 404).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import EmulatorConfig


class DownloadOutcome(enum.Enum):
    NOT_FOUND = "not_found"
    EXPIRED = "expired"
    FULL = "full"
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class Download:
    outcome: DownloadOutcome
    content: bytes = b""
    content_type: str = ""


@dataclass
class _StoredOutput:
    content: bytes | None
    content_type: str
    available_at: float
    expires_at: float
    downloads: int = 0


class OutputStore:
    """Result bytes by output name (``<task_id>.<ext>``), with publication time, expiry and counters.

    Used from the server's event loop only, so it needs no locking.
    """

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self._outputs: dict[str, _StoredOutput] = {}

    def put(self, name: str, content: bytes, content_type: str, available_at: float) -> None:
        """Store a result that becomes downloadable when its task turns SUCCEED at ``available_at``."""
        self._outputs[name] = _StoredOutput(
            content=content,
            content_type=content_type,
            available_at=available_at,
            expires_at=available_at + self._config.output_ttl,
        )

    def download(self, name: str) -> Download:
        """Serve one request for ``name``; every request for a published result is counted."""
        now = self._clock()
        output = self._outputs.get(name)
        # Before the task reports SUCCEED its URL is not public yet, so it does not exist either.
        if output is None or now < output.available_at:
            return Download(DownloadOutcome.NOT_FOUND)
        output.downloads += 1
        if now >= output.expires_at:
            output.content = None
        if output.content is None:
            return Download(DownloadOutcome.EXPIRED)
        truncated = output.downloads <= self._config.truncate_downloads
        outcome = DownloadOutcome.TRUNCATED if truncated else DownloadOutcome.FULL
        return Download(outcome, output.content, output.content_type)

    def drop_expired(self) -> None:
        """Free the bytes of every expired result, including ones nobody asks for any more."""
        now = self._clock()
        for output in self._outputs.values():
            if now >= output.expires_at:
                output.content = None

    def downloads_by_output(self) -> dict[str, int]:
        return {name: output.downloads for name, output in self._outputs.items() if output.downloads}
