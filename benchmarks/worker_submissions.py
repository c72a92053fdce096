"""
How long ``UpscaleOperator`` holds a worker slot to submit a batch, when every request takes 200 ms.

Issue 9's target: submitting a batch of 100 images holds the worker slot for the time of a few
requests, not of 100 requests in sequence, with bounded concurrency (``submit_concurrency``,
default 8), the task ids in input order and each one recorded for retries as soon as it exists.

What is measured: the wall time of
``UpscaleOperator(task_id=..., image=[100 URLs], wait_for_completion=False).execute(context)``,
which is exactly the part of a task that submits (it returns right after pushing the ids to XCom).

How:

* the provider's emulator runs in a thread of this process with ``latency`` (200 ms) added to every
  ``/v3`` answer; the event loop keeps serving meanwhile, so concurrent requests overlap as they
  would on Novita. An ASGI wrapper around its app counts the ``/v3`` requests in flight and their
  status codes, timestamped with ``time.monotonic`` (the same clock in every process on Linux);
* each measured ``execute`` runs in a fresh child process (this script with ``--child``), as a task
  runs in a fresh process on a worker: nothing warmed by an earlier run, and none of the emulator's
  work in the measured process. Modules are imported before the clock starts (a task has parsed its
  DAG file before it executes); the connection lookup, the HTTP client and its connections are
  inside the timed call, as they are in a task. ``AIRFLOW_CONN_NOVITA_DEFAULT`` points at the
  emulator;
* the context is minimal: a task instance with ``xcom_push`` and ``try_number``, and a dict-backed
  ``task_state_store`` (Airflow 3.3's) that timestamps every write;
* the image work is kept out of the way: by default the sources are distinct URLs under the
  emulator's ``/samples/`` that do not exist (``bench-000.png``...), so every job ends FAILED at once
  on a 404 from the emulator itself, with no image decoded. Submissions are accepted (and billed)
  all the same; ``--sources samples`` uses the real sample image instead (2k jobs decoded and
  encoded in this process, competing for the CPU);
* configurations: the operator as it is (its defaults), and, when the operator has a
  ``submit_concurrency`` parameter (found with ``inspect.signature``), ``submit_concurrency=1`` as
  the sequential baseline plus any ``--concurrency`` values. Each runs ``--repeat`` times.

Figures, per configuration (median over the repeats, range in brackets):

* ``wall``: the ``execute`` call; ``x latency`` divides it by the per-request latency, i.e. how many
  requests' worth of time the slot was held; ``ideal`` is ceil(images / concurrency) x latency;
* ``requests``: ``/v3`` requests the emulator received during the call (429s in brackets; a 429 is
  retried by the hook, so it adds a request); ``peak in flight``: most requests in flight at once;
  ``peak req/s``: most requests started within any one second, to hold against a per-second rate
  limit;
* ``in order``: the returned ids, and the XCom ``task_ids``, name the emulator's tasks for
  the images in input order (checked against the emulator's own records, and asserted);
* ``store writes``: writes to the task state store, and whether every id was recorded;
  ``record lag``: the longest time between the emulator creating a task and that task id being
  written to the store. Recording ids "as they are created" keeps it at a few ms; recording them at
  the end of the batch would make it about as long as the wall time;
* ``CPU``: CPU time of the child process during the call.

The last row is the theoretical sequential time, images x latency.

How to read it: compare each row's ``wall`` with the sequential row and with its ``ideal``; the gap
above ``ideal`` is the client's own overhead (connection set-up, JSON, logging) and this noisy 2-core
machine. The script exits with status 1 if an order or recording check failed.

Run: ``python benchmarks/worker_submissions.py [--images 100] [--latency 0.2] [--repeat 3]
[--concurrency 4 16] [--output worker_submissions.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from airflow_provider_novita.emulator import EmulatorServer

CONCURRENCY_PARAMETER = "submit_concurrency"
CHILD_TIMEOUT = 600.0
MISSING_SOURCE = "bench-{index:03d}.png"
REAL_SOURCE = "landscape.png?copy={index:03d}"

Scope = dict[str, Any]
Message = dict[str, Any]


@dataclass
class InFlight:
    """An ASGI wrapper that timestamps every ``/v3`` request's start and end, with its status code."""

    app: Callable[
        [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
    ]
    # (start, end, status) per finished request; the event loop thread is the only writer.
    requests: list[tuple[float, float, int]] = field(default_factory=list)

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v3/"):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.requests.append((started, time.monotonic(), status))

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Requests that started within [start, end]: how many, how many 429s, most in flight at once."""
        inside = [r for r in list(self.requests) if start <= r[0] <= end]
        events = sorted([(r[0], 1) for r in inside] + [(r[1], -1) for r in inside])
        now = peak = 0
        for _, change in events:
            now += change
            peak = max(peak, now)
        # The most requests started within any one second: what a per-second rate limit counts.
        starts = sorted(r[0] for r in inside)
        first = per_second = 0
        for last, started in enumerate(starts):
            while started - starts[first] >= 1.0:
                first += 1
            per_second = max(per_second, last - first + 1)
        return {
            "requests": len(inside),
            "rate_limited": sum(r[2] == 429 for r in inside),
            "peak": peak,
            "per_second": per_second,
        }


# -- the child: one measured execute() in a fresh process ----------------------------------------------


class TaskInstance:
    """The parts of a task instance the operator uses when it submits."""

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}
        self.try_number = 1
        self.map_index = -1

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class StateStore:
    """``context["task_state_store"]`` of Airflow 3.3, in a dict; every write is timestamped."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.writes: list[tuple[float, str, Any]] = []

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.values[key] = value
        self.writes.append((time.monotonic(), key, value))


def child_main(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    # Set before Airflow is imported: it reads both when it first needs them.
    os.environ["AIRFLOW_HOME"] = spec["airflow_home"]
    os.environ["AIRFLOW_CONN_NOVITA_DEFAULT"] = spec["conn"]
    from airflow_provider_novita.operators.upscale import UpscaleOperator

    operator = UpscaleOperator(
        task_id="upscale", image=spec["urls"], wait_for_completion=False, resolution="2k", **spec["kwargs"]
    )
    ti = TaskInstance()
    store = StateStore()
    context: MutableMapping[str, Any] = {"ti": ti, "task_state_store": store}
    cpu = time.process_time()
    started = time.monotonic()
    task_ids = operator.execute(context)  # type: ignore[arg-type]
    ended = time.monotonic()
    cpu = time.process_time() - cpu
    result = {
        "started": started,
        "ended": ended,
        "cpu": cpu,
        "task_ids": task_ids,
        "xcom_task_ids": ti.xcom.get("task_ids"),
        "writes": store.writes,
    }
    Path(spec["result_path"]).write_text(json.dumps(result))


# -- the parent: emulator, children, checks and the table ---------------------------------------------


def start_emulator(args: argparse.Namespace) -> tuple[EmulatorServer, InFlight]:
    from airflow_provider_novita.emulator import EmulatorConfig, EmulatorServer, server

    tracker: list[InFlight] = []
    create_app = server.create_app

    def wrapped(service: Any) -> Any:
        tracker.append(InFlight(create_app(service)))
        return tracker[-1]

    # The server builds its app inside start(); wrapping the factory is the one place to count
    # requests in flight without changing the emulator.
    server.create_app = wrapped  # type: ignore[assignment]
    try:
        config = EmulatorConfig(
            latency=args.latency,
            job_duration=args.job_duration,
            rate_limit_rate=args.rate_limit_rate,
            retry_after=args.retry_after,
            seed=7,
        )
        emulator = EmulatorServer(config).start()
    finally:
        server.create_app = create_app
    return emulator, tracker[0]


def run_child(
    emulator: EmulatorServer,
    tracker: InFlight,
    urls: list[str],
    kwargs: dict[str, Any],
    workdir: Path,
    run_name: str,
) -> dict[str, Any]:
    spec_path = workdir / f"{run_name}.spec.json"
    result_path = workdir / f"{run_name}.result.json"
    log_path = workdir / f"{run_name}.log"
    spec = {
        "airflow_home": str(workdir / "airflow-home"),
        "conn": emulator.airflow_conn_json(),
        "urls": urls,
        "kwargs": kwargs,
        "result_path": str(result_path),
    }
    spec_path.write_text(json.dumps(spec))
    # Start from an empty emulator: its task store then holds only this run's tasks.
    emulator.reset()
    with log_path.open("wb") as log:
        # The task's log lines go to a file, as a worker's do; subprocess.run kills the child on timeout.
        completed = subprocess.run(
            [sys.executable, __file__, "--child", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    if completed.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        sys.exit(f"the measured child ({run_name}) failed with exit code {completed.returncode}:\n{tail}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    return check(emulator, tracker, urls, result)


def check(
    emulator: EmulatorServer, tracker: InFlight, urls: list[str], result: dict[str, Any]
) -> dict[str, Any]:
    """What the emulator saw during the call, and whether the ids are in order and were recorded."""
    # The emulator's own records of each task: which image it was for and when it was created.
    tasks = emulator._service._tasks  # private, but the emulator has no public id -> image lookup
    task_ids: list[str] = result["task_ids"]
    known = [tasks.get(task_id) for task_id in task_ids]
    in_order = (
        len(task_ids) == len(urls)
        and all(task is not None for task in known)
        and [task.image for task in known if task is not None] == urls
        and result["xcom_task_ids"] == task_ids
    )
    created_at = {task.task_id: task.submitted_at for task in known if task is not None}
    recorded: dict[str, float] = {}
    for written_at, _key, value in result["writes"]:
        task_id = value.get("task_id") if isinstance(value, dict) else None
        if isinstance(task_id, str):
            recorded.setdefault(task_id, written_at)
    lags = [recorded[task_id] - created_at[task_id] for task_id in created_at if task_id in recorded]
    seen = tracker.window(result["started"], result["ended"])
    return {
        "wall": result["ended"] - result["started"],
        "cpu": result["cpu"],
        "requests": seen["requests"],
        "rate_limited": seen["rate_limited"],
        "peak_in_flight": seen["peak"],
        "peak_per_second": seen["per_second"],
        "accepted_submissions": emulator.stats()["accepted_submissions"],
        "in_order": in_order,
        "store_writes": len(result["writes"]),
        "all_recorded": set(recorded) >= set(task_ids),
        "record_lag_max": max(lags) if lags else None,
    }


def configurations(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], int | None]]:
    """(label, operator kwargs, concurrency) per configuration, depending on what the operator offers."""
    import inspect

    from airflow_provider_novita.operators.upscale import UpscaleOperator

    parameter = inspect.signature(UpscaleOperator.__init__).parameters.get(CONCURRENCY_PARAMETER)
    if parameter is None:
        # No knob: the operator as it is submits one image after the other.
        return [(f"as is (no `{CONCURRENCY_PARAMETER}`)", {}, 1)]
    default = parameter.default if isinstance(parameter.default, int) else None
    rows: list[tuple[str, dict[str, Any], int | None]] = [
        (f"as is (default `{CONCURRENCY_PARAMETER}={parameter.default}`)", {}, default)
    ]
    for value in [1, *args.concurrency]:
        if value != default:
            rows.append((f"`{CONCURRENCY_PARAMETER}={value}`", {CONCURRENCY_PARAMETER: value}, value))
    return rows


def summarise(
    label: str, concurrency: int | None, runs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    walls = [run["wall"] for run in runs]
    lags = [run["record_lag_max"] for run in runs if run["record_lag_max"] is not None]
    return {
        "configuration": label,
        "concurrency": concurrency,
        "wall_median": statistics.median(walls),
        "wall_min": min(walls),
        "wall_max": max(walls),
        "ideal": math.ceil(args.images / concurrency) * args.latency if concurrency else None,
        "cpu_median": statistics.median(run["cpu"] for run in runs),
        "requests": [run["requests"] for run in runs],
        "rate_limited": [run["rate_limited"] for run in runs],
        "accepted_submissions": [run["accepted_submissions"] for run in runs],
        "peak_in_flight": max(run["peak_in_flight"] for run in runs),
        "peak_per_second": max(run["peak_per_second"] for run in runs),
        "in_order": all(run["in_order"] for run in runs),
        "store_writes": [run["store_writes"] for run in runs],
        "all_recorded": all(run["all_recorded"] for run in runs),
        "record_lag_max": max(lags) if lags else None,
        "runs": runs,
    }


def spread(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else f"{min(values)}-{max(values)}"


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    sequential = args.images * args.latency
    print(
        f"\nSubmitting {args.images} images with wait_for_completion=False, {args.latency * 1000:g} ms "
        f"latency per request, {args.repeat} fresh process(es) per configuration:\n"
    )
    print(
        "| configuration | wall s (range) | x latency | ideal s | requests (429) | peak in flight "
        "| peak req/s | ids in input order | store writes (all ids) | record lag max | CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ideal = f"{row['ideal']:.1f}" if row["ideal"] is not None else "-"
        lag = f"{row['record_lag_max'] * 1000:.0f} ms" if row["record_lag_max"] is not None else "-"
        wall = f"{row['wall_median']:.2f} ({row['wall_min']:.2f}-{row['wall_max']:.2f})"
        print(
            f"| {row['configuration']} | {wall} "
            f"| {row['wall_median'] / args.latency:.1f} | {ideal} "
            f"| {spread(row['requests'])} ({spread(row['rate_limited'])}) | {row['peak_in_flight']} "
            f"| {row['peak_per_second']} "
            f"| {'yes' if row['in_order'] else 'NO'} "
            f"| {spread(row['store_writes'])} ({'yes' if row['all_recorded'] else 'NO'}) "
            f"| {lag} | {row['cpu_median']:.2f} |"
        )
    print(
        f"| theoretical sequential ({args.images} x {args.latency * 1000:g} ms) | {sequential:.2f} "
        f"| {args.images} | {sequential:.1f} | {args.images} | 1 | {1 / args.latency:g} | - | - | - | - |"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100, help="images in the batch (default 100)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds added to every request (0.2)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per configuration (3)")
    parser.add_argument(
        "--concurrency", type=int, nargs="*", default=[], help=f"more `{CONCURRENCY_PARAMETER}` values to run"
    )
    parser.add_argument("--job-duration", type=float, default=1.0, help="the emulator's job duration (1 s)")
    parser.add_argument(
        "--sources",
        choices=["missing", "samples"],
        default="missing",
        help="missing: sources that 404, no image work (default); samples: the real sample image",
    )
    parser.add_argument(
        "--rate-limit-rate", type=float, default=0.0, help="fraction of requests answered 429"
    )
    parser.add_argument("--retry-after", type=float, default=None, help="Retry-After seconds on those 429s")
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child and (args.images < 1 or args.repeat < 1 or args.latency <= 0):
        parser.error("--images and --repeat must be at least 1, --latency positive")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args.child)
        return
    workdir = Path(tempfile.mkdtemp(prefix="novita-worker-submissions-"))
    # This process imports the operator (for its signature) too: never with the user's AIRFLOW_HOME.
    os.environ["AIRFLOW_HOME"] = str(workdir / "airflow-home")
    emulator: EmulatorServer | None = None
    try:
        emulator, tracker = start_emulator(args)
        template = MISSING_SOURCE if args.sources == "missing" else REAL_SOURCE
        urls = [f"{emulator.base_url}/samples/{template.format(index=i)}" for i in range(args.images)]
        rows = []
        for label, kwargs, concurrency in configurations(args):
            runs = []
            for repeat in range(args.repeat):
                name = f"{len(rows)}-{repeat}"
                runs.append(run_child(emulator, tracker, urls, kwargs, workdir, name))
                print(f"  {label}: run {repeat + 1}: {runs[-1]['wall']:.2f} s", file=sys.stderr, flush=True)
            rows.append(summarise(label, concurrency, runs, args))
    finally:
        if emulator is not None:
            emulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    report(rows, args)
    if args.output:
        figures = {
            "images": args.images,
            "latency": args.latency,
            "repeat": args.repeat,
            "sources": args.sources,
            "theoretical_sequential": args.images * args.latency,
            "configurations": rows,
        }
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    failed = [row["configuration"] for row in rows if not (row["in_order"] and row["all_recorded"])]
    if failed:
        sys.exit(f"task ids out of input order or not all recorded in: {', '.join(failed)}")


if __name__ == "__main__":
    main()
