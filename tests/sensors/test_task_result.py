"""TaskResultSensor: one behaviour in poke, reschedule and deferrable mode, on public Airflow API only."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.sdk import BaseSensorOperator, ObjectStoragePath

from airflow_provider_novita.exceptions import NovitaError, NovitaTimeoutError
from airflow_provider_novita.sensors import task_result
from airflow_provider_novita.sensors.task_result import TaskResultSensor
from airflow_provider_novita.triggers.task_result import TaskResultTrigger
from tests.compat import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)
from tests.fakes import (
    FAILED,
    PROCESSING,
    SUCCEED,
    FakeNovita,
    FakeStateStore,
    FakeTaskInstance,
    context,
    error,
)

SOURCES = ["https://img.test/a.png", "https://img.test/b.png"]


@pytest.fixture
def fake(novita_conn: str, monkeypatch: pytest.MonkeyPatch) -> FakeNovita:
    fake = FakeNovita(script=(PROCESSING, SUCCEED))
    fake.serve(monkeypatch, task_result)
    fake.scripts = {"t0": fake.script, "t1": fake.script}
    fake.reasons = {"t0": "", "t1": "INVALID_IMAGE_SIZE"}
    return fake


def sensor(**kwargs: Any) -> TaskResultSensor:
    kwargs.setdefault("task_ids", ["t0", "t1"])
    kwargs.setdefault("poke_interval", 0.01)
    return TaskResultSensor(task_id="wait", **kwargs)


def rescheduled_runs(store: FakeStateStore | None, runs: int = 50, **kwargs: Any) -> tuple[Any, list[float]]:
    """
    Runs the sensor in reschedule mode as Airflow does: a new instance for every poke, the same state
    store. Time is simulated: each run starts as if the clock had jumped to the reschedule date the
    previous run asked for. Returns what the last run returned and the delays it asked for.
    """
    delays: list[float] = []
    first_start = datetime.now(timezone.utc)
    for count in range(runs):
        skipped = timedelta(seconds=sum(delays))
        ti = FakeTaskInstance(first_reschedule_date=first_start - skipped if count else None)
        try:
            return sensor(mode="reschedule", **kwargs).execute(
                context(store, ti, task_reschedule_count=count)
            ), delays
        except AirflowRescheduleException as reschedule:
            # Measured from the simulated start of this run, so the next one starts at that date.
            asked = reschedule.reschedule_date - (first_start if count == 0 else ti.first_reschedule_date)
            delays.append(asked.total_seconds() - sum(delays))
    raise AssertionError(f"still waiting after {runs} reschedules")


def chained(error: BaseException) -> str:
    """An exception's message with those of its causes: Airflow re-wraps some on the way out."""
    parts = []
    current: BaseException | None = error
    while current is not None:
        parts.append(str(current))
        current = current.__cause__
    return " <- ".join(parts)


def test_the_private_poke_interval_hook_is_not_overridden() -> None:
    assert TaskResultSensor._get_next_poke_interval is BaseSensorOperator._get_next_poke_interval


class TestPokeMode:
    def test_polls_only_unfinished_tasks_and_returns_the_operators_records(self, fake: FakeNovita) -> None:
        fake.scripts["t1"] = (PROCESSING, PROCESSING, SUCCEED)
        records = sensor(images=SOURCES).execute(context())
        assert fake.polls == {"t0": 2, "t1": 3}
        assert [(r["task_id"], r["image"], r["image_url"]) for r in records] == [
            ("t0", SOURCES[0], "https://cdn.test/t0.jpeg"),
            ("t1", SOURCES[1], "https://cdn.test/t1.jpeg"),
        ]

    def test_storage_uris_and_paths_name_the_records_images_unsigned(self, fake: FakeNovita) -> None:
        images = ["s3://aws_default@bucket/in/a.png", ObjectStoragePath("gs://bucket/b.png")]
        records = sensor(images=images).execute(context())
        assert [r["image"] for r in records] == ["s3://aws_default@bucket/in/a.png", "gs://bucket/b.png"]

    def test_the_pace_between_pokes_follows_the_shared_policy(self, fake: FakeNovita) -> None:
        fake.eta = 7
        fake.scripts = {"t0": (PROCESSING,)}
        waiting = sensor(task_ids="t0", poke_interval=2, max_poll_interval=30)
        waiting._started_at = time.time()
        assert waiting.poke(context()) is False
        assert 7 * 0.8 <= waiting.poke_interval <= 7 * 1.2, "the task's eta, with jitter"

    def test_a_key_refused_while_waiting_fails_the_task_once(self, fake: FakeNovita) -> None:
        fake.poll_answer = error(403, "INVALID_API_KEY", "invalid api-key")
        with pytest.raises(AirflowFailException, match="HTTP 403 INVALID_API_KEY") as info:
            sensor(task_ids="t0").execute(context())
        assert "Airflow connection 'novita_default'" in str(info.value)

    def test_the_deadline_holds_against_a_long_retry_after(self, fake: FakeNovita) -> None:
        fake.scripts = {"t0": (PROCESSING,)}
        fake.fail_next(*[error(429, "RATE_LIMIT_EXCEEDED", "slow down", {"Retry-After": "60"})] * 1000)
        started = time.time()
        with pytest.raises(AirflowSensorTimeout, match="still unfinished: t0") as info:
            sensor(task_ids="t0", timeout=0.5).execute(context())
        assert isinstance(info.value.__cause__, NovitaTimeoutError)
        assert time.time() - started < 10, "it waited for a Retry-After past its deadline"


