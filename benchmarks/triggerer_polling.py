"""
What waiting for Novita jobs costs a triggerer: ``TaskResultTrigger`` beside its peer and the floor.

A triggerer holds every deferred Novita job of a deployment; what a job costs it (requests, CPU,
memory, event-loop stalls) limits how many images can be in flight. This measures it the way a
triggerer runs triggers: N triggers as coroutines in one asyncio event loop, in a fresh child
process per configuration, all started at the same moment (a burst, as when a mapped task defers),
each waiting for a job that ends 60 s after the start on average, beside a 10 ms heartbeat that
records how late the loop wakes it. Job durations are spread evenly over 45-75 s (``--job-spread``):
had every job taken exactly 60 s, a fixed poke every 5, 15 or 30 s, started with it, would come
exactly when it ends and look as if it detected every job at once. The burst is started as
Airflow 3's triggerer starts new triggers (``TriggerRunner.create_triggers``): one after another,
yielding to the loop before and after making each, so earlier triggers already run while later
ones are made.

The jobs are served by ``benchmarks/job_status_server.py``, a stateless loopback server in its own
process that answers like Novita's task-result endpoint (``eta`` = whole seconds left, rounded up)
and like an endpoint ``HttpSensorTrigger`` can poll (404 until the job's end, 200 after). Task ids
name their job's end, so nothing is submitted and the server does no work but answering.

Rows, in the same run, against the same server:

* ``floor``: sleep only, no HTTP, at the peer's pace (wake every 5 s until the job's end): what the
  machine and the harness spend on N coroutines and the heartbeat alone, in a process that has
  imported what the others import (Airflow, both triggers' modules), as a triggerer has.
* ``peer``: ``HttpSensorTrigger`` of apache-airflow-providers-http 6.3.0 (aiohttp, a new session and
  TCP connection per poke, first poke at once, then every ``poke_interval``), at 5 s: what a user
  would otherwise pick. It sleeps only after a 404 (any other error it retries at once), and logs a
  warning for each 404; both are its real behaviour and part of what it costs.
* ``ours``: ``TaskResultTrigger`` with the provider's default pace (its ``DEFAULT_POLL_INTERVAL``
  and the trigger's default ``max_poll_interval``), Novita reporting an eta; the same without eta;
  fixed 5 s (``poll_interval=5, max_poll_interval=5``); batches of 10 tasks per trigger (N/10
  triggers); with eta again, in a process that froze its heap (``gc.freeze()``) once warmed up (the
  most a freeze can give), and in one that froze it right after ``import airflow`` (a little more
  than ``gc.freeze()`` in ``airflow_local_settings.py`` freezes: Airflow imports that file while
  ``import airflow`` runs; docs/performance.md). Its deadline (``end_time``) is the jobs' end plus
  ``--grace``.
* HTTPS, for the peer and for ours with eta: a self-signed certificate made at run time, trusted by
  both clients through ``SSL_CERT_FILE`` in the measured process only (httpx's default context and
  aiohttp's, made by ``ssl.create_default_context()``, both load it; the peer's connection extra has
  no CA-bundle option for aiohttp, only ``verify: false``). No certificate check is turned off.
* sweep: floor, peer and ours (eta) at other N (100 and 10,000 in-flight jobs, one task each), for
  the CPU and RSS per job plots.
* trade-off: ours with eta on and off at (1, 10), the default, (5, 60) and (5, 5) s of
  (``poll_interval``, ``max_poll_interval``), and the peer poking every 5, 15 and 30 s, all in one
  loop (``--tradeoff-triggers`` triggers each): requests per job against how late a finished job is
  detected. The server counts requests per group (the task id's first part); CPU and RSS are not
  split per group.
* moonshot: 50,000 jobs in flight (1000 triggers x 50 tasks, eta), judged against one core on
  average, 500 MB RSS in all and the loop lag target.

Figures, per row:

* ``req/job``: requests the server answered for the row (task-result or peer endpoint), per job; for
  the floor, wake-ups per job.
* ``CPU/job``: CPU time of the measured process (all threads, ``time.process_time``) from the burst
  to the last event, per job; ``cores``: the same CPU over the wall time. Includes the heartbeat
  and Airflow's logging of the triggers' lines (to a file), as a triggerer would log them.
* ``RSS``: resident memory when the burst starts against the peak (sampled every 50 ms), per
  trigger and per job; ``over floor``: minus what the floor holds for the same number of
  coroutines (its growth per coroutine, at the same N where measured), per job: the provider's own
  state per job.
* ``lag``: how late the 10 ms heartbeat woke, p50 / p99 / max, over the whole window.
* ``full GCs``: CPython's collections of its oldest generation in the window (from ``gc.callbacks``),
  how many and the longest, and the largest lag of the beats that did not wait on one. A full
  collection walks every tracked object of the process, most of them Airflow's import heap, so its
  stall is the process's, whatever set it off.
* ``delay``: when a trigger fired minus its job's end, p50 / max.
* ``TCP``: connections the server accepted on the row's listener (exact, also for aiohttp).
* ``wall``: from the burst to the last event.

Before the window each measured process imports everything, looks its connection up and runs one
trigger of each kind against a finished job, as a running triggerer would have done long before;
the server's counters are reset after that. GC stays enabled (only the frozen-heap rows freeze), and
each window starts right after a full collection (``gc.collect()``), so that every row starts from
the same collector state. Without it a row started wherever its warm-up had left CPython's collector
(seen: the floor at 6 and ours at 7 of the 10 generation-1 collections after which a full one may
run), and whether its burst set off a full collection, ~100 ms over Airflow's heap, depended on that
more than on the row. A real triggerer meets a burst at any point of that cycle; what a trigger adds
toward the next full collection is the objects it keeps while it waits (pinned by a unit test of
``TaskResultTrigger``). Triggers still waiting 10 s after the jobs' end plus ``--grace`` are cut off
and counted. A run that fails is reported and the others go on (the exit status is then 1). Under
the tables, notes name what may skew a run: other processes busy meanwhile (from the machine's CPU
counters), a busy server, unexpected log warnings, errors.

How to read it: the machine is shared and noisy; compare ratios within one run (ours against the
peer and the floor), not absolutes across machines, and rerun before trusting a difference under
~30%. A lag max of seconds, or ``cut-off`` events, mean the loop was saturated.

Output, in ``--output-dir`` (default ``benchmarks/results/``): ``latest.json`` (machine, date,
options, every run and row, the issue's targets as measured), ``latest.md`` (the tables, also
printed), and the plots ``cpu_per_job.png``, ``rss_per_job.png``, ``loop_lag.png`` and
``tradeoff.png``. Needs the ``benchmark`` extra (``make benchmark`` installs it in ``.venv-bench``).

Flags:

* ``--quick``: smoke run, about 2 minutes: 100 triggers, 2.5-4.5 s jobs, sweep 20/100, 20 triggers per
  trade-off point (pokes 2 and 5 s), moonshot 20 x 10, grace 30 s (flags given as well still win).
  Its figures mean nothing.
* ``--only main,sweep,tradeoff,moonshot``: run only these sections (default all).
* ``--rows NAME,...``: of those sections, run only the runs so named (e.g. ``floor,ours-eta``; the
  names are the ``run`` fields of ``latest.json``). With short jobs too (``--job-duration 10
  --job-spread 5 --grace 20``), the burst against the floor in under a minute; its other figures
  (CPU, delays) then mean little, as with ``--quick``.
* ``--triggers N``: in-flight jobs of the main rows (default 1000).
* ``--job-duration S``: mean seconds from the burst to a job's end (default 60).
* ``--job-spread S``: job durations spread evenly over this many seconds around the mean (default
  30, so 45-75 s; at least the longest poke interval, so that every poke pace meets jobs ending at
  every phase of it).
* ``--sweep N,N,...``: in-flight jobs of the sweep (default 100,1000,10000; the main rows serve N).
* ``--tradeoff-triggers N``: triggers per trade-off point (default 100).
* ``--moonshot TxK``: triggers x tasks per trigger of the moonshot row (default 1000x50).
* ``--grace S``: seconds after the jobs' end before unfinished triggers are cut off (default 120;
  the moonshot gets 300).
* ``--output-dir DIR``: where results go (default ``benchmarks/results``).
* ``--keep-logs``: keep the work directory (the measured processes' and the server's logs).

Run: ``python benchmarks/triggerer_polling.py`` (about 30 minutes), or ``make benchmark``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import importlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
from job_status_server import make_task_id, raise_open_files_limit, write_self_signed_certificate

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "job_status_server.py"
CONN_ID = "novita_default"
PEER_CONN_ID = "http_peer"
API_KEY = "benchmark-key"
HEARTBEAT = 0.01
# RSS is read every this many heartbeats (50 ms): often enough for the peak, cheap enough not to be lag.
RSS_EVERY = 5
LAG_BIN = 0.5
GOLDEN_RATIO = (5**0.5 - 1) / 2
SECTIONS = ("main", "sweep", "tradeoff", "moonshot")
# (poll_interval, max_poll_interval) of the trade-off curve; None: the provider's defaults.
TRADEOFF_SETTINGS: tuple[tuple[float, float] | None, ...] = ((1, 10), None, (5, 60), (5, 5))
TRADEOFF_POKES = (5.0, 15.0, 30.0)
# gc.freeze() in the measured process: once warmed up (every import made, every first use done: the
# most a freeze can give), or right after ``import airflow``, close to what a freeze in
# airflow_local_settings.py (imported while ``import airflow`` runs) can reach.
FREEZES = {"warmed-up": "heap frozen once warmed up", "import-airflow": "heap frozen after import airflow"}
QUICK_TRADEOFF_POKES = (2.0, 5.0)
QUICK_DEFAULTS = {
    "triggers": 100,
    # Jobs of 2.5-4.5 s: over before the 5 s pokes' second round, so most quick runs take 5 s.
    "job_duration": 3.5,
    "job_spread": 2.0,
    "sweep": "20,100",
    "tradeoff_triggers": 20,
    "moonshot": "20x10",
    "grace": 30.0,
}
PEER_POKE = 5.0
# Other processes using more than this share of the machine during a run get a note under the tables.
OTHER_CORES_NOTE = 0.2
MOONSHOT_GRACE = 300.0
# The issue's targets.
TARGET_REQUESTS_PER_JOB = 2.2
TARGET_CPU_RATIO = 3.0
TARGET_STATE_PER_TASK_KB = 3.0
TARGET_LAG_P99_MS = 10.0
TARGET_LAG_MAX_VS_FLOOR = 2.0
TARGET_MOONSHOT_CORES = 1.0
TARGET_MOONSHOT_RSS_MB = 500.0


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --------------------------------------------------------------------------------------------------
# What is run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """
    Triggers of one kind and pace, started together.

    ``poll_interval`` None is the provider's default pace (resolved in the measured process, from the
    provider itself); ``max_poll_interval`` None leaves the trigger's own default.
    """

    kind: str  # floor | peer | ours
    triggers: int
    tasks_per_trigger: int = 1
    eta: bool = True
    poll_interval: float | None = None
    max_poll_interval: float | None = None
    poke_interval: float = PEER_POKE  # the peer's pace, and the floor's

    @property
    def jobs(self) -> int:
        return self.triggers * self.tasks_per_trigger


@dataclass(frozen=True)
class Run:
    """One measured process: its groups all start in the same burst."""

    name: str
    section: str
    groups: tuple[Group, ...]
    job_duration: float
    job_spread: float
    grace: float
    scheme: str = "http"
    # The line of the sweep plots this run is a point of, if any.
    series: str | None = None
    # When the measured process calls gc.freeze(), if at all: one of FREEZES.
    freeze: str = ""

    @property
    def jobs(self) -> int:
        return sum(group.jobs for group in self.groups)

    @property
    def triggers(self) -> int:
        return sum(group.triggers for group in self.groups)

    @property
    def last_end(self) -> float:
        """Seconds from the burst to the end of the longest job."""
        return self.job_duration + self.job_spread / 2


def plan(args: argparse.Namespace) -> list[Run]:
    n, duration, spread, grace = args.triggers, args.job_duration, args.job_spread, args.grace
    runs: list[Run] = []

    def single(name: str, section: str, group: Group, **kwargs: Any) -> Run:
        return Run(name, section, (group,), duration, spread, grace, **kwargs)

    def trio(n: int, section: str, suffix: str) -> list[Run]:
        return [
            single(f"floor{suffix}", section, Group("floor", n), series="floor"),
            single(f"peer-5s{suffix}", section, Group("peer", n), series="peer"),
            single(f"ours-eta{suffix}", section, Group("ours", n), series="ours"),
        ]

    if "main" in args.only:
        runs += trio(n, "main", "")
        runs += [
            single("ours-no-eta", "main", Group("ours", n, eta=False)),
            single("ours-fixed-5s", "main", Group("ours", n, poll_interval=5, max_poll_interval=5)),
            single(f"ours-batch-{n // 10}x10", "main", Group("ours", n // 10, tasks_per_trigger=10)),
            single("ours-eta-frozen", "main", Group("ours", n), freeze="warmed-up"),
            single("ours-eta-local-settings", "main", Group("ours", n), freeze="import-airflow"),
            single("peer-5s-https", "main", Group("peer", n), scheme="https"),
            single("ours-eta-https", "main", Group("ours", n), scheme="https"),
        ]
    if "sweep" in args.only:
        for size in args.sweep:
            if size != n or "main" not in args.only:
                runs += trio(size, "sweep", f"-{size}")
    if "tradeoff" in args.only:
        t = args.tradeoff_triggers
        groups = [
            Group(
                "ours", t, eta=eta, poll_interval=s[0] if s else None, max_poll_interval=s[1] if s else None
            )
            for s in TRADEOFF_SETTINGS
            for eta in (True, False)
        ]
        groups += [Group("peer", t, poke_interval=poke) for poke in args.tradeoff_pokes]
        runs.append(
            Run(
                "tradeoff",
                "tradeoff",
                tuple(groups),
                duration,
                spread,
                max(grace, 2 * max(args.tradeoff_pokes)),
            )
        )
    if "moonshot" in args.only:
        triggers, tasks = args.moonshot
        runs.append(
            Run(
                "moonshot",
                "moonshot",
                (Group("ours", triggers, tasks),),
                duration,
                spread,
                max(grace, MOONSHOT_GRACE),
            )
        )
    return runs


# --------------------------------------------------------------------------------------------------
# The measured child process
# --------------------------------------------------------------------------------------------------


class Heartbeat:
    """Wakes every 10 ms on the loop; while recording, keeps how late it woke and the peak RSS."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.samples: list[tuple[float, float]] = []
        self.peak_rss = 0
        self.recording = False
        self.stopped = False

    def start_recording(self) -> None:
        self.samples.clear()
        self.peak_rss = self.process.memory_info().rss
        self.recording = True

    async def run(self) -> None:
        beats = 0
        while not self.stopped:
            before = time.perf_counter()
            await asyncio.sleep(HEARTBEAT)
            now = time.perf_counter()
            if self.recording:
                self.samples.append((now, now - before - HEARTBEAT))
                beats += 1
                if beats % RSS_EVERY == 0:
                    self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def timeline(self, since: float) -> list[tuple[float, float]]:
        """The worst lag in each ``LAG_BIN`` seconds, in ms, against seconds since ``since``."""
        bins: dict[int, float] = {}
        for at, lag in self.samples:
            key = int((at - since) / LAG_BIN)
            bins[key] = max(bins.get(key, 0.0), lag)
        return [(round(key * LAG_BIN, 2), round(lag * 1e3, 3)) for key, lag in sorted(bins.items())]


