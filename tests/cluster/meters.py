"""
What the soak measures of the machine while the cluster works: CPU seconds and peak RSS per
component, and, with py-spy, how much of each component's CPU ran the provider's code.

Components are the deployment's processes by label, each with everything in its session (a Celery
worker's task processes, a triggerer's trigger runner), PostgreSQL (every ``postgres`` process: this
machine's server, which nothing but the soak uses while it runs), Redis (the broker), py-spy (the
profiler's own cost) and the soak's own process (the emulator in a thread, and the soak's bookkeeping).

CPU is read from /proc every :data:`SAMPLE_EVERY` seconds: each process's utime + stime, plus the
cutime + cstime of the children it has reaped, minus what it had when the meter started. A process
that ends and is reaped by a parent the meter sees counts through that parent, exactly, and not
twice; one whose parent is gone too keeps only what it had at the last reading. So the components add
up to a little less than the machine's busy time, which :attr:`ComponentMeter.machine_busy_seconds`
gives beside them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.deployment import AirflowDeployment

SAMPLE_EVERY = 0.5
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Processes that are not in a deployment session, by their command name.
COMPONENTS_BY_COMMAND = {"postgres": "postgresql", "redis-server": "redis", "py-spy": "py-spy"}
SELF = "soak process (emulator)"
# py-spy samples this often; idle threads are not sampled, so samples count CPU, not wall time.
PROFILE_RATE = 10
PROVIDER_FRAME = "airflow_provider_novita/"
# The components that run the provider's code. The scheduler and the api-server never import it (a
# smoke run sampled both: 0 of 895 samples), and py-spy's own CPU is better spent elsewhere.
PROFILED = ("celery-worker", "triggerer-1", "triggerer-2", "dag-processor")


@dataclass
class _Reading:
    component: str
    parent: int
    # Its own CPU and that of the children it reaped: what it holds of its component's CPU.
    cpu_seconds: float
    rss_bytes: int


def _read(pid: int) -> tuple[int, str, int, float, int] | None:
    """(session, command name, parent, CPU seconds, RSS bytes) of a process (zombies too), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    command = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat.rpartition(")")[2].split()
    cpu = sum(int(field) for field in fields[11:15]) / CLOCK_TICKS  # utime stime cutime cstime
    return int(fields[3]), command, int(fields[1]), cpu, int(statm[1]) * PAGE_SIZE