class TestRescheduleMode:
    def test_finished_tasks_are_not_polled_again(self, fake: FakeNovita) -> None:
        fake.scripts = {"t0": (SUCCEED,), "t1": (PROCESSING, PROCESSING, PROCESSING, SUCCEED)}
        records, delays = rescheduled_runs(FakeStateStore())
        assert fake.polls == {"t0": 1, "t1": 4}
        assert len(delays) == 3
        assert [r["image_url"] for r in records] == ["https://cdn.test/t0.jpeg", "https://cdn.test/t1.jpeg"]

    def test_each_poke_that_learns_something_writes_one_chunk_that_later_pokes_read(
        self, fake: FakeNovita
    ) -> None:
        """Each call on the store is a request to Airflow's API server: one write per poke at most."""
        task_ids = [f"t{n}" for n in range(10)]
        fake.scripts = {task_id: (PROCESSING,) * (n % 3) + (SUCCEED,) for n, task_id in enumerate(task_ids)}
        store = FakeStateStore()
        records, _ = rescheduled_runs(store, task_ids=task_ids)
        assert [key for key, _ in store.writes] == [f"novita_sensor/chunk-{n:04d}" for n in range(3)]
        assert store.reads.count("novita_sensor/chunk-0000") == 3, "every poke reads what came before"
        assert sum(fake.polls.values()) == 4 + 3 * 2 + 3 * 3, "a finished task is not polled again"
        assert len(records) == 10

    def test_the_pace_backs_off_to_max_poll_interval(self, fake: FakeNovita) -> None:
        fake.scripts = {"t0": (PROCESSING,) * 12 + (SUCCEED,)}
        _, delays = rescheduled_runs(FakeStateStore(), task_ids="t0", poke_interval=2, max_poll_interval=20)
        assert len(delays) == 12
        assert delays[0] < 3, "the first pokes come at about poke_interval"
        assert all(later > earlier * 0.7 for earlier, later in itertools.pairwise(delays))
        assert all(16 <= delay <= 24.1 for delay in delays[-3:]), "then at max_poll_interval, with jitter"

    def test_transient_errors_add_up_to_a_failure_across_reschedules(self, fake: FakeNovita) -> None:
        fake.fail_next(*[error(503, "", "overloaded")] * 1000)
        with pytest.raises(NovitaError, match="polling Novita failed in 5 consecutive rounds"):
            rescheduled_runs(FakeStateStore(), task_ids="t0")

    def test_without_a_state_store_it_still_paces_by_the_time_since_the_first_poke(
        self, fake: FakeNovita
    ) -> None:
        fake.scripts = {"t0": (PROCESSING,) * 8 + (SUCCEED,)}
        _, delays = rescheduled_runs(None, task_ids="t0", poke_interval=2, max_poll_interval=20)
        assert len(delays) == 8
        assert delays[-1] > 2 * delays[0]


def failed_event() -> dict[str, Any]:
    return {
        "status": "failed",
        "message": "",
        "task_ids": ["t1"],
        "results": [{"task_id": "t1", "status": FAILED}],
    }


def timeout_event() -> dict[str, Any]:
    return {"status": "timeout", "message": "", "task_ids": ["t1"], "results": [None]}


