"""NovitaHook under a deadline: every wait it makes, retries and request timeouts included, ends by it."""

from __future__ import annotations

import time

import pytest

from airflow_provider_novita.events import OutcomeStatus
from airflow_provider_novita.exceptions import NovitaTimeoutError
from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.polling import PollingPolicy
from airflow_provider_novita.retries import RetryPolicy
from tests.fakes import SUCCEED, FakeNovita, error

# Retries that would wait a minute each, as Novita's Retry-After asks: only the deadline can cut them.
PATIENT = RetryPolicy(max_retries=10, initial_wait=60)
FAST_POLLS = PollingPolicy(0.05, 0.05)
# Far below the 60 s each Retry-After asks for, and generous for a busy machine.
WELL_BEFORE_THE_RETRY_AFTER = 10.0


def rate_limited_forever(fake: FakeNovita) -> None:
    fake.fail_next(*[error(429, "RATE_LIMIT_EXCEEDED", "slow down", {"Retry-After": "60"})] * 1000)


def knows_finished_task(fake: FakeNovita, task_id: str) -> None:
    fake.scripts[task_id] = (SUCCEED,)
    fake.reasons[task_id] = ""


@pytest.fixture
def fake() -> FakeNovita:
    return FakeNovita(script=(SUCCEED,))


@pytest.fixture
def hook(novita_conn: str, fake: FakeNovita) -> NovitaHook:
    return NovitaHook(novita_conn, transport=fake.transport(), retry_policy=PATIENT)


def test_the_sync_wait_ends_at_its_deadline_despite_retry_after(hook: NovitaHook, fake: FakeNovita) -> None:
    rate_limited_forever(fake)
    started = time.time()
    outcome = hook.wait_for_tasks(["task-7"], FAST_POLLS, end_time=started + 0.5)
    assert outcome.status is OutcomeStatus.TIMEOUT
    assert time.time() - started < WELL_BEFORE_THE_RETRY_AFTER
    with pytest.raises(NovitaTimeoutError, match="still unfinished: task-7"):
        outcome.results_or_raise("Timed out after 0.5s waiting for Novita")


async def test_the_async_wait_ends_at_its_deadline_despite_retry_after(
    hook: NovitaHook, fake: FakeNovita
) -> None:
    rate_limited_forever(fake)
    started = time.time()
    outcome = await hook.await_tasks(["task-7", "task-8"], FAST_POLLS, end_time=started + 0.5)
    assert outcome.status is OutcomeStatus.TIMEOUT
    assert time.time() - started < WELL_BEFORE_THE_RETRY_AFTER
    with pytest.raises(NovitaTimeoutError, match="still unfinished: task-7, task-8"):
        outcome.results_or_raise("Timed out")


@pytest.mark.parametrize("left", [5, 0.5])
def test_a_retry_wait_that_would_pass_the_deadline_is_cut_there(
    hook: NovitaHook, fake: FakeNovita, monkeypatch: pytest.MonkeyPatch, left: float
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("airflow_provider_novita.hooks.novita.time.sleep", slept.append)
    fake.fail_next(error(429, "RATE_LIMIT_EXCEEDED", "slow down", {"Retry-After": "60"}))
    deadline = time.time() + left
    with pytest.raises(
        NovitaTimeoutError,
        match=r"^Deadline reached while retrying after: .*HTTP 429.*; "
        r"1 Novita task\(s\) still unfinished: task-7$",
    ):
        hook.get_task_result("task-7", deadline=deadline)
    assert len(slept) == 1
    assert 0 < slept[0] <= left
    assert len(fake.requests) == 1


def test_test_connection_answers_at_its_deadline_despite_retry_after(
    hook: NovitaHook, fake: FakeNovita, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone waits in the UI: a Retry-After of a minute ends at the connection test's own deadline."""
    slept: list[float] = []
    monkeypatch.setattr("airflow_provider_novita.hooks.novita.time.sleep", slept.append)
    fake.fail_next(error(429, "RATE_LIMIT_EXCEEDED", "slow down", {"Retry-After": "60"}))
    ok, message = hook.test_connection()
    assert not ok
    assert (
        message
        == "Deadline reached while retrying after: Novita API error: HTTP 429 RATE_LIMIT_EXCEEDED: slow down"
    )
    assert len(fake.requests) == 1
    assert len(slept) == 1
    assert 0 < slept[0] <= 10


def test_a_retry_that_fits_before_the_deadline_is_made(hook: NovitaHook, fake: FakeNovita) -> None:
    fake.fail_next(error(429, "RATE_LIMIT_EXCEEDED", "slow down", {"Retry-After": "0.01"}))
    knows_finished_task(fake, "task-7")
    assert hook.get_task_result("task-7", deadline=time.time() + 30).task_id == "task-7"
    assert len(fake.requests) == 2


@pytest.mark.parametrize("left", [2, 0.5])
def test_each_request_timeout_is_cut_to_what_is_left(hook: NovitaHook, fake: FakeNovita, left: float) -> None:
    knows_finished_task(fake, "task-7")
    hook.get_task_result("task-7", deadline=time.time() + left)
    timeouts = fake.requests[-1].extensions["timeout"]
    assert all(0 < seconds <= left for seconds in timeouts.values())


def test_without_a_deadline_the_connection_timeout_applies(hook: NovitaHook, fake: FakeNovita) -> None:
    knows_finished_task(fake, "task-7")
    hook.get_task_result("task-7")
    assert fake.requests[-1].extensions["timeout"]["read"] == 60


def test_nothing_is_sent_once_the_deadline_has_passed(hook: NovitaHook, fake: FakeNovita) -> None:
    with pytest.raises(
        NovitaTimeoutError,
        match=r"^Deadline passed before the request was sent; 1 Novita task\(s\) still unfinished: task-7$",
    ):
        hook.get_task_result("task-7", deadline=time.time() - 1)
    assert fake.requests == []


async def test_nothing_is_sent_once_the_deadline_has_passed_async_either(
    hook: NovitaHook, fake: FakeNovita
) -> None:
    with pytest.raises(NovitaTimeoutError, match="still unfinished: task-7"):
        await hook.aget_task_result("task-7", deadline=time.time() - 1)
    assert fake.requests == []
