"""
Airflow as teams deploy it, on this machine: CeleryExecutor, PostgreSQL, Redis and two triggerers.

:func:`celery_cluster` starts, from a fresh AIRFLOW_HOME, a PostgreSQL database of its own (created
here, dropped at the end), Celery with a Redis broker on a Redis database number of its own (flushed
at the end) and the PostgreSQL result backend, then ``api-server``, ``scheduler``, ``dag-processor``,
one ``celery worker`` with concurrency 2 and two ``triggerer`` processes, each with its own log-server
port. Every process is stopped by PID at the end, also when something failed.

Failure detection is shortened from minutes to seconds with Airflow's own settings (:data:`SETTINGS`):

* ``[triggerer] job_heartbeat_sec = 2`` and ``triggerer_health_check_threshold = 10`` (defaults 5 and
  30): a killed triggerer's triggers are taken over by the other one 10-15 s after its last heartbeat;
* ``[scheduler] task_instance_heartbeat_timeout = 20`` with detection every 5 s (defaults 300 and 10):
  a task whose worker died is failed, and retried, within about half a minute.

The cluster tests (``test_cluster.py``) and the chaos soak (``soak.py``) both run on it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.deployment import AirflowDeployment, PostgresDatabase, airflow_env, free_port, wait_until_ready

DAGS_FOLDER = Path(__file__).resolve().parent / "dags"
DAG_ID = "novita_cluster"
DEADLINE_DAG_ID = "novita_cluster_deadline"
FAST_DAG_ID = "novita_cluster_fast"
TASK_ID = "upscale"
TRIGGERERS = ("triggerer-1", "triggerer-2")
WORKER = "celery-worker"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_CLAIM = "novita-cluster-claim"
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
SETTINGS = {
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
}
MIGRATE_TIMEOUT = 180.0
READY_TIMEOUT = 180.0
SERVICE_HINTS = {
    "PostgreSQL": (
        f"{POSTGRES_HOST}:{POSTGRES_PORT} (trust auth); start it with "
        "'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'"
    ),
    "Redis": (
        f"{REDIS_HOST}:{REDIS_PORT}; start it with 'redis-server --daemonize yes --bind 127.0.0.1 "
        '--port 6379 --save "" --appendonly no\''
    ),
}


def missing_services() -> list[str]:
    """The services the cluster needs that do not answer, each with how to start it."""
    missing = []
    try:
        PostgresDatabase.ping()
    except Exception as error:  # any failure means "not usable here"
        missing.append(f"PostgreSQL at {SERVICE_HINTS['PostgreSQL']} ({error})")
    try:
        _redis(0).ping()
    except Exception as error:
        missing.append(f"Redis at {SERVICE_HINTS['Redis']} ({error})")
    return missing


def _redis(db: int) -> Any:
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=10)


def claim_redis_db() -> int:
    """
    An empty Redis database number, so that the broker's queues meet nobody else's.

    The claim is a marker set with SETNX and kept until the cluster flushes the database at its end:
    a cluster started meanwhile (the soak beside a test loop) finds the database not empty. Released
    at once, it let two clusters share a broker, and each one's Celery worker ran the other's tasks
    (refused with "Invalid auth token": every cluster signs with its own JWT secret). The marker
    expires after a day, for a run that was killed before it could flush.
    """
    for db in range(15, 0, -1):
        client = _redis(db)
        if client.dbsize() == 0 and client.set(REDIS_CLAIM, secrets.token_hex(8), nx=True, ex=86400):
            return db
    raise RuntimeError("no empty Redis database among 1-15")


@dataclass
class Cluster:
    """A running Celery deployment, its metadata database and Redis broker database, and a REST client."""

    deployment: AirflowDeployment
    database: PostgresDatabase
    redis_db: int
    client: httpx.Client
    triggerer_ports: dict[str, int] = field(default_factory=dict)
    # The TriggererJob id of each triggerer's current process; a restart makes a new job.
    triggerer_jobs: dict[str, int] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.deployment.home

    def start_triggerer(self, label: str) -> int:
        """Start a triggerer and return its TriggererJob id, once the job exists."""
        known = self._triggerer_job_ids()
        # Two triggerers on one host must not both serve their logs on the same port.
        port = self.triggerer_ports.setdefault(label, free_port())
        self.deployment.start(
            label, "triggerer", env={"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(port)}
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not (new := self._triggerer_job_ids() - known):
            self.deployment.assert_running()
            if time.monotonic() > deadline:
                raise AssertionError(f"{label} made no TriggererJob in {READY_TIMEOUT:g}s")
            time.sleep(0.2)
        (self.triggerer_jobs[label],) = new
        return self.triggerer_jobs[label]

    def _triggerer_job_ids(self) -> set[int]:
        return {
            row["id"] for row in self.deployment.query("SELECT id FROM job WHERE job_type = 'TriggererJob'")
        }

    def start_worker(self) -> None:
        self.deployment.start(WORKER, "celery", "worker", "--concurrency", "2")

    def trigger_run(self, dag_id: str, conf: dict[str, Any]) -> str:
        self.client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        created = self.client.post(
            f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}
        )
        created.raise_for_status()
        run_id: str = created.json()["dag_run_id"]
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.deployment.query(
            "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id
        )
        return rows[0]["state"] if rows else None

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's ``upscale`` task instances with the triggerer job holding each one's trigger."""
        return self.deployment.query(
            """
            SELECT ti.map_index, ti.state, ti.try_number, ti.start_date, ti.end_date,
                   ti.trigger_id, t.triggerer_id, t.kwargs AS trigger_kwargs
            FROM task_instance AS ti LEFT JOIN "trigger" AS t ON t.id = ti.trigger_id
            WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = %s
            ORDER BY ti.map_index
            """,
            dag_id,
            run_id,
            TASK_ID,
        )

    def records(self, dag_id: str, run_id: str, map_index: int) -> list[dict[str, Any]]:
        """What one ``upscale`` task instance returned (its XCom), read through the REST API."""
        response = self.client.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{TASK_ID}/xcomEntries/return_value",
            params={"map_index": map_index, "deserialize": True},
        )
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()["value"]
        return records

    def wait_run(self, dag_id: str, run_id: str, timeout: float, watch: Any = None) -> str:
        """Until the run is final; ``watch`` is called with its task instances on every look."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if watch is not None:
                watch(self.task_instances(dag_id, run_id))
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            self.deployment.assert_running()
            time.sleep(0.5)
        states = [row["state"] for row in self.task_instances(dag_id, run_id)]
        raise AssertionError(f"{dag_id} run {run_id} not final after {timeout:g}s; task states {states}")

    def redis_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every key of the broker's Redis database with every value stored under it (not the claim)."""
        client = _redis(self.redis_db)
        for key in client.scan_iter(count=500):
            if key == REDIS_CLAIM.encode():
                continue
            kind = client.type(key).decode()
            values: list[bytes] = []
            if kind == "string":
                values = [client.get(key) or b""]
            elif kind == "hash":
                values = [part for pair in client.hgetall(key).items() for part in pair]
            elif kind == "list":
                values = client.lrange(key, 0, -1)
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "zset":
                values = [member for member, _score in client.zrange(key, 0, -1, withscores=True)]
            for value in values or [b""]:
                yield key, value


