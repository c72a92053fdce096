"""
Airflow failing deferred tries whose triggers fired fast, counted from a cluster's logs and database.

A worker's exit on ``defer()`` reaches the scheduler as an executor event (SUCCESS) some seconds
after the deferral. If the trigger has fired by then and the task instance has moved on (SCHEDULED,
QUEUED or RUNNING again), the scheduler sees a "state mismatch" and fails the try
(apache/airflow#66374, fixed in 3.2.2 for SCHEDULED; #67287 for QUEUED; #72716 for RUNNING). With
``retries=0`` the task fails.

:func:`race_report` reads what one DAG run's mapped ``upscale`` task instances went through:

* when each one deferred (its task log: "Pausing task as DEFERRED"), when its trigger fired (the
  trigger log: "Trigger fired event") and when the scheduler processed the worker's exit from
  ``defer()``, with the state the task instance was in then (the scheduler log's first
  "TaskInstance Finished" of the try);
* the tries Airflow failed with "state mismatch": in the scheduler log, as ``event = 'state
  mismatch'`` rows of the ``log`` table, and the failed tries in ``task_instance`` and
  ``task_instance_history``.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from tests.cluster.harness import Cluster

# The task instance states in which the scheduler fails a try on its executor's SUCCESS event.
RACING_STATES = ("scheduled", "queued", "running", "restarting")
# "Executor ... reported that the task instance <TaskInstance: dag.task run map_index=N [state]> finished
# with state success, but the task instance's state attribute is queued. ..."
MISMATCH_LINE = re.compile(
    r"reported that the task instance <TaskInstance: (?P<dag_id>[^\s.]+)\.(?P<task_id>\S+) (?P<run_id>\S+) "
    r"map_index=(?P<map_index>-?\d+) \[\w+\]> finished with state \w+, "
    r"but the task instance's state attribute is (?P<state>\w+)"
)
# "<timestamp> [info     ] TaskInstance Finished: dag_id=..., task_id=..., run_id=..., map_index=N, ...
# state=deferred, executor=..., executor_state=success, try_number=1, ..."
FINISHED_LINE = re.compile(
    r"^(?P<at>\S+) \[\s*\w+\s*\] TaskInstance Finished: dag_id=(?P<dag_id>[^,]+), "
    r"task_id=(?P<task_id>[^,]+), run_id=(?P<run_id>[^,]+), map_index=(?P<map_index>-?\d+),"
    r".*? state=(?P<state>\w+), executor=.*?, executor_state=\w+, try_number=(?P<try_number>\d+),"
)


@dataclass(frozen=True)
class Deferral:
    """The first deferral of one task instance's first try; times are seconds since the epoch."""

    map_index: int
    deferred_at: float
    fired_at: float | None
    # When the scheduler first processed an executor event of the try, and the task instance's state
    # then: "deferred" is the worker's exit seen in time; a racing state is a mismatch; "success"
    # means the executor reported only the try's final exit.
    exit_seen_at: float | None
    state_at_exit: str | None


@dataclass(frozen=True)
class RaceReport:
    """What :func:`race_report` found for one DAG run."""

    task_instances: int
    deferrals: list[Deferral]
    # Map index -> the state Airflow said the task instance was in, from each source.
    mismatches_logged: dict[int, str]
    mismatch_events: dict[int, str]
    # (map index, try number) of every failed try, final or earlier.
    failed_tries: list[tuple[int, int]]
    # Seconds from each task instance's start to its end.
    durations: list[float]

    @property
    def mismatched(self) -> set[int]:
        """Map indexes whose try Airflow failed with "state mismatch", by either source."""
        return set(self.mismatches_logged) | set(self.mismatch_events)

    def summary(self) -> str:
        states: dict[str, int] = {}
        for deferral in self.deferrals:
            state = deferral.state_at_exit or "not seen yet"
            states[state] = states.get(state, 0) + 1
        fired = [d.fired_at - d.deferred_at for d in self.deferrals if d.fired_at is not None]
        seen = [
            d.exit_seen_at - d.deferred_at
            for d in self.deferrals
            if d.exit_seen_at is not None and d.state_at_exit not in ("success", "failed")
        ]
        return "\n".join(
            [
                f"state mismatch: {len(self.mismatched)} of {self.task_instances} task instances failed "
                f"(scheduler log: {_by_state(self.mismatches_logged)}; log table: "
                f"{_by_state(self.mismatch_events)}); failed tries: {len(self.failed_tries)}",
                f"deferral -> trigger fired: {_spread(fired)}",
                f"deferral -> worker's exit seen by the scheduler: {_spread(seen)}; task instance state "
                f"then: {dict(sorted(states.items()))}",
                f"task instance start -> end: {_spread(self.durations)}",
            ]
        )


