"""
A retry's memory of submissions on Airflow without a task state store (3.1, 3.2), kept in ``output_path``.

Before Airflow 3.3 nothing outlives a try but what the task itself writes somewhere, so a retry after
a lost worker would submit again, and Novita would bill again, every image the lost try had already
submitted. A task with ``output_path`` has storage of its own that every try reaches with the same
credentials; :class:`LedgerChunks` keeps the chunks of a
:class:`~airflow_provider_novita.retry_memory.RetryMemory` there, one small JSON object per chunk,
and the next try reattaches to those tasks as it does on 3.3.

Layout: ``<output_path>/.novita-ledger-<task instance>/chunk-NNNN.json``. The folder's name is a
digest (of the DAG id, run id, task id and map index) and a chunk holds digests of request identities
and Novita task ids, so no source URL, signed or not, reaches a key or a value. The folder is hidden
and no entry ends in an image suffix, so file reuse (exact names), lineage (the records' paths) and a
listing filtered by image suffix never take an entry for an image. The folder is removed, whole, once
the batch's files are all saved: from then on the files are the memory. One folder per task
instance, rather than one shared parent, so that removing it can never race another mapped task
instance writing its first chunk.

A cleared task instance keeps the run id and map index, so it finds what a failed earlier try left,
as a retry does; reattaching checks that each task is still worth waiting for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from airflow_provider_novita.retry_memory import chunk_name, digest
from airflow_provider_novita.storage import make_folder

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.types import RuntimeTaskInstanceProtocol

log = logging.getLogger(__name__)

LEDGER_PREFIX = ".novita-ledger-"
_CHUNK = re.compile(r"chunk-(\d{4,})\.json")


class LedgerChunks:
    """
    The chunks of one task instance, in a hidden folder of ``root``.

    A retry reads them with one listing and one read per chunk; a first try reads nothing.

    :param root: the task's ``output_path`` folder.
    :param ti: the running task instance, whose DAG, run, task and map index scope the chunks.
    """

    def __init__(self, root: ObjectStoragePath, ti: RuntimeTaskInstanceProtocol) -> None:
        instance = f"{ti.dag_id}\n{ti.run_id}\n{ti.task_id}\n{ti.map_index}"
        self._folder = root / f"{LEDGER_PREFIX}{digest(instance)}"
        self._folder_made = False

    def read(self) -> list[dict[str, Any]]:
        try:
            names = {path.name for path in self._folder.iterdir()}
        except (FileNotFoundError, NotADirectoryError):  # no chunk yet: which one depends on the store
            return []
        numbers = sorted(int(match[1]) for name in names if (match := _CHUNK.fullmatch(name)))
        chunks: list[dict[str, Any]] = []
        for number in numbers:
            if number != len(chunks):  # a gap: what follows it was not written by this sequence
                break
            chunks.append(self._chunk(number))
        return chunks

    def write(self, index: int, chunk: dict[str, Any]) -> None:
        if not self._folder_made:
            make_folder(self._folder)
            self._folder_made = True
        (self._folder / f"{chunk_name(index)}.json").write_text(json.dumps(chunk, separators=(",", ":")))

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._folder.fs.rm(self._folder.path, recursive=True)  # type: ignore[no-untyped-call]

    def _chunk(self, number: int) -> dict[str, Any]:
        # A store that fails to answer raises here, and the try fails before submitting anything:
        # taking the chunk for empty would resubmit, and bill, images whose tasks may be running.
        try:
            value = json.loads((self._folder / f"{chunk_name(number)}.json").read_text())
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        # A crash mid-write on a local disk, or someone else's hand. Kept as an empty chunk, so that
        # the next chunk written does not take its number.
        log.warning(
            "Chunk %d of the submission ledger in %s could not be read: the images it recorded are "
            "submitted again, and Novita bills them again",
            number,
            self._folder,
        )
        return {}
