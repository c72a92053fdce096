"""
End to end: ``example_novita_upscale`` on a real Airflow 3, deferred to a real triggerer process.

The other tests run DAGs with ``dag.test()``, which executes tasks *and* triggers inside the pytest
process. That cannot show what users rely on: that ``UpscaleOperator`` frees its worker slot, that the
trigger is rebuilt from its serialized kwargs in another process, and that the task resumes on a
worker when the trigger fires. This test starts Airflow as it is deployed, each component its own
process, sharing only a SQLite metadata database in a fresh temporary ``AIRFLOW_HOME``:

* ``api-server``: the REST API this test uses to unpause and trigger the DAG, and the execution API
  through which the LocalExecutor's task processes report their state (Airflow 3 tasks never touch
  the database themselves);
* ``dag-processor``: parses ``example_dags/`` and writes the serialized DAG; without it the
  scheduler knows no DAG;
* ``scheduler`` (LocalExecutor, parallelism 2): creates and queues the task instances and runs them
  in its local worker processes;
* ``triggerer``: runs ``TaskResultTrigger`` while ``upscale`` is deferred.

Novita is the package's emulator, running in a thread of the pytest process and reached by the Airflow
processes over loopback; its API key exists only in ``AIRFLOW_CONN_NOVITA_DEFAULT`` in their
environment.

What is proved, from Airflow's own records (the metadata database, read while the run goes on):

* the ``upscale`` task instance was ``deferred`` while its trigger row (classpath
  ``TaskResultTrigger``) was assigned to the running ``TriggererJob``, the job of the triggerer
  process started here, and the task instance then ended ``success``, as did the DAG run;
* the trigger wrote its log next to the task's log, as ``attempt=1.log.trigger.<triggerer job id>.log``;
* the upscaled image exists where ``output_path`` says and decodes with Pillow to a 2048 px long edge;
* Novita received exactly one submission (the resume after the deferral did not submit again);
* the API key is not in the trigger's stored kwargs (Airflow 3.3 keeps a task's trigger kwargs as
  plain JSON in the ``trigger`` table) and nowhere in AIRFLOW_HOME: logs, database, configuration.

Every process started here is stopped at teardown, whether the test passed or not: SIGTERM to each
component, then to anything left in its session, then SIGKILL, each step with a bounded wait. The
tails of all logs are printed when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from cryptography.fernet import Fernet
from PIL import Image

from airflow_provider_novita.emulator import EmulatorConfig, EmulatorServer
from tests.e2e.conftest import FAILED_PHASES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO_ROOT / "example_dags"
DAG_ID = "example_novita_upscale"
TASK_ID = "upscale"
TRIGGER_CLASSPATH = "airflow_provider_novita.triggers.task_result.TaskResultTrigger"
# Distinctive, so that finding it anywhere on disk can only mean it leaked.
API_KEY = "sk-e2e-secret-4242"
# Seconds Novita takes per image. Long enough to see the deferral, and deliberately longer than the
# window of a race in Airflow 3.3.2: the worker that deferred can report its exit to the scheduler
# ~5s late (its supervisor seems to notice the exit only when a select() bounded by [workers]
# min_heartbeat_interval = 5s times out). If by then the trigger has fired and the task instance is
# queued or running again, the scheduler takes that stale "success" of the same try for a task
# killed externally and fails it ("state mismatch"). 3.3.2 guards only the ``scheduled`` case; the
# ``queued`` case is apache/airflow#67287 (fixed upstream by #68741, not in 3.3.2), the ``running``
# case #72716. With 4s jobs this test failed 2 runs in 4 that way.
JOB_DURATION = 12.0
# What the scheduler logs when that race strikes.
STALE_EVENT_MISMATCH = "finished with state success, but the task instance's state attribute is"

# Bounds. They catch a hang, they do not measure speed: on a 2-core machine migrating takes about
# 5s, becoming ready about 15s and the run about 20s. Their sum with the stop (at most 20 + 5 + 10
# + 5 s) stays below the test's timeout, so the test's own messages, not pytest-timeout, explain a
# hang.
MIGRATE_TIMEOUT = 90.0
READY_TIMEOUT = 90.0
RUN_TIMEOUT = 120.0
STOP_GRACE = 20.0
ORPHAN_GRACE = 5.0
POLL_INTERVAL = 0.25
LOG_TAIL_LINES = 80


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int | None = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, or all of it for None."""
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<unreadable: {error}>"
    return text if lines is None else "\n".join(text.splitlines()[-lines:])


