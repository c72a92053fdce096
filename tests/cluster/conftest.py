"""
One Celery deployment (tests/cluster/harness.py) for all cluster scenarios of a test module.

It needs the machine's PostgreSQL and Redis. When ``CI`` is set, a missing service fails the tests:
CI machines have both, so a missing one is a broken machine, not a reason to pass. Elsewhere the
tests are skipped with a message that names the service and how to start it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from airflow_provider_novita.emulator import EmulatorConfig, EmulatorServer
from tests.cluster.harness import Cluster, celery_cluster, missing_services

if TYPE_CHECKING:
    from collections.abc import Iterator

# Distinctive, so that finding it anywhere (logs, database dump, Redis) can only mean it leaked.
API_KEY = "sk-cluster-secret-7373"
# One emulator per scenario, each behind its own Airflow connection, so that one scenario's counters
# and timing never mix with another's.
SCENARIOS = {
    "novita_happy": EmulatorConfig(api_key=API_KEY, job_duration=(6.0, 12.0), seed=1),
    "novita_rerun": EmulatorConfig(api_key=API_KEY, job_duration=(3.0, 6.0), seed=5),
    # Long enough to still be waiting when a triggerer is killed and its triggers move.
    "novita_failover": EmulatorConfig(api_key=API_KEY, job_duration=(60.0, 65.0), seed=2),
    # Never finishes within the deadline DAG's timeout.
    "novita_deadline": EmulatorConfig(api_key=API_KEY, job_duration=900.0, seed=3),
    # Slow submissions: the worker can be killed with half of a batch submitted.
    "novita_slow_submit": EmulatorConfig(api_key=API_KEY, job_duration=5.0, latency=4.0, seed=4),
    # Jobs done within a second, so that triggers fire soon after their deferral. One result is
    # produced and served to every copy of the sample: 40 upscales would only load the machine.
    "novita_fast": EmulatorConfig(api_key=API_KEY, job_duration=(0.2, 1.0), cache_results=True, seed=6),
}


@pytest.fixture(scope="module")
def emulators() -> Iterator[dict[str, EmulatorServer]]:
    servers: dict[str, EmulatorServer] = {}
    try:
        for conn_id, config in SCENARIOS.items():
            servers[conn_id] = EmulatorServer(config).start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    emulators: dict[str, EmulatorServer],
) -> Iterator[Cluster]:
    missing = missing_services()
    if missing:
        message = "the cluster tests need " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    home = tmp_path_factory.mktemp("cluster-home")
    failed_before = request.session.testsfailed
    connections = {conn_id: server.airflow_conn_json() for conn_id, server in emulators.items()}
    with celery_cluster(home, connections) as running:
        try:
            yield running
        finally:
            if request.session.testsfailed > failed_before:
                print(f"\nAirflow home: {home}\n{running.deployment.report()}")
