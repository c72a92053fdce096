"""
The provider's promises, kept where teams run it: CeleryExecutor, PostgreSQL, Redis, two triggerers.

The scenarios share one deployment (see harness.py) and run in this order; the last one searches
everything the others left behind for the API key. Novita is the emulator, one per scenario
(conftest.py), and ``GET /_emulator/stats`` counts what it billed. The figures each scenario measures
(takeover delay, when a deadline fired, the tries Airflow failed with a "state mismatch" and the
latency of fast jobs) are printed, not asserted against a clock: only the bounds that define the
behaviour are.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import airflow
import pytest
from PIL import Image

from tests.cluster.conftest import API_KEY
from tests.cluster.dags.novita_cluster import DEADLINE_SECONDS
from tests.cluster.harness import (
    DAG_ID,
    DEADLINE_DAG_ID,
    FAST_DAG_ID,
    TASK_ID,
    TRIGGERERS,
    WORKER,
    Cluster,
    places_holding,
)
from tests.cluster.race import race_report
from tests.deployment import wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_novita.emulator import EmulatorServer

pytestmark = pytest.mark.timeout(600)

RUN_TIMEOUT = 300.0
# From the trigger's timeout event to the task instance's end on a worker: scheduling and a resume.
RESUME_GRACE = 15.0


def _images(emulator: EmulatorServer, count: int) -> list[str]:
    """Distinct source URLs (the emulator ignores the query), so billing per image can be counted."""
    return [f"{emulator.base_url}/samples/landscape.png?copy={i:03d}" for i in range(count)]


def _conf(conn_id: str, images: list[str], output: Path, batch_size: int = 1) -> dict[str, Any]:
    return {
        "conn_id": conn_id,
        "images": images,
        "batch_size": batch_size,
        "output_path": f"file://{output}/",
    }


def _assert_files(output: Path, count: int) -> None:
    saved = sorted(output.glob("*.jpg"))
    assert len(saved) == count, sorted(output.iterdir())
    for path in saved:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: a truncated file fails here
            assert image.size == (2048, 1152), (path, image.size)


def _held(cluster: Cluster, dag_id: str, run_id: str, count: int) -> list[dict[str, Any]]:
    """Waits until ``count`` task instances are deferred with their triggers assigned; returns them."""
    rows: list[dict[str, Any]] = []

    def all_held() -> bool:
        nonlocal rows
        cluster.deployment.assert_running()
        rows = [
            row
            for row in cluster.task_instances(dag_id, run_id)
            if row["state"] == "deferred" and row["triggerer_id"] is not None
        ]
        return len(rows) == count

    assert wait_for(all_held, RUN_TIMEOUT, interval=0.5), f"only {len(rows)} of {count} held: {rows}"
    return rows


def _kill_busiest_triggerer(cluster: Cluster, held: list[dict[str, Any]]) -> tuple[str, float]:
    """SIGKILL the triggerer holding most of ``held``; returns the survivor's label and how long the
    survivor took to hold every one of them."""
    by_label = {
        label: [row for row in held if row["triggerer_id"] == job]
        for label, job in cluster.triggerer_jobs.items()
    }
    victim = max(TRIGGERERS, key=lambda label: len(by_label[label]))
    (survivor,) = [label for label in TRIGGERERS if label != victim]
    moved = {row["trigger_id"] for row in by_label[victim]}
    assert moved, by_label
    killed_at = time.monotonic()
    cluster.deployment.kill(victim)

    def taken_over() -> bool:
        rows = cluster.deployment.query('SELECT id, triggerer_id FROM "trigger"')
        holders = {row["id"]: row["triggerer_id"] for row in rows if row["id"] in moved}
        return set(holders) == moved and set(holders.values()) == {cluster.triggerer_jobs[survivor]}

    assert wait_for(taken_over, 120, interval=0.5), f"{survivor} never took over the triggers {moved}"
    takeover = time.monotonic() - killed_at
    print(
        f"\n{victim} held {len(moved)} of {len(held)} triggers;",
        f"{survivor} held them {takeover:.1f}s after the kill",
    )
    cluster.start_triggerer(victim)  # as a deployment's supervisor would restart it
    return survivor, takeover


def _kwargs(cluster: Cluster, row: dict[str, Any]) -> dict[str, Any]:
    return cluster.deployment.trigger_kwargs(row["trigger_kwargs"])


def test_a_mapped_upscale_runs_on_the_triggerers_and_bills_each_image_once(
    cluster: Cluster, emulators: dict[str, EmulatorServer], tmp_path: Path
) -> None:
    emulator = emulators["novita_happy"]
    images = _images(emulator, 20)
    run_id = cluster.trigger_run(DAG_ID, _conf("novita_happy", images, tmp_path))
    holders: set[int] = set()

    def watch(rows: list[dict[str, Any]]) -> None:
        holders.update(row["triggerer_id"] for row in rows if row["triggerer_id"] is not None)

    assert cluster.wait_run(DAG_ID, run_id, RUN_TIMEOUT, watch) == "success"

    rows = cluster.task_instances(DAG_ID, run_id)
    assert [row["state"] for row in rows] == ["success"] * 20
    # Seen in the trigger table while they waited, and in the trigger logs Airflow names after the job.
    # Which triggerer holds a trigger is not Airflow's promise: the first to look takes every
    # unassigned trigger up to its capacity, so one triggerer may hold them all (a CI run saw that).
    # That the other takes them over when one dies is test_a_killed_triggerers_triggers_move_....
    ours = set(cluster.triggerer_jobs.values())
    logs = (cluster.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}").rglob("*.log.trigger.*.log")
    logged = {int(path.name.rsplit(".", 2)[-2]) for path in logs}
    assert holders, "no trigger was ever seen held by a triggerer"
    assert holders <= logged <= ours, f"held by jobs {holders}, logged by {logged}, the triggerers are {ours}"
    print(f"\ntriggers ran on triggerer jobs {sorted(logged)} of {sorted(ours)}")
    stats = emulator.stats()
    assert stats["submissions_by_image"] == dict.fromkeys(images, 1), stats
    _assert_files(tmp_path, 20)


def test_a_cleared_run_pays_only_for_files_that_are_missing(
    cluster: Cluster, emulators: dict[str, EmulatorServer], tmp_path: Path
) -> None:
    emulator = emulators["novita_rerun"]
    images = _images(emulator, 4)
    run_id = cluster.trigger_run(DAG_ID, _conf("novita_rerun", images, tmp_path))
    assert cluster.wait_run(DAG_ID, run_id, RUN_TIMEOUT) == "success"
    assert emulator.stats()["submissions_by_image"] == dict.fromkeys(images, 1)
    # Airflow before 3.2.2 (and 3.3 in rarer variants) may fail a deferred try whose trigger fired
    # within seconds and retry it (apache/airflow#66374, #67287, #72716): the retry reattaches, so
    # it bills nothing, but the try numbers are Airflow's to choose. Counted from here.
    tries = [row["try_number"] for row in cluster.task_instances(DAG_ID, run_id)]

    # The whole run cleared, as after a fix downstream: every file is there, nothing is submitted.
    cleared = cluster.client.post(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/clear", json={"dry_run": False})
    assert cleared.status_code == 200, cleared.text
    assert cluster.wait_run(DAG_ID, run_id, RUN_TIMEOUT) == "success"
    assert [row["try_number"] for row in cluster.task_instances(DAG_ID, run_id)] == [n + 1 for n in tries]
    assert emulator.stats()["submissions_by_image"] == dict.fromkeys(images, 1)

    # One file deleted, its task instance cleared: only that image is submitted again. The files
    # were the memory once they were saved: the successful try left nothing in the task state store
    # (3.3) or the ledger (before) to reattach with, so its one image is paid for again.
    (lost,) = [path for path in tmp_path.glob("*.jpg") if _map_index_of(cluster, run_id, path) == 2]
    lost.unlink()
    body = {"dry_run": False, "dag_run_id": run_id, "task_ids": [["upscale", 2]], "only_failed": False}
    cleared = cluster.client.post(f"/api/v2/dags/{DAG_ID}/clearTaskInstances", json=body)
    assert cleared.status_code == 200, cleared.text
    assert cluster.wait_run(DAG_ID, run_id, RUN_TIMEOUT) == "success"
    assert emulator.stats()["submissions_by_image"] == {**dict.fromkeys(images, 1), images[2]: 2}
    _assert_files(tmp_path, 4)


def _map_index_of(cluster: Cluster, run_id: str, path: Path) -> int:
    """The map index whose record names ``path`` (read through the REST API, as a user would)."""
    for map_index in range(4):
        (record,) = cluster.records(DAG_ID, run_id, map_index)
        if record["path"] == f"file://{path}":
            return map_index
    raise AssertionError(f"no record names {path}")


def test_a_killed_triggerers_triggers_move_and_keep_their_deadline(
    cluster: Cluster, emulators: dict[str, EmulatorServer], tmp_path: Path
) -> None:
    # Waiting jobs survive the kill: all succeed, each billed once.
    emulator = emulators["novita_failover"]
    images = _images(emulator, 8)
    run_id = cluster.trigger_run(DAG_ID, _conf("novita_failover", images, tmp_path / "failover"))
    held = _held(cluster, DAG_ID, run_id, 8)
    kwargs_before = {row["trigger_id"]: _kwargs(cluster, row) for row in held}
    _kill_busiest_triggerer(cluster, held)
    kwargs_after = {
        row["trigger_id"]: _kwargs(cluster, row)
        for row in cluster.task_instances(DAG_ID, run_id)
        if row["trigger_id"] in kwargs_before
    }
    assert kwargs_after == kwargs_before  # the end_time of each wait included
    assert cluster.wait_run(DAG_ID, run_id, RUN_TIMEOUT) == "success"
    assert emulator.stats()["submissions_by_image"] == dict.fromkeys(images, 1)
    _assert_files(tmp_path / "failover", 8)

    # Jobs that outlast the timeout: the run fails at the deadline set when the task deferred, not at
    # one restarted by the triggerer that took over.
    emulator = emulators["novita_deadline"]
    run_id = cluster.trigger_run(DEADLINE_DAG_ID, _conf("novita_deadline", _images(emulator, 4), tmp_path))
    held = _held(cluster, DEADLINE_DAG_ID, run_id, 4)
    deadlines = {row["map_index"]: _kwargs(cluster, row)["end_time"] for row in held}
    end_times = list(deadlines.values())
    # Killed well after the deferrals, so that a restarted deadline would land far after the original.
    time.sleep(max(0.0, max(end_times) - DEADLINE_SECONDS + 20 - time.time()))
    _, takeover = _kill_busiest_triggerer(cluster, held)
    taken_over_at = time.time()
    assert cluster.wait_run(DEADLINE_DAG_ID, run_id, RUN_TIMEOUT) == "failed"

    rows = cluster.task_instances(DEADLINE_DAG_ID, run_id)
    assert [row["state"] for row in rows] == ["failed"] * 4
    for row in rows:
        end_time = deadlines[row["map_index"]]
        ended = row["end_date"].timestamp()
        print(f"map index {row['map_index']}: ended {ended - end_time:+.1f}s from its deadline")
        assert end_time <= ended < end_time + RESUME_GRACE, (ended, end_time)
    # A deadline counted anew from the takeover would have fired after this; the test can tell them apart.
    assert taken_over_at + DEADLINE_SECONDS > max(end_times) + RESUME_GRACE, takeover


def test_a_worker_killed_mid_batch_is_retried_and_reattaches(
    cluster: Cluster, emulators: dict[str, EmulatorServer], tmp_path: Path
) -> None:
    emulator = emulators["novita_slow_submit"]
    images = _images(emulator, 16)  # two waves of 8 concurrent submissions, 4 s each
    run_id = cluster.trigger_run(DAG_ID, _conf("novita_slow_submit", images, tmp_path, batch_size=16))

    assert wait_for(lambda: emulator.stats()["accepted_submissions"] >= 8, RUN_TIMEOUT, interval=0.2)
    time.sleep(2.0)  # the first wave's task ids are recorded; the second wave is in flight
    first_wave = emulator.stats()["accepted_submissions"]
    assert first_wave < 16, "the batch finished submitting before the kill: nothing was tested"
    cluster.deployment.kill(WORKER)
    time.sleep(3.0)
    cluster.start_worker()

    assert cluster.wait_run(DAG_ID, run_id, RUN_TIMEOUT) == "success"
    (row,) = cluster.task_instances(DAG_ID, run_id)
    assert row["try_number"] >= 2, "the killed try was not retried"
    # The retry found what the killed try submitted: in the task state store on Airflow 3.3+, in the
    # ledger under output_path before (docs/compatibility.md).
    assert emulator.stats()["submissions_by_image"] == dict.fromkeys(images, 1)
    _assert_files(tmp_path, 16)
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []


def test_fast_jobs_without_retries_all_succeed(
    cluster: Cluster, emulators: dict[str, EmulatorServer], tmp_path: Path
) -> None:
    """
    40 jobs of 0.2-1 s, ``retries=0``: triggers that fire within seconds of their deferral race the
    scheduler's processing of the worker's exit (apache/airflow#66374, #67287, #72716), and a try it
    fails is a failed task. Every task instance must succeed; how many Airflow failed with "state
    mismatch", and how long the deferrals took, are printed.
    """
    emulator = emulators["novita_fast"]
    images = _images(emulator, 40)
    started = time.monotonic()
    run_id = cluster.trigger_run(FAST_DAG_ID, _conf("novita_fast", images, tmp_path))
    state = cluster.wait_run(FAST_DAG_ID, run_id, RUN_TIMEOUT)
    report = race_report(cluster, FAST_DAG_ID, run_id, TASK_ID)
    took = time.monotonic() - started
    print(f"\nAirflow {airflow.__version__}: run {state} in {took:.1f}s\n{report.summary()}")

    assert report.mismatched == set(), report.summary()
    assert [row["state"] for row in cluster.task_instances(FAST_DAG_ID, run_id)] == ["success"] * 40
    assert emulator.stats()["submissions_by_image"] == dict.fromkeys(images, 1)
    _assert_files(tmp_path, 40)


def test_the_api_key_is_nowhere_after_the_scenarios(cluster: Cluster, tmp_path: Path) -> None:
    assert list(cluster.home.glob("logs/dag_id=*/**/*.log.trigger.*.log")), "no trigger logs to search"
    assert list(cluster.redis_items()), "no broker data to search"

    assert places_holding(cluster, API_KEY.encode(), tmp_path) == []
