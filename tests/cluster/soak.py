"""
The chaos soak (``make soak``): 1,000 images through the Celery cluster while things go wrong.

Not a test: it takes about a quarter of an hour and prints a report instead of asserting. It runs the
cluster of ``harness.py`` (CeleryExecutor, PostgreSQL, Redis, two triggerers) against an emulator that,
with a fixed seed, takes 2-60 s per job and injects faults at the rates of :data:`FAULTS`: with
``--faults chaos`` (the default) it answers 10% of API requests with 429 (half of them with
``Retry-After``), 5% with 503, drops 2% of connections before handling them, loses the answer to 2%
of accepted submissions (the task is created and billed) and fails 5% of jobs; ``--faults modest``
divides them by 5 to 10, for runs of large batches, where a 5% failure rate would fail almost every
batch of 100. Mid-run, the triggerer holding the most triggers and then the Celery worker are killed
with SIGKILL and restarted.

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
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import airflow

from airflow_provider_novita.emulator import EmulatorConfig, EmulatorServer
from tests.cluster.harness import DAG_ID, TRIGGERERS, WORKER, Cluster, celery_cluster, places_holding
from tests.cluster.meters import SELF, ComponentMeter, ProviderProfile
from tests.cluster.soak_bucket import SoakBucket, soak_bucket
from tests.deployment import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

API_KEY = "sk-soak-secret-9191"
CONN_ID = "novita_soak"
HUNG_AFTER = 3600.0
PROGRESS_EVERY = 15.0
# Seconds before a worker kill in which a created task may still be unrecorded by the killed try.
IN_FLIGHT_AT_KILL = 2.0
PY_SPY = Path(sys.executable).parent / "py-spy"
# What serves the task processes' requests: the figure a retry memory in Airflow's database costs.
AIRFLOW_SERVING = ("api-server", "postgresql")


# The emulator's fault rates per --faults profile.
FAULTS: dict[str, dict[str, float]] = {
    "chaos": {
        "failure_rate": 0.05,
        "rate_limit_rate": 0.10,
        "error_rate": 0.05,
        "drop_rate": 0.02,
        "lost_answer_rate": 0.02,
    },
    "modest": {
        "failure_rate": 0.005,
        "rate_limit_rate": 0.02,
        "error_rate": 0.01,
        "drop_rate": 0.002,
        "lost_answer_rate": 0.002,
    },
}


def emulator_config(seed: int, cache_results: bool, images: int, faults: str) -> EmulatorConfig:
    return EmulatorConfig(
        api_key=API_KEY,
        seed=seed,
        cache_results=cache_results,
        # Enough for every image three times: a soak measures resubmissions, not running out of credit
        # (the default balance pays for 10,000 submissions).
        credit_balance=max(EmulatorConfig.credit_balance, 3 * images * EmulatorConfig.submission_cost),
        job_duration=(2.0, 60.0),
        retry_after=2.0,
        retry_after_share=0.5,
        failure_rate=FAULTS[faults]["failure_rate"],
        rate_limit_rate=FAULTS[faults]["rate_limit_rate"],
        error_rate=FAULTS[faults]["error_rate"],
        drop_rate=FAULTS[faults]["drop_rate"],
        lost_answer_rate=FAULTS[faults]["lost_answer_rate"],
    )


def chaos(
    cluster: Cluster, run_id: str, events: list[str], started: float, worker_kills: list[float]
) -> None:
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
    worker_kills.append(time.monotonic())
    cluster.deployment.kill(WORKER)
    events.append(f"{time.monotonic() - started:.0f}s: SIGKILL {WORKER} and its task processes")
    time.sleep(5)
    cluster.start_worker()
    events.append(f"{time.monotonic() - started:.0f}s: {WORKER} restarted")


def progress(
    emulator: EmulatorServer,
    files: Path | None,
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
        if files is None:  # in a bucket: counted without a request, which would count in the figures
            saved = f"{stats['requests']['outputs']} downloaded"
        else:
            saved = f"{sum(1 for _ in files.glob('*.jpg')) if files.is_dir() else 0} persisted"
        kills = sum(event.split(": ", 1)[1].startswith("SIGKILL") for event in list(events))
        print(
            f"[{time.monotonic() - started:5.0f}s] {images} images: {stats['accepted_submissions']} "
            f"submitted, {finished} jobs finished, {saved}; "
            f"{sum(stats['faults_injected'].values())} faults injected, {kills} of 2 kills done",
            flush=True,
        )


def image_outcomes(
    cluster: Cluster,
    run_id: str,
    images: list[str],
    batch_size: int,
    tasks: list[dict[str, Any]],
    saved: Callable[[str], bool],
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
            if path and saved(path):
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


def billing(
    images: list[str], stats: dict[str, Any], tasks: list[dict[str, Any]], worker_kills: list[float]
) -> dict[str, Any]:
    """Submissions per image, and which extra ones a FAILED job, a lost answer or a worker kill explains.

    A worker killed while it submits a batch may hold answers it has not recorded yet (at most the
    task's ``submit_concurrency``): the retry cannot know those tasks and submits their images again.
    A task created at most :data:`IN_FLIGHT_AT_KILL` seconds before a worker kill explains one such.
    """
    submitted = stats["submissions_by_image"]
    lost = stats["lost_answers_by_image"]
    failed = Counter(task["image"] for task in tasks if task["status"] == "TASK_STATUS_FAILED")
    at_kill = Counter(
        task["image"]
        for task in tasks
        if task["status"] != "TASK_STATUS_FAILED"
        and any(0 <= kill - task["submitted_at"] <= IN_FLIGHT_AT_KILL for kill in worker_kills)
    )
    explained = {image: 1 + failed[image] + lost.get(image, 0) + at_kill[image] for image in images}
    unexplained = {
        image: submitted.get(image, 0) for image in images if submitted.get(image, 0) > explained[image]
    }
    return {
        "submissions": sum(submitted.values()),
        "images_submitted_once": sum(submitted.get(image, 0) == 1 for image in images),
        "histogram": dict(sorted(Counter(submitted.get(image, 0) for image in images).items())),
        "resubmitted_after_failed_job": sum(
            min(failed[image], max(0, submitted.get(image, 0) - 1)) for image in images
        ),
        "lost_answers": sum(lost.values()),
        "resubmitted_after_worker_kill": sum(
            min(at_kill[image], max(0, submitted.get(image, 0) - 1 - failed[image] - lost.get(image, 0)))
            for image in images
        ),
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


def table_sizes(cluster: Cluster) -> dict[str, int]:
    """Bytes of every table of the metadata database, with its indexes and TOAST."""
    rows = cluster.deployment.query(
        "SELECT relname AS name, pg_total_relation_size(relid) AS bytes FROM pg_stat_user_tables"
    )
    return {row["name"]: int(row["bytes"]) for row in rows}


def database_growth(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    grown = {name: size - before.get(name, 0) for name, size in after.items()}
    largest = sorted(grown.items(), key=lambda item: -item[1])[:8]
    return {"bytes": sum(grown.values()), "largest_growth_by_table": dict(largest), "by_table": grown}


def state_store_figures(
    cluster: Cluster, run_id: str, images: int, growth: dict[str, Any]
) -> dict[str, Any] | None:
    """
    The task state store's rows left by the run and its growth per image (the table with its indexes
    and TOAST, dead rows included until PostgreSQL vacuums them); None before Airflow 3.3.
    """
    grown = growth["by_table"].get("task_state_store")
    if grown is None:
        return None
    (row,) = cluster.deployment.query(
        "SELECT count(*) AS n FROM task_state_store WHERE dag_id = %s AND run_id = %s", DAG_ID, run_id
    )
    return {
        "state_store_rows_after_run": int(row["n"]),
        "state_store_bytes_per_image": round(grown / images, 1),
    }


# One line per request in the api-server's access log (Airflow 3.2+: HttpAccessLogMiddleware).
_ACCESS = re.compile(
    r"request finished.*?\bmethod[\"']?\s*[=:]\s*[\"']?(\w+).*?\bpath[\"']?\s*[=:]\s*[\"']?([^\s\"',]+)"
)


def execution_api_figures(cluster: Cluster, images: int) -> dict[str, Any] | None:
    """
    Requests to the api-server's execution API (what task processes and triggerers ask of it), by
    route, from its access log; None where the api-server logs no requests (Airflow 3.1).
    """
    routes: Counter[str] = Counter()
    logged = False
    for log in sorted(cluster.deployment.logs_dir.glob("api-server*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if match := _ACCESS.search(_ANSI.sub("", line)):
                logged = True
                method, path = match.groups()
                if path.startswith("/execution/"):
                    routes[f"{method} {_route(path)}"] += 1
    if not logged:
        return None
    total = sum(routes.values())
    return {
        "execution_api_requests": total,
        "execution_api_requests_per_image": round(total / images, 3),
        "execution_api_requests_by_route": dict(routes.most_common()),
    }


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _route(path: str) -> str:
    """A route without its ids: ``/execution/task-instances/<uuid>/heartbeat`` as ``.../{id}/heartbeat``."""
    parts = path.split("/")
    if path.startswith("/execution/store/ti/"):
        return "/execution/store/ti (the task state store)"
    if parts[2] == "task-instances" and len(parts) > 4:
        return f"/execution/task-instances/{{id}}/{parts[4]}"
    return "/".join(parts[:3])


def xcom_figures(cluster: Cluster, run_id: str, images: int) -> dict[str, Any]:
    """The run's XCom rows and bytes (their JSON text) by task and key, and the bytes per image."""
    rows = cluster.deployment.query(
        """
        SELECT task_id, key, count(*) AS n, sum(octet_length(value::text)) AS bytes
        FROM xcom WHERE dag_id = %s AND run_id = %s GROUP BY task_id, key ORDER BY task_id, key
        """,
        DAG_ID,
        run_id,
    )
    total = sum(int(row["bytes"] or 0) for row in rows)
    return {
        "bytes": total,
        "bytes_per_image": round(total / images, 1),
        "by_task_and_key": {
            f"{row['task_id']}.{row['key']}": {"rows": row["n"], "bytes": int(row["bytes"] or 0)}
            for row in rows
        },
    }


