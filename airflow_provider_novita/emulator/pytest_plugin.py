"""pytest fixtures that run Novita emulators for the duration of a test.

Enable them in the top-level ``conftest.py`` of the test suite (pytest refuses ``pytest_plugins`` in
nested conftest files once collection has started)::

    pytest_plugins = ["airflow_provider_novita.emulator.pytest_plugin"]

or, for one directory only, import the fixtures into that directory's ``conftest.py``::

    from airflow_provider_novita.emulator.pytest_plugin import novita_emulator, novita_emulator_factory

    __all__ = ["novita_emulator", "novita_emulator_factory"]

Then, for example::

    import httpx

    def test_upscales(novita_emulator):
        headers = {"Authorization": f"Bearer {novita_emulator.api_key}"}
        image = f"{novita_emulator.base_url}/samples/landscape.png"
        response = httpx.post(
            f"{novita_emulator.base_url}/v3/async/image-upscaler",
            json={"image": image, "resolution": "2k"},
            headers=headers,
        )
        assert response.status_code == 200
        assert novita_emulator.stats()["accepted_submissions"] == 1

    def test_survives_rate_limits(novita_emulator_factory):
        emulator = novita_emulator_factory(rate_limit_first=2, retry_after=0.1)
        ...

Emulators started by these fixtures use :data:`FAST_TEST_CONFIG` (tasks finish after about half a
second) unless overridden, and are always stopped at teardown, whether the test passed or not.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from .config import EmulatorConfig
from .server import EmulatorServer

if TYPE_CHECKING:
    from collections.abc import Iterator

FAST_TEST_CONFIG = EmulatorConfig(job_duration=0.5, queue_seconds=0.1)


class EmulatorFactory(Protocol):
    def __call__(self, **config_overrides: Any) -> EmulatorServer: ...


@pytest.fixture
def novita_emulator() -> Iterator[EmulatorServer]:
    """A running emulator with :data:`FAST_TEST_CONFIG`."""
    with EmulatorServer(FAST_TEST_CONFIG) as server:
        yield server


@pytest.fixture
def novita_emulator_factory() -> Iterator[EmulatorFactory]:
    """Starts emulators from :data:`FAST_TEST_CONFIG` plus ``EmulatorConfig`` field overrides."""
    servers: list[EmulatorServer] = []

    def start(**config_overrides: Any) -> EmulatorServer:
        server = EmulatorServer(dataclasses.replace(FAST_TEST_CONFIG, **config_overrides))
        servers.append(server.start())
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
