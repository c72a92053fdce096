"""
What one try of a task instance leaves for its retries, so that a retry neither bills nor downloads twice.

Airflow 3.3 added ``context["task_state_store"]``, which survives the retries of a task instance
(XComs are cleared when a new try starts). Before 3.3 there is no such store: a :class:`RetryMemory`
then remembers nothing, and every try starts afresh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context


class RetryMemory:
    """
    One JSON object kept under ``key`` in the task state store, when Airflow has one.

    :param context: the running task's context.
    :param key: the store key. Renaming a key makes retries in flight during an upgrade forget.
    """

    def __init__(self, context: Context, key: str) -> None:
        self._store = context.get("task_state_store")
        self._key = key

    def load(self) -> dict[str, Any]:
        """What earlier tries saved; empty on the first try or without a store."""
        saved = self._store.get(self._key, default={}) if self._store is not None else {}
        return dict(saved) if isinstance(saved, dict) else {}

    def save(self, value: dict[str, Any]) -> None:
        """Replace what is saved; call it as soon as there is something a crash must not lose."""
        if self._store is not None:
            self._store.set(self._key, value)
