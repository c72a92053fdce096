"""TaskResultSensor: pokes with the shared policy, defers to the shared trigger, same records."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout, TaskDeferred

from airflow_provider_novita.exceptions import NovitaTaskFailedError
from airflow_provider_novita.sensors import task_result
from airflow_provider_novita.sensors.task_result import TaskResultSensor
from airflow_provider_novita.triggers.task_result import TaskResultTrigger
from tests.fakes import FAILED, PROCESSING, SUCCEED, FakeNovita

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
    return TaskResultSensor(task_id="wait", poke_interval=0.01, **kwargs)


def test_each_poke_polls_only_unfinished_tasks(fake: FakeNovita) -> None:
    fake.scripts["t1"] = (PROCESSING, PROCESSING, SUCCEED)
    waiting = sensor(images=SOURCES)
    assert waiting.poke({}) is False  # type: ignore[arg-type]
    assert waiting.poke({}) is False  # type: ignore[arg-type]
    done = waiting.poke({})  # type: ignore[arg-type]
    assert isinstance(done, PokeReturnValue)
    assert fake.polls == {"t0": 2, "t1": 3}
    assert [(r["task_id"], r["image"]) for r in done.xcom_value] == [("t0", SOURCES[0]), ("t1", SOURCES[1])]


def test_runs_to_the_same_records_as_the_operator(fake: FakeNovita) -> None:
    records = sensor(deferrable=False).execute({})  # type: ignore[arg-type]
    assert [(r["task_id"], r["image"], r["image_url"]) for r in records] == [
        ("t0", None, "https://cdn.test/t0.jpeg"),
        ("t1", None, "https://cdn.test/t1.jpeg"),
    ]


def test_the_pace_between_pokes_follows_the_shared_policy(fake: FakeNovita) -> None:
    fake.eta = 7
    waiting = TaskResultSensor(task_id="wait", task_ids="t0", poke_interval=2, max_poll_interval=30)
    waiting.poke({})  # type: ignore[arg-type]
    delay = waiting._get_next_poke_interval(0.0, lambda: 0.0, 1)
    assert 7 * 0.8 <= delay <= 7 * 1.2, "the task's eta, with jitter"


def test_a_failed_task_fails_the_sensor_with_its_reason(fake: FakeNovita) -> None:
    fake.scripts["t1"] = (FAILED,)
    with pytest.raises(NovitaTaskFailedError, match="t1: INVALID_IMAGE_SIZE"):
        sensor(deferrable=False).execute({})  # type: ignore[arg-type]


def test_deferrable_defers_at_once_to_the_trigger(fake: FakeNovita) -> None:
    with pytest.raises(TaskDeferred) as info:
        sensor(deferrable=True, timeout=120).execute({})  # type: ignore[arg-type]
    assert isinstance(info.value.trigger, TaskResultTrigger)
    assert info.value.trigger.task_ids == ["t0", "t1"]
    assert not fake.polls


def test_a_timeout_event_is_a_sensor_timeout(fake: FakeNovita) -> None:
    event = {"status": "timeout", "message": "", "task_ids": ["t0"], "results": [None]}
    with pytest.raises(AirflowSensorTimeout, match="still unfinished: t0"):
        sensor(task_ids="t0").execute_complete({}, event)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_ids": []}, "task_ids must be a Novita task id or a non-empty list"),
        ({"task_ids": ["t0"], "images": SOURCES}, "images has 2 entries for 1 task ids"),
    ],
)
def test_bad_input_fails_at_task_start(fake: FakeNovita, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sensor(**kwargs).execute({})  # type: ignore[arg-type]
    assert not fake.polls