class FullCollections:
    """When CPython collected its oldest generation while recording: the stalls the process's heap
    size, not the triggers' work, decides (a full collection walks every tracked object)."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._began: float | None = None
        self.recording = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2 or not self.recording:
            return
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            self.spans.append((self._began, time.perf_counter()))
            self._began = None

    def overlaps(self, start: float, end: float) -> bool:
        return any(began < end and start < ended for began, ended in self.spans)


def seconds_to_end(mean: float, spread: float, number: int) -> float:
    """
    Seconds from the burst to job ``number``'s end: ``mean`` +/- ``spread / 2``, spread evenly.

    Jobs that all took exactly 60 s would end in phase with every fixed poke of 5, 15 or 30 s
    (started together, a fixed poke comes exactly at 60 s), so a fixed poke would find each job the
    moment it ends. Real jobs end at any phase of a poke interval; a spread at least as wide as the
    longest poke interval gives each of them the same chance. The sequence (golden-ratio steps) is the
    same in every run, so all rows wait for the same set of jobs.
    """
    return mean + ((number * GOLDEN_RATIO) % 1.0 - 0.5) * spread


async def sleep_only(end: float, interval: float) -> tuple[str, int]:
    """The floor: the peer's pace with nothing done on waking; returns the status and the wake-ups."""
    wakeups = 0
    while time.time() < end:
        await asyncio.sleep(interval)
        wakeups += 1
    return "success", wakeups


