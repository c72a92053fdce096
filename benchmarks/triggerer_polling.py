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

Three files: this harness (the runs, the server, the rows); ``triggerer_child.py``, the measured
process; ``triggerer_report.py``, which reads the JSON alone and writes the tables, the issue's
targets as measured and the plots. Output, in ``--output-dir`` (default ``benchmarks/results/``):
``latest.json`` (machine, date, options, every run and row). ``make benchmark`` runs the report on
it; ``python benchmarks/triggerer_report.py DIR/latest.json`` draws it again. Needs the ``benchmark``
extra (``make benchmark`` installs it in ``.venv-bench``).

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

Run: ``python benchmarks/triggerer_polling.py`` (about 30 minutes), then the report; or ``make
benchmark``.
"""

from __future__ import annotations

import argparse
import datetime
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
from job_status_server import write_self_signed_certificate
from triggerer_child import HEARTBEAT, LAG_BIN, percentile
from triggerer_report import job_range

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "job_status_server.py"
CHILD_SCRIPT = HERE / "triggerer_child.py"
API_KEY = "benchmark-key"
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
MOONSHOT_GRACE = 300.0


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


def tradeoff_run(args: argparse.Namespace) -> Run:
    """Every trade-off point in one loop: ours at each setting with and without eta, the peer at each poke."""
    t = args.tradeoff_triggers
    groups = [
        Group("ours", t, eta=eta, poll_interval=s[0] if s else None, max_poll_interval=s[1] if s else None)
        for s in TRADEOFF_SETTINGS
        for eta in (True, False)
    ]
    groups += [Group("peer", t, poke_interval=poke) for poke in args.tradeoff_pokes]
    grace = max(args.grace, 2 * max(args.tradeoff_pokes))
    return Run("tradeoff", "tradeoff", tuple(groups), args.job_duration, args.job_spread, grace)


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
        runs.append(tradeoff_run(args))
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
            [sys.executable, str(CHILD_SCRIPT), str(spec_path)],
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


# Figures of the whole process: a row gets them only when its run has no other group to share them.
PROCESS_FIGURES = (
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


def group_row(measured: Measured, index: int) -> dict[str, Any]:
    """What one group of a run did: requests, detection delays, events; none of the process's figures."""
    raw, run, group = measured.raw, measured.run, measured.run.groups[index]
    defaults = tuple(raw["defaults"])
    fired = [f for f in raw["fired"] if f[0] == index]
    delays = [delay for _, delay, _, _ in fired if delay is not None]
    statuses = dict(Counter(status for _, _, status, _ in fired))
    if cut := raw["cut_off"].get(str(index)):
        statuses["cut-off"] = cut
    answers = raw["stats"]["requests"].get(f"g{index}", {})
    if group.kind == "floor":
        requests = None
        per_job = sum(wakeups for *_, wakeups in fired) / group.jobs
    else:
        requests = sum(answers.values())
        per_job = requests / group.jobs
    ours = group.kind == "ours"
    return {
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
        "eta": group.eta if ours else None,
        "poll_interval": (group.poll_interval or defaults[0]) if ours else None,
        "max_poll_interval": (group.max_poll_interval or defaults[1]) if ours else None,
        "poke_interval": group.poke_interval if not ours else None,
        "default_pace": ours and group.poll_interval is None and group.max_poll_interval is None,
        "requests": requests,
        "requests_per_job": rounded(per_job),
        "answers": answers,
        "delay_p50_s": rounded(percentile(delays, 0.5)),
        "delay_max_s": rounded(max(delays, default=None)),
        "statuses": statuses,
    }


def process_share(measured: Measured, floors: dict[int, float]) -> dict[str, Any]:
    """The process's figures, per job and per trigger, for a run of one group."""
    raw, group = measured.raw, measured.run.groups[0]
    figures = measured.run_figures()
    growth = max(0, raw["rss_peak"] - raw["rss_before"])
    floor = floors.get(group.triggers, floors.get(0))
    over = None if floor is None else (growth - floor * group.triggers) / group.jobs / 1024
    return {
        **{key: figures[key] for key in PROCESS_FIGURES},
        "cpu_per_job_ms": rounded(raw["cpu"] / group.jobs * 1e3, 3),
        "rss_per_trigger_kb": rounded(growth / group.triggers / 1024),
        "rss_per_job_kb": rounded(growth / group.jobs / 1024),
        "rss_over_floor_per_job_kb": rounded(over),
    }


def group_rows(measured: Measured, floors: dict[int, float]) -> list[dict[str, Any]]:
    """A row per group; CPU, RSS and lag only where the run has one group to give them to."""
    groups = measured.run.groups
    if len(groups) == 1:
        return [{**group_row(measured, 0), **process_share(measured, floors)}]
    unshared = dict.fromkeys(
        (
            *PROCESS_FIGURES,
            "cpu_per_job_ms",
            "rss_per_trigger_kb",
            "rss_per_job_kb",
            "rss_over_floor_per_job_kb",
        )
    )
    return [{**group_row(measured, index), **unshared} for index in range(len(groups))]


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


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="See the module docstring for what is measured and how.",
    )
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


def selected_runs(args: argparse.Namespace) -> list[Run]:
    runs = plan(args)
    if args.rows:
        wanted = {name.strip() for name in args.rows.split(",") if name.strip()}
        if unknown := wanted - {run.name for run in runs}:
            sys.exit(f"no such runs in {', '.join(args.only)}: {', '.join(sorted(unknown))}")
        runs = [run for run in runs if run.name in wanted]
    return runs


def options(args: argparse.Namespace) -> dict[str, Any]:
    return {
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
        "lag_bin_s": LAG_BIN,
    }


def measure_all(runs: list[Run], keep_logs: bool) -> tuple[list[Measured], dict[str, str]]:
    """Runs one after another against one server; a run that fails is named and the others go on."""
    workdir = Path(tempfile.mkdtemp(prefix="triggerer-bench-"))
    print(f"work directory {workdir}", flush=True)
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
        if finished and not failed and not keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", flush=True)
    return measured, failed


def main() -> None:
    args = parse_args()
    # SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C, so every process started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = selected_runs(args)
    output: Path = args.output_dir
    output.mkdir(parents=True, exist_ok=True)
    context = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "options": options(args),
    }
    print(f"{len(runs)} runs, jobs of {job_range(context['options'])}", flush=True)
    measured, failed = measure_all(runs, args.keep_logs)
    floors = floor_growth(measured)
    rows = [row for m in measured for row in group_rows(m, floors)]
    document = {**context, "runs": [m.run_figures() for m in measured], "rows": rows, "failed_runs": failed}
    (output / "latest.json").write_text(json.dumps(document, indent=1))
    print(f"wrote {output / 'latest.json'}", flush=True)
    if failed:
        sys.exit(f"{len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
