"""
The chaos soak (``make soak``): 1,000 images through the Celery cluster while things go wrong.

Not a test: it takes about a quarter of an hour and prints a report instead of asserting. It runs the
cluster of ``harness.py`` (CeleryExecutor, PostgreSQL, Redis, two triggerers) against an emulator that,
with a fixed seed, answers 10% of API requests with 429 (half of them with ``Retry-After``), 5% with
503, drops 2% of connections before handling them, loses the answer to 2% of accepted submissions
(the task is created and billed), fails 5% of jobs, and takes 2-60 s per job. Mid-run, the triggerer
holding the most triggers and then the Celery worker are killed with SIGKILL and restarted.

While it runs it prints a progress line every 15 seconds. The report gives every image's outcome
(persisted, or failed with Novita's reason), submissions per image and what explains each extra one,
lost and hung images, how often the API key was found, the wall time, the faults injected by kind,
and the triggerers' CPU time and peak RSS. The exit status is 1 when an invariant broke:
a lost or hung image, an unexplained extra submission, or the key found anywhere.

Usage: ``python -m tests.cluster.soak --seed 20261125 [--images 1000 --batch-size 10]``, or ``make soak
[SOAK_AIRFLOW=3.1.8]``, which runs it in that Airflow's environment. ``docs/soak/`` keeps one summary per
Airflow version.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import airflow

from airflow_provider_novita.emulator import EmulatorConfig, EmulatorServer
from tests.cluster.harness import DAG_ID, TRIGGERERS, WORKER, Cluster, celery_cluster, places_holding
from tests.deployment import session_members, wait_for

API_KEY = "sk-soak-secret-9191"
CONN_ID = "novita_soak"
HUNG_AFTER = 3600.0
PROGRESS_EVERY = 15.0
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def emulator_config(seed: int) -> EmulatorConfig:
    return EmulatorConfig(
        api_key=API_KEY,
        seed=seed,
        job_duration=(2.0, 60.0),
        failure_rate=0.05,
        rate_limit_rate=0.10,
        retry_after=2.0,
        retry_after_share=0.5,
        error_rate=0.05,
        drop_rate=0.02,
        lost_answer_rate=0.02,
    )


class TriggererMeter:
    """CPU seconds and peak RSS of every triggerer process (and its children), read from /proc.

    Sampled in a thread every second; a killed process's CPU counts up to its last sample.
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._cpu_by_pid: dict[int, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TriggererMeter:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu_by_pid.values())

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for label, process in list(self._cluster.deployment.processes.items()):
                if label in TRIGGERERS:
                    self._sample(label, session_members(process.pid))

    def _sample(self, label: str, pids: list[int]) -> None:
        rss = 0.0
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                statm = Path(f"/proc/{pid}/statm").read_text().split()
            except OSError:
                continue
            self._cpu_by_pid[pid] = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS  # utime + stime
            rss += int(statm[1]) * PAGE_SIZE / 2**20
        self.peak_rss_mb[label] = max(self.peak_rss_mb.get(label, 0.0), rss)


def chaos(cluster: Cluster, run_id: str, events: list[str], started: float) -> None:
    """Once triggers are waiting: SIGKILL the busiest triggerer, then the worker; restart both."""

    def held() -> list[dict[str, Any]]:
        rows = cluster.task_instances(DAG_ID, run_id)
        return [row for row in rows if row["state"] == "deferred" and row["triggerer_id"] is not None]

    wait_for(lambda: len(held()) >= 20, 600, interval=1.0)
    counts = Counter(row["triggerer_id"] for row in held())
    victim = max(TRIGGERERS, key=lambda label: counts[cluster.triggerer_jobs[label]])
    cluster.deployment.kill(victim)
    held_by_victim = counts[cluster.triggerer_jobs[victim]]
    events.append(
        f"{time.monotonic() - started:.0f}s: SIGKILL {victim}, which held {held_by_victim} triggers"
    )
    time.sleep(5)
    cluster.start_triggerer(victim)
    events.append(f"{time.monotonic() - started:.0f}s: {victim} restarted")
    time.sleep(20)
    cluster.deployment.kill(WORKER)
    events.append(f"{time.monotonic() - started:.0f}s: SIGKILL {WORKER} and its task processes")
    time.sleep(5)
    cluster.start_worker()
    events.append(f"{time.monotonic() - started:.0f}s: {WORKER} restarted")


def progress(
    emulator: EmulatorServer,
    files: Path,
    images: int,
    events: list[str],
    started: float,
    stop: threading.Event,
) -> None:
    """Every PROGRESS_EVERY seconds, one line of how far the run is, for whoever watches it."""
    while not stop.wait(PROGRESS_EVERY):
        stats = emulator.stats()
        done = stats["tasks_by_status"]
        finished = done.get("TASK_STATUS_SUCCEED", 0) + done.get("TASK_STATUS_FAILED", 0)
        persisted = sum(1 for _ in files.glob("*.jpg")) if files.is_dir() else 0
        kills = sum(event.split(": ", 1)[1].startswith("SIGKILL") for event in list(events))
        print(
            f"[{time.monotonic() - started:5.0f}s] {images} images: {stats['accepted_submissions']} "
            f"submitted, {finished} jobs finished, {persisted} persisted; "
            f"{sum(stats['faults_injected'].values())} faults injected, {kills} of 2 kills done",
            flush=True,
        )


