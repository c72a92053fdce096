"""
What deferring and batching buy on a real Airflow: 50 images, 2 worker slots, 20 s Novita jobs.

The bound is Novita's: however the images are laid out, the run cannot end before one job has run
(20 s). The target is 1.5x that for the batched layouts. One run per layout, in one process, so the
figures sit beside each other:

* deferrable, one image per mapped task instance (50 task instances), the layout with the most
  task start-ups;
* deferrable, 5 mapped task instances of 10 images, and 1 task of 50 images (``image=`` a list);
* in the worker, one image per mapped task instance: about 25x (50 images / 2 slots x 20 s) by
  construction, the peer the deferrable layouts are measured beside (``--skip-sync`` leaves it out).

This is a benchmark script, not a timed test: it prints what it measured.

How:

* a real Airflow (the one installed next to this script, 3.3.2 in ``.venv``) runs as it is deployed,
  each component its own process (api-server, dag-processor, scheduler, triggerer) sharing a SQLite
  metadata database in a fresh temporary ``AIRFLOW_HOME``, as ``tests/e2e/test_real_airflow.py`` does.
  The scheduler runs the LocalExecutor with ``[core] parallelism = 2``: two worker slots;
* Novita is the provider's emulator, in a thread of this process, reached over loopback, with jobs
  of ``--job-duration`` (20 s). Its image work is small (2k JPEGs of the 640x360 sample, about 75 ms
  of CPU each), but it does compete with Airflow for this machine's CPU;
* a DAG file written into the temporary dags folder holds two DAGs, identical but for
  ``deferrable``: ``UpscaleOperator.partial(deferrable=..., poll_interval=..., retries=2,
  retry_delay=2 s).expand(image=[50 URLs])``, one image per mapped task instance, so 50 task
  instances. The URLs are the emulator's sample with a distinct query string each, so every
  submission is counted per image. ``retries=2`` because Airflow 3.3.2 can fail a deferred task
  whose trigger fires soon after its deferral as externally killed (apache/airflow#67287); a retry
  reattaches to the Novita task already submitted (docs/operator.md explains it). The short retry delay
  keeps such a retry from adding Airflow's default 5 minutes to the wall time;
* each DAG is unpaused and triggered through the REST API, one run after the other (the deferrable
  layouts first), and the metadata database is read every ``--sample-interval`` (0.5 s) until the
  run is final.

Figures, per run:

* ``wall``: the DAG run's ``start_date`` to ``end_date`` in the metadata database; ``x job`` divides
  it by the job duration (the target: <= 1.5 for the batched layouts, about 25 in the worker);
* ``max running / deferred / queued``: the most task instances seen at once in each state, sampled
  (a state shorter than the sampling interval can be missed). Running never exceeds the 2 slots;
* ``retries``: task instances that needed more than one try, and the scheduler log lines of the
  #67287 race ("finished with state success, but the task instance's state attribute is ...");
* ``submissions``: submissions the emulator accepted (50 means no image was billed twice);
* ``all submitted``: from the run's start to the last submission; ``last job -> end``: from the end
  of the last Novita job to the end of the run (resuming the deferred tasks, or the last poll);
* ``worker runs``: how many times a task instance took a worker slot, counted in the task logs
  (each run begins with the task runner's "Pre Execute" line): once per task instance to submit,
  once more to resume when deferrable, once per earlier try;
  ``slot s per run``: wall x slots / worker runs, the slot time each run cost on average, an upper
  bound (it counts any time a slot sat idle; for the run in the worker it includes the job's
  wait). Deferrable, the wall time cannot go below about 2 x images / slots x that figure, whatever
  the job duration; ``logged s per run``: median (max) time from a run's first to its last line in
  the task log, i.e. the task's own code with DAG parsing; the rest of the slot time is process
  start-up and Airflow's bookkeeping around it;
* ``CPU busy``: how busy this machine's CPUs were during the run (``/proc/stat``): near 100% means
  Airflow's own work (a task process per task instance, parsing the DAG file each time) was the
  bottleneck, not the slots.

How to read it: the deferrable wall time is the job duration plus what Airflow needs to start 50
task processes twice (to submit, then to resume) through 2 slots on a shared 2-core machine; compare
``all submitted`` and ``last job -> end`` with the job duration to see which part dominates. The
non-deferrable run takes about images / 2 x (job + task start-up): 8+ minutes by default.

Every process started here is stopped at the end, also on failure or Ctrl+C: SIGTERM to each
component, then to what is left in its session, then SIGKILL, each with a bounded wait.

Run: ``python benchmarks/deferral_slots.py [--images 50] [--batch-sizes 1,10,50] [--job-duration 20]
[--skip-sync] [--output deferral_slots.json]``; ``--keep-home`` keeps the temporary AIRFLOW_HOME and its logs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_novita.emulator import EmulatorConfig, EmulatorServer

# The local Airflow deployment is the one the end-to-end tests start (tests/deployment.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.deployment import (
    AirflowDeployment,
    free_port,
    wait_until_ready,
)

if TYPE_CHECKING:
    from types import FrameType

    import httpx

API_KEY = "sk-deferral-bench"
TASK_ID = "upscale"
# What the scheduler logs when apache/airflow#67287 strikes (see tests/e2e/test_real_airflow.py).
STALE_EVENT_MISMATCH = "finished with state success, but the task instance's state attribute is"
RETRY_DELAY_SECONDS = 2


class Layout(NamedTuple):
    """How the images are laid out: deferrable or not, and how many images each mapped task gets."""

    deferrable: bool
    batch_size: int

    @property
    def dag_id(self) -> str:
        mode = "deferrable" if self.deferrable else "in_worker"
        return f"novita_bench_{mode}_batch_{self.batch_size}"

    def describe(self, images: int) -> str:
        tasks = -(-images // self.batch_size)
        mode = "deferrable" if self.deferrable else "in the worker"
        return f"{mode}, {tasks} task{'s' if tasks > 1 else ''} x {self.batch_size}"


MIGRATE_TIMEOUT = 180.0
READY_TIMEOUT = 180.0

DAG_FILE = '''\
"""Written by benchmarks/deferral_slots.py: the same images, mapped in batches, deferrable or not."""

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from airflow_provider_novita.operators.upscale import UpscaleOperator

IMAGES = {images!r}

for dag_id, deferrable, batch_size in {dags!r}:
    if batch_size == 1:
        mapped = IMAGES
    else:
        mapped = [IMAGES[start : start + batch_size] for start in range(0, len(IMAGES), batch_size)]
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        UpscaleOperator.partial(
            task_id={task_id!r},
            resolution="2k",
            output_format="jpeg",
            deferrable=deferrable,
            poll_interval={poll_interval!r},
            retries=2,
            retry_delay=timedelta(seconds={retry_delay!r}),
        ).expand(image=mapped)
    globals()[dag_id] = dag
'''


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def parse_db_time(value: str | None) -> datetime | None:
    """A timestamp as Airflow stores it in SQLite: UTC, with or without an offset."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def run_timeout(args: argparse.Namespace, layout: Layout) -> float:
    """Generous bounds that catch a hang; they measure nothing."""
    if layout.deferrable:
        return 3 * args.job_duration + 10 * args.images + 300
    return math.ceil(args.images / args.parallelism) * (args.job_duration + 30) + 300


