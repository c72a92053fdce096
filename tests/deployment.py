"""
A real Airflow 3 deployment on this machine: each component its own process, as teams run it.

``dag.test()`` runs tasks and triggers inside one Python process, so it cannot show what users rely
on: that a deferred task frees its worker slot, that a trigger is rebuilt from its serialized kwargs in
another process, that a killed triggerer's triggers move to another one. The end-to-end tests, the
cluster tests and the benchmarks start Airflow here instead, from a fresh ``AIRFLOW_HOME``:

* :func:`airflow_env` is the environment every component shares (one Fernet key, one JWT secret, one
  api-server that task processes report to, the SimpleAuthManager, free log-server ports);
* :class:`AirflowDeployment` starts components in sessions of their own, kills one as an OOM killer or
  a lost node would (SIGKILL to everything it started), and stops all of them at the end, whatever
  happened, with bounded waits;
* :class:`SqliteDatabase` and :class:`PostgresDatabase` are the metadata database: a file in the home,
  or a PostgreSQL database created for the run and dropped after it.

It is test infrastructure, not part of the provider: nothing in ``airflow_provider_novita`` imports it.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from cryptography.fernet import Fernet

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Mapping

# Bounds of the orderly stop: SIGTERM, then SIGTERM to what is left in each session, then SIGKILL.
STOP_GRACE = 20.0
ORPHAN_GRACE = 5.0
LOG_TAIL_LINES = 80
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
# Localhost PostgreSQL of this project's machines (trust authentication), and its maintenance database.
POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int | None = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, or all of it for None."""
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<unreadable: {error}>"
    return text if lines is None else "\n".join(text.splitlines()[-lines:])