async def fire(trigger: Any) -> tuple[str, int]:
    """Runs a trigger until its first event, as the triggerer does; returns the event's status (and 0,
    as :func:`sleep_only` returns its wake-ups)."""
    events = trigger.run()
    try:
        event = await anext(events)
    finally:
        await events.aclose()
    payload = event.payload
    if payload is True:  # HttpSensorTrigger's success
        return "success", 0
    return (str(payload.get("status")) if isinstance(payload, dict) else f"error: {payload!r}"), 0


def provider_defaults() -> tuple[float, float]:
    """The provider's default pace: what an operator left at its defaults gives the trigger."""
    import inspect

    from airflow_provider_novita.triggers.task_result import TaskResultTrigger

    try:
        from airflow_provider_novita.polling import DEFAULT_POLL_INTERVAL as interval
    except ImportError:  # the module is the provider's to change; its documented default is 2 s
        interval = 2.0
    longest = inspect.signature(TaskResultTrigger).parameters["max_poll_interval"].default
    return float(interval), float(longest)


def make_trigger(
    group: dict[str, Any], ids: list[str], deadline: float, defaults: tuple[float, float]
) -> Any:
    if group["kind"] == "peer":
        from airflow.providers.http.triggers.http import HttpSensorTrigger

        return HttpSensorTrigger(
            endpoint=f"/peer/{ids[0]}",
            http_conn_id=PEER_CONN_ID,
            method="GET",
            poke_interval=group["poke_interval"],
        )
    from airflow_provider_novita.triggers.task_result import TaskResultTrigger

    interval = group["poll_interval"] if group["poll_interval"] is not None else defaults[0]
    if group["max_poll_interval"] is None:
        return TaskResultTrigger(ids, CONN_ID, interval, deadline)
    return TaskResultTrigger(ids, CONN_ID, interval, deadline, max_poll_interval=group["max_poll_interval"])