def _session_members(session_id: int) -> list[int]:
    """Live processes of a session, read from /proc.

    Zombies are left out: they are dead already, and a container's PID 1 may be slow to reap them.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may contain spaces; the fields after it are fixed.
        state, _ppid, _pgrp, session = stat.rpartition(")")[2].split()[:4]
        if int(session) == session_id and state != "Z":
            members.append(int(entry.name))
    return members


class AirflowCluster:
    """Airflow processes sharing one temporary AIRFLOW_HOME, and their log files."""

    def __init__(self, home: Path, env: dict[str, str], api_url: str) -> None:
        self.home = home
        self.env = env
        self.api_url = api_url
        self.db_path = home / "airflow.db"
        self.logs_dir = home / "process-logs"
        self.logs_dir.mkdir()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_seconds: float | None = None

    def run_cli(self, name: str, *args: str, timeout: float) -> None:
        log_path = self.logs_dir / f"{name}.log"
        with log_path.open("wb") as log:
            result = subprocess.run(
                [sys.executable, "-m", "airflow", *args],
                env=self.env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        assert result.returncode == 0, f"`airflow {' '.join(args)}` failed:\n{_tail(log_path)}"

    def start(self, name: str, *args: str) -> None:
        log = (self.logs_dir / f"{name}.log").open("wb")
        try:
            # A session of its own per component: teardown can signal everything it forked, and a
            # Ctrl+C in the terminal does not race the orderly shutdown below.
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", name, *args],
                env=self.env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()  # the child has its own copy of the descriptor

    def assert_running(self) -> None:
        for name, process in self.processes.items():
            code = process.poll()
            assert code is None, f"airflow {name} exited with {code}:\n{self.tail(name)}"

    def tail(self, name: str, lines: int | None = LOG_TAIL_LINES) -> str:
        return _tail(self.logs_dir / f"{name}.log", lines)

    def report(self) -> str:
        """Tails of every process log and of the task logs, for a failed test."""
        parts = [f"===== {path.name} =====\n{_tail(path)}" for path in sorted(self.logs_dir.glob("*.log"))]
        task_logs = sorted((self.home / "logs").glob(f"dag_id={DAG_ID}/**/*.log"))
        parts += [f"===== {path.relative_to(self.home)} =====\n{_tail(path)}" for path in task_logs]
        return "\n".join(parts)

    def stop(self) -> list[str]:
        """Stop every component and everything it started; returns what did not stop on SIGTERM.

        Like a service manager: SIGTERM to each component, which shuts down its own children (executor
        workers, the trigger runner, log servers); signalling those children at the same time would
        race that orderly shutdown. Then SIGTERM to whatever the components left behind in their
        sessions, and SIGKILL for what is still there. Every wait is bounded.
        """
        started = time.monotonic()
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        self._wait(lambda: all(p.poll() is not None for p in self.processes.values()), STOP_GRACE)
        for process in self.processes.values():
            self._signal_session(process.pid, signal.SIGTERM)
        self._wait(lambda: not self._leftovers(), ORPHAN_GRACE)
        not_stopped = [f"{name}: {pids}" for name, pids in self._leftovers().items()]
        for process in self.processes.values():
            self._signal_session(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=10)
        self._wait(lambda: not self._leftovers(), ORPHAN_GRACE)
        survivors = self._leftovers()
        assert not survivors, f"processes survived SIGKILL: {survivors}"
        self.stop_seconds = time.monotonic() - started
        return not_stopped

    def _leftovers(self) -> dict[str, list[int]]:
        for process in self.processes.values():
            process.poll()  # reap the leader, so it stops counting as a member of its session
        leftovers = {name: _session_members(p.pid) for name, p in self.processes.items()}
        return {name: pids for name, pids in leftovers.items() if pids}

    @staticmethod
    def _wait(done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.1)

    @staticmethod
    def _signal_session(session_id: int, signum: signal.Signals) -> None:
        # Signalled one by one: task supervisors move to process groups of their own, so a killpg
        # of the leader's group would miss them; the session is what all descendants keep.
        for pid in _session_members(session_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def query(self, sql: str, *params: object) -> list[sqlite3.Row]:
        # Airflow runs SQLite in WAL mode, so this short read never blocks its writers.
        connection = sqlite3.connect(self.db_path, timeout=10)
        try:
            connection.row_factory = sqlite3.Row
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, job_duration=JOB_DURATION)) as server:
        yield server


@pytest.fixture
def fernet_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def airflow_cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    emulator: EmulatorServer,
    fernet_key: str,
) -> Iterator[AirflowCluster]:
    """A migrated metadata database and the four Airflow components, stopped at teardown."""
    home = tmp_path_factory.mktemp("airflow-home")
    api_port = _free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    # Nothing from the pytest process's Airflow set-up (tests/conftest.py) may leak into the cluster.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "_AIRFLOW", "PYTEST_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": fernet_key,
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # Task processes reach the api-server here; the default would be port 8080.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API__BASE_URL": api_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            # The scheduler signs the task tokens that the api-server checks: one secret for all.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # The scheduler and the triggerer serve their logs over HTTP; fixed default ports could
            # clash with anything else running on this machine.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW_CONN_NOVITA_DEFAULT": emulator.airflow_conn_json(),
            "PYTHONUNBUFFERED": "1",
        }
    )
    cluster = AirflowCluster(home, env, api_url)
    setup_failed = False
    # Everything after this point is inside the try, so whatever fails, every process gets stopped.
    try:
        migrating = time.monotonic()
        cluster.run_cli("db-migrate", "db", "migrate", timeout=MIGRATE_TIMEOUT)
        print(f"\nairflow db migrate took {time.monotonic() - migrating:.1f}s")
        cluster.start("api-server", "--host", "127.0.0.1", "--port", str(api_port))
        cluster.start("dag-processor")
        cluster.start("scheduler")
        cluster.start("triggerer")
        yield cluster
    except BaseException:
        # Only set-up errors land here: pytest does not throw the test's own failure into fixtures.
        setup_failed = True
        raise
    finally:
        not_stopped = cluster.stop()
        print(f"\nAirflow stopped in {cluster.stop_seconds:.1f}s")
        if setup_failed or request.node.stash.get(FAILED_PHASES, set()):
            print(f"Airflow home: {home}\n{cluster.report()}")
        if not_stopped:
            # Airflow's shutdown, not the provider's, and they are gone now: worth a warning, not a failure.
            warnings.warn(f"needed SIGKILL after SIGTERM: {not_stopped}", stacklevel=1)


@dataclass(frozen=True)
class Observation:
    """One reading of the ``upscale`` task instance, its trigger and the trigger's job."""

    at: float
    ti_state: str | None
    try_number: int | None
    trigger_id: int | None
    trigger_classpath: str | None
    trigger_kwargs: str | None
    triggerer_id: int | None
    job_type: str | None
    job_state: str | None
    dag_run_state: str | None


