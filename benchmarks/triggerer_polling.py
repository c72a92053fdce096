"""
What waiting for many Novita tasks costs the triggerer: ``TaskResultTrigger`` measured like its peers.

The project's performance notes measured peers this way: N triggers run as coroutines in one
event loop, as the triggerer runs them, beside a 10 ms heartbeat that records event-loop lag, each
polling a loopback job-status server every 5 s until its job finishes 60 s after the start. This
script does the same with :class:`~airflow_provider_novita.triggers.task_result.TaskResultTrigger`
against the provider's emulator (``python -m airflow_provider_novita.emulator``), run as a separate
process on loopback, and prints the peers' figures below ours.

Configurations (``--policies``), each for ``--triggers`` triggers of ``--tasks-per-trigger`` tasks:

* ``eta``: the provider's default pace (``poll_interval`` 2 s, ``max_poll_interval`` 30 s): first
  poll after 2 s +/-50%, then the eta Novita reports (the emulator reports one while processing),
  within [2 s, 30 s], +/-20%. The point of it: fewer requests per job than fixed polling.
* ``fixed``: ``poll_interval=5, max_poll_interval=5``, the closest match to the peers' fixed 5 s
  pace (first poll 5 s +/-50%, then 5 s +/-20%): compares CPU per poll and lag like for like.
* ``floor``: the same pace with ``asyncio.sleep`` only, no HTTP and no trigger: what this machine
  spends on timers alone. The peers' first row is the same floor measured on their machine.

How, and why that way:

* Submissions are not measured. The emulator really upscales every submitted image (about 75 ms of
  CPU per 2k job, on 2 worker threads), so submitting 1000 jobs keeps both cores of this 2-core
  machine busy for most of a minute: measured during that, every figure would mostly show the
  emulator's image work. So each configuration first submits its jobs (plain httpx POSTs from the
  parent process, before the measured process starts), waits until the emulator's CPU is idle, and
  only then starts the triggers: the measured phase is polling only. So that each job is still
  ``--job-duration`` (60 s) from its end when the triggers start, as in the peers' setup, the
  emulator runs with a job duration of ``job_duration + prep_seconds`` and the triggers start
  ``prep_seconds`` after the median submission. Submissions take a while on a busy emulator, so the
  jobs' time left at the start spreads around 60 s; the footnotes report the range.
* Each configuration runs in a fresh child process, the measured one: Airflow imported and the
  connection looked up once (``NovitaHook.asettings()``) before the clock starts, as on a running
  triggerer, but no memory left behind by submissions or by an earlier configuration for the
  allocator to reuse (which would hide RSS growth). GC stays enabled; nothing is frozen.
  ``AIRFLOW_CONN_NOVITA_DEFAULT`` is set in the child before Airflow is imported.
* The trigger's own log lines (structlog and stdlib, INFO) are kept, as the triggerer keeps them, and
  go to a file (the child's stdout); their count is reported.
* Between configurations the emulator is reset (``POST /_emulator/reset``), so its counters start at 0.

Figures, per configuration:

* ``wall``: from creating the triggers to the last event;
* ``polls``: ``GET /v3/async/task-result`` requests the emulator served (``/_emulator/stats``); for
  ``floor`` the number of wake-ups; ``/job`` divides by the number of Novita jobs;
* ``CPU/poll``: CPU time of the measured process (all threads, ``time.process_time``) over the wall
  window, divided by polls: it includes the heartbeat and timers, like the peers' figure;
* ``RSS/trig``: RSS when the triggers start vs. the peak sampled by the heartbeat, per trigger
  (``/job``: per Novita job, which is what batching reduces);
* ``lag``: how late the 10 ms heartbeat woke, p50 / p99 / max;
* ``TCP``: TCP connections the measured process opened, counted exactly (a counter around httpcore's
  connect) / distinct local ports seen by sampling ``net_connections`` from the parent every 50 ms /
  most open at once;
* ``late``: how long after its job's end each trigger fired, p50 / max: what fewer polls cost.

How to read them: the machine is noisy and shared; compare ratios (ours against our ``floor``, ``eta``
against ``fixed``, ``fixed`` against the peers' rows relative to their floor), not absolutes, and
run twice before trusting a difference under ~30%. Warnings in the footnotes (``ConnectTimeout``
retries on loopback) and a lag max of seconds mean the loop was blocked: the run is saturated, and its
per-poll figures describe the saturation rather than the steady cost.

Run: ``python benchmarks/triggerer_polling.py`` (1000 triggers of 1 task, 5-7 minutes),
``--triggers 100 --tasks-per-trigger 10`` for the batch variant, ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

API_KEY = "emulator-key"
CONN_ID = "novita_default"
HEARTBEAT = 0.01
SAMPLE_EVERY = 0.05
POLICIES = ("eta", "fixed", "floor")
# Emulator CPU below this share of one core, twice in a row, counts as idle.
IDLE_CPU_SHARE = 0.03
IDLE_WINDOW = 0.5

PEERS = """\
Peers, from the project's performance notes (their machine: 2 cores, fixed 5 s polls, 60 s jobs):
| peer                                   | CPU/poll    | RSS/trig   | lag p99 / max ms  | TCP conns    |
| sleep only (the floor)                 | 0.14-0.15ms | 16 KB      | 1 / 3-128         | 0            |
| HttpSensorTrigger (aiohttp, 6.3.0)     | 1.5 ms      | 45 KB      | 66-72 / 450-480   | one per poll |
| httpx, one AsyncClient shared by all   | 1.7-1.9 ms  | 12 KB      | 9-11 / 115-122    | ~35 in all   |
| httpx, one AsyncClient per trigger run | 4.2-4.5 ms  | 815-856 KB | 118-126 / 460-600 | one per poll |
| httpx, new AsyncClient per poll        | 32 ms       | 400-630 KB | 210 / 12400       | one per poll |
| HttpSensorTrigger, HTTPS               | 2.6 ms      | 132 KB     | 142 / 779         | one per poll |
| httpx shared client, HTTPS             | 2.2 ms      | 12 KB      | 13 / 121          | ~50 in all   |
(all N=1000 triggers of one job)"""


# --------------------------------------------------------------------------------------------------
# The measured child process
# --------------------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Heartbeat:
    """Wakes every 10 ms on the loop; while recording, keeps how late it woke and the peak RSS."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.lags: list[float] = []
        self.peak_rss = 0
        self.recording = False
        self.stopped = False

    def start_recording(self) -> None:
        self.lags.clear()
        self.peak_rss = self.process.memory_info().rss
        self.recording = True

    async def run(self) -> None:
        while not self.stopped:
            before = time.perf_counter()
            await asyncio.sleep(HEARTBEAT)
            lag = time.perf_counter() - before - HEARTBEAT
            if self.recording:
                self.lags.append(lag)
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)