async def warm_up(kinds: set[str], defaults: tuple[float, float]) -> None:
    """One trigger of each kind against a finished job: imports, connection, SSL context, first use.

    Every process imports both triggers' modules, the floor's too: a triggerer holds Airflow's import
    heap whatever its triggers do, and the time a garbage collection takes grows with that heap, so
    the floor has to carry the same one to be the floor of the others.
    """
    for module in ("airflow.providers.http.triggers.http", "airflow_provider_novita.triggers.task_result"):
        importlib.import_module(module)
    for kind in sorted(kinds - {"floor"}):
        group = {"kind": kind, "poke_interval": 0.1, "poll_interval": 0.1, "max_poll_interval": 0.1}
        trigger = make_trigger(
            group, [make_task_id("warm", time.time() - 1, True, 0)], time.time() + 60, defaults
        )
        status, _ = await asyncio.wait_for(fire(trigger), 60)
        if status != "success":
            raise SystemExit(f"warm-up of {kind} ended with {status}: is the server reachable and trusted?")


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    run = spec["run"]
    groups: list[dict[str, Any]] = run["groups"]
    kinds = {group["kind"] for group in groups}
    process = psutil.Process()
    defaults = provider_defaults() if "ours" in kinds else (0.0, 0.0)
    await warm_up(kinds, defaults)
    gc.collect()
    if run["freeze"] == "warmed-up":
        gc.freeze()
    collections = FullCollections()
    gc.callbacks.append(collections)
    heartbeat = Heartbeat(process)
    beating = asyncio.create_task(heartbeat.run())
    await asyncio.to_thread(Path(spec["ready_path"]).touch)
    await asyncio.to_thread(sys.stdin.readline)
    # From here on the parent may only die by closing our stdin: then stop at once.
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(3)), daemon=True).start()

    heartbeat.start_recording()
    collections.recording = True
    rss_before = heartbeat.peak_rss
    cpu_before = time.process_time()
    origin = time.perf_counter()
    started = time.time()
    last_end = started + run["job_duration"] + run["job_spread"] / 2
    # Our triggers' own deadline is the grace's end; the cut-off comes later, so that they report it.
    deadline = last_end + run["grace"]
    limit = deadline + 10 - started
    # What the triggerer reads from its database in one go when every trigger was deferred at once.
    workloads: list[tuple[int, dict[str, Any], list[str], float]] = []
    for index, group in enumerate(groups):
        per = group["tasks_per_trigger"]
        for number in range(group["triggers"]):
            jobs = [number * per + i for i in range(per)]
            ends = [started + seconds_to_end(run["job_duration"], run["job_spread"], job) for job in jobs]
            ids = [
                make_task_id(f"g{index}", end, group["eta"], job) for end, job in zip(ends, jobs, strict=True)
            ]
            workloads.append((index, group, ids, max(ends)))
    fired: list[tuple[int, float | None, str, int]] = []
    errors: set[str] = set()

    async def timed(index: int, waiting: Any, end: float) -> None:
        try:
            status, wakeups = await waiting
        except Exception as err:  # a trigger that raises fails its task on a triggerer: count it
            errors.add(f"{type(err).__name__}: {err}")
            fired.append((index, None, f"raised {type(err).__name__}", 0))
        else:
            fired.append((index, time.time() - end, status, wakeups))

    # Started as Airflow's triggerer starts them (TriggerRunner.create_triggers): it yields to the loop
    # before and after making each trigger, then creates its task, so triggers made earlier already
    # run while later ones are made, and the heartbeat gets its turns.
    tasks = []
    for index, group, ids, end in workloads:
        await asyncio.sleep(0)
        if group["kind"] == "floor":
            waiting = sleep_only(end, group["poke_interval"])
        else:
            waiting = fire(make_trigger(group, ids, deadline, defaults))
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(timed(index, waiting, end)))
    _, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    finished = time.perf_counter()
    cpu = time.process_time() - cpu_before
    rss_end = process.memory_info().rss
    heartbeat.stopped = True
    await beating
    collections.recording = False
    lags = [lag for _, lag in heartbeat.samples]
    # A beat waited on a full collection if the collection ran while the beat slept or overslept.
    lags_without_full_gc = [
        lag for at, lag in heartbeat.samples if not collections.overlaps(at - HEARTBEAT - lag, at)
    ]
    cut_off = Counter(index for index, *_ in workloads)
    cut_off.subtract(index for index, *_ in fired)
    return {
        "wall": finished - origin,
        "cpu": cpu,
        "rss_before": rss_before,
        "rss_peak": max(heartbeat.peak_rss, rss_end),
        "lag_p50": percentile(lags, 0.50),
        "lag_p99": percentile(lags, 0.99),
        "lag_max": max(lags, default=None),
        "lag_max_without_full_gc": max(lags_without_full_gc, default=None),
        "full_gc_count": len(collections.spans),
        "full_gc_max": max((ended - began for began, ended in collections.spans), default=None),
        "timeline": heartbeat.timeline(origin),
        "fired": fired,
        "cut_off": {str(index): count for index, count in cut_off.items() if count},
        "errors": sorted(errors)[:5],
        "defaults": defaults,
    }


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    raise_open_files_limit()
    if spec["run"]["freeze"] == "import-airflow":
        importlib.import_module("airflow")
        gc.freeze()
    result = asyncio.run(measure(spec))
    Path(spec["result_path"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# The parent: server, measured processes
# --------------------------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class JobServer:
    process: subprocess.Popen[str]
    ports: dict[str, int]
    cert: Path

    @classmethod
    def start(cls, workdir: Path) -> JobServer:
        cert, key = write_self_signed_certificate(workdir)
        command = [sys.executable, str(SERVER_SCRIPT), "--certfile", str(cert), "--keyfile", str(key)]
        with (workdir / "server.log").open("w") as log:
            # stdin stays open: the server stops when it closes, however this process ends.
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(30)
        try:
            ports = json.loads(first[0]) if first and first[0] else None
        except ValueError:
            ports = None
        if not ports:
            stop_process(process)
            raise SystemExit(f"the job-status server did not start; see {workdir / 'server.log'}")
        return cls(process, ports, cert)

    def stats(self, reset: bool = False) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.ports['control']}/stats" + ("?reset=1" if reset else "")
        with urllib.request.urlopen(url, timeout=30) as response:
            return dict(json.load(response))

    def cpu(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        stop_process(self.process)


def child_env(run: Run, server: JobServer, workdir: Path) -> dict[str, str]:
    port = server.ports[run.scheme]
    env = {
        **os.environ,
        # A throwaway Airflow home: importing Airflow writes its config there, not in the user's.
        "AIRFLOW_HOME": str(workdir / "airflow-home"),
        # The env secrets backend serves both connections, as a deployment's backend would.
        "AIRFLOW_CONN_NOVITA_DEFAULT": json.dumps(
            {"conn_type": "novita", "host": f"{run.scheme}://127.0.0.1:{port}", "password": API_KEY}
        ),
        "AIRFLOW_CONN_HTTP_PEER": json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": run.scheme}
        ),
    }
    if run.scheme == "https":
        # The only trust both clients take without code: httpx's default context and aiohttp's (made
        # with ssl.create_default_context()) both load SSL_CERT_FILE. Nothing disables verification.
        env["SSL_CERT_FILE"] = str(server.cert)
    else:
        env.pop("SSL_CERT_FILE", None)
    return env


def machine_cpu() -> dict[str, float]:
    """
    CPU seconds the whole machine has spent so far, over all cores: in processes (``process``:
    user, nice, system), in interrupts (``interrupts``: irq, softirq, where the kernel moves loopback
    traffic without charging it to a process) and taken by the hypervisor (``steal``).
    """
    times = psutil.cpu_times()

    def total(*names: str) -> float:
        return float(sum(getattr(times, name, 0.0) for name in names))

    return {
        "process": total("user", "nice", "system"),
        "interrupts": total("irq", "softirq"),
        "steal": total("steal"),
    }


class RunFailed(Exception):
    """A measured process that did not start, failed or overran: the other runs still go on."""


def run_child(run: Run, server: JobServer, workdir: Path) -> dict[str, Any]:
    """Runs one measured process; returns its own figures with the server's counters for the window."""
    spec = {
        "run": asdict(run),
        "ready_path": str(workdir / f"{run.name}.ready"),
        "result_path": str(workdir / f"{run.name}.json"),
    }
    spec_path = workdir / f"{run.name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"{run.name}.log"
    with log_path.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(spec_path)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(run, server, workdir),
        )
    try:
        ready, deadline = Path(spec["ready_path"]), time.monotonic() + 180
        while not ready.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                raise RunFailed(f"the measured process did not get ready; see {log_path}")
            time.sleep(0.05)
        server.stats(reset=True)
        server_cpu = server.cpu()
        machine_before, parent_before = machine_cpu(), time.process_time()
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        try:
            code = child.wait(run.last_end + run.grace + 180)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"the measured process did not finish in time; see {log_path}") from None
        if code != 0:
            raise RunFailed(f"the measured process failed (exit code {code}); see {log_path}")
        stats = server.stats(reset=True)
        server_cpu = server.cpu() - server_cpu
        machine_after, parent_cpu = machine_cpu(), time.process_time() - parent_before
        machine = {key: machine_after[key] - machine_before[key] for key in machine_after}
        result: dict[str, Any] = json.loads(Path(spec["result_path"]).read_text())
    finally:
        stop_process(child)
    lines = log_path.read_text(errors="replace").splitlines()
    result.update(
        stats=stats,
        server_cpu=server_cpu,
        # What else the machine ran meanwhile: it is shared, and 2 cores leave little room.
        other_cpu=max(0.0, machine["process"] - parent_cpu - server_cpu - result["cpu"]),
        interrupt_cpu=machine["interrupts"],
        steal_cpu=machine["steal"],
        log_lines=len(lines),
        log_warnings=sum(1 for line in lines if "warning" in line.lower() or "error" in line.lower()),
    )
    return result


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def label(group: Group, defaults: tuple[float, float]) -> str:
    if group.kind == "floor":
        return f"sleep only (floor), every {group.poke_interval:g} s"
    if group.kind == "peer":
        return f"HttpSensorTrigger, every {group.poke_interval:g} s"
    interval = group.poll_interval if group.poll_interval is not None else defaults[0]
    longest = group.max_poll_interval if group.max_poll_interval is not None else defaults[1]
    pace = "fixed 5 s" if (interval, longest) == (5, 5) else f"{interval:g}-{longest:g} s"
    if group.poll_interval is None and group.max_poll_interval is None:
        pace = f"default {pace}"
    batch = f", {group.triggers}x{group.tasks_per_trigger}" if group.tasks_per_trigger > 1 else ""
    return f"TaskResultTrigger, {pace}, {'eta' if group.eta else 'no eta'}{batch}"


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Measured:
    run: Run
    raw: dict[str, Any]

    @property
    def listener(self) -> dict[str, int]:
        return dict(self.raw["stats"]["listeners"].get(self.run.scheme, {}))

    def run_figures(self) -> dict[str, Any]:
        raw, run = self.raw, self.run
        growth = max(0, raw["rss_peak"] - raw["rss_before"])
        return {
            "name": run.name,
            "section": run.section,
            "kinds": sorted({group.kind for group in run.groups}),
            "scheme": run.scheme,
            "triggers": run.triggers,
            "jobs": run.jobs,
            "job_duration_s": run.job_duration,
            "job_spread_s": run.job_spread,
            "grace_s": run.grace,
            "wall_s": rounded(raw["wall"]),
            "cpu_s": rounded(raw["cpu"], 3),
            "cores": rounded(raw["cpu"] / raw["wall"], 3),
            "rss_before_mb": rounded(raw["rss_before"] / 2**20, 1),
            "rss_peak_mb": rounded(raw["rss_peak"] / 2**20, 1),
            "rss_growth_kb": rounded(growth / 1024, 1),
            "lag_p50_ms": rounded(raw["lag_p50"] and raw["lag_p50"] * 1e3),
            "lag_p99_ms": rounded(raw["lag_p99"] and raw["lag_p99"] * 1e3),
            "lag_max_ms": rounded(raw["lag_max"] and raw["lag_max"] * 1e3),
            "lag_max_without_full_gc_ms": rounded(
                raw["lag_max_without_full_gc"] and raw["lag_max_without_full_gc"] * 1e3
            ),
            "full_gc_count": raw["full_gc_count"],
            "full_gc_max_ms": rounded(raw["full_gc_max"] and raw["full_gc_max"] * 1e3),
            "freeze": run.freeze,
            "tcp_connections": self.listener.get("accepted"),
            "max_open_connections": self.listener.get("max_open"),
            "server_cores": rounded(raw["server_cpu"] / raw["wall"], 3),
            "other_cores": rounded(raw["other_cpu"] / raw["wall"], 3),
            "interrupt_cores": rounded(raw["interrupt_cpu"] / raw["wall"], 3),
            "steal_cores": rounded(raw["steal_cpu"] / raw["wall"], 3),
            "log_lines": raw["log_lines"],
            "log_warnings_or_errors": raw["log_warnings"],
            "errors": raw["errors"],
            "stray_requests": raw["stats"]["requests"].get("-", {}),
            "timeline": raw["timeline"],
        }


