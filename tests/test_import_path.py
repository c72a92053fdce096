"""What a DAG file pays to import the operator: nothing it only needs when a task runs or defers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Heavy, and never needed to parse a DAG: the emulator and its imaging, the trigger machinery (only
# needed when deferring), a server stack, tenacity (no longer used at all), and OpenLineage (optional:
# only its provider, once installed, asks the operator for lineage).
NOT_AT_PARSE_TIME = [
    "PIL",
    "airflow_provider_novita.emulator",
    "airflow.triggers.base",
    "uvicorn",
    "tenacity",
    "openlineage",
    "airflow.providers.openlineage",
]


@pytest.mark.parametrize(
    "module", ["airflow_provider_novita.operators.upscale", "airflow_provider_novita.sensors.task_result"]
)
def test_importing_for_a_dag_file_loads_nothing_heavy(module: str) -> None:
    code = (
        "import sys, json; import airflow.sdk; before = set(sys.modules); "
        f"import {module}; print('LOADED', json.dumps(sorted(set(sys.modules) - before)))"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    # Airflow may log to stdout while importing; the list is on its own marked line.
    (line,) = [line for line in output.splitlines() if line.startswith("LOADED ")]
    loaded = json.loads(line.removeprefix("LOADED "))
    assert module in loaded
    assert [
        name for name in loaded if name.split(".")[0] in NOT_AT_PARSE_TIME or name in NOT_AT_PARSE_TIME
    ] == []
