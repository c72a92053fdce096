"""
Fixtures for running the example DAGs with ``dag.test()`` against the emulator over loopback.

``dag.test()`` runs every task in this process with a real Airflow metadata database (SQLite in the
test AIRFLOW_HOME), rebuilds deferred triggers from their serialized form and runs them inline.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_novita.emulator.pytest_plugin import EmulatorFactory, novita_emulator_factory

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_novita.emulator import EmulatorServer

__all__ = ["novita_emulator_factory"]


@pytest.fixture(autouse=True)
def no_event_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    ``dag.test()`` has no scheduler, so no deferral race for the trigger to hold its event against
    (``TaskResultTrigger.earliest_event_time``): these runs resume as soon as the jobs finish, instead
    of 10 s after each deferral. The hold is specified in tests/triggers and kept where the race is
    real: tests/e2e and tests/cluster run real Airflow processes with it.
    """
    from airflow_provider_novita.triggers import task_result

    monkeypatch.setattr(task_result, "EVENT_HOLD", 0.0)


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated metadata database in the tests' AIRFLOW_HOME (set up by tests/conftest.py)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


@pytest.fixture
def emulator(
    novita_emulator_factory: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., EmulatorServer]:
    """Starts an emulator (config overrides as keywords) and points ``novita_default`` at it."""

    def start(**config: Any) -> EmulatorServer:
        config.setdefault("job_duration", 1.0)
        server = novita_emulator_factory(**config)
        monkeypatch.setenv("AIRFLOW_CONN_NOVITA_DEFAULT", server.airflow_conn_json())
        return server

    return start


@pytest.fixture
def run_dag(airflow_db: None) -> Callable[..., Any]:
    """Runs an example or test DAG (by id) with ``dag.test(run_conf=...)`` and returns the finished DagRun."""
    from tests.compat import DagBag
    from tests.conftest import EXAMPLE_DAGS, TEST_DAGS

    dags = {}
    for folder in (EXAMPLE_DAGS, TEST_DAGS):
        bag = DagBag(dag_folder=folder)
        assert bag.import_errors == {}
        dags.update(bag.dags)

    def run(dag_id: str, **conf: Any) -> Any:
        return dags[dag_id].test(run_conf=conf)

    return run


def sample_sources(emu: EmulatorServer) -> list[str]:
    """Three of the emulator's sample images, one of each format."""
    return [f"{emu.base_url}/samples/{name}" for name in ("landscape.png", "portrait.jpg", "square.webp")]


def xcom(dag_run: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    """A value the run pushed, read from Airflow's metadata database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(
                dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key=key, map_index=map_index
            )
            .one()
        )
        return XComModel.deserialize_value(row)


def task_states(dag_run: Any) -> dict[tuple[str, int], str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in rows}