def _observe(cluster: AirflowCluster, run_id: str) -> Observation | None:
    # One statement, so the task instance, its trigger and the job are read from one snapshot.
    rows = cluster.query(
        """
        SELECT ti.state AS ti_state, ti.try_number, ti.trigger_id,
               t.classpath, t.kwargs, t.triggerer_id, j.job_type, j.state AS job_state,
               dr.state AS dag_run_state
        FROM dag_run AS dr
        LEFT JOIN task_instance AS ti
            ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id AND ti.task_id = ?
        LEFT JOIN "trigger" AS t ON t.id = ti.trigger_id
        LEFT JOIN job AS j ON j.id = t.triggerer_id
        WHERE dr.dag_id = ? AND dr.run_id = ?
        """,
        TASK_ID,
        DAG_ID,
        run_id,
    )
    if not rows:
        return None
    (row,) = rows
    return Observation(
        at=time.monotonic(),
        ti_state=row["ti_state"],
        try_number=row["try_number"],
        trigger_id=row["trigger_id"],
        trigger_classpath=row["classpath"],
        trigger_kwargs=row["kwargs"],
        triggerer_id=row["triggerer_id"],
        job_type=row["job_type"],
        job_state=row["job_state"],
        dag_run_state=row["dag_run_state"],
    )


