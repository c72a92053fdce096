"""
What a finished run leaves in Airflow's metadata database for retries that will never come, run with
``dag.test()`` on a real metadata database: nothing, once the files are saved.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy

from tests.integration.conftest import sample_sources

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_novita.emulator import EmulatorServer

DAG_ID = "novita_test_upscale_deferrable"
# The operator's default timeout (an hour) and the 4 hours the memory is kept beyond it.
RETENTION = 5 * 3600


def state_rows(dag_run: Any) -> list[dict[str, Any]] | None:
    """The run's task state store rows, or None on an Airflow without one (before 3.3)."""
    from airflow.utils.session import create_session

    with create_session() as session:
        if not sqlalchemy.inspect(session.get_bind()).has_table("task_state_store"):
            return None
        rows = session.execute(
            sqlalchemy.text("SELECT key, value, expires_at FROM task_state_store WHERE run_id = :run"),
            {"run": dag_run.run_id},
        )
        return [dict(row._mapping) for row in rows]


def test_a_run_that_saved_its_files_leaves_no_state_and_no_ledger(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    run = run_dag(DAG_ID, images=sample_sources(emu), output_path=str(tmp_path))

    assert run.state == "success"
    assert state_rows(run) in ([], None)
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".png"] * 3, "files only, no ledger"


def test_without_output_path_one_chunk_stays_until_hours_after_the_wait_could_end(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any]
) -> None:
    emu = emulator()
    before = time.time()
    run = run_dag(DAG_ID, images=sample_sources(emu))

    assert run.state == "success"
    rows = state_rows(run)
    if rows is None:  # before 3.3 there is no store, and without output_path no ledger
        return
    (row,) = rows
    assert row["key"] == "novita_submitted_tasks/chunk-0000"
    assert len(row["value"]) < 3 * 80, "three small entries"
    expires_at = row["expires_at"]
    expires = (expires_at if not isinstance(expires_at, str) else _parse(expires_at)).timestamp()
    assert before + RETENTION - 60 < expires < time.time() + RETENTION + 60


def _parse(text: str) -> Any:
    import pendulum

    return pendulum.parse(text)