def group_rows(measured: Measured, floors: dict[int, float]) -> list[dict[str, Any]]:
    """A row per group; CPU, RSS and lag only where the run has one group to give them to."""
    raw, run = measured.raw, measured.run
    figures = measured.run_figures()
    alone = len(run.groups) == 1
    defaults = tuple(raw["defaults"])
    rows = []
    for index, group in enumerate(run.groups):
        fired = [f for f in raw["fired"] if f[0] == index]
        delays = [delay for _, delay, _, _ in fired if delay is not None]
        statuses: dict[str, int] = {}
        for _, _, status, _ in fired:
            statuses[status] = statuses.get(status, 0) + 1
        if cut := raw["cut_off"].get(str(index)):
            statuses["cut-off"] = cut
        answers = raw["stats"]["requests"].get(f"g{index}", {})
        if group.kind == "floor":
            requests = None
            per_job = sum(wakeups for *_, wakeups in fired) / group.jobs
        else:
            requests = sum(answers.values())
            per_job = requests / group.jobs
        row: dict[str, Any] = {
            "run": run.name,
            "section": run.section,
            "series": run.series,
            "label": ("moonshot: " if run.section == "moonshot" else "")
            + label(group, defaults)
            + (", HTTPS" if run.scheme == "https" else "")
            + (f", {FREEZES[run.freeze]}" if run.freeze else ""),
            "kind": group.kind,
            "scheme": run.scheme,
            "triggers": group.triggers,
            "tasks_per_trigger": group.tasks_per_trigger,
            "jobs": group.jobs,
            "eta": group.eta if group.kind == "ours" else None,
            "poll_interval": (group.poll_interval or defaults[0]) if group.kind == "ours" else None,
            "max_poll_interval": (group.max_poll_interval or defaults[1]) if group.kind == "ours" else None,
            "poke_interval": group.poke_interval if group.kind != "ours" else None,
            "default_pace": group.kind == "ours"
            and group.poll_interval is None
            and group.max_poll_interval is None,
            "requests": requests,
            "requests_per_job": rounded(per_job),
            "answers": answers,
            "delay_p50_s": rounded(percentile(delays, 0.5)),
            "delay_max_s": rounded(max(delays, default=None)),
            "statuses": statuses,
        }
        shared = (
            "cores",
            "rss_peak_mb",
            "lag_p50_ms",
            "lag_p99_ms",
            "lag_max_ms",
            "tcp_connections",
            "max_open_connections",
            "wall_s",
            "lag_max_without_full_gc_ms",
            "full_gc_count",
            "full_gc_max_ms",
        )
        row.update(dict.fromkeys(shared), cpu_per_job_ms=None, rss_per_trigger_kb=None, rss_per_job_kb=None)
        row["rss_over_floor_per_job_kb"] = None
        if alone:
            growth = max(0, raw["rss_peak"] - raw["rss_before"])
            floor = floors.get(group.triggers, floors.get(0))
            over = None if floor is None else (growth - floor * group.triggers) / group.jobs / 1024
            row.update(
                {key: figures[key] for key in shared},
                cpu_per_job_ms=rounded(raw["cpu"] / group.jobs * 1e3, 3),
                rss_per_trigger_kb=rounded(growth / group.triggers / 1024),
                rss_per_job_kb=rounded(growth / group.jobs / 1024),
                rss_over_floor_per_job_kb=rounded(over),
            )
        rows.append(row)
    return rows


