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

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from airflow_provider_novita.emulator import EmulatorConfig, EmulatorServer
from tests.deployment import AirflowDeployment, free_port, wait_until_ready
from tests.e2e.conftest import FAILED_PHASES

if TYPE_CHECKING:
    from collections.abc import Iterator

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
POLL_INTERVAL = 0.25


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, job_duration=JOB_DURATION)) as server:
        yield server


@pytest.fixture
def airflow_cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    emulator: EmulatorServer,
) -> Iterator[AirflowDeployment]:
    """A migrated metadata database and the four Airflow components, stopped at teardown."""
    home = tmp_path_factory.mktemp("airflow-home")
    api_port = free_port()
    cluster = AirflowDeployment.on_sqlite(
        home,
        api_port=api_port,
        dags_folder=DAGS_FOLDER,
        connections={"novita_default": emulator.airflow_conn_json()},
        settings={"AIRFLOW__CORE__PARALLELISM": "2"},
    )
    setup_failed = False
    # Everything after this point is inside the try, so whatever fails, every process gets stopped.
    try:
        migrating = time.monotonic()
        cluster.run_cli("db-migrate", "db", "migrate", timeout=MIGRATE_TIMEOUT)
        print(f"\nairflow db migrate took {time.monotonic() - migrating:.1f}s")
        cluster.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port))
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


def _observe(cluster: AirflowDeployment, run_id: str) -> Observation | None:
    # One statement, so the task instance, its trigger and the job are read from one snapshot.
    rows = cluster.query(
        """
        SELECT ti.state AS ti_state, ti.try_number, ti.trigger_id,
               t.classpath, t.kwargs, t.triggerer_id, j.job_type, j.state AS job_state,
               dr.state AS dag_run_state
        FROM dag_run AS dr
        LEFT JOIN task_instance AS ti
            ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id AND ti.task_id = %s
        LEFT JOIN "trigger" AS t ON t.id = ti.trigger_id
        LEFT JOIN job AS j ON j.id = t.triggerer_id
        WHERE dr.dag_id = %s AND dr.run_id = %s
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


def _watch_run(cluster: AirflowDeployment, run_id: str) -> list[Observation]:
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
    airflow_cluster: AirflowDeployment, emulator: EmulatorServer, tmp_path: Path
) -> None:
    cluster = airflow_cluster
    output_dir = tmp_path / "out"
    with cluster.client(timeout=30) as client:
        waited = time.monotonic()
        wait_until_ready(cluster, client, [DAG_ID], READY_TIMEOUT)
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
    kwargs = cluster.trigger_kwargs(stored_kwargs)
    assert kwargs.get("novita_conn_id") == "novita_default", kwargs
    assert API_KEY not in json.dumps(kwargs), kwargs
    files = [path for path in cluster.home.rglob("*") if path.is_file()]
    assert trigger_log in files
    leaks = [str(path) for path in files if API_KEY.encode() in path.read_bytes()]
    assert not leaks, f"the API key appears in {leaks}"
