"""
What the OpenLineage provider reports for an upscale: DAGs run with ``dag.test()`` against the emulator,
with the provider enabled and writing its events to a file, and the COMPLETE events read back.

The runs happen in a process of their own (see tests/integration/dag_process.py): the provider decides
whether to listen when Airflow first loads its plugins, and this process loaded them, with OpenLineage
off (tests/conftest.py), as soon as any other test ran a DAG.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import httpx

from tests.integration.conftest import xcom
from tests.s3 import S3Bucket

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_novita.emulator import EmulatorServer

ROOT = Path(__file__).resolve().parents[2]
SECRET = "X-Amz-Signature=SECRET0123456789"


def run_with_openlineage(
    tmp_path: Path, dag_id: str, *confs: dict[str, Any], task_id: str = "upscale"
) -> list[dict[str, Any]]:
    """
    Run ``dag_id`` once per conf, in order; return, per run, the COMPLETE event of its task ``task_id``
    and the records that task returned.
    """
    events = tmp_path / "openlineage.jsonl"
    env = os.environ | {
        "AIRFLOW__OPENLINEAGE__DISABLED": "False",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        # Emit from a thread the task waits for rather than from a fork it does not: every event is in
        # the file when the run returns.
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
    }
    process = subprocess.run(
        [sys.executable, "-m", "tests.integration.dag_process", dag_id, *map(json.dumps, confs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    runs = [json.loads(line) for line in process.stdout.splitlines() if line.startswith('{"run_id"')]
    assert [run["state"] for run in runs] == ["success"] * len(confs), process.stdout[-5000:]
    completions = [
        event
        for event in map(json.loads, events.read_text().splitlines())
        if event["eventType"] == "COMPLETE" and event["job"]["name"] == f"{dag_id}.{task_id}"
    ]
    assert len(completions) == len(runs)
    return [
        {"event": event, "records": xcom(SimpleNamespace(dag_id=dag_id, **run), task_id)}
        for event, run in zip(completions, runs, strict=True)
    ]


def datasets(event: dict[str, Any], side: str) -> list[tuple[str, str]]:
    return [(dataset["namespace"], dataset["name"]) for dataset in event[side]]


def test_inputs_are_the_sources_and_outputs_exactly_the_persisted_files_also_when_reused(
    emulator: Callable[..., EmulatorServer], airflow_db: None, tmp_path: Path
) -> None:
    emu = emulator()
    namespace = f"http://127.0.0.1:{emu.port}"
    # Pre-signed and with user info: neither may reach an event.
    sources = [
        f"http://viewer:hunter2@127.0.0.1:{emu.port}/samples/landscape.png?{SECRET}#part",
        f"{emu.base_url}/samples/portrait.jpg",
    ]
    out = tmp_path / "out"
    conf = {"images": sources, "output_path": f"file://{out}"}

    first, again = run_with_openlineage(tmp_path, "novita_test_upscale_sync", conf, conf)

    # Everything in the folder: a temporary .partial file left there would show up here too.
    files = sorted(str(path) for path in out.iterdir())
    assert [record["reused"] for record in first["records"]] == [False, False]
    assert [record["reused"] for record in again["records"]] == [True, True]
    for run in (first, again):
        assert datasets(run["event"], "inputs") == [
            (namespace, "/samples/landscape.png"),
            (namespace, "/samples/portrait.jpg"),
        ]
        outputs = datasets(run["event"], "outputs")
        assert outputs == [("file", record["path"].removeprefix("file://")) for record in run["records"]]
        assert sorted(name for _, name in outputs) == files
        reported = json.dumps(run["event"]["inputs"] + run["event"]["outputs"])
        assert "SECRET" not in reported
        assert "hunter2" not in reported


def test_a_deferred_batch_reports_its_files_and_one_without_output_path_only_its_sources(
    emulator: Callable[..., EmulatorServer], airflow_db: None, tmp_path: Path
) -> None:
    emu = emulator()
    sources = [f"{emu.base_url}/samples/square.webp"]
    out = tmp_path / "out"

    persisted, unsaved = run_with_openlineage(
        tmp_path,
        "novita_test_upscale_deferrable",
        {"images": sources, "output_path": str(out)},
        {"images": sources, "output_path": None},
    )

    expected_inputs = [(f"http://127.0.0.1:{emu.port}", "/samples/square.webp")]
    assert datasets(persisted["event"], "inputs") == expected_inputs
    assert datasets(persisted["event"], "outputs") == [("file", str(path)) for path in out.iterdir()]
    assert datasets(unsaved["event"], "inputs") == expected_inputs
    assert datasets(unsaved["event"], "outputs") == []


def test_the_sensor_reports_the_sources_it_was_given_and_the_objects_it_saved(
    emulator: Callable[..., EmulatorServer], airflow_db: None, tmp_path: Path, s3: S3Bucket
) -> None:
    emu = emulator()
    sources = [s3.put("in/a.png", httpx.get(f"{emu.base_url}/samples/landscape.png").content, "image/png")]

    (sensed,) = run_with_openlineage(
        tmp_path,
        "novita_test_submit_then_sense",
        {"images": sources, "output_path": s3.uri("out/")},
        task_id="wait",
    )

    # The connection id names no data: it is not part of a dataset's name.
    assert datasets(sensed["event"], "inputs") == [(f"s3://{s3.name}", "in/a.png")]
    (record,) = sensed["records"]
    assert record["image"] == sources[0]
    # Everything in the bucket's output prefix: a .partial object left there would show up here too.
    assert datasets(sensed["event"], "outputs") == [(f"s3://{s3.name}", key) for key in s3.keys("out/")]
    assert s3.uri(s3.keys("out/")[0]) == record["path"]