def measure_run(
    cluster: AirflowDeployment,
    client: httpx.Client,
    emulator: EmulatorServer,
    args: argparse.Namespace,
    layout: Layout,
) -> dict[str, Any]:
    dag_id = layout.dag_id
    emulator.reset()  # counters and tasks of this run only
    unpause = client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
    unpause.raise_for_status()
    busy_before, total_before = cpu_jiffies()
    triggered_mono = time.monotonic()
    created = client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
    created.raise_for_status()
    run_id = created.json()["dag_run_id"]
    print(f"Triggered {dag_id}, run {run_id}", file=sys.stderr, flush=True)

    samples: list[dict[str, Any]] = []
    states_seen: dict[int, set[str]] = {}
    deadline = triggered_mono + run_timeout(args, layout)
    final_state = "timeout"
    last_print = 0.0
    while time.monotonic() < deadline:
        rows = cluster.query(
            "SELECT map_index, state, try_number FROM task_instance WHERE dag_id = %s AND run_id = %s",
            dag_id,
            run_id,
        )
        counts: dict[str, int] = {}
        for row in rows:
            state = row["state"] or "none"
            counts[state] = counts.get(state, 0) + 1
            states_seen.setdefault(row["map_index"], set()).add(state)
        elapsed = time.monotonic() - triggered_mono
        samples.append({"t": round(elapsed, 2), "counts": counts})
        if elapsed - last_print >= 30:
            last_print = elapsed
            print(f"  {elapsed:5.0f}s {dict(sorted(counts.items()))}", file=sys.stderr, flush=True)
        (run,) = cluster.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
        if run["state"] in ("success", "failed"):
            final_state = run["state"]
            break
        cluster.assert_running()
        time.sleep(args.sample_interval)
    busy_after, total_after = cpu_jiffies()
    # Pause again, so that nothing of this DAG is scheduled while the other one is measured.
    client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": True}).raise_for_status()
    return summarise_run(
        cluster,
        emulator,
        args,
        dag_id=dag_id,
        run_id=run_id,
        layout=layout,
        final_state=final_state,
        samples=samples,
        states_seen=states_seen,
        cpu_busy=(busy_after - busy_before) / max(1, total_after - total_before),
    )


