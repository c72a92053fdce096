"""
Test-wide set-up: a throwaway AIRFLOW_HOME before Airflow is imported, and the Novita connection.

Unit tests fake Novita with ``httpx.MockTransport`` (see ``tests/fakes.py``); integration tests use
the real emulator over loopback.
"""

from __future__ import annotations

import json
import os
import tempfile

_home = tempfile.mkdtemp(prefix="novita-tests-airflow-home-")
os.environ["AIRFLOW_HOME"] = _home
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_home}/airflow.db")
# The OpenLineage provider (a test dependency) is off unless a test turns it on for a process of its own
# (tests/integration/test_lineage.py): set, not defaulted, so that an OPENLINEAGE_URL or transport in
# the developer's environment never gets events from test runs, nor slows every task with them.
os.environ["AIRFLOW__OPENLINEAGE__DISABLED"] = "True"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_DAGS = os.path.join(_ROOT, "example_dags")
TEST_DAGS = os.path.join(_ROOT, "tests", "dags")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = EXAMPLE_DAGS
# dag.test() runs only DAGs of a configured bundle: the examples, and DAGs written for the tests.
os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
    [
        {
            "name": name,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": path},
        }
        for name, path in (("examples", EXAMPLE_DAGS), ("tests", TEST_DAGS))
    ]
)

import pytest  # noqa: E402

# The shipped emulator fixtures (novita_emulator, novita_emulator_factory), as a user would enable them,
# and a real S3 API (moto_endpoint, s3).
pytest_plugins = ["airflow_provider_novita.emulator.pytest_plugin", "tests.s3"]

API_KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def novita_conn(monkeypatch: pytest.MonkeyPatch) -> str:
    """``novita_default`` defined only by environment, as users do; the host is never contacted."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_NOVITA_DEFAULT",
        f'{{"conn_type": "novita", "host": "https://novita.test", "password": "{API_KEY}"}}',
    )
    return "novita_default"
