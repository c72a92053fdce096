"""
A retry's memory of submissions on Airflow without a task state store (3.1, 3.2), kept in ``output_path``.

Before Airflow 3.3 nothing outlives a try but what the task itself writes somewhere, so a retry after
a lost worker would submit again, and Novita would bill again, every image the lost try had already
submitted. A task with ``output_path`` has storage of its own that every try reaches with the same
credentials; :class:`SubmissionLedger` keeps one small JSON object there per accepted submission,
written as its task id arrives, and the next try reattaches to those tasks as it does on 3.3.

Layout: ``<output_path>/.novita-ledger-<task instance>/<entry>.json``. Both names are digests (of the
DAG id, run id, task id and map index; of the request's identity), so no source URL, signed or not,
reaches a key, and an entry holds only ``{"task_id": ...}`` or ``{"uncertain": <what went wrong>}``.
The folder is hidden and no entry ends in an image suffix, so file reuse (exact names), lineage (the
records' paths) and a listing filtered by image suffix never take an entry for an image. The folder
is removed, whole, once the batch's files are all saved: from then on the files are the memory
(``reuse_existing``). One folder per task instance, rather than one shared parent, so that removing
it can never race another mapped task instance writing its first entry.

A cleared task instance keeps the run id and map index, so it finds what a failed earlier try left,
as a retry does; reattaching checks that each task is still worth waiting for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import TYPE_CHECKING, Any

from airflow_provider_novita.storage import make_folder

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.types import RuntimeTaskInstanceProtocol

LEDGER_PREFIX = ".novita-ledger-"
_SUFFIX = ".json"
# What a retry is told about an entry it cannot parse: a crash mid-write, or someone else's hand. The
# id may have arrived, so Novita may have billed a task: reported as an uncertain submission.
_UNREADABLE = {"uncertain": "its ledger entry could not be read"}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class SubmissionLedger:
    """
    The submissions of one task instance, in a hidden folder of ``root``.

    Entries are read with one listing when the first is asked for: a first try, which finds none, pays
    one list request whatever the batch size.

    :param root: the task's ``output_path`` folder.
    :param ti: the running task instance, whose DAG, run, task and map index scope the entries.
    """

    def __init__(self, root: ObjectStoragePath, ti: RuntimeTaskInstanceProtocol) -> None:
        instance = f"{ti.dag_id}\n{ti.run_id}\n{ti.task_id}\n{ti.map_index}"
        self._folder = root / f"{LEDGER_PREFIX}{_digest(instance)}"
        self._entries: dict[str, dict[str, Any]] | None = None
        self._folder_made = False

    def get(self, name: str) -> dict[str, Any]:
        """What an earlier try recorded for ``name``; empty when it recorded nothing."""
        if self._entries is None:
            self._entries = self._read_all()
        return dict(self._entries.get(_digest(name), {}))

    def set(self, name: str, value: dict[str, Any]) -> None:
        """Record ``value`` for ``name`` at once: a crash right after must not lose it."""
        if not self._folder_made:
            make_folder(self._folder)
            self._folder_made = True
        (self._folder / f"{_digest(name)}{_SUFFIX}").write_text(json.dumps(value))

    def clear(self) -> None:
        """Remove every entry of this task instance: its files are saved and are the memory now."""
        with contextlib.suppress(FileNotFoundError):
            self._folder.fs.rm(self._folder.path, recursive=True)  # type: ignore[no-untyped-call]

    def _read_all(self) -> dict[str, dict[str, Any]]:
        try:
            paths = [path for path in self._folder.iterdir() if path.name.endswith(_SUFFIX)]
        except (FileNotFoundError, NotADirectoryError):  # no entry yet: which one depends on the store
            return {}
        return {path.name.removesuffix(_SUFFIX): _entry(path) for path in paths}


def _entry(path: ObjectStoragePath) -> dict[str, Any]:
    # A store that fails to answer raises here, and the try fails before submitting anything: taking
    # it for an uncertain entry would resubmit, and bill, an image whose task may be running.
    try:
        value = json.loads(path.read_text())
    except ValueError:
        return dict(_UNREADABLE)
    if isinstance(value, dict) and (
        isinstance(value.get("task_id"), str) or isinstance(value.get("uncertain"), str)
    ):
        return value
    return dict(_UNREADABLE)