def run_times(
    cluster: AirflowDeployment, dag_id: str, run_id: str
) -> tuple[datetime | None, datetime | None]:
    (run,) = cluster.query(
        "SELECT start_date, end_date FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id
    )
    return parse_db_time(run["start_date"]), parse_db_time(run["end_date"])


def novita_timing(
    emulator: EmulatorServer, started: datetime | None, ended: datetime | None
) -> dict[str, float | None]:
    """When the last image was submitted after the run's start, and how long the run went on after the
    last Novita job ended (resuming the deferred tasks, or the last poll)."""
    # The emulator's clock is monotonic; the database's is UTC wall time. One offset converts.
    offset = time.time() - time.monotonic()
    tasks = emulator.tasks()
    last_submission = max((task["submitted_at"] for task in tasks), default=None)
    last_job_end = max((task["finish_at"] or 0.0 for task in tasks), default=None)
    return {
        "all_submitted_after": (
            last_submission + offset - started.timestamp() if last_submission and started else None
        ),
        "last_job_end_to_run_end": (
            ended.timestamp() - (last_job_end + offset) if last_job_end and ended else None
        ),
    }


def worker_run_figures(
    cluster: AirflowDeployment, dag_id: str, run_id: str, layout: Layout, task_instances: int
) -> dict[str, Any]:
    """How many times the run's task instances took a worker slot, and how long each ran."""
    history = cluster.query(
        "SELECT count(*) AS n FROM task_instance_history WHERE dag_id = %s AND run_id = %s", dag_id, run_id
    )[0]["n"]
    # Each task instance takes a worker slot once to submit and, deferrable, once more to resume;
    # every earlier try took one more. The task logs show each of those runs.
    logged = logged_worker_runs(cluster.home, dag_id, run_id)
    return {
        "earlier_tries_in_history": history,
        "worker_runs": len(logged) or task_instances * (2 if layout.deferrable else 1) + history,
        "worker_runs_from_logs": bool(logged),
        "logged_run_seconds_median": statistics.median(logged) if logged else None,
        "logged_run_seconds_max": max(logged) if logged else None,
    }


def summarise_run(
    cluster: AirflowDeployment,
    emulator: EmulatorServer,
    args: argparse.Namespace,
    *,
    dag_id: str,
    run_id: str,
    layout: Layout,
    final_state: str,
    samples: list[dict[str, Any]],
    states_seen: dict[int, set[str]],
    cpu_busy: float,
) -> dict[str, Any]:
    started, ended = run_times(cluster, dag_id, run_id)
    wall = (ended - started).total_seconds() if started and ended else None
    tis = cluster.query(
        "SELECT map_index, state, try_number FROM task_instance WHERE dag_id = %s AND run_id = %s",
        dag_id,
        run_id,
    )
    stats = emulator.stats()
    scheduler_log = cluster.tail("scheduler", None).splitlines()
    workers = worker_run_figures(cluster, dag_id, run_id, layout, len(tis))

    def most(state: str) -> int:
        return max((sample["counts"].get(state, 0) for sample in samples), default=0)

    return {
        "mode": layout.describe(args.images),
        "deferrable": layout.deferrable,
        "batch_size": layout.batch_size,
        "dag_id": dag_id,
        "run_id": run_id,
        "state": final_state,
        "wall": wall,
        "x_job": wall / args.job_duration if wall is not None else None,
        "task_instances": len(tis),
        "ti_states": dict(Counter(ti["state"] or "none" for ti in tis)),
        "max_running": most("running"),
        "max_deferred": most("deferred"),
        "max_queued": most("queued"),
        "deferred_at_least_once": sum("deferred" in seen for seen in states_seen.values()),
        "tis_with_retries": sum((ti["try_number"] or 0) > 1 for ti in tis),
        "race_log_lines": sum(STALE_EVENT_MISMATCH in line for line in scheduler_log),
        "accepted_submissions": stats["accepted_submissions"],
        "submissions_by_image_max": max(stats["submissions_by_image"].values(), default=0),
        "tasks_by_status": stats["tasks_by_status"],
        **novita_timing(emulator, started, ended),
        "cpu_busy": cpu_busy,
        **workers,
        "slot_seconds_per_worker_run": (
            wall * args.parallelism / workers["worker_runs"]
            if wall is not None and workers["worker_runs"]
            else None
        ),
        "samples": samples,
    }


