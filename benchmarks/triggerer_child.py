"""
The measured process of ``triggerer_polling.py``: N triggers in one event loop, beside a heartbeat.

The harness starts one of these per run with ``python triggerer_child.py SPEC``. ``SPEC`` is a JSON
file naming the run (its groups of triggers, job times, grace, heap freeze), where to signal ready
and where to write the result. The process imports everything, looks its connection up and runs one
trigger of each kind against a finished job (a running triggerer did all that long ago). Then it
touches the ready file and waits for a line on stdin. On that line it starts the burst and measures
until the last trigger fires or is cut off. It writes its own figures (CPU, RSS, loop lag, full
collections, when each trigger fired) as JSON; the harness adds the server's counters.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from job_status_server import make_task_id, raise_open_files_limit

CONN_ID = "novita_default"
PEER_CONN_ID = "http_peer"
HEARTBEAT = 0.01
# RSS is read every this many heartbeats (50 ms): often enough for the peak, cheap enough not to be lag.
RSS_EVERY = 5
# The width of a bin of the lag timeline, in seconds.
LAG_BIN = 0.5
GOLDEN_RATIO = (5**0.5 - 1) / 2


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


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


Workload = tuple[int, dict[str, Any], list[str], float]  # group index, group, task ids, last job's end
Fired = tuple[int, float | None, str, int]  # group index, delay after the job's end, status, wake-ups


def workloads(run: dict[str, Any], started: float) -> list[Workload]:
    """What the triggerer reads from its database in one go when every trigger was deferred at once."""
    loads: list[Workload] = []
    for index, group in enumerate(run["groups"]):
        per = group["tasks_per_trigger"]
        for number in range(group["triggers"]):
            jobs = [number * per + i for i in range(per)]
            ends = [started + seconds_to_end(run["job_duration"], run["job_spread"], job) for job in jobs]
            ids = [
                make_task_id(f"g{index}", end, group["eta"], job) for end, job in zip(ends, jobs, strict=True)
            ]
            loads.append((index, group, ids, max(ends)))
    return loads


async def burst(
    loads: list[Workload], deadline: float, limit: float, defaults: tuple[float, float]
) -> tuple[list[Fired], set[str]]:
    """
    Starts every trigger as Airflow's triggerer starts them (``TriggerRunner.create_triggers``): it
    yields to the loop before and after making each trigger, then creates its task, so triggers made
    earlier already run while later ones are made, and the heartbeat gets its turns. Waits ``limit``
    seconds at most, then cancels the rest (the harness counts them as cut off).
    """
    fired: list[Fired] = []
    errors: set[str] = set()

    async def timed(index: int, waiting: Any, end: float) -> None:
        try:
            status, wakeups = await waiting
        except Exception as err:  # a trigger that raises fails its task on a triggerer: count it
            errors.add(f"{type(err).__name__}: {err}")
            fired.append((index, None, f"raised {type(err).__name__}", 0))
        else:
            fired.append((index, time.time() - end, status, wakeups))

    tasks = []
    for index, group, ids, end in loads:
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
    return fired, errors


def lag_figures(heartbeat: Heartbeat, collections: FullCollections, origin: float) -> dict[str, Any]:
    lags = [lag for _, lag in heartbeat.samples]
    # A beat waited on a full collection if the collection ran while the beat slept or overslept.
    lags_without_full_gc = [
        lag for at, lag in heartbeat.samples if not collections.overlaps(at - HEARTBEAT - lag, at)
    ]
    return {
        "lag_p50": percentile(lags, 0.50),
        "lag_p99": percentile(lags, 0.99),
        "lag_max": max(lags, default=None),
        "lag_max_without_full_gc": max(lags_without_full_gc, default=None),
        "full_gc_count": len(collections.spans),
        "full_gc_max": max((ended - began for began, ended in collections.spans), default=None),
        "timeline": heartbeat.timeline(origin),
    }


async def wait_for_go(ready_path: str) -> None:
    """Signals ready, waits for the harness's go; after it the harness may only stop us by closing stdin."""
    await asyncio.to_thread(Path(ready_path).touch)
    await asyncio.to_thread(sys.stdin.readline)
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(3)), daemon=True).start()


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    run = spec["run"]
    kinds = {group["kind"] for group in run["groups"]}
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
    await wait_for_go(spec["ready_path"])

    heartbeat.start_recording()
    collections.recording = True
    rss_before = heartbeat.peak_rss
    cpu_before = time.process_time()
    origin = time.perf_counter()
    started = time.time()
    last_end = started + run["job_duration"] + run["job_spread"] / 2
    # Our triggers' own deadline is the grace's end; the cut-off comes later, so that they report it.
    deadline = last_end + run["grace"]
    loads = workloads(run, started)
    fired, errors = await burst(loads, deadline, deadline + 10 - started, defaults)
    finished = time.perf_counter()
    cpu = time.process_time() - cpu_before
    rss_end = process.memory_info().rss
    heartbeat.stopped = True
    await beating
    collections.recording = False
    cut_off = Counter(index for index, *_ in loads)
    cut_off.subtract(index for index, *_ in fired)
    return {
        "wall": finished - origin,
        "cpu": cpu,
        "rss_before": rss_before,
        "rss_peak": max(heartbeat.peak_rss, rss_end),
        **lag_figures(heartbeat, collections, origin),
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


if __name__ == "__main__":
    child_main(sys.argv[1])
