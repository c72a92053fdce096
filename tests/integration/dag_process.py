"""
Runs DAGs of tests/dags with ``dag.test()`` in a process of their own, one run per JSON conf given.

For what a process decides once, when Airflow first loads its plugins: the OpenLineage provider's
plugin registers its listener only if OpenLineage is enabled at that moment, so a test that needs it
enabled cannot share the pytest process with tests that ran (and loaded the plugins) without it. The
caller passes the whole configuration in the environment (AIRFLOW_HOME, connections, OpenLineage), so
this module must not import tests.conftest, which would make a new AIRFLOW_HOME.

Usage: ``python -m tests.integration.dag_process DAG_ID CONF_JSON [CONF_JSON ...]``; prints one JSON
line per run: ``{"run_id": ..., "state": ...}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.compat import DagBag

TEST_DAGS = Path(__file__).resolve().parents[1] / "dags"


def main(dag_id: str, *confs: str) -> None:
    bag = DagBag(dag_folder=str(TEST_DAGS))
    if bag.import_errors:
        raise SystemExit(f"import errors in {TEST_DAGS}: {bag.import_errors}")
    dag = bag.dags[dag_id]
    for conf in confs:
        dag_run = dag.test(run_conf=json.loads(conf))
        print(json.dumps({"run_id": dag_run.run_id, "state": str(dag_run.state)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