def logged_worker_runs(home: Path, dag_id: str, run_id: str) -> list[float]:
    """Seconds from the first to the last line each worker run wrote to its task log.

    A run starts with the task runner's "::group::Pre Execute" line; a deferred task's resume
    appends a new run to the same attempt's log. Lines that do not parse as JSON are skipped.
    """
    durations = []
    folder = home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={TASK_ID}"
    # attempt=N.log.trigger.<job id>.log beside each attempt's log is the triggerer's, not a worker's.
    paths = [path for path in folder.glob("map_index=*/attempt=*.log") if ".trigger." not in path.name]
    for path in sorted(paths):
        runs: list[list[datetime]] = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
                at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if str(entry.get("event", "")).startswith("::group::Pre Execute") or not runs:
                runs.append([])
            runs[-1].append(at)
        durations += [(run[-1] - run[0]).total_seconds() for run in runs if run]
    return durations


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def number(value: float | None, spec: str = ".1f") -> str:
        return "-" if value is None else format(value, spec)

    print(
        f"\n{args.images} images, {args.parallelism} worker slots (LocalExecutor), "
        f"{args.job_duration:g} s Novita jobs, poll_interval {args.poll_interval:g} s:\n"
    )
    print(
        "| layout | run | wall s | x job | max running / deferred / queued | TIs retried (race lines) "
        "| submissions | all submitted s | last job -> end s | worker runs | slot s per run "
        "| logged s per run (max) | CPU busy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['state']} | {number(row['wall'])} | {number(row['x_job'], '.2f')} "
            f"| {row['max_running']} / {row['max_deferred']} / {row['max_queued']} "
            f"| {row['tis_with_retries']} ({row['race_log_lines']}) | {row['accepted_submissions']} "
            f"| {number(row['all_submitted_after'])} | {number(row['last_job_end_to_run_end'])} "
            f"| {row['worker_runs']} | {number(row['slot_seconds_per_worker_run'])} "
            f"| {number(row['logged_run_seconds_median'], '.2f')} "
            f"({number(row['logged_run_seconds_max'], '.1f')}) "
            f"| {row['cpu_busy']:.0%} |"
        )
    ideal_sync = math.ceil(args.images / args.parallelism)
    print(
        f"\nTargets: batched layouts <= 1.5 x job ({1.5 * args.job_duration:g} s); in the worker about "
        f"{ideal_sync} x job ({ideal_sync * args.job_duration:g} s) by construction."
    )
    for row in rows:
        print(
            f"- {row['mode']}: task instances {row['ti_states']}, "
            f"{row['deferred_at_least_once']} seen deferred, "
            f"{row['earlier_tries_in_history']} earlier tries in task_instance_history, emulator tasks "
            f"{row['tasks_by_status']}, most submissions of one image {row['submissions_by_image_max']}."
        )


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SIGTERM would otherwise end this process without running the finally blocks that stop Airflow.
    raise KeyboardInterrupt


