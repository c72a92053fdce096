"""What the fast-jobs scenario reads from Airflow's logs, on lines copied from real clusters (3.1.8-3.3.2)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.cluster.race import (
    Deferral,
    RaceReport,
    exits_in_scheduler_log,
    first_event_at,
    mismatches_in_scheduler_log,
)

if TYPE_CHECKING:
    from pathlib import Path

RUN = "manual__2026-12-07T22:13:00.173903+00:00"
SCHEDULER_LOG = f"""\
2026-12-07T22:13:10.690523Z [info     ] TaskInstance Finished: dag_id=novita_cluster_fast, task_id=upscale, \
run_id={RUN}, map_index=1, run_start_date=2026-12-07 22:13:08.970818+00:00, run_end_date=None, \
run_duration=None, state=deferred, executor=CeleryExecutor(parallelism=32), executor_state=success, \
try_number=1, max_tries=0, pool=default_pool, queue=default, priority_weight=1, operator=UpscaleOperator, \
queued_dttm=2026-12-07 22:13:04.534899+00:00, scheduled_dttm=2026-12-07 22:13:04.518763+00:00,\
queued_by_job_id=1, pid=9581 [airflow.jobs.scheduler_job_runner.SchedulerJobRunner] \
loc=scheduler_job_runner.py:1276
2026-12-07T22:13:15.870660Z [info     ] TaskInstance Finished: dag_id=novita_cluster_fast, task_id=upscale, \
run_id={RUN}, map_index=2, ti_id=01a2529f-660d-7d6b-a92d-625ade0eb72a, run_start_date=2026-12-07 \
22:13:10.158790+00:00, run_end_date=None, run_duration=None, state=scheduled, \
executor=CeleryExecutor(parallelism=32), executor_state=success, try_number=1, max_tries=0, pool=default_pool
2026-12-07T22:13:15.874265Z [error    ] Executor CeleryExecutor(parallelism=32) reported that the task \
instance <TaskInstance: novita_cluster_fast.upscale {RUN} map_index=2 [scheduled]> finished with state \
success, but the task instance's state attribute is scheduled. Learn more: https://airflow.apache.org/docs/apache-airflow/stable/\
troubleshooting.html#task-state-changed-externally [airflow.task] loc=taskinstance.py:1620
2026-12-07T22:13:20.000000Z [info     ] TaskInstance Finished: dag_id=novita_cluster_fast, task_id=upscale, \
run_id={RUN}, map_index=1, run_start_date=2026-12-07 22:13:08.970818+00:00, run_end_date=2026-12-07 \
22:13:19.000000+00:00, run_duration=10.0, state=success, executor=CeleryExecutor(parallelism=32), \
executor_state=success, try_number=1, max_tries=0
2026-12-07T22:13:21.000000Z [info     ] TaskInstance Finished: dag_id=novita_cluster, task_id=upscale, \
run_id={RUN}, map_index=3, run_start_date=None, run_end_date=None, run_duration=None, state=queued, \
executor=CeleryExecutor(parallelism=32), executor_state=success, try_number=1, max_tries=3
"""


def test_the_first_executor_event_of_each_try_with_the_state_then() -> None:
    exits = exits_in_scheduler_log(SCHEDULER_LOG, "novita_cluster_fast", RUN, "upscale")
    assert exits == {1: (1796681590.690523, "deferred"), 2: (1796681595.87066, "scheduled")}


def test_state_mismatches_name_the_map_index_and_the_state() -> None:
    assert mismatches_in_scheduler_log(SCHEDULER_LOG, "novita_cluster_fast", RUN, "upscale") == {
        2: "scheduled"
    }
    assert mismatches_in_scheduler_log(SCHEDULER_LOG, "novita_cluster", RUN, "upscale") == {}


def test_the_first_matching_event_of_task_and_trigger_logs(tmp_path: Path) -> None:
    task_log = tmp_path / "attempt=1.log"
    lines = [
        {"timestamp": "2026-12-07T22:13:10.544816Z", "event": "Submitted an image"},
        {"timestamp": "2026-12-07T22:13:10.580615Z", "event": "Pausing task as DEFERRED. ", "dag_id": "d"},
    ]
    task_log.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    assert first_event_at([task_log], "Pausing task as DEFERRED") == 1796681590.580615
    assert first_event_at([task_log], "Trigger fired event") is None


def test_the_summary_counts_each_failed_task_instance_once() -> None:
    report = RaceReport(
        task_instances=3,
        deferrals=[
            Deferral(0, 100.0, 102.0, 100.5, "deferred"),
            Deferral(1, 100.0, 101.5, 105.5, "scheduled"),
            Deferral(2, 100.0, 103.0, 130.0, "success"),
        ],
        mismatches_logged={1: "scheduled"},
        mismatch_events={1: "scheduled"},
        failed_tries=[(1, 1)],
        durations=[10.0, 5.0, 30.0],
    )
    assert report.mismatched == {1}
    lines = report.summary().splitlines()
    assert lines[0].startswith("state mismatch: 1 of 3 task instances failed (scheduler log: 1 (scheduled);")
    assert lines[1] == "deferral -> trigger fired: min 1.50s, median 2.00s, max 3.00s (3 task instances)"
    # The final exit of a task whose deferral exit was never reported is not a deferral's exit.
    assert lines[2].startswith(
        "deferral -> worker's exit seen by the scheduler: min 0.50s, median 3.00s, max 5.50s (2"
    )
    assert lines[2].endswith("{'deferred': 1, 'scheduled': 1, 'success': 1}")