def machine_busy_jiffies() -> int:
    """Busy jiffies of all CPUs since boot (everything but idle and iowait), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


class ComponentMeter:
    """CPU seconds and peak RSS of each component, sampled in a thread while the ``with`` block runs.

    With a ``profile``, every sample also attaches it to components started since the last one.
    """

    def __init__(self, deployment: AirflowDeployment, profile: ProviderProfile | None = None) -> None:
        self._deployment = deployment
        self._profile = profile
        self._baseline: dict[int, float] = {}
        self._last: dict[int, _Reading] = {}
        self._peak_rss: Counter[str] = Counter()
        self._busy_at_start = 0
        self.machine_busy_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ComponentMeter:
        self._busy_at_start = machine_busy_jiffies()
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.machine_busy_seconds = (machine_busy_jiffies() - self._busy_at_start) / CLOCK_TICKS

    def figures(self) -> dict[str, dict[str, float]]:
        """Per component: ``cpu_seconds`` since the meter started and ``peak_rss_mb``."""
        cpu: dict[str, float] = {}
        for pid, reading in self._last.items():
            spent = reading.cpu_seconds - self._baseline.get(pid, 0.0)
            cpu[reading.component] = cpu.get(reading.component, 0.0) + spent
        return {
            component: {
                "cpu_seconds": round(cpu[component], 1),
                "peak_rss_mb": round(self._peak_rss[component] / 2**20, 1),
            }
            for component in sorted(cpu.keys() | self._peak_rss.keys())
        }

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        if self._profile is not None:
            self._profile.watch(self._deployment)
        sessions = {process.pid: label for label, process in list(self._deployment.processes.items())}
        rss: Counter[str] = Counter()
        seen: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            read = _read(pid)
            if read is None:
                continue
            session, command, parent, cpu, rss_bytes = read
            component = sessions.get(session) or COMPONENTS_BY_COMMAND.get(command)
            if pid == os.getpid():
                component, cpu = SELF, sum(os.times()[:2])  # its own: the cluster is its children
            if component is None:
                continue
            if first:
                self._baseline[pid] = cpu
            self._last[pid] = _Reading(component, parent, cpu, rss_bytes)
            seen.add(pid)
            rss[component] += rss_bytes
        for pid in self._last.keys() - seen:
            # Gone: if its parent is still here, it reaped it, and holds all of its CPU now.
            if self._last[pid].parent in seen:
                del self._last[pid]
        for component, total in rss.items():
            self._peak_rss[component] = max(self._peak_rss[component], total)


class ProviderProfile:
    """py-spy on the :data:`PROFILED` components (and their subprocesses), restarted with them.

    :meth:`watch` attaches a recorder to each component whose process is new (a restart after a kill
    makes a new one); :meth:`shares` reads what they recorded: per component, the CPU samples, the
    share of them with a frame of the provider anywhere on the stack (its code and what it calls:
    httpx, file writes, the connection lookup) or on top (its own lines only), and where the
    provider's samples went: the function of the first frame below the provider's last one.
    """

    def __init__(self, py_spy: Path, folder: Path) -> None:
        self._py_spy = py_spy
        self._folder = folder
        self._recorders: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def watch(self, deployment: AirflowDeployment) -> None:
        for label, process in list(deployment.processes.items()):
            if label not in PROFILED or process.pid in self._recorders or process.poll() is not None:
                continue
            output = self._folder / f"{label}-{process.pid}.txt"
            command = [str(self._py_spy), "record", "--pid", str(process.pid), "--subprocesses"]
            command += ["--nonblocking", "--rate", str(PROFILE_RATE), "--format", "raw", "-o", str(output)]
            recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._recorders[process.pid] = (label, recorder)

    def stop(self) -> None:
        """Stop every recorder still running (each writes its file on SIGINT), with a bounded wait."""
        for _label, recorder in self._recorders.values():
            if recorder.poll() is None:
                recorder.send_signal(signal.SIGINT)
        for _label, recorder in self._recorders.values():
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()

    def shares(self) -> dict[str, dict[str, Any]]:
        samples: dict[str, Counter[str]] = {}
        for pid, (label, _recorder) in self._recorders.items():
            counts = samples.setdefault(label, Counter())
            output = self._folder / f"{label}-{pid}.txt"
            lines = output.read_text(errors="replace").splitlines() if output.is_file() else []
            for line in lines:
                stack, _, count = line.rpartition(" ")
                if not count.isdigit():
                    continue
                frames = stack.split(";")
                counts["all"] += int(count)
                ours = [index for index, frame in enumerate(frames) if PROVIDER_FRAME in frame]
                if ours:
                    counts["provider"] += int(count)
                    below = frames[ours[-1] + 1 : ours[-1] + 2]
                    counts[f"in {_callee(below[0]) if below else 'the provider itself'}"] += int(count)
        return {label: _shares(counts) for label, counts in sorted(samples.items())}


def _callee(frame: str) -> str:
    """``send (httpx/_client.py:123)`` -> ``httpx/_client.py send``: a py-spy frame's file and function."""
    function, _, where = frame.rpartition(" (")
    return f"{where.rpartition(':')[0]} {function}"


def _shares(counts: Counter[str]) -> dict[str, Any]:
    total, provider = counts["all"], counts["provider"]
    calls = {key: value for key, value in counts.items() if key.startswith("in ")}
    return {
        "samples": total,
        "provider_share": round(provider / total, 4) if total else None,
        "provider_on_top_share": round(calls.get("in the provider itself", 0) / total, 4) if total else None,
        "provider_samples_by_callee": dict(sorted(calls.items(), key=lambda item: -item[1])[:6]),
    }