def parse_args() -> tuple[argparse.Namespace, list[Layout]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=50, help="images in each run (50)")
    parser.add_argument(
        "--batch-sizes",
        default="1,10,50",
        help="images per mapped task of the deferrable runs, comma-separated (1,10,50)",
    )
    parser.add_argument("--job-duration", type=float, default=20.0, help="seconds per Novita job (20)")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="the operator's poll_interval (2)")
    parser.add_argument("--parallelism", type=int, default=2, help="[core] parallelism: worker slots (2)")
    parser.add_argument("--skip-sync", action="store_true", help="only the deferrable runs")
    parser.add_argument("--skip-deferrable", action="store_true", help="only the run in the worker")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="seconds between DB reads (0.5)")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary AIRFLOW_HOME and logs")
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.images < 1 or args.parallelism < 1 or args.job_duration <= 0:
        parser.error("--images and --parallelism must be at least 1, --job-duration positive")
    try:
        batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes must be whole numbers separated by commas, got {args.batch_sizes!r}")
    if any(size < 1 for size in batch_sizes):
        parser.error("--batch-sizes must all be at least 1")
    layouts = [] if args.skip_deferrable else [Layout(True, size) for size in batch_sizes]
    layouts += [] if args.skip_sync else [Layout(False, 1)]
    if not layouts:
        parser.error("--skip-sync and --skip-deferrable together leave nothing to run")
    return args, layouts


def start_airflow(
    home: Path, emulator: EmulatorServer, args: argparse.Namespace, layouts: list[Layout]
) -> AirflowDeployment:
    """Writes the DAG file, migrates a SQLite database and starts each component as its own process."""
    images = [f"{emulator.base_url}/samples/landscape.png?copy={i:03d}" for i in range(args.images)]
    (home / "dags").mkdir()
    (home / "dags" / "novita_deferral_bench.py").write_text(
        DAG_FILE.format(
            images=images,
            dags=[(layout.dag_id, *layout) for layout in layouts],
            task_id=TASK_ID,
            poll_interval=args.poll_interval,
            retry_delay=RETRY_DELAY_SECONDS,
        )
    )
    api_port = free_port()
    cluster = AirflowDeployment.on_sqlite(
        home,
        api_port=api_port,
        dags_folder=home / "dags",
        connections={"novita_default": emulator.airflow_conn_json()},
        settings={"AIRFLOW__CORE__PARALLELISM": str(args.parallelism)},
    )
    print(f"Airflow home: {home}; migrating the database ...", file=sys.stderr, flush=True)
    cluster.run_cli("db-migrate", "db", "migrate", timeout=MIGRATE_TIMEOUT)
    cluster.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port))
    for component in ("dag-processor", "scheduler", "triggerer"):
        cluster.start(component)
    return cluster


def stop_airflow(cluster: AirflowDeployment, failed: bool) -> None:
    # The stop is bounded (about a minute at worst); a second Ctrl+C or SIGTERM in the middle of
    # it would leave Airflow processes behind, so both wait until it is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not_stopped := cluster.stop():
        print(f"needed SIGKILL after SIGTERM: {not_stopped}", file=sys.stderr)
    if failed:
        for name in cluster.processes:
            print(f"===== {name} =====\n{cluster.tail(name)}", file=sys.stderr)


def main() -> None:
    args, layouts = parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    home = Path(tempfile.mkdtemp(prefix="novita-deferral-bench-"))
    rows: list[dict[str, Any]] = []
    emulator = EmulatorServer(EmulatorConfig(api_key=API_KEY, job_duration=args.job_duration))
    cluster: AirflowDeployment | None = None
    failed = True
    try:
        emulator.start()
        cluster = start_airflow(home, emulator, args, layouts)
        with cluster.client() as client:
            wait_until_ready(cluster, client, [layout.dag_id for layout in layouts], READY_TIMEOUT)
            print("Airflow is ready.", file=sys.stderr, flush=True)
            for layout in layouts:
                rows.append(measure_run(cluster, client, emulator, args, layout))
                print(f"  -> {rows[-1]['state']} in {rows[-1]['wall']} s", file=sys.stderr, flush=True)
        failed = False
    finally:
        if cluster is not None:
            stop_airflow(cluster, failed)
        emulator.stop()
        if args.keep_home or failed:
            print(f"Airflow home kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    report(rows, args)
    if args.output:
        settings = ("images", "job_duration", "poll_interval", "parallelism")
        figures = {**{name: getattr(args, name) for name in settings}, "runs": rows}
        args.output.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