def count_tcp_connects() -> list[int] | None:
    """Counts every TCP connect httpcore's async backend makes in this process (private API: may vanish)."""
    try:
        from httpcore._backends.auto import AutoBackend
    except ImportError:
        return None
    counter = [0]
    original = AutoBackend.connect_tcp

    async def connect_tcp(self: Any, *args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return await original(self, *args, **kwargs)

    AutoBackend.connect_tcp = connect_tcp  # type: ignore[method-assign]
    return counter


async def sleep_only(end: float, rng: random.Random) -> int:
    """The floor: the fixed pace's waits, with nothing done on waking; returns the wake-ups."""
    from airflow_provider_novita.polling import PollingPolicy

    policy = PollingPolicy(5.0, 5.0)
    wakeups = 0
    while time.monotonic() < end:
        await asyncio.sleep(policy.delay(0.0, None, rng, first=wakeups == 0))
        wakeups += 1
    return wakeups


async def fire(trigger: Any) -> tuple[float, str]:
    """Runs a trigger until its one event, as the triggerer does; returns when, and the status."""
    events = trigger.run()
    try:
        event = await anext(events)
    finally:
        await events.aclose()
    return time.monotonic(), str(event.payload["status"])


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_novita.hooks.novita import NovitaHook
    from airflow_provider_novita.polling import DEFAULT_MAX_POLL_INTERVAL, DEFAULT_POLL_INTERVAL
    from airflow_provider_novita.triggers.task_result import TaskResultTrigger

    process = psutil.Process()
    connects = count_tcp_connects()
    policy: str = spec["policy"]
    # Warm-up: a running triggerer has long imported Airflow's connection machinery.
    await NovitaHook(CONN_ID).asettings()
    heartbeat = Heartbeat(process)
    beating = asyncio.create_task(heartbeat.run())
    await asyncio.to_thread(Path(spec["ready_path"]).touch)
    go = json.loads(await asyncio.to_thread(sys.stdin.readline))
    await asyncio.sleep(max(0.0, go["start_at"] - time.monotonic()))

    heartbeat.start_recording()
    rss_before = heartbeat.peak_rss
    connects_before = connects[0] if connects else 0
    cpu_before = time.process_time()
    started = time.monotonic()
    per_trigger: int = spec["tasks_per_trigger"]
    wakeups = 0
    fired: list[tuple[float, str]] = []
    if policy == "floor":
        rng = random.Random()
        end = started + spec["job_duration"]
        wakeups = sum(await asyncio.gather(*(sleep_only(end, rng) for _ in range(spec["triggers"]))))
    else:
        interval, longest = (DEFAULT_POLL_INTERVAL, DEFAULT_MAX_POLL_INTERVAL) if policy == "eta" else (5, 5)
        ids: list[str] = go["task_ids"]
        end_time = time.time() + 600
        triggers = [
            TaskResultTrigger(ids[i : i + per_trigger], CONN_ID, interval, end_time, longest)
            for i in range(0, len(ids), per_trigger)
        ]
        fired = list(await asyncio.gather(*(fire(trigger) for trigger in triggers)))
    finished = time.monotonic()
    cpu = time.process_time() - cpu_before
    heartbeat.stopped = True
    await beating
    lags = heartbeat.lags
    return {
        "started": started,
        "wall": finished - started,
        "cpu": cpu,
        "rss_before": rss_before,
        "rss_peak": heartbeat.peak_rss,
        "lag_p50": percentile(lags, 0.50),
        "lag_p99": percentile(lags, 0.99),
        "lag_max": max(lags, default=float("nan")),
        "connects": None if connects is None else connects[0] - connects_before,
        "wakeups": wakeups,
        "fired_at": [at for at, _ in fired],
        "statuses": dict(Counter(status for _, status in fired)),
    }


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    # Before anything imports Airflow: the env secrets backend serves the connection from here.
    os.environ["AIRFLOW_CONN_NOVITA_DEFAULT"] = json.dumps(
        {"conn_type": "novita", "host": spec["url"], "password": API_KEY}
    )
    result = asyncio.run(measure(spec))
    Path(spec["result_path"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# The parent: emulator, submissions, sampling, report
# --------------------------------------------------------------------------------------------------


@dataclass
class Emulator:
    process: subprocess.Popen[str]
    url: str
    port: int

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)


def start_emulator(job_duration: float, log: Path) -> Emulator:
    command = [
        *(sys.executable, "-m", "airflow_provider_novita.emulator"),
        *("--host", "127.0.0.1", "--port", "0", "--queue-seconds", "0"),
        *("--job-duration", f"{job_duration:.3f}"),
    ]
    with log.open("w") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(60)
    match = re.search(r"running at (\S+) with API key (\S+)", first[0] if first else "")
    if match is None:
        process.kill()
        raise SystemExit(f"the emulator did not start; see {log}")
    url = match.group(1).rstrip("/")
    return Emulator(process, url, int(httpx.URL(url).port or 80))


def stop_process(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def submit_jobs(url: str, count: int, concurrency: int) -> list[tuple[str, float]]:
    """POSTs ``count`` upscales; returns each task id with the midpoint of its request (monotonic)."""
    slots = asyncio.Semaphore(concurrency)
    body = {"image": f"{url}/samples/landscape.png", "resolution": "2k"}
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    ) as client:

        async def one() -> tuple[str, float]:
            async with slots:
                sent = time.monotonic()
                response = await client.post("/v3/async/image-upscaler", json=body)
                response.raise_for_status()
                return str(response.json()["task_id"]), (sent + time.monotonic()) / 2

        return list(await asyncio.gather(*(one() for _ in range(count))))


def wait_until_idle(emulator: Emulator, limit: float) -> bool:
    """Waits until the emulator's image work is over (its CPU idle); False if ``limit`` passed first."""
    quiet = 0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = emulator.cpu()
        time.sleep(IDLE_WINDOW)
        quiet = quiet + 1 if emulator.cpu() - before < IDLE_CPU_SHARE * IDLE_WINDOW else 0
        if quiet >= 2:
            return True
    return False


@dataclass
class ConnectionSampler:
    """Samples the measured process's TCP connections to the emulator from the parent."""

    pid: int
    port: int
    ports: set[tuple[str, int]] = field(default_factory=set)
    most_open: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        process = psutil.Process(self.pid)
        while not self.stop.wait(SAMPLE_EVERY):
            try:
                sockets = process.net_connections(kind="tcp")
            except psutil.Error:
                return
            current = {(s.laddr.ip, s.laddr.port) for s in sockets if s.raddr and s.raddr.port == self.port}
            self.ports |= current
            self.most_open = max(self.most_open, len(current))


@dataclass
class Config:
    policy: str
    triggers: int
    tasks_per_trigger: int
    job_duration: float
    prep_seconds: float
    concurrency: int

    @property
    def jobs(self) -> int:
        return self.triggers * self.tasks_per_trigger


def run_config(config: Config, emulator: Emulator, workdir: Path) -> dict[str, Any]:
    name = f"{config.policy}-{config.triggers}x{config.tasks_per_trigger}"
    spec = {
        "policy": config.policy,
        "triggers": config.triggers,
        "tasks_per_trigger": config.tasks_per_trigger,
        "job_duration": config.job_duration,
        "url": emulator.url,
        "ready_path": str(workdir / f"{name}.ready"),
        "result_path": str(workdir / f"{name}.json"),
    }
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"{name}.log"
    httpx.post(f"{emulator.url}/_emulator/reset", timeout=60).raise_for_status()
    jobs: list[tuple[str, float]] = []
    note = ""
    total_duration = config.job_duration + config.prep_seconds
    prep_start = time.monotonic()
    if config.policy != "floor":
        # Before the child starts importing Airflow, which would slow the submissions and spread them.
        jobs = asyncio.run(submit_jobs(emulator.url, config.jobs, config.concurrency))
        note = f"submitted in {time.monotonic() - prep_start:.0f}s"
    with log_path.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(spec_path)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        if jobs:
            idle = wait_until_idle(emulator, config.prep_seconds + 120)
            note += f", emulator idle after {time.monotonic() - prep_start:.0f}s" + ("" if idle else " (NOT)")
        ready = Path(spec["ready_path"])
        while not ready.exists():
            if child.poll() is not None:
                raise SystemExit(f"the measured process failed; see {log_path}")
            time.sleep(0.1)
        now = time.monotonic()
        aligned = statistics.median(at for _, at in jobs) + config.prep_seconds if jobs else now
        start_at = max(aligned, now + 0.5)
        sampler = ConnectionSampler(child.pid, emulator.port)
        sampling = threading.Thread(target=sampler.run, daemon=True)
        sampling.start()
        emulator_cpu = emulator.cpu()
        assert child.stdin is not None
        child.stdin.write(json.dumps({"start_at": start_at, "task_ids": [i for i, _ in jobs]}) + "\n")
        child.stdin.flush()
        if child.wait() != 0:
            raise SystemExit(f"the measured process failed; see {log_path}")
        sampler.stop.set()
        sampling.join()
        result: dict[str, Any] = json.loads(Path(spec["result_path"]).read_text())
        emulator_cpu = emulator.cpu() - emulator_cpu
    finally:
        stop_process(child)
    stats = httpx.get(f"{emulator.url}/_emulator/stats", timeout=60).json()
    started = result["started"]
    left = [total_duration - (started - at) for _, at in jobs]
    late: list[float] = []
    for index, fired_at in enumerate(result["fired_at"]):
        batch = jobs[index * config.tasks_per_trigger : (index + 1) * config.tasks_per_trigger]
        late.append(fired_at - max(at + total_duration for _, at in batch))
    with log_path.open() as log:
        lines = log.readlines()
    warnings = sum(1 for line in lines if "[warning" in line or "[error" in line or "Traceback" in line)
    polls = result["wakeups"] if config.policy == "floor" else stats["requests"]["task-result"]
    if left:
        note += f", job time left at start {min(left):.1f}-{max(left):.1f}s"
    return {
        "config": config,
        "result": result,
        "polls": polls,
        "late": late,
        "note": note,
        "emulator_share": emulator_cpu / result["wall"],
        "sampled_ports": len(sampler.ports),
        "most_open": sampler.most_open,
        "log_lines": len(lines),
        "warnings": warnings,
    }


def report(rows: list[dict[str, Any]]) -> None:
    header = (
        f"| {'config':<15} | {'wall':>5} | {'polls':>6} | {'/job':>5} | {'CPU/poll':>8} | {'RSS/trig':>9} "
        f"| {'/job':>7} | {'lag p50/p99/max ms':>18} | {'TCP cnt/smp/open':>16} | {'late p50/max s':>14} |"
    )
    print(header)
    for row in rows:
        config: Config = row["config"]
        result = row["result"]
        polls = row["polls"]
        growth = max(0, result["rss_peak"] - result["rss_before"]) / 1024
        lag = f"{result['lag_p50'] * 1e3:.1f}/{result['lag_p99'] * 1e3:.1f}/{result['lag_max'] * 1e3:.0f}"
        counted = "-" if result["connects"] is None else str(result["connects"])
        tcp = f"{counted}/{row['sampled_ports']}/{row['most_open']}"
        late = row["late"]
        late_text = f"{percentile(late, 0.5):.1f}/{max(late):.1f}" if late else "-"
        label = f"{config.policy} {config.triggers}x{config.tasks_per_trigger}"
        cpu_per_poll = f"{result['cpu'] / polls * 1e3:.2f}ms" if polls else "-"
        print(
            f"| {label:<15} | {result['wall']:>4.0f}s | {polls:>6} | {polls / config.jobs:>5.1f} "
            f"| {cpu_per_poll:>8} | {growth / config.triggers:>6.1f} KB | {growth / config.jobs:>4.1f} KB "
            f"| {lag:>18} | {tcp:>16} | {late_text:>14} |"
        )
    for row in rows:
        config = row["config"]
        result = row["result"]
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(result["statuses"].items())) or "-"
        print(
            f"  {config.policy}: CPU {result['cpu']:.1f}s, RSS {result['rss_before'] / 2**20:.0f}"
            f"->{result['rss_peak'] / 2**20:.0f} MiB, emulator CPU {row['emulator_share']:.0%} of a core, "
            f"events: {statuses}, log lines {row['log_lines']} ({row['warnings']} warnings/errors)"
            f"{'; ' + row['note'] if row['note'] else ''}"
        )
    print()
    print(PEERS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--triggers", type=int, default=1000, help="triggers in the loop (default 1000)")
    parser.add_argument("--tasks-per-trigger", type=int, default=1, help="Novita tasks per trigger")
    parser.add_argument("--job-duration", type=float, default=60.0, help="seconds each job runs (60)")
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}"
    )
    parser.add_argument(
        "--prep-seconds",
        type=float,
        default=None,
        help="time allowed for submissions and the emulator's image work (default 15 + 0.06 s per job)",
    )
    parser.add_argument("--submit-concurrency", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 triggers, 10 s jobs")
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.quick:
        args.triggers, args.job_duration = 200, 10.0
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if unknown := set(policies) - set(POLICIES):
        parser.error(f"unknown policies: {', '.join(sorted(unknown))}")
    jobs = args.triggers * args.tasks_per_trigger
    prep = args.prep_seconds if args.prep_seconds is not None else 15 + 0.06 * jobs
    configs = [
        Config(p, args.triggers, args.tasks_per_trigger, args.job_duration, prep, args.submit_concurrency)
        for p in policies
    ]
    workdir = Path(tempfile.mkdtemp(prefix="triggerer-polling-"))
    print(
        f"{args.triggers} triggers x {args.tasks_per_trigger} task(s), jobs of {args.job_duration:g}s, "
        f"prep allowance {prep:.0f}s; logs in {workdir}",
        flush=True,
    )
    emulator = start_emulator(args.job_duration + prep, workdir / "emulator.log")
    rows: list[dict[str, Any]] = []
    try:
        for config in configs:
            print(f"running {config.policy} ...", flush=True)
            rows.append(run_config(config, emulator, workdir))
    finally:
        with contextlib.suppress(Exception):
            stop_process(emulator.process)
    print()
    report(rows)


if __name__ == "__main__":
    main()