def wait_for(done: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``done`` until it holds or ``timeout`` seconds pass; returns whether it held."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def session_members(session_id: int) -> list[int]:
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


def signal_session(session_id: int, signum: signal.Signals) -> None:
    # One by one: task supervisors move to process groups of their own, so a killpg of the leader's
    # group would miss them; the session is what all descendants keep.
    for pid in session_members(session_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


class Database(Protocol):
    """The metadata database of a deployment, as its components and the tests reach it."""

    url: str

    def query(self, sql: str, *params: object) -> list[dict[str, Any]]:
        """Rows of a read-only statement; ``%s`` marks a parameter."""
        ...

    def drop(self) -> None: ...


class SqliteDatabase:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    def query(self, sql: str, *params: object) -> list[dict[str, Any]]:
        # Airflow runs SQLite in WAL mode, so this short read never blocks its writers.
        connection = sqlite3.connect(self.path, timeout=10)
        try:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(sql.replace("%s", "?"), params)]
        finally:
            connection.close()

    def drop(self) -> None:
        """The file goes with its temporary AIRFLOW_HOME."""


class PostgresDatabase:
    """A database of its own on the local PostgreSQL server, created here and dropped by :meth:`drop`."""

    def __init__(self, name: str) -> None:
        if not name.isidentifier():
            raise ValueError(f"not a plain database name: {name!r}")
        self.name = name
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
        self._admin(f'CREATE DATABASE "{name}"')

    @staticmethod
    def ping() -> None:
        """Raises if the local PostgreSQL server does not answer."""
        PostgresDatabase._admin("SELECT 1")

    def query(self, sql: str, *params: object) -> list[dict[str, Any]]:
        import psycopg2.extras

        with contextlib.closing(psycopg2.connect(f"{POSTGRES_SERVER}/{self.name}")) as connection:
            connection.autocommit = True
            with connection.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
                cursor.execute(sql, params)
                return [dict(row) for row in cursor.fetchall()]

    def dump(self, path: Path) -> None:
        """``pg_dump`` of the whole database (schema and data) into ``path``."""
        with path.open("wb") as out:
            subprocess.run(
                ["pg_dump", "--host=127.0.0.1", "--username=postgres", self.name],
                stdout=out,
                check=True,
                timeout=120,
            )

    def drop(self) -> None:
        # WITH (FORCE) ends the connections of components that were killed before they closed theirs.
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    @staticmethod
    def _admin(statement: str) -> None:
        import psycopg2

        with contextlib.closing(psycopg2.connect(f"{POSTGRES_SERVER}/postgres")) as connection:
            connection.autocommit = True  # CREATE and DROP DATABASE refuse to run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(statement)


def airflow_env(
    home: Path,
    *,
    api_port: int,
    dags_folder: Path,
    database: Database,
    connections: Mapping[str, str],
    settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment every component of one deployment shares.

    ``connections`` maps connection ids to their JSON form (``AIRFLOW_CONN_<ID>``); ``settings`` are
    further ``AIRFLOW__SECTION__KEY`` values, e.g. the executor's. Nothing of the calling process's own
    Airflow set-up leaks in.
    """
    api_url = f"http://127.0.0.1:{api_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "PYTEST_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # Task processes reach the api-server here; the default would be port 8080.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database.url,
            "AIRFLOW__API__BASE_URL": api_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            # The scheduler signs the task tokens that the api-server checks: one secret for all.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # Components serve their logs over HTTP; fixed default ports could clash with anything
            # else on this machine. A second triggerer or worker on the host needs its own port.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"AIRFLOW_CONN_{conn_id.upper()}": value for conn_id, value in connections.items()})
    env.update(settings or {})
    return env


class AllAdminsToken(httpx.Auth):
    """Bearer auth with a token of SimpleAuthManager's all-admins mode, fetched when first needed.

    Lazily: a client may exist before the api-server answers (:func:`wait_until_ready` polls with
    it), and a failed fetch is then an ``httpx.HTTPError`` like any other call's. A 401 later (an
    expired token) fetches a new one and sends the request once more.
    """

    def __init__(self) -> None:
        self.token: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.token is None:
            yield from self._fetch(request)
        request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code == 401:
            yield from self._fetch(request)
            request.headers["Authorization"] = f"Bearer {self.token}"
            yield request

    def _fetch(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield httpx.Request("GET", request.url.join("/auth/token"))
        response.read()
        response.raise_for_status()
        self.token = response.json()["access_token"]


class AirflowDeployment:
    """Airflow processes sharing one AIRFLOW_HOME and one metadata database, and their log files.

    Components are named by a label (``triggerer-1``); a restarted label writes a new log file
    (``triggerer-1.2.log``), so what the killed process wrote stays readable.
    """

    def __init__(self, home: Path, env: dict[str, str], database: Database) -> None:
        self.home = home
        self.env = env
        self.database = database
        self.api_url = env["AIRFLOW__API__BASE_URL"]
        self.logs_dir = home / "process-logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: list[subprocess.Popen[bytes]] = []
        self._log_files: dict[str, Path] = {}
        self.stop_seconds: float | None = None

    @classmethod
    def on_sqlite(
        cls,
        home: Path,
        *,
        api_port: int,
        dags_folder: Path,
        connections: Mapping[str, str],
        settings: Mapping[str, str] | None = None,
    ) -> AirflowDeployment:
        """A deployment whose metadata database is a SQLite file in ``home`` (see :func:`airflow_env`)."""
        database = SqliteDatabase(home / "airflow.db")
        env = airflow_env(
            home,
            api_port=api_port,
            dags_folder=dags_folder,
            database=database,
            connections=connections,
            settings=settings,
        )
        return cls(home, env, database)

    def client(self, timeout: float = 60) -> httpx.Client:
        """A client of the deployment's REST API that authenticates as an admin on every Airflow 3.

        In all-admins mode, Airflow 3.2+ lets unauthenticated calls through (a middleware of
        SimpleAuthManager), but 3.1 has no such middleware and answers them 401. ``GET /auth/token``
        hands out an admin token without credentials in that mode on every Airflow 3 release, so one
        way fits all of them; the bearer token is harmless where it is not needed. Unnecessary once
        the oldest Airflow tested is 3.2 (then a plain ``httpx.Client`` would do).
        """
        return httpx.Client(base_url=self.api_url, timeout=timeout, auth=AllAdminsToken())

    def run_cli(self, label: str, *args: str, timeout: float) -> None:
        log_path = self._new_log(label)
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
        if result.returncode != 0:
            raise RuntimeError(f"`airflow {' '.join(args)}` failed:\n{tail(log_path)}")

    def start(self, label: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``airflow <args>`` (default: ``airflow <label>``) with ``env`` over the shared one."""
        if label in self.processes:
            raise RuntimeError(f"{label} is running already")
        log = self._new_log(label).open("wb")
        try:
            # A session of its own per component: teardown can signal everything it forked, and a
            # Ctrl+C in the terminal does not race the orderly shutdown.
            process = subprocess.Popen(
                [sys.executable, "-m", "airflow", *(args or (label,))],
                env={**self.env, **(env or {})},
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()  # the child has its own copy of the descriptor
        self.processes[label] = process
        return process

    def kill(self, label: str) -> None:
        """SIGKILL a component and everything it started, as on node loss: nothing can clean up."""
        process = self.processes.pop(label)
        self.killed.append(process)
        signal_session(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        if not wait_for(lambda: not session_members(process.pid), ORPHAN_GRACE):
            raise RuntimeError(f"{label} left processes after SIGKILL: {session_members(process.pid)}")

    def assert_running(self) -> None:
        for label, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise AssertionError(f"airflow {label} exited with {code}:\n{self.tail(label)}")

    def log_path(self, label: str) -> Path:
        return self._log_files[label]

    def tail(self, label: str, lines: int | None = LOG_TAIL_LINES) -> str:
        return tail(self._log_files[label], lines)

    def report(self) -> str:
        """Tails of every process log and of the task logs, for a failed test."""
        paths = sorted(self.logs_dir.glob("*.log")) + sorted((self.home / "logs").glob("dag_id=*/**/*.log"))
        return "\n".join(f"===== {path.relative_to(self.home)} =====\n{tail(path)}" for path in paths)

    def stop(self) -> list[str]:
        """Stop every component and everything it started; returns what did not stop on SIGTERM.

        Like a service manager: SIGTERM to each component, which shuts down its own children (executor
        workers, the trigger runner, log servers); signalling those children at the same time would
        race that orderly shutdown. Then SIGTERM to whatever the components left behind in their
        sessions, and SIGKILL for what is still there. Every wait is bounded.
        """
        started = time.monotonic()
        everyone = [*self.processes.values(), *self.killed]
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        wait_for(lambda: all(p.poll() is not None for p in self.processes.values()), STOP_GRACE)
        for process in everyone:
            signal_session(process.pid, signal.SIGTERM)
        wait_for(lambda: not self._leftovers(everyone), ORPHAN_GRACE)
        not_stopped = [f"pid {pid}: {pids}" for pid, pids in self._leftovers(everyone).items()]
        for process in everyone:
            signal_session(process.pid, signal.SIGKILL)
        for process in everyone:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        wait_for(lambda: not self._leftovers(everyone), ORPHAN_GRACE)
        survivors = self._leftovers(everyone)
        self.stop_seconds = time.monotonic() - started
        if survivors:
            raise RuntimeError(f"processes survived SIGKILL: {survivors}")
        return not_stopped

    def query(self, sql: str, *params: object) -> list[dict[str, Any]]:
        return self.database.query(sql, *params)

    def trigger_kwargs(self, stored: str | None) -> dict[str, Any]:
        """A ``trigger`` row's kwargs as ``Trigger.kwargs`` reads them: JSON, Fernet-encrypted or not.

        Airflow 3.3 stores the kwargs of a task's trigger as plain JSON (the worker sends them
        unencrypted through the execution API); other trigger rows are encrypted with the Fernet key.
        """
        if stored is None:
            raise AssertionError("the trigger row has no kwargs")
        if not stored.startswith("{"):
            fernet = Fernet(self.env["AIRFLOW__CORE__FERNET_KEY"].encode())
            stored = fernet.decrypt(stored.encode()).decode()
        decoded = json.loads(stored)
        # Airflow 3.0, 3.1 serialize them with BaseSerialization, which wraps the dict in an envelope
        # (its values stay readable for what the tests look at); 3.2+ uses serde, plain for a dict of
        # plain values. Unnecessary from 3.2.
        if isinstance(decoded, dict) and decoded.get("__type") == "dict" and "__var" in decoded:
            decoded = decoded["__var"]
        if not isinstance(decoded, dict):
            raise AssertionError(f"trigger kwargs are not an object: {decoded!r}")
        return decoded

    def _new_log(self, label: str) -> Path:
        path = self.logs_dir / f"{label}.log"
        restart = 2
        while path.exists():
            path = self.logs_dir / f"{label}.{restart}.log"
            restart += 1
        self._log_files[label] = path
        return path

    @staticmethod
    def _leftovers(processes: list[subprocess.Popen[bytes]]) -> dict[int, list[int]]:
        for process in processes:
            process.poll()  # reap the leader, so it stops counting as a member of its session
        leftovers = {p.pid: session_members(p.pid) for p in processes}
        return {pid: pids for pid, pids in leftovers.items() if pids}


def wait_until_ready(
    deployment: AirflowDeployment, client: httpx.Client, dag_ids: list[str], timeout: float
) -> None:
    """Until the api-server answers, every component heartbeats, and the DAGs are parsed."""
    deadline = time.monotonic() + timeout
    last = "no answer from the api-server yet"
    while time.monotonic() < deadline:
        deployment.assert_running()
        try:
            health = client.get("/api/v2/monitor/health").json()
            unhealthy = [name for name, part in health.items() if part.get("status") != "healthy"]
            missing = [d for d in dag_ids if client.get(f"/api/v2/dags/{d}").status_code != 200]
            if not unhealthy and not missing:
                return
            errors = client.get("/api/v2/importErrors").json().get("import_errors")
            last = f"unhealthy: {unhealthy}; DAGs not parsed yet: {missing}; import errors: {errors}"
        except (httpx.HTTPError, ValueError) as error:  # not listening, or not answering JSON yet
            last = f"api-server: {error!r}"
        time.sleep(1.0)
    raise AssertionError(f"Airflow not ready after {timeout:g}s ({last})")