def image_outcomes(
    cluster: Cluster, run_id: str, images: list[str], batch_size: int, tasks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each image's outcome from the task instances' XCom (the persisted paths) and Novita's records."""
    last_task = {task["image"]: task for task in tasks}
    outcomes = []
    for row in cluster.task_instances(DAG_ID, run_id):
        batch = images[row["map_index"] * batch_size : (row["map_index"] + 1) * batch_size]
        job_failed = any(
            image in last_task and last_task[image]["status"] == "TASK_STATUS_FAILED" for image in batch
        )
        records: list[dict[str, Any]] = []
        if row["state"] == "success":
            records = cluster.records(DAG_ID, run_id, row["map_index"])
        for position, image in enumerate(batch):
            path = records[position].get("path") if position < len(records) else None
            task = last_task.get(image)
            if path and Path(path.removeprefix("file://")).is_file():
                outcome = "persisted"
            elif row["state"] == "success":
                outcome = "lost: its task instance succeeded without the file"
            elif row["state"] != "failed":
                outcome = f"hung: task instance {row['state']}"
            elif task is not None and task["status"] == "TASK_STATUS_FAILED":
                outcome = f"failed: {task['reason']}"
            elif job_failed:
                outcome = "failed with its batch: another image of the task instance failed"
            else:
                # No Novita job of the batch failed: its tries ran out on something else (an uncertain
                # submission on every try, a deadline); its task log says which.
                outcome = "failed with its batch: its task instance used up its tries; see its log"
            outcomes.append({"image": image, "map_index": row["map_index"], "outcome": outcome})
    return outcomes


def billing(images: list[str], stats: dict[str, Any], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Submissions per image, and which extra ones a FAILED job or a lost answer explains."""
    submitted = stats["submissions_by_image"]
    lost = stats["lost_answers_by_image"]
    failed = Counter(task["image"] for task in tasks if task["status"] == "TASK_STATUS_FAILED")
    unexplained = {
        image: submitted.get(image, 0)
        for image in images
        if submitted.get(image, 0) > 1 + failed[image] + lost.get(image, 0)
    }
    return {
        "submissions": sum(submitted.values()),
        "images_submitted_once": sum(submitted.get(image, 0) == 1 for image in images),
        "histogram": dict(sorted(Counter(submitted.get(image, 0) for image in images).items())),
        "resubmitted_after_failed_job": sum(
            min(failed[image], submitted.get(image, 0) - 1) for image in images
        ),
        "lost_answers": sum(lost.values()),
        "unexplained_extra": unexplained,
    }


def _commit() -> str:
    """The checkout's commit, marked when it has uncommitted changes: a report names what it measured."""
    git = ["git", "-C", str(Path(__file__).parent)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit.stdout.decode().strip() + ("-dirty" if dirty.stdout.strip() else "")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("soak-output"),
        help="where report.json and summary.json go",
    )
    args = parser.parse_args()
    commit = _commit()  # what runs is what was checked out at the start
    args.output.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="novita-soak-"))
    files = workdir / "images"
    events: list[str] = []
    with EmulatorServer(emulator_config(args.seed)) as emulator:
        images = [f"{emulator.base_url}/samples/landscape.png?image={i:04d}" for i in range(args.images)]
        with celery_cluster(workdir / "home", {CONN_ID: emulator.airflow_conn_json()}) as cluster:
            started = time.monotonic()
            conf = {
                "conn_id": CONN_ID,
                "images": images,
                "batch_size": args.batch_size,
                "output_path": f"file://{files}/",
            }
            run_id = cluster.trigger_run(DAG_ID, conf)
            with TriggererMeter(cluster) as meter:
                chaos_thread = threading.Thread(
                    target=chaos, args=(cluster, run_id, events, started), daemon=True
                )
                chaos_thread.start()
                finished = threading.Event()
                watcher = threading.Thread(
                    target=progress,
                    args=(emulator, files, args.images, events, started, finished),
                    daemon=True,
                )
                watcher.start()
                try:
                    state = cluster.wait_run(DAG_ID, run_id, HUNG_AFTER)
                except AssertionError as timeout:
                    state = f"not final: {timeout}"
                finished.set()
                chaos_thread.join(timeout=60)
                watcher.join()
            wall = time.monotonic() - started
            tasks = emulator.tasks()
            outcomes = image_outcomes(cluster, run_id, images, args.batch_size, tasks)
            bills = billing(images, emulator.stats(), tasks)
            leaks = places_holding(cluster, API_KEY.encode(), workdir)
            stats = emulator.stats()
    kinds = Counter(outcome["outcome"].split(":")[0] for outcome in outcomes)
    report = {
        "command": " ".join(["python -m tests.cluster.soak", *sys.argv[1:]]),
        "commit": commit,
        "airflow_version": airflow.__version__,
        "seed": args.seed,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "dag_run_state": state,
        "images": args.images,
        "mapped_tasks": -(-args.images // args.batch_size),
        "outcomes": dict(kinds),
        "failed_with_reason": Counter(o["outcome"] for o in outcomes if o["outcome"].startswith("failed")),
        "lost_images": args.images - len(outcomes) + kinds.get("lost", 0),
        "hung_images": kinds.get("hung", 0),
        "billing": bills,
        "key_found": len(leaks),
        "key_found_in": leaks,
        "chaos": events,
        "wall_seconds": round(wall, 1),
        "triggerer_cpu_seconds": round(meter.cpu_seconds, 1),
        "triggerer_peak_rss_mb": {label: round(mb, 1) for label, mb in meter.peak_rss_mb.items()},
        "emulator": {
            key: stats[key]
            for key in (
                "requests",
                "accepted_submissions",
                "dropped_connections",
                "faults_injected",
                "tasks_by_status",
            )
        },
        "per_image": outcomes,
    }
    (args.output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    summary = {key: value for key, value in report.items() if key != "per_image"}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    broken = report["lost_images"] or report["hung_images"] or bills["unexplained_extra"] or leaks
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