def _wait_until_ready(cluster: AirflowCluster, client: httpx.Client) -> None:
    """Until the api-server answers, all components heartbeat, and the DAG is parsed."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer from the api-server yet"
    while time.monotonic() < deadline:
        cluster.assert_running()
        try:
            health = client.get("/api/v2/monitor/health").json()
            unhealthy = [name for name, part in health.items() if part.get("status") != "healthy"]
            dag = client.get(f"/api/v2/dags/{DAG_ID}")
            if not unhealthy and dag.status_code == 200:
                return
            errors = client.get("/api/v2/importErrors").json().get("import_errors")
            last = f"unhealthy: {unhealthy}; GET dag: {dag.status_code}; import errors: {errors}"
        except (httpx.HTTPError, ValueError) as error:  # not listening yet, or not answering JSON yet
            last = f"api-server: {error!r}"
        time.sleep(1.0)
    pytest.fail(f"Airflow not ready after {READY_TIMEOUT:g}s ({last})\n{cluster.report()}")


def _watch_run(cluster: AirflowCluster, run_id: str) -> list[Observation]:
    """Read the run's records every POLL_INTERVAL until the DAG run is final."""
    observations: list[Observation] = []
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        observation = _observe(cluster, run_id)
        if observation is not None:
            observations.append(observation)
            if observation.dag_run_state in ("success", "failed"):
                return observations
        cluster.assert_running()
        time.sleep(POLL_INTERVAL)
    seen = _distinct_states(observations)
    pytest.fail(f"DAG run {run_id} not final after {RUN_TIMEOUT:g}s; {TASK_ID} went through {seen}")


def _distinct_states(observations: list[Observation]) -> list[str | None]:
    states: list[str | None] = []
    for observation in observations:
        if not states or states[-1] != observation.ti_state:
            states.append(observation.ti_state)
    return states


