"""
What one try of a task instance leaves for its retries, so that a retry does not bill twice.

Airflow 3.3 added ``context["task_state_store"]``, which survives the retries of a task instance
(XComs are cleared when a new try starts). Every ``get``, ``set``, ``delete`` or ``clear`` on it is
one request to Airflow's API server and one database transaction, and a task can neither list its
keys nor write several at once. So a :class:`RetryMemory` writes *chunks*: one entry holds the
answers of a window of work (``<namespace>/chunk-0000``, ``chunk-0001``, ...), written once the
window has all answered, and a retry reads the chunks in order until one is missing. Before 3.3 the
same chunks go to a :class:`~airflow_provider_novita.ledger.LedgerChunks` folder in ``output_path``
(one object per chunk), or nowhere.

What a chunk holds is keyed by a digest of the name its caller gives (an image's request identity,
a task id): nothing stored may name a source URL, as those are often pre-signed and the store keeps
entries for hours. Values hold ids and what went wrong, never a URL of a source.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from airflow.sdk import Context

# How long the state store keeps a chunk beyond the wait's own timeout: Novita's result URLs live an
# hour (image_url_ttl 3600), after which reattaching to a task is worth nothing, and three more hours
# leave room for retry delays and a worker that came back late. Airflow's default is 30 days.
RETENTION_BEYOND_TIMEOUT = timedelta(hours=4)


def earlier_tries(context: Context) -> bool:
    """
    Whether an earlier try of this task instance may have left something: not on its first try.

    A first try reads nothing back, because each read is a request to Airflow's API server (the task
    state store) or to ``output_path`` (the ledger). Airflow never gives a task instance its first try
    number again (a clear starts a new try), and a resume from deferral keeps its try's number.
    """
    return int(context["ti"].try_number) > 1


def chunk_name(index: int) -> str:
    """The name of chunk ``index`` in every place chunks are kept: ``chunk-0000``, ``chunk-0001``, ..."""
    return f"chunk-{index:04d}"


def digest(name: str) -> str:
    """The key a name is kept under: 64 bits of its SHA-256, ample within one task instance."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


class Chunks(Protocol):
    """Where a :class:`RetryMemory` keeps its chunks: numbered JSON objects of one task instance."""

    def read(self) -> list[dict[str, Any]]:
        """The chunks written so far, in order, up to the first missing one."""

    def write(self, index: int, chunk: dict[str, Any]) -> None:
        """Write chunk ``index``; it must be readable once this returns."""

    def clear(self) -> None:
        """Remove every chunk of this task instance."""


class StateStoreChunks:
    """
    Chunks in Airflow 3.3's task state store, under ``<namespace>/chunk-NNNN``.

    :param wait_timeout: seconds the task may wait for Novita; the store keeps each chunk that long
        and :data:`RETENTION_BEYOND_TIMEOUT` more.
    """

    def __init__(self, store: Any, namespace: str, wait_timeout: float) -> None:
        self._store = store
        self._namespace = namespace
        self._retention = timedelta(seconds=wait_timeout) + RETENTION_BEYOND_TIMEOUT

    def read(self) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        while isinstance(chunk := self._store.get(self._key(len(chunks))), dict):
            chunks.append(chunk)
        return chunks

    def write(self, index: int, chunk: dict[str, Any]) -> None:
        self._store.set(self._key(index), chunk, retention=self._retention)

    def clear(self) -> None:
        # One request for all of them (a delete per key would be one each). The store is scoped to
        # this task instance, whose keys are all the provider's.
        self._store.clear()

    def _key(self, index: int) -> str:
        return f"{self._namespace}/{chunk_name(index)}"


class RetryMemory:
    """
    Named JSON objects that a try records and its retries read back, written in chunks.

    :meth:`record` buffers; every ``chunk_size`` records become one chunk. Whatever is buffered and
    not yet written is what a lost worker leaves unrecorded, so callers :meth:`flush` before anything
    that may fail and before they return. A later record of a name replaces an earlier one.

    :param chunks: where the chunks go; None remembers nothing (no task state store, no ledger).
    :param chunk_size: records per chunk.
    """

    def __init__(self, chunks: Chunks | None, chunk_size: int) -> None:
        self._chunks = chunks
        self._chunk_size = chunk_size
        self._written: int | None = None
        self._buffer: dict[str, Any] = {}

    def recall(self, names: list[str]) -> list[dict[str, Any]]:
        """
        What earlier tries recorded for each of ``names``, in order; empty where nothing.

        It reads every chunk, a request each: only a retry should ask (:func:`earlier_tries`).
        """
        if self._chunks is None:
            return [{} for _ in names]
        chunks = self._chunks.read()
        self._written = len(chunks)
        merged: dict[str, Any] = {}
        for chunk in chunks:
            merged.update(chunk)
        return [_as_dict(merged.get(digest(name))) for name in names]

    def record(self, name: str, value: dict[str, Any]) -> None:
        """Record ``value`` for ``name``; written with the chunk it completes, or at :meth:`flush`."""
        if self._chunks is None:
            return
        self._buffer[digest(name)] = value
        if len(self._buffer) >= self._chunk_size:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered as the next chunk."""
        if self._chunks is None or not self._buffer:
            return
        if self._written is None:  # a first try: chunk 0 is the first, and nothing is read to know it
            self._written = 0
        chunk, self._buffer = self._buffer, {}
        self._chunks.write(self._written, chunk)
        self._written += 1

    def forget(self) -> None:
        """Remove every chunk: the work is done and its results are kept elsewhere."""
        self._buffer = {}
        if self._chunks is not None:
            self._chunks.clear()
        self._written = 0


def _as_dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}