def task_log_figures(cluster: Cluster, run_id: str, images: int) -> dict[str, Any]:
    """Bytes and lines of the run's task and trigger logs, lines by level, and bytes per image."""
    levels: Counter[str] = Counter()
    size = 0
    for path in (cluster.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}").rglob("*.log*"):
        text = path.read_text(errors="replace")
        size += len(text.encode())
        for line in text.splitlines():
            try:
                levels[str(json.loads(line).get("level", "none"))] += 1
            except (ValueError, AttributeError):
                levels["not json"] += 1
    return {"bytes": size, "bytes_per_image": round(size / images, 1), "lines_by_level": dict(levels)}


def cpu_figures(meter: ComponentMeter, profile: ProviderProfile | None) -> dict[str, Any]:
    """CPU and RSS per component; with the profile, the provider's share and CPU seconds in each."""
    components: dict[str, dict[str, Any]] = meter.figures()
    shares = profile.shares() if profile is not None else {}
    provider = 0.0
    for label, share in shares.items():
        components[label].update(share)
        provider += components[label]["cpu_seconds"] * (share["provider_share"] or 0.0)
    # The deployment's CPU: what Airflow, its database and broker spent; not the emulator's or py-spy's.
    deployment = sum(
        figures["cpu_seconds"] for label, figures in components.items() if label not in (SELF, "py-spy")
    )
    return {
        "components": components,
        "machine_busy_cpu_seconds": round(meter.machine_busy_seconds, 1),
        "deployment_cpu_seconds": round(deployment, 1),
        "provider_cpu_seconds": round(provider, 1) if shares else None,
        "provider_share_of_deployment_cpu": round(provider / deployment, 4) if shares else None,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument(
        "--faults",
        choices=sorted(FAULTS),
        default="chaos",
        help="the emulator's fault rates: chaos (the 1,000-image soak's) or modest (for large batches)",
    )
    parser.add_argument(
        "--cache-results",
        action="store_true",
        help="the emulator upscales each distinct source once (its cache_results): cheap imaging",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample every Airflow component with py-spy for the provider's share of the CPU",
    )
    parser.add_argument(
        "--s3",
        action="store_true",
        help="output_path on a bucket of a moto S3 server in this process; counts its requests by kind",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("soak-output"),
        help="where report.json and summary.json go",
    )
    args = parser.parse_args()
    if args.profile and not PY_SPY.is_file():
        parser.error(f"--profile needs py-spy at {PY_SPY}: pip install py-spy")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the emulator, the bucket if asked for, and the cluster; run the DAG and measure it."""
    config = emulator_config(args.seed, args.cache_results, args.images, args.faults)
    with (
        EmulatorServer(config) as emulator,
        soak_bucket() if args.s3 else contextlib.nullcontext() as bucket,
    ):
        connections = {CONN_ID: emulator.airflow_conn_json()}
        if bucket is not None:
            connections[bucket.conn_id] = bucket.airflow_conn_json()
        with celery_cluster(workdir / "home", connections) as cluster:
            return measure(args, workdir, emulator, cluster, bucket)


def measure(
    args: argparse.Namespace,
    workdir: Path,
    emulator: EmulatorServer,
    cluster: Cluster,
    bucket: SoakBucket | None,
) -> dict[str, Any]:
    """Run the DAG through the chaos and measure what it cost, the object store's requests included."""
    files = workdir / "images"
    events: list[str] = []
    worker_kills: list[float] = []
    profile = ProviderProfile(PY_SPY, workdir / "profile") if args.profile else None
    images = [f"{emulator.base_url}/samples/landscape.png?image={i:05d}" for i in range(args.images)]
    tables_before = table_sizes(cluster)
    conf = {
        "conn_id": CONN_ID,
        "images": images,
        "batch_size": args.batch_size,
        "output_path": bucket.uri("out/") if bucket is not None else f"file://{files}/",
    }
    requests = bucket.counting() if bucket is not None else contextlib.nullcontext(None)
    try:
        with ComponentMeter(cluster.deployment, profile) as meter, requests as store_requests:
            started = time.monotonic()
            run_id = cluster.trigger_run(DAG_ID, conf)
            state = watch_run(
                cluster,
                emulator,
                run_id,
                args.images,
                None if bucket is not None else files,
                events,
                started,
                worker_kills,
            )
            wall = time.monotonic() - started
    finally:
        if profile is not None:
            profile.stop()
    if bucket is not None:
        keys = bucket.keys()
        saved: Callable[[str], bool] = lambda path: bucket.key_of(path) in keys  # noqa: E731
    else:
        saved = lambda path: Path(path.removeprefix("file://")).is_file()  # noqa: E731
    tasks = emulator.tasks()
    stats = emulator.stats()
    growth = database_growth(tables_before, table_sizes(cluster))
    cpu = cpu_figures(meter, profile)
    return {
        "dag_run_state": state,
        "outcomes": image_outcomes(cluster, run_id, images, args.batch_size, tasks, saved),
        "billing": billing(images, stats, tasks, worker_kills),
        "key_found_in": places_holding(cluster, API_KEY.encode(), workdir),
        "chaos": events,
        "wall_seconds": round(wall, 1),
        **cpu,
        "deployment_cpu_ms_per_image": round(1000 * cpu["deployment_cpu_seconds"] / args.images, 1),
        "api_server_and_postgresql_cpu_seconds": round(
            sum(
                cpu["components"].get(name, {}).get("cpu_seconds", 0) for name in ("api-server", "postgresql")
            ),
            1,
        ),
        **(execution_api_figures(cluster, args.images) or {"execution_api_requests_per_image": None}),
        **(
            state_store_figures(cluster, run_id, args.images, growth)
            or {"state_store_rows_after_run": None, "state_store_bytes_per_image": None}
        ),
        "metadata_db_growth": {key: value for key, value in growth.items() if key != "by_table"},
        "xcom": xcom_figures(cluster, run_id, args.images),
        "task_logs": task_log_figures(cluster, run_id, args.images),
        **({"object_store": store_requests.figures(args.images)} if store_requests is not None else {}),
        "emulator": stats,
    }


def watch_run(
    cluster: Cluster,
    emulator: EmulatorServer,
    run_id: str,
    images: int,
    files: Path | None,
    events: list[str],
    started: float,
    worker_kills: list[float],
) -> str:
    """Wait for the run with the chaos and the progress line beside it; returns its final state."""
    chaos_thread = threading.Thread(
        target=chaos, args=(cluster, run_id, events, started, worker_kills), daemon=True
    )
    chaos_thread.start()
    finished = threading.Event()
    watcher = threading.Thread(
        target=progress, args=(emulator, files, images, events, started, finished), daemon=True
    )
    watcher.start()
    try:
        state = cluster.wait_run(DAG_ID, run_id, HUNG_AFTER)
    except AssertionError as timeout:
        state = f"not final: {timeout}"
    finished.set()
    chaos_thread.join(timeout=60)
    watcher.join()
    return state


def main() -> int:
    args = parse_args()
    commit = _commit()  # what runs is what was checked out at the start
    args.output.mkdir(parents=True, exist_ok=True)
    measured = run(args, Path(tempfile.mkdtemp(prefix="novita-soak-")))
    outcomes, bills, leaks = measured.pop("outcomes"), measured["billing"], measured["key_found_in"]
    kinds = Counter(outcome["outcome"].split(":")[0] for outcome in outcomes)
    components = measured["components"]
    stats = measured.pop("emulator")
    report = {
        "command": " ".join(["python -m tests.cluster.soak", *sys.argv[1:]]),
        "commit": commit,
        "airflow_version": airflow.__version__,
        "seed": args.seed,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "images": args.images,
        "mapped_tasks": -(-args.images // args.batch_size),
        "emulator_cache_results": args.cache_results,
        "faults": {"profile": args.faults, **FAULTS[args.faults]},
        "outcomes": dict(kinds),
        "failed_with_reason": Counter(o["outcome"] for o in outcomes if o["outcome"].startswith("failed")),
        "lost_images": args.images - len(outcomes) + kinds.get("lost", 0),
        "hung_images": kinds.get("hung", 0),
        "key_found": len(leaks),
        **measured,
        "triggerer_cpu_seconds": round(
            sum(components.get(t, {}).get("cpu_seconds", 0) for t in TRIGGERERS), 1
        ),
        "triggerer_peak_rss_mb": {t: components[t]["peak_rss_mb"] for t in TRIGGERERS if t in components},
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
