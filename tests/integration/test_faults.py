"""
Faults injected in the emulator end in the contract's outcomes, and nothing is submitted twice.

Each test runs a DAG with ``dag.test()``; the emulator's counters tell what really reached it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_novita.emulator import EmulatorServer
from tests.integration.conftest import task_states, xcom


@pytest.mark.parametrize(
    ("faults", "rejected_submissions"),
    [
        ({"rate_limit_first": 2, "retry_after": 0.2}, 2),  # 429 with Retry-After
        ({"rate_limit_first": 1}, 1),  # 429 without: exponential backoff
        ({"error_first": 2}, 2),  # transient 503
    ],
)
@pytest.mark.parametrize("dag_id", ["novita_test_upscale_deferrable", "novita_test_upscale_sync"])
def test_transient_faults_are_retried_without_double_submission(
    emulator: Callable[..., EmulatorServer],
    run_dag: Callable[..., Any],
    dag_id: str,
    faults: dict[str, Any],
    rejected_submissions: int,
) -> None:
    emu = emulator(**faults)
    sources = [f"{emu.base_url}/samples/landscape.png", f"{emu.base_url}/samples/square.webp"]
    dag_run = run_dag(dag_id, images=sources)
    assert dag_run.state == "success"
    assert len(xcom(dag_run, "upscale")) == 2
    stats = emu.stats()
    assert stats["submissions_by_image"] == dict.fromkeys(sources, 1)
    assert stats["requests"]["image-upscaler"] == 2 + rejected_submissions
    # Polls were rejected too (the first N of each endpoint) and retried.
    assert stats["requests"]["task-result"] > rejected_submissions


def test_a_failed_novita_task_fails_the_airflow_task_with_its_reason(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], capfd: pytest.CaptureFixture[str]
) -> None:
    emu = emulator(failure_rate=1.0)
    dag_run = run_dag("novita_test_upscale_no_retry", images=[f"{emu.base_url}/samples/landscape.png"])
    assert dag_run.state == "failed"
    assert task_states(dag_run)[("upscale", -1)] == "failed"
    (task_id,) = xcom(dag_run, "upscale", key="task_ids")
    output = capfd.readouterr().out
    assert "NovitaTaskFailedError" in output
    assert f"{task_id}: TASK_FAILED: injected failure" in output
    assert emu.stats()["accepted_submissions"] == 1


def test_a_wrong_api_key_fails_at_submission_without_leaking_it(
    emulator: Callable[..., EmulatorServer],
    run_dag: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    emu = emulator()
    monkeypatch.setenv(
        "AIRFLOW_CONN_NOVITA_DEFAULT",
        f'{{"conn_type": "novita", "host": "{emu.base_url}", "password": "sk-wrong-4f9a1c"}}',
    )
    dag_run = run_dag("novita_test_upscale_no_retry", images=[f"{emu.base_url}/samples/landscape.png"])
    assert dag_run.state == "failed"
    output = capfd.readouterr().out
    assert "HTTP 403 INVALID_API_KEY" in output
    assert "sk-wrong-4f9a1c" not in output
    assert emu.stats()["accepted_submissions"] == 0
