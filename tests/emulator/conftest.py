"""Shared fixtures for the emulator's tests: running emulators and a small HTTP client around them.

Most tests talk to one emulator per module that is reset before each test (same state as a fresh one,
without paying for a server start and stop every time); tests that need special settings start their
own through ``api_factory``.

The shipped fixtures (``novita_emulator``, ``novita_emulator_factory``) are enabled suite-wide by
``pytest_plugins`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from airflow_provider_novita.emulator import EmulatorServer
from airflow_provider_novita.emulator.pytest_plugin import FAST_TEST_CONFIG

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow_provider_novita.emulator.pytest_plugin import EmulatorFactory


TERMINAL = ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED")
# A guard against hanging forever, not a performance expectation.
WAIT_LIMIT_SECONDS = 30.0


class EmulatorApi:
    """Real HTTP calls to one running emulator, authenticated with its key."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.base_url = server.base_url
        self.client = httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {server.api_key}"},
            timeout=WAIT_LIMIT_SECONDS,
        )

    def sample_url(self, name: str = "landscape.png") -> str:
        return f"{self.base_url}/samples/{name}"

    def submit(self, image: str | None = None, **fields: Any) -> httpx.Response:
        body = {"image": image if image is not None else self.sample_url(), **fields}
        return self.client.post("/v3/async/image-upscaler", json=body)

    def submit_ok(self, image: str | None = None, **fields: Any) -> str:
        response = self.submit(image, **fields)
        assert response.status_code == 200, response.text
        task_id: str = response.json()["task_id"]
        return task_id

    def result(self, task_id: str) -> httpx.Response:
        return self.client.get("/v3/async/task-result", params={"task_id": task_id})

    def poll(self, task_id: str) -> dict[str, Any]:
        response = self.result(task_id)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait(self, task_id: str, on_poll: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the task is terminal; returns the last task-result body."""
        deadline = time.monotonic() + WAIT_LIMIT_SECONDS
        while True:
            body = self.poll(task_id)
            if on_poll is not None:
                on_poll(body)
            if body["task"]["status"] in TERMINAL:
                return body
            assert time.monotonic() < deadline, f"task {task_id} never finished: {body}"
            time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.base_url}/_emulator/stats").json()
        return stats

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(
        dataclasses.replace(FAST_TEST_CONFIG, job_duration=0.2, queue_seconds=0.05)
    ) as server:
        yield server


@pytest.fixture
def api(shared_emulator: EmulatorServer) -> Iterator[EmulatorApi]:
    """A client for the module's emulator, reset to a fresh state for this test."""
    shared_emulator.reset()
    emulator_api = EmulatorApi(shared_emulator)
    yield emulator_api
    emulator_api.close()


@pytest.fixture
def api_factory(novita_emulator_factory: EmulatorFactory) -> Iterator[Callable[..., EmulatorApi]]:
    """Starts an emulator with config overrides and returns a client for it."""
    apis: list[EmulatorApi] = []

    def make(**config_overrides: Any) -> EmulatorApi:
        apis.append(EmulatorApi(novita_emulator_factory(**config_overrides)))
        return apis[-1]

    yield make
    for emulator_api in apis:
        emulator_api.close()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on a loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/image.png"