def decoded_forms(value: bytes) -> list[bytes]:
    """``value`` and what Kombu hides in it: a Celery message's body is base64 inside JSON."""
    forms = [value]
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        message = json.loads(value)
        if isinstance(message, dict) and isinstance(message.get("body"), str):
            forms.append(base64.b64decode(message["body"]))
    return forms


def places_holding(cluster: Cluster, secret: bytes, workdir: Path) -> list[str]:
    """Where ``secret`` is stored: files under AIRFLOW_HOME (logs, configuration), a ``pg_dump`` of
    the metadata database, and every key and value in the broker's Redis database."""
    places = [str(path) for path in cluster.home.rglob("*") if path.is_file() and secret in path.read_bytes()]
    dump = workdir / "metadata.sql"
    cluster.database.dump(dump)
    if b"CREATE TABLE public.task_instance" not in dump.read_bytes():
        raise AssertionError(f"{dump} is not a dump of the metadata database")
    if secret in dump.read_bytes():
        places.append(f"pg_dump of {cluster.database.name}")
    for key, value in cluster.redis_items():
        if any(secret in form for form in [key, *decoded_forms(value)]):
            places.append(f"redis db {cluster.redis_db} key {key!r}")
    return places


@contextlib.contextmanager
def celery_cluster(home: Path, connections: dict[str, str]) -> Iterator[Cluster]:
    """Start the whole deployment; stop every process, drop the database, flush Redis on exit.

    Each cleanup is registered as soon as there is something to clean, so a failure at any step of
    the start leaves nothing behind.
    """
    with contextlib.ExitStack() as cleanup:
        database = PostgresDatabase(f"novita_cluster_{secrets.token_hex(4)}")
        cleanup.callback(database.drop)
        redis_db = claim_redis_db()
        cleanup.callback(_redis(redis_db).flushdb)
        api_port = free_port()
        env = airflow_env(
            home,
            api_port=api_port,
            dags_folder=DAGS_FOLDER,
            database=database,
            connections=connections,
            settings={
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{database.name}",
                **SETTINGS,
            },
        )
        deployment = AirflowDeployment(home, env, database)
        cleanup.callback(_stop, deployment)
        try:
            deployment.run_cli("db-migrate", "db", "migrate", timeout=MIGRATE_TIMEOUT)
            deployment.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port))
            deployment.start("scheduler")
            deployment.start("dag-processor")
            client = cleanup.enter_context(deployment.client())
            cluster = Cluster(deployment, database, redis_db, client)
            cluster.start_worker()
            for label in TRIGGERERS:
                cluster.start_triggerer(label)
            wait_until_ready(deployment, client, [DAG_ID, DEADLINE_DAG_ID, FAST_DAG_ID], READY_TIMEOUT)
            yield cluster
        except BaseException:
            print(f"\nAirflow home: {home}\n{deployment.report()}")
            raise


def _stop(deployment: AirflowDeployment) -> None:
    not_stopped = deployment.stop()
    if not_stopped:
        print(f"Airflow components that needed SIGKILL after SIGTERM: {not_stopped}")