@pytest.mark.timeout(400)
def test_upscale_defers_to_the_triggerer_process_and_resumes(
    airflow_cluster: AirflowCluster, emulator: EmulatorServer, fernet_key: str, tmp_path: Path
) -> None:
    cluster = airflow_cluster
    output_dir = tmp_path / "out"
    with httpx.Client(base_url=cluster.api_url, timeout=30) as client:
        waited = time.monotonic()
        _wait_until_ready(cluster, client)
        print(f"\nAirflow ready after {time.monotonic() - waited:.1f}s")
        unpause = client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
        assert unpause.status_code == 200, unpause.text
        conf = {
            "image_url": f"{emulator.base_url}/samples/landscape.png",
            "resolution": "2k",
            "output_format": "png",
            "output_path": f"file://{output_dir}/",
        }
        started = time.monotonic()
        created = client.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
        assert created.status_code == 200, created.text
        run_id = created.json()["dag_run_id"]

    observations = _watch_run(cluster, run_id)
    states = _distinct_states(observations)
    print(f"{TASK_ID} states seen: {states}; run took {time.monotonic() - started:.1f}s")

    # The DAG run and the task ended well, after a deferral.
    final = observations[-1]
    scheduler_log = cluster.tail("scheduler", lines=None).splitlines()
    race = [line for line in scheduler_log if STALE_EVENT_MISMATCH in line]
    assert final.dag_run_state == "success", f"DAG run {final.dag_run_state}; {TASK_ID} went {states}" + (
        f"; Airflow's stale-event race (see JOB_DURATION): {race}" if race else ""
    )
    assert final.ti_state == "success", states
    assert "deferred" in states, f"{TASK_ID} was never seen deferred: {states}"

    # While deferred, its trigger was held by the running triggerer job, which is the triggerer we
    # started: the only TriggererJob this fresh database has ever had.
    triggerer_jobs = cluster.query("SELECT id, state FROM job WHERE job_type = 'TriggererJob'")
    assert [row["state"] for row in triggerer_jobs] == ["running"], [tuple(row) for row in triggerer_jobs]
    triggerer_job_id = triggerer_jobs[0]["id"]
    held = [o for o in observations if o.ti_state == "deferred" and o.triggerer_id is not None]
    assert held, f"never saw the deferred {TASK_ID} with an assigned trigger: {observations}"
    assert {o.triggerer_id for o in held} == {triggerer_job_id}
    assert {(o.job_type, o.job_state) for o in held} == {("TriggererJob", "running")}
    assert {o.trigger_classpath for o in held} == {TRIGGER_CLASSPATH}
    (trigger_id,) = {o.trigger_id for o in held}
    print(f"seen deferred with the trigger held by job {triggerer_job_id} {len(held)} times", end=" ")
    print(f"over {held[-1].at - held[0].at:.1f}s")

    # The resume after the deferral did not count as a new try, and submitted nothing.
    assert final.try_number == 1
    stats = emulator.stats()
    assert stats["accepted_submissions"] == 1, stats

    # The image was saved where output_path says, at the size 2k means.
    saved = sorted(output_dir.iterdir())
    assert [path.suffix for path in saved] == [".png"], saved
    with Image.open(saved[0]) as image:
        image.load()  # decodes every pixel: a truncated file fails here, not just its header
        assert max(image.size) == 2048, image.size
        assert image.size == (2048, 1152), image.size  # the 640x360 source, aspect ratio kept

    # Airflow 3 writes a deferred task's trigger log beside its task log, suffixed with the id of the
    # triggerer job that ran it: the triggerer process itself recorded running this trigger.
    task_log_dir = cluster.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={TASK_ID}"
    assert (task_log_dir / "attempt=1.log").is_file(), sorted(task_log_dir.iterdir())
    trigger_log = task_log_dir / f"attempt=1.log.trigger.{triggerer_job_id}.log"
    assert trigger_log.is_file(), sorted(task_log_dir.iterdir())
    trigger_log_text = trigger_log.read_text()
    assert f"(ID {trigger_id}) starting" in trigger_log_text, trigger_log_text
    assert "Trigger fired event" in trigger_log_text, trigger_log_text

    # The API key lives only in the environment: not in the trigger's stored kwargs, and nowhere in
    # AIRFLOW_HOME: task, trigger and parser logs, the components' own output, the metadata database
    # with its WAL, airflow.cfg.
    (stored_kwargs,) = {o.trigger_kwargs for o in held}
    kwargs = _decode_trigger_kwargs(stored_kwargs, fernet_key)
    assert kwargs.get("novita_conn_id") == "novita_default", kwargs
    assert API_KEY not in json.dumps(kwargs), kwargs
    files = [path for path in cluster.home.rglob("*") if path.is_file()]
    assert trigger_log in files
    leaks = [str(path) for path in files if API_KEY.encode() in path.read_bytes()]
    assert not leaks, f"the API key appears in {leaks}"


def _decode_trigger_kwargs(stored: str | None, fernet_key: str) -> dict[str, Any]:
    """The kwargs as Airflow's ``Trigger.kwargs`` reads them: JSON, Fernet-encrypted or not.

    Airflow 3.3 stores the kwargs of a task's trigger as plain JSON (the worker sends them
    unencrypted through the execution API); other trigger rows are encrypted with the Fernet key.
    """
    assert stored is not None
    if not stored.startswith("{"):
        stored = Fernet(fernet_key.encode()).decrypt(stored.encode()).decode()
    decoded = json.loads(stored)
    assert isinstance(decoded, dict), decoded
    return decoded