def _by_state(mismatches: dict[int, str]) -> str:
    if not mismatches:
        return "none"
    return ", ".join(f"{index} ({state})" for index, state in sorted(mismatches.items()))


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"min {min(values):.2f}s, median {statistics.median(values):.2f}s, max {max(values):.2f}s "
        f"({len(values)} task instances)"
    )


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _json_lines(path: Path) -> Iterable[dict[str, object]]:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            yield json.loads(line)


def first_event_at(paths: Iterable[Path], event: str) -> float | None:
    """When a task or trigger log (JSON lines) first logged a message starting with ``event``."""
    times = [
        _epoch(str(entry["timestamp"]))
        for path in paths
        for entry in _json_lines(path)
        if str(entry.get("event", "")).startswith(event)
    ]
    return min(times, default=None)


def mismatches_in_scheduler_log(text: str, dag_id: str, run_id: str, task_id: str) -> dict[int, str]:
    """Map index -> the state the scheduler saw, for every try it failed with a state mismatch."""
    found = {}
    for match in MISMATCH_LINE.finditer(text):
        if (match["dag_id"], match["run_id"], match["task_id"]) == (dag_id, run_id, task_id):
            found[int(match["map_index"])] = match["state"]
    return found


def exits_in_scheduler_log(text: str, dag_id: str, run_id: str, task_id: str) -> dict[int, tuple[float, str]]:
    """Map index -> when the scheduler first processed an executor event of try 1, and the state then."""
    found: dict[int, tuple[float, str]] = {}
    for line in text.splitlines():
        match = FINISHED_LINE.match(line)
        if (
            match
            and (match["dag_id"], match["run_id"], match["task_id"]) == (dag_id, run_id, task_id)
            and match["try_number"] == "1"
        ):
            found.setdefault(int(match["map_index"]), (_epoch(match["at"]), match["state"]))
    return found


def race_report(cluster: Cluster, dag_id: str, run_id: str, task_id: str) -> RaceReport:
    """Read the run's logs and metadata database; call it once the run is final."""
    rows = cluster.task_instances(dag_id, run_id)
    scheduler_log = cluster.deployment.log_path("scheduler").read_text(errors="replace")
    exits = exits_in_scheduler_log(scheduler_log, dag_id, run_id, task_id)
    logs = cluster.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    deferrals = []
    for row in rows:
        folder = logs / f"map_index={row['map_index']}"
        deferred_at = first_event_at(folder.glob("attempt=1.log"), "Pausing task as DEFERRED")
        if deferred_at is None:
            continue
        seen_at, state = exits.get(row["map_index"], (None, None))
        fired_at = first_event_at(folder.glob("attempt=1.log.trigger.*.log"), "Trigger fired event")
        deferrals.append(Deferral(row["map_index"], deferred_at, fired_at, seen_at, state))
    events = cluster.deployment.query(
        "SELECT map_index, extra FROM log WHERE dag_id = %s AND run_id = %s AND task_id = %s "
        "AND event = 'state mismatch'",
        dag_id,
        run_id,
        task_id,
    )
    failed = cluster.deployment.query(
        """
        SELECT map_index, try_number FROM task_instance
        WHERE dag_id = %s AND run_id = %s AND task_id = %s AND state = 'failed'
        UNION ALL
        SELECT map_index, try_number FROM task_instance_history
        WHERE dag_id = %s AND run_id = %s AND task_id = %s AND state = 'failed'
        """,
        *(dag_id, run_id, task_id) * 2,
    )
    return RaceReport(
        task_instances=len(rows),
        deferrals=deferrals,
        mismatches_logged=mismatches_in_scheduler_log(scheduler_log, dag_id, run_id, task_id),
        mismatch_events={
            event["map_index"]: match["state"] if (match := MISMATCH_LINE.search(event["extra"])) else "?"
            for event in events
        },
        failed_tries=sorted((row["map_index"], row["try_number"]) for row in failed),
        durations=[
            (row["end_date"] - row["start_date"]).total_seconds()
            for row in rows
            if row["start_date"] and row["end_date"]
        ],
    )
