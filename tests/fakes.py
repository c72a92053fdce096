"""
A scripted stand-in for Novita behind ``httpx.MockTransport``, for unit tests.

Each task follows a script of statuses, one per poll; the last one repeats. Errors are injected
per request with ``fail_next``. Every request is recorded so tests can count submissions.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.retries import RetryPolicy
from tests.conftest import API_KEY

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

SUCCEED = "TASK_STATUS_SUCCEED"
FAILED = "TASK_STATUS_FAILED"
QUEUED = "TASK_STATUS_QUEUED"
PROCESSING = "TASK_STATUS_PROCESSING"


@dataclass
class FakeNovita:
    script: Sequence[str] = (QUEUED, PROCESSING, SUCCEED)
    reasons: dict[str, str] = field(default_factory=dict)
    eta: int = 0
    completed_at_ms: int | None = field(default_factory=lambda: int(time.time() * 1000))
    requests: list[httpx.Request] = field(default_factory=list)
    polls: dict[str, int] = field(default_factory=dict)
    scripts: dict[str, Sequence[str]] = field(default_factory=dict)
    injected: list[Callable[[httpx.Request], httpx.Response]] = field(default_factory=list)
    poll_answer: httpx.Response | None = None
    """When set, what every poll gets: a key revoked after the submissions, say."""
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def transport(self) -> httpx.MockTransport:
        # Looked up per request, so a test may wrap ``handle`` after the transport was handed out.
        return httpx.MockTransport(lambda request: self.handle(request))

    def serve(self, monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> None:
        """Make the hooks that ``module`` creates talk to this fake, with near-instant retries."""
        monkeypatch.setattr(
            module,
            "NovitaHook",
            functools.partial(NovitaHook, transport=self.transport(), retry_policy=RetryPolicy(3, 0.001)),
        )

    def fail_next(self, *responses: httpx.Response | Exception) -> None:
        """The next requests get these answers (or raise these transport errors), in order."""
        for answer in responses:
            self.injected.append(lambda request, a=answer: _raise_or_return(a))

    @property
    def submissions(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path == "/v3/async/image-upscaler"]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.injected:
            return self.injected.pop(0)(request)
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return error(403, "INVALID_API_KEY", "invalid api-key")
        if request.url.path == "/v3/async/image-upscaler":
            body = json.loads(request.content)
            task_id = f"task-{next(self._ids)}"
            self.scripts.setdefault(task_id, self.script)
            self.reasons.setdefault(task_id, f"cannot upscale {body['image']}")
            return httpx.Response(200, json={"task_id": task_id})
        if request.url.path == "/v3/async/task-result":
            return self.poll_answer or self._result(request.url.params["task_id"])
        if request.url.path == "/v3/user":
            return httpx.Response(
                200, json={"allow_features": [], "credit_balance": 123450, "free_trial": {}}
            )
        return error(404, "API_NOT_FOUND", "no such API")

    def _result(self, task_id: str) -> httpx.Response:
        if task_id not in self.scripts:
            return error(404, "TASK_NOT_FOUND", "task not found")
        poll = self.polls.get(task_id, 0)
        self.polls[task_id] = poll + 1
        script = self.scripts[task_id]
        status = script[min(poll, len(script) - 1)]
        done = status == SUCCEED
        return httpx.Response(
            200,
            json={
                "extra": {
                    "debug_info": {"complete_time_ms": str(self.completed_at_ms or "") if done else ""}
                },
                "task": {
                    "task_id": task_id,
                    "task_type": "UPSCALE",
                    "status": status,
                    "reason": self.reasons[task_id] if status == FAILED else "",
                    "eta": 0 if done else self.eta,
                    "progress_percent": 100 if done else 40,
                },
                "images": [
                    {
                        "image_url": f"https://cdn.test/{task_id}.jpeg",
                        "image_url_ttl": "3600",
                        "image_type": "jpeg",
                    }
                ]
                if done
                else [],
                "videos": [],
                "audios": [],
            },
        )


class FakeTaskInstance:
    """The parts of a running task instance that the operator and the sensor use."""

    def __init__(
        self, try_number: int = 1, first_reschedule_date: datetime | None = None, map_index: int = -1
    ) -> None:
        self.xcom: dict[str, Any] = {}
        self.dag_id, self.run_id, self.task_id = "dag", "manual__2026-12-02T00:00:00+00:00", "upscale"
        self.try_number = try_number
        self.map_index = map_index
        self.first_reschedule_date = first_reschedule_date

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def get_first_reschedule_date(self, context: Any) -> datetime | None:
        return self.first_reschedule_date


class FakeStateStore:
    """
    ``context["task_state_store"]`` of Airflow 3.3: outlives the retries and reschedules of a task.
    Every call is a request to Airflow's API server; ``requests`` counts them.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.writes: list[tuple[str, int]] = []
        self.reads: list[str] = []
        self.retentions: list[timedelta | None] = []
        self.clears = 0

    @property
    def requests(self) -> int:
        return len(self.reads) + len(self.writes) + self.clears

    def entries(self) -> dict[str, Any]:
        """Every recorded value, by digest of its name, merged over the chunks in key order."""
        merged: dict[str, Any] = {}
        for key in sorted(self.values):
            merged.update(self.values[key])
        return merged

    def get(self, key: str, default: Any = None) -> Any:
        self.reads.append(key)
        return self.values.get(key, default)

    def set(self, key: str, value: Any, *, retention: timedelta | None = None) -> None:
        self.values[key] = value
        self.writes.append((key, len(json.dumps(value))))
        self.retentions.append(retention)

    def clear(self) -> None:
        self.clears += 1
        self.values.clear()


def context(store: FakeStateStore | None = None, ti: FakeTaskInstance | None = None, **extra: Any) -> Any:
    """A task context with what the provider reads from it; ``task_state_store`` only if given (3.3+)."""
    ctx: dict[str, Any] = {"ti": ti or FakeTaskInstance(), **extra}
    if store is not None:
        ctx["task_state_store"] = store
    return ctx


def retry(store: FakeStateStore | None = None, **extra: Any) -> Any:
    """The context of a task instance's second try: what an earlier try saved is read only then."""
    return context(store, ti=FakeTaskInstance(try_number=2), **extra)


def error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"code": status, "reason": reason, "message": message, "metadata": {}}, headers=headers
    )


def _raise_or_return(answer: httpx.Response | Exception) -> httpx.Response:
    if isinstance(answer, Exception):
        raise answer
    return answer