def floor_growth(measured: list[Measured]) -> dict[int, float]:
    """The floor's RSS growth per coroutine, by N; key 0 is the main rows' floor, the fallback."""
    floors: dict[int, float] = {}
    for m in measured:
        group = m.run.groups[0]
        if len(m.run.groups) == 1 and group.kind == "floor":
            per = max(0, m.raw["rss_peak"] - m.raw["rss_before"]) / group.triggers
            floors[group.triggers] = per
            if m.run.section == "main":
                floors[0] = per
    return floors


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets against this run's figures; ``met`` is None where a figure is missing."""
    checks: list[dict[str, Any]] = []

    def check(target: str, measured: str, met: bool | None) -> None:
        checks.append({"target": target, "measured": measured, "met": met})

    def num(row: dict[str, Any] | None, key: str) -> Any:
        return None if row is None else row.get(key)

    main = [r for r in rows if r["section"] == "main"]
    trade = [r for r in rows if r["section"] == "tradeoff"]
    floor, peer = find(main, kind="floor"), find(main, run="peer-5s")
    eta, no_eta = find(main, run="ours-eta"), find(main, run="ours-no-eta")
    batch = next((r for r in main if r["run"].startswith("ours-batch")), None)
    floor_max = num(floor, "lag_max_ms")

    def lag_ok(row: dict[str, Any]) -> bool | None:
        p99, worst = row.get("lag_p99_ms"), row.get("lag_max_ms")
        if p99 is None or worst is None or floor_max is None:
            return None
        return bool(p99 <= TARGET_LAG_P99_MS and worst <= TARGET_LAG_MAX_VS_FLOOR * floor_max)

    value = num(eta, "requests_per_job")
    check(
        f"1. requests per job with an exact eta <= {TARGET_REQUESTS_PER_JOB:g}",
        _v(value),
        _le(value, TARGET_REQUESTS_PER_JOB),
    )
    mine, theirs = num(no_eta, "requests_per_job"), num(peer, "requests_per_job")
    check(
        "1. requests per job without eta < the peer's at 5 s",
        f"{_v(mine)} vs {_v(theirs)}",
        _lt(mine, theirs),
    )
    default_no_eta = find(trade, kind="ours", eta=False, default_pace=True)
    mine, theirs = (
        num(default_no_eta, "delay_max_s"),
        num(find(trade, kind="peer", poke_interval=30.0), "delay_max_s"),
    )
    check(
        "1. without eta (default pace), detection delay max <= a fixed 30 s poke's (trade-off run)",
        f"{_v(mine)} s vs {_v(theirs)} s",
        _le(mine, theirs),
    )
    for scheme, suffix in (("HTTP", ""), ("HTTPS", "-https")):
        mine = num(find(main, run=f"ours-eta{suffix}"), "cpu_per_job_ms")
        theirs = num(find(main, run=f"peer-5s{suffix}"), "cpu_per_job_ms")
        ratio = theirs / mine if mine and theirs else None
        check(
            f"2. CPU per job >= {TARGET_CPU_RATIO:g}x less than the peer at 5 s, {scheme}",
            f"{_v(mine)} vs {_v(theirs)} ms: {_v(ratio and round(ratio, 2))}x less",
            None if ratio is None else ratio >= TARGET_CPU_RATIO,
        )
    mine, theirs = num(batch, "cpu_per_job_ms"), num(eta, "cpu_per_job_ms")
    check(
        "3. a batch of 10 costs no more CPU per job than single triggers",
        f"{_v(mine)} vs {_v(theirs)} ms",
        _le(mine, theirs),
    )
    over = num(batch, "rss_over_floor_per_job_kb")
    check(
        f"3. provider state per task (RSS over the floor), batches of 10 <= {TARGET_STATE_PER_TASK_KB:g} KB",
        f"{_v(over)} KB",
        _le(over, TARGET_STATE_PER_TASK_KB),
    )
    for row in [r for r in main if r["kind"] == "ours"]:
        check(
            f"4. loop lag p99 <= {TARGET_LAG_P99_MS:g} ms and max <= {TARGET_LAG_MAX_VS_FLOOR:g}x the "
            f"floor's, burst of {row['jobs']} jobs: {row['label']}",
            f"p99 {_v(row['lag_p99_ms'])} ms, max {_v(row['lag_max_ms'])} ms (floor max {_v(floor_max)} ms); "
            f"{full_collections(row)}",
            lag_ok(row),
        )
    moon = find(rows, section="moonshot")
    if moon is not None:
        cores, rss, lag = moon["cores"], moon["rss_peak_mb"], lag_ok(moon)
        met = _lt(cores, TARGET_MOONSHOT_CORES), _lt(rss, TARGET_MOONSHOT_RSS_MB), lag
        check(
            f"5. moonshot, {moon['jobs']} jobs ({moon['triggers']} x {moon['tasks_per_trigger']}): "
            f"< {TARGET_MOONSHOT_CORES:g} core on average, < {TARGET_MOONSHOT_RSS_MB:g} MB RSS, lag as in 4",
            f"{_v(cores)} cores, {_v(rss)} MB, lag p99 {_v(moon['lag_p99_ms'])} ms / max "
            f"{_v(moon['lag_max_ms'])} ms; {_v(moon['requests_per_job'])} requests per job, "
            f"detection delay max {_v(moon['delay_max_s'])} s, events {moon['statuses']}",
            None if None in met else all(met),
        )
    return checks


def full_collections(row: dict[str, Any]) -> str:
    """How much of a row's lag was its process's full garbage collections."""
    return (
        f"full GCs {_v(row['full_gc_count'])} (longest {_v(row['full_gc_max_ms'])} ms), "
        f"max lag of the beats that waited on none {_v(row['lag_max_without_full_gc_ms'])} ms"
    )


def _v(value: Any) -> str:
    return "-" if value is None else str(value)


