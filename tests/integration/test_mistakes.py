"""
A mistake no retry can fix fails its task in one try, though the DAG gives it two retries, and says
what to fix and where; a failure that may pass keeps Airflow's retries.

Each case runs ``novita_test_upscale_deferrable`` (``retries=2``, no retry delay) with ``dag.test()``,
which runs Airflow's retries in-process; the metadata database tells how many tries ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.forward_proxy import ForwardProxy

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_novita.emulator import EmulatorServer
    from tests.s3 import S3Bucket

DAG_ID = "novita_test_upscale_deferrable"


def tries(dag_run: Any) -> int:
    """How many tries the run's ``upscale`` task instance had."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).one()
        return int(ti.try_number)


def failed_once(dag_run: Any, output: str, message: str, emu: EmulatorServer) -> None:
    """The run failed in exactly one try, with ``message`` in its log, and nothing was billed."""
    assert dag_run.state == "failed"
    assert tries(dag_run) == 1, "a mistake no retry can fix was retried"
    assert "AirflowFailException" in output
    assert message in output
    assert emu.stats()["accepted_submissions"] == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"resolution": "3k"}, "resolution must be one of 2k, 4k, 8k; got '3k'"),
        ({"images": "s3://aws_default@bucket/"}, "it names no object (no key after the bucket), or a folder"),
        (
            {"output_path": "relative/out"},
            "output_path must be an absolute path or a URI such as file:///data/out",
        ),
        (
            {"output_path": "nosuchfs://bucket/out/"},
            "output_path 'nosuchfs://bucket/out/' cannot be written: no filesystem for it could be made",
        ),
    ],
)
def test_an_argument_rendered_invalid_fails_in_one_try_naming_it(
    emulator: Callable[..., EmulatorServer],
    run_dag: Callable[..., Any],
    capfd: pytest.CaptureFixture[str],
    params: dict[str, Any],
    message: str,
) -> None:
    emu = emulator()
    conf = {"images": [f"{emu.base_url}/samples/landscape.png"], **params}
    failed_once(run_dag(DAG_ID, **conf), capfd.readouterr().out, message, emu)


def test_a_missing_source_object_fails_in_one_try_naming_it(
    emulator: Callable[..., EmulatorServer],
    run_dag: Callable[..., Any],
    capfd: pytest.CaptureFixture[str],
    s3: S3Bucket,
) -> None:
    emu = emulator()
    missing = s3.uri("in/missing.png")
    failed_once(
        run_dag(DAG_ID, images=[missing]),
        capfd.readouterr().out,
        f"image 's3://aws_default@{s3.name}/in/missing.png' cannot be submitted: its object does not exist",
        emu,
    )


def run_with_connection(
    emu: EmulatorServer,
    run_dag: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    password: str,
    **extra: Any,
) -> tuple[Any, str]:
    """Runs the DAG on one image with ``novita_default`` set as given; returns the run and its output."""
    conn = {"conn_type": "novita", "host": emu.base_url, "password": password, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_NOVITA_DEFAULT", json.dumps(conn))
    dag_run = run_dag(DAG_ID, images=[f"{emu.base_url}/samples/landscape.png"])
    return dag_run, capfd.readouterr().out


def test_a_refused_api_key_fails_in_one_try_naming_the_connection(
    emulator: Callable[..., EmulatorServer],
    run_dag: Callable[..., Any],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = emulator()
    dag_run, output = run_with_connection(emu, run_dag, monkeypatch, capfd, "sk-wrong-4f9a1c")
    expected = (
        "HTTP 403 INVALID_API_KEY: invalid api-key. Check the API key (the password) of Airflow "
        "connection 'novita_default'"
    )
    failed_once(dag_run, output, expected, emu)
    assert "sk-wrong-4f9a1c" not in output


def test_a_proxy_refusing_its_credentials_fails_in_one_try_naming_the_proxy(
    emulator: Callable[..., EmulatorServer],
    run_dag: Callable[..., Any],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    emu = emulator()
    with ForwardProxy(tmp_path, hosts={}, auth="corp-user:right") as proxy:
        wrong = f"http://corp-user:wrong-secret@127.0.0.1:{proxy.port}"
        dag_run, output = run_with_connection(emu, run_dag, monkeypatch, capfd, emu.api_key, proxy=wrong)
    expected = (
        f"Proxy error: the proxy http://127.0.0.1:{proxy.port} (from extra 'proxy' of Airflow connection "
        "'novita_default') answered HTTP 407 Proxy Authentication Required; Novita was not reached"
    )
    failed_once(dag_run, output, expected, emu)
    assert "wrong-secret" not in output


def test_a_failure_that_may_pass_keeps_every_retry(
    emulator: Callable[..., EmulatorServer],
    run_dag: Callable[..., Any],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control: a connection missing now may be created before the next try, so all three run."""
    emu = emulator()
    monkeypatch.delenv("AIRFLOW_CONN_NOVITA_DEFAULT")
    dag_run = run_dag(DAG_ID, images=[f"{emu.base_url}/samples/landscape.png"])
    assert dag_run.state == "failed"
    assert tries(dag_run) == 3
    assert "novita_default" in capfd.readouterr().out