class TestOneOutcomeInEveryMode:
    """A FAILED job and the deadline end the same way in poke, reschedule and deferrable mode."""

    @staticmethod
    def run(mode: str, outcome: str, **kwargs: Any) -> None:
        if mode == "deferrable":
            event = failed_event() if outcome == "failed" else timeout_event()
            sensor(task_ids="t1", deferrable=True, **kwargs).resume_execution(
                "execute_complete", {"event": event}, context()
            )
        elif mode == "reschedule":
            rescheduled_runs(FakeStateStore(), task_ids="t1", **kwargs)
        else:
            sensor(task_ids="t1", **kwargs).execute(context())

    @pytest.fixture
    def ending(self, fake: FakeNovita, request: pytest.FixtureRequest) -> dict[str, Any]:
        if request.param == "failed":
            fake.scripts["t1"] = (FAILED,)
            return {}
        fake.scripts["t1"] = (PROCESSING,)
        return {"timeout": 0.3}

    @pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
    @pytest.mark.parametrize("ending", ["failed", "timeout"], indirect=True)
    def test_with_soft_fail_the_task_is_skipped(
        self, mode: str, ending: dict[str, Any], request: pytest.FixtureRequest
    ) -> None:
        outcome = request.node.callspec.params["ending"]
        with pytest.raises(AirflowSkipException) as info:
            self.run(mode, outcome, soft_fail=True, **ending)
        assert "t1" in chained(info.value)

    @pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
    def test_a_failed_job_fails_without_retries_naming_its_reason(self, fake: FakeNovita, mode: str) -> None:
        fake.scripts["t1"] = (FAILED,)
        expected = "t1: INVALID_IMAGE_SIZE" if mode != "deferrable" else "t1"
        with pytest.raises(AirflowFailException, match=expected):
            self.run(mode, "failed")

    @pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
    def test_the_deadline_is_a_sensor_timeout_naming_the_unfinished_tasks(
        self, fake: FakeNovita, mode: str
    ) -> None:
        fake.scripts["t1"] = (PROCESSING,)
        with pytest.raises(AirflowSensorTimeout, match="still unfinished: t1"):
            self.run(mode, "timeout", timeout=0.3)


def test_deferrable_defers_at_once_to_the_trigger(fake: FakeNovita) -> None:
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        sensor(deferrable=True, timeout=120).execute(context())
    trigger = info.value.trigger
    assert isinstance(trigger, TaskResultTrigger)
    assert trigger.task_ids == ["t0", "t1"]
    # Its event is held back from the deferral, as the operator's is (TaskResultTrigger.earliest_event_time).
    assert trigger.deferred_at is not None
    assert before <= trigger.deferred_at <= time.time()
    assert trigger.end_time == trigger.deferred_at + 120
    assert not fake.polls


class TestArguments:
    def test_a_long_poke_interval_alone_is_valid_in_reschedule_mode(self) -> None:
        waiting = TaskResultSensor(task_id="w", task_ids="t0", poke_interval=60, mode="reschedule")
        assert waiting.policy.max_poll_interval == 60

    def test_a_cap_set_below_the_interval_names_both(self) -> None:
        with pytest.raises(
            ValueError, match=r"max_poll_interval \(10s\) must not be below poke_interval \(60s\)"
        ):
            TaskResultSensor(task_id="w", task_ids="t0", poke_interval=60, max_poll_interval=10)

    def test_templated_and_xcom_task_ids_are_checked_when_the_task_starts(self) -> None:
        TaskResultSensor(task_id="w", task_ids="{{ ti.xcom_pull('submit', key='task_ids') }}")

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"task_ids": []}, "task_ids must be a Novita task id or a non-empty list"),
            ({"task_ids": ["t0"], "images": SOURCES}, "images must hold one source per task id \\(1\\)"),
            ({"images": ["https://img.test/a.png", "not a url"]}, "image must be an http\\(s\\) URL"),
        ],
    )
    def test_literal_mistakes_fail_when_the_dag_is_parsed(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            sensor(**kwargs)

    def test_rendered_mistakes_fail_at_task_start_before_any_poll(self, fake: FakeNovita) -> None:
        waiting = sensor(task_ids="{{ x }}")
        waiting.task_ids = 5  # type: ignore[assignment]
        with pytest.raises(AirflowFailException, match="task_ids must be a Novita task id"):
            waiting.execute(context())
        assert not fake.polls


def test_the_sync_client_is_released_when_the_task_ends(fake: FakeNovita) -> None:
    waiting = sensor()
    waiting.execute(context())
    assert waiting.hook._client is None
