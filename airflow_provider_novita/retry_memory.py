"""
What one try of a task instance leaves for its retries, so that a retry neither bills nor downloads twice.

Airflow 3.3 added ``context["task_state_store"]``, which survives the retries of a task instance
(XComs are cleared when a new try starts). Before 3.3 there is no such store: a :class:`RetryMemory`
then remembers nothing, and a try starts afresh unless the task keeps a
:class:`~airflow_provider_novita.ledger.SubmissionLedger` in its ``output_path``.

Entries are small and written one per item (an image, a file), so that a batch of n items costs n
writes of constant size rather than n writes of a growing object (n squared bytes in all). Nothing
stored may name a source URL: those are often pre-signed, and the store keeps entries for days. So
keys are digests of the names callers give, and values hold ids, sizes and paths.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context


def earlier_tries(context: Context) -> bool:
    """
    Whether an earlier try of this task instance may have left something: not on its first try.

    A first try reads nothing back, because each of a batch's n reads is a request to Airflow's API
    server (the task state store) or to ``output_path`` (the ledger), and at scale those requests are
    most of the API server's work. Airflow never gives a task instance its first try number again (a
    clear starts a new try), and a resume from deferral keeps its try's number.
    """
    return int(context["ti"].try_number) > 1


class RetryMemory:
    """
    JSON objects kept in the task state store under ``<namespace>/<digest of name>``, when Airflow has one.

    :param context: the running task's context.
    :param namespace: the key prefix. Renaming it makes retries in flight during an upgrade forget.
    """

    def __init__(self, context: Context, namespace: str) -> None:
        self._store = context.get("task_state_store")
        self._namespace = namespace

    def get(self, name: str) -> dict[str, Any]:
        """What an earlier try saved under ``name``; empty on the first try or without a store."""
        saved = self._store.get(self._key(name)) if self._store is not None else None
        return dict(saved) if isinstance(saved, dict) else {}

    def set(self, name: str, value: dict[str, Any]) -> None:
        """Replace what is saved under ``name``; call it as soon as a crash must not lose it."""
        if self._store is not None:
            self._store.set(self._key(name), value)

    def _key(self, name: str) -> str:
        return f"{self._namespace}/{hashlib.sha256(name.encode()).hexdigest()[:32]}"