def _le(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a <= b


def _lt(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a < b


# --------------------------------------------------------------------------------------------------
# Output: tables, JSON, plots
# --------------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = "g", unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{unit}"


def tables(
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    context: dict[str, Any],
    failed: dict[str, str],
) -> str:
    out = [
        f"Measured {context['date']} on {context['machine']['summary']}; jobs of "
        f"{job_range(context['options'])}; one run each.",
        "",
        "| row | jobs | req/job | CPU/job | cores | RSS/job | over floor | lag p50 / p99 / max | "
        "full GCs: n, longest; max lag without | delay p50 / max | TCP | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["section"] not in ("main", "moonshot"):
            continue
        requests = _fmt(row["requests_per_job"], ".1f") + (" wake-ups" if row["kind"] == "floor" else "")
        lag = (
            f"{_fmt(row['lag_p50_ms'], '.1f')} / {_fmt(row['lag_p99_ms'], '.1f')} "
            f"/ {_fmt(row['lag_max_ms'], '.0f')} ms"
        )
        collections = (
            f"{_fmt(row['full_gc_count'])}, {_fmt(row['full_gc_max_ms'], '.0f', ' ms')}; "
            f"{_fmt(row['lag_max_without_full_gc_ms'], '.0f', ' ms')}"
        )
        delay = f"{_fmt(row['delay_p50_s'], '.1f')} / {_fmt(row['delay_max_s'], '.1f')} s"
        if row["kind"] == "floor":  # it detects nothing: its "delay" is only its pace
            delay = "-"
        problems = {k: v for k, v in row["statuses"].items() if k != "success"}
        note = f" ({', '.join(f'{k} {v}' for k, v in problems.items())})" if problems else ""
        out.append(
            f"| {row['label']}{note} | {row['jobs']} | {requests} "
            f"| {_fmt(row['cpu_per_job_ms'], '.2f', ' ms')} "
            f"| {_fmt(row['cores'], '.2f')} | {_fmt(row['rss_per_job_kb'], '.1f', ' KB')} "
            f"| {_fmt(row['rss_over_floor_per_job_kb'], '.1f', ' KB')} | {lag} | {collections} | {delay} "
            f"| {_fmt(row['tcp_connections'])} | {_fmt(row['wall_s'], '.0f', ' s')} |"
        )
    sweep = sorted(
        (r for r in rows if r.get("series") and r["scheme"] == "http"), key=lambda r: (r["jobs"], r["kind"])
    )
    if sweep:
        out += [
            "",
            "| in-flight jobs | row | CPU/job | RSS/job | lag p99 / max | req/job |",
            "|---|---|---|---|---|---|",
        ]
        for row in sweep:
            out.append(
                f"| {row['jobs']} | {row['label']} | {_fmt(row['cpu_per_job_ms'], '.2f', ' ms')} "
                f"| {_fmt(row['rss_per_job_kb'], '.1f', ' KB')} "
                f"| {_fmt(row['lag_p99_ms'], '.1f')} / {_fmt(row['lag_max_ms'], '.0f')} ms "
                f"| {_fmt(row['requests_per_job'], '.1f')} |"
            )
    trade = [r for r in rows if r["section"] == "tradeoff"]
    if trade:
        out += ["", "| trade-off point | req/job | delay p50 / max |", "|---|---|---|"]
        for row in sorted(trade, key=lambda r: (r["kind"], not r["eta"], r["requests_per_job"] or 0)):
            problems = {k: v for k, v in row["statuses"].items() if k != "success"}
            note = f" ({', '.join(f'{k} {v}' for k, v in problems.items())})" if problems else ""
            out.append(
                f"| {row['label']}{note} | {_fmt(row['requests_per_job'], '.2f')} "
                f"| {_fmt(row['delay_p50_s'], '.1f')} / {_fmt(row['delay_max_s'], '.1f')} s |"
            )
    if checks:
        out += ["", "Issue targets, as measured in this run:", ""]
        for item in checks:
            verdict = {True: "met", False: "NOT met", None: "not measured"}[item["met"]]
            out.append(f"- {item['target']}: {item['measured']} - **{verdict}**")
    notes = [f"- {name}: FAILED, no figures: {reason}" for name, reason in failed.items()]
    if notes := notes + run_notes(runs):
        out += ["", "Notes on the runs:", "", *notes]
    return "\n".join(out)


def run_notes(runs: list[dict[str, Any]]) -> list[str]:
    """What may make a run's figures describe something else than the steady cost."""
    notes = []
    for run in runs:
        found = []
        if run["errors"]:
            found.append(f"triggers raised: {'; '.join(run['errors'])}")
        if run["stray_requests"]:
            found.append(f"requests the server could not attribute: {run['stray_requests']}")
        if run["server_cores"] and run["server_cores"] > 0.5:
            found.append(f"the server used {run['server_cores']:.2f} cores: it may have slowed answers")
        if run["other_cores"] > OTHER_CORES_NOTE:
            found.append(f"other processes used {run['other_cores']:.2f} cores meanwhile (shared machine)")
        if run["steal_cores"] > OTHER_CORES_NOTE:
            found.append(f"the hypervisor took {run['steal_cores']:.2f} cores (steal)")
        if run["log_warnings_or_errors"] and "peer" not in run["kinds"]:
            # The peer logs a warning for every 404 poke by design; anywhere else a warning means retries.
            found.append(f"{run['log_warnings_or_errors']} log lines with warnings or errors")
        if found:
            notes.append(f"- {run['name']}: " + "; ".join(found))
    return notes


def job_range(options: dict[str, Any]) -> str:
    low = options["job_duration"] - options["job_spread"] / 2
    high = options["job_duration"] + options["job_spread"] / 2
    return f"{low:g}-{high:g} s ({options['job_duration']:g} s on average)"


def machine() -> dict[str, Any]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in (
        "apache-airflow",
        "apache-airflow-providers-http",
        "airflow-provider-novita",
        "httpx",
        "httpcore",
        "aiohttp",
        "psutil",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cores = os.cpu_count()
    memory = psutil.virtual_memory().total / 2**30
    commit = None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True)
        if head.returncode == 0:
            commit = head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return {
        "cores": cores,
        "cpu_model": model,
        "memory_gb": round(memory, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "summary": f"{cores} cores ({model}), {memory:.0f} GB, Python {platform.python_version()}, "
        f"Airflow {versions['apache-airflow']}, httpx {versions['httpx']}, aiohttp {versions['aiohttp']}",
    }


def line_color(run_name: str) -> str:
    """The same row keeps its colour in every plot; the peer is red, the floor grey, ours blue-green."""
    for prefix, color in (
        ("floor", "tab:gray"),
        ("peer-5s-https", "darkred"),
        ("peer", "tab:red"),
        ("ours-eta-https", "navy"),
        ("ours-eta-frozen", "tab:pink"),
        ("ours-eta-local-settings", "tab:brown"),
        ("ours-eta", "tab:blue"),
        ("ours-no-eta", "tab:cyan"),
        ("ours-fixed", "tab:green"),
        ("ours-batch", "tab:olive"),
        ("moonshot", "tab:purple"),
    ):
        if run_name.startswith(prefix):
            return color
    return "black"


def coarser(timeline: list[list[float]], wall: float) -> list[tuple[float, float]]:
    """Bins of about a 60th of the run (at least ``LAG_BIN``), each its worst lag: a readable line."""
    width = max(LAG_BIN, round(wall / 60 / LAG_BIN) * LAG_BIN)
    bins: dict[float, float] = {}
    for at, lag in timeline:
        key = (at // width) * width
        bins[key] = max(bins.get(key, 0.0), lag)
    return sorted(bins.items())


def plots(rows: list[dict[str, Any]], runs: list[dict[str, Any]], output: Path, jobs: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    written: list[Path] = []
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    colors = {"floor": "tab:gray", "peer": "tab:red", "ours": "tab:blue"}
    names = {
        "floor": "sleep only (floor)",
        "peer": "HttpSensorTrigger, 5 s",
        "ours": "TaskResultTrigger, eta",
    }

    sweep = [r for r in rows if r.get("series") and r["scheme"] == "http"]
    for key, ylabel, filename in (
        ("cpu_per_job_ms", "CPU per job (ms)", "cpu_per_job.png"),
        ("rss_per_job_kb", "RSS per job (KB)", "rss_per_job.png"),
    ):
        if not sweep:
            break
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for series in ("floor", "peer", "ours"):
            points = sorted(
                (r["jobs"], r[key]) for r in sweep if r["series"] == series and r[key] is not None
            )
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(xs, ys, marker="o", color=colors[series], label=names[series])
                for x, y in points:
                    axes.annotate(f"{y:.3g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes.set_xscale("log")
        axes.set_yscale("log")
        # Plain numbers on log axes, and x ticks only where something was measured.
        axes.set_xticks(sorted({r["jobs"] for r in sweep}))
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(plain)
        axes.set_xlabel("jobs in flight (one per trigger, all deferred at once)")
        axes.set_ylabel(ylabel)
        axes.set_title(f"{ylabel} in one triggerer event loop")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(output / filename, dpi=120)
        plt.close(figure)
        written.append(output / filename)

    timed = {run["name"]: run for run in runs if run["section"] in ("main", "moonshot")}
    if timed:
        figure, panels = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        panel_runs = (
            [n for n in timed if timed[n]["scheme"] == "http" and timed[n]["section"] == "main"],
            [n for n in timed if timed[n]["scheme"] == "https" or timed[n]["section"] == "moonshot"],
        )
        labels = {r["run"]: r["label"] for r in rows}
        for axes, selected, title in zip(
            panels, panel_runs, ("HTTP, main rows", "HTTPS rows and the moonshot"), strict=True
        ):
            for name in selected:
                timeline = coarser(timed[name]["timeline"], timed[name]["wall_s"])
                if timeline:
                    xs, ys = zip(*timeline, strict=True)
                    axes.plot(
                        xs,
                        [max(y, 0.01) for y in ys],
                        linewidth=1,
                        color=line_color(name),
                        label=labels[name],
                    )
            axes.axhline(TARGET_LAG_P99_MS, color="black", linestyle="--", linewidth=0.8, label="10 ms")
            axes.set_yscale("log")
            axes.yaxis.set_major_formatter(plain)
            axes.set_xlabel("seconds since the burst")
            axes.set_title(title)
            axes.grid(True, which="both", alpha=0.3)
            axes.legend(fontsize=7)
        panels[0].set_ylabel("worst heartbeat lag in each bin (ms)")
        figure.tight_layout()
        figure.savefig(output / "loop_lag.png", dpi=120)
        plt.close(figure)
        written.append(output / "loop_lag.png")

    trade = [r for r in rows if r["section"] == "tradeoff" and r["delay_p50_s"] is not None]
    if trade:
        figure, axes = plt.subplots(figsize=(8, 5))
        for title, selected, color in (
            ("TaskResultTrigger, eta", [r for r in trade if r["kind"] == "ours" and r["eta"]], "tab:blue"),
            (
                "TaskResultTrigger, no eta",
                [r for r in trade if r["kind"] == "ours" and not r["eta"]],
                "tab:cyan",
            ),
            ("HttpSensorTrigger, fixed poke", [r for r in trade if r["kind"] == "peer"], "tab:red"),
        ):
            if not selected:
                continue
            xs = [r["delay_p50_s"] for r in selected]
            ys = [r["requests_per_job"] for r in selected]
            spread = [[0] * len(selected), [max(0.0, r["delay_max_s"] - r["delay_p50_s"]) for r in selected]]
            # Points, not a line: the settings are not an ordered series.
            axes.errorbar(xs, ys, xerr=spread, fmt="o", color=color, label=title, capsize=3, alpha=0.85)
            # Points that (nearly) coincide share one label instead of printing over each other.
            tags: dict[tuple[float, float], list[str]] = {}
            for row, x, y in zip(selected, xs, ys, strict=True):
                if row["kind"] == "peer":
                    tag = f"{row['poke_interval']:g} s"
                else:
                    tag = f"{row['poll_interval']:g}/{row['max_poll_interval']:g}"
                spot = next((k for k in tags if abs(k[0] - x) < 1.5 and abs(k[1] - y) < 0.3), (x, y))
                tags.setdefault(spot, []).append(tag)
            for (x, y), names in tags.items():
                axes.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes.set_ylim(bottom=0)
        axes.set_xlim(left=0)
        axes.set_xlabel("detection delay: event after the job's end, p50 (bar to max), s")
        axes.text(
            0.99,
            0.02,
            "labels: poll_interval/max_poll_interval (s), or the peer's poke interval",
            transform=axes.transAxes,
            ha="right",
            fontsize=7,
            color="dimgray",
        )
        axes.set_ylabel("requests per job")
        axes.set_title(f"Requests per job against detection delay; jobs of {jobs}")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(output / "tradeoff.png", dpi=120)
        plt.close(figure)
        written.append(output / "tradeoff.png")
    return written


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="See the module docstring for what is measured and how.",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke run, about 2 minutes")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"of {', '.join(SECTIONS)}")
    parser.add_argument("--rows", default="", help="run only these runs of the sections, e.g. floor,ours-eta")
    parser.add_argument("--triggers", type=int, default=1000, help="in-flight jobs of the main rows")
    parser.add_argument("--job-duration", type=float, default=60.0, help="mean seconds to a job's end")
    parser.add_argument("--job-spread", type=float, default=30.0, help="job durations spread over this")
    parser.add_argument("--sweep", default="100,1000,10000", help="in-flight jobs of the sweep")
    parser.add_argument("--tradeoff-triggers", type=int, default=100, help="triggers per trade-off point")
    parser.add_argument("--moonshot", default="1000x50", help="triggers x tasks per trigger")
    parser.add_argument("--grace", type=float, default=120.0, help="seconds after the jobs' end, then cut")
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    if "--quick" in sys.argv[1:]:
        # Smaller defaults; flags given explicitly still win.
        parser.set_defaults(**QUICK_DEFAULTS)
    args = parser.parse_args()
    if args.child:
        return args
    args.tradeoff_pokes = QUICK_TRADEOFF_POKES if args.quick else TRADEOFF_POKES
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(args.only) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    args.sweep = [int(n) for n in args.sweep.split(",") if n.strip()]
    try:
        triggers, tasks = (int(x) for x in args.moonshot.lower().split("x"))
    except ValueError:
        parser.error("--moonshot is TRIGGERSxTASKS, e.g. 1000x50")
    args.moonshot = (triggers, tasks)
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args.child)
        return
    # SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C, so every process started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = plan(args)
    if args.rows:
        wanted = {name.strip() for name in args.rows.split(",") if name.strip()}
        if unknown := wanted - {run.name for run in runs}:
            sys.exit(f"no such runs in {', '.join(args.only)}: {', '.join(sorted(unknown))}")
        runs = [run for run in runs if run.name in wanted]
    output: Path = args.output_dir
    output.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="triggerer-bench-"))
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    context = {
        "date": date,
        "machine": machine(),
        "options": {
            "quick": args.quick,
            "sections": args.only,
            "rows": args.rows,
            "triggers": args.triggers,
            "job_duration": args.job_duration,
            "job_spread": args.job_spread,
            "sweep": args.sweep,
            "tradeoff_triggers": args.tradeoff_triggers,
            "tradeoff_pokes": list(args.tradeoff_pokes),
            "moonshot": list(args.moonshot),
            "grace": args.grace,
            "heartbeat_s": HEARTBEAT,
        },
    }
    print(f"{len(runs)} runs, jobs of {job_range(context['options'])}; work directory {workdir}", flush=True)
    measured: list[Measured] = []
    failed: dict[str, str] = {}
    server = JobServer.start(workdir)
    finished = False
    try:
        for number, run in enumerate(runs, 1):
            began = time.monotonic()
            print(
                f"[{number}/{len(runs)}] {run.name}: {run.triggers} triggers, {run.jobs} jobs ...",
                end=" ",
                flush=True,
            )
            try:
                measured.append(Measured(run, run_child(run, server, workdir)))
            except (RunFailed, OSError) as err:  # OSError: the server did not answer its counters
                failed[run.name] = str(err)
                print(f"FAILED: {err}", flush=True)
            else:
                print(f"{time.monotonic() - began:.0f} s", flush=True)
        finished = True
    finally:
        server.stop()
        if finished and not failed and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", flush=True)
    floors = floor_growth(measured)
    rows = [row for m in measured for row in group_rows(m, floors)]
    run_figures = [m.run_figures() for m in measured]
    checks = targets(rows)
    document = {**context, "runs": run_figures, "rows": rows, "targets": checks, "failed_runs": failed}
    (output / "latest.json").write_text(json.dumps(document, indent=1))
    text = tables(rows, run_figures, checks, context, failed)
    (output / "latest.md").write_text(text + "\n")
    written = plots(rows, run_figures, output, job_range(context["options"]))
    print()
    print(text)
    print()
    print(f"wrote {output / 'latest.json'}, {output / 'latest.md'}, " + ", ".join(p.name for p in written))
    if failed:
        sys.exit(f"{len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
