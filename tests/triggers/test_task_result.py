"""TaskResultTrigger: serialisation, every outcome, the absolute deadline, the hold after the deferral,
and a free event loop."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from airflow_provider_novita._compat import conf
from airflow_provider_novita.hooks import clients
from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.polling import DEFAULT_MAX_POLL_INTERVAL, PollingPolicy
from airflow_provider_novita.triggers import task_result
from airflow_provider_novita.triggers.task_result import TaskResultTrigger
from tests.conftest import API_KEY
from tests.fakes import FAILED, PROCESSING, QUEUED, SUCCEED, FakeNovita, error

if TYPE_CHECKING:
    from airflow.triggers.base import TriggerEvent

CLASSPATH = "airflow_provider_novita.triggers.task_result.TaskResultTrigger"


@pytest.fixture
def fake(novita_conn: str, monkeypatch: pytest.MonkeyPatch) -> FakeNovita:
    """Routes the hooks the trigger creates through a fake Novita."""
    fake = FakeNovita()
    fake.serve(monkeypatch, task_result)
    return fake


def _submit(fake: FakeNovita) -> str:
    response = fake.handle(
        httpx.Request(
            "POST",
            "https://novita.test/v3/async/image-upscaler",
            json={"image": "https://img.test/a.png"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    )
    return str(response.json()["task_id"])


async def first_event(trigger: TaskResultTrigger) -> TriggerEvent:
    events = [event async for event in trigger.run()]
    assert len(events) == 1, "a trigger fires exactly once"
    return events[0]


def test_serialize_round_trips_every_argument() -> None:
    trigger = TaskResultTrigger(
        ["a", "b"], "novita_x", 2.5, 1764000000.5, max_poll_interval=40, deferred_at=1763999400.25
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "task_ids": ["a", "b"],
        "novita_conn_id": "novita_x",
        "poll_interval": 2.5,
        "end_time": 1764000000.5,
        "max_poll_interval": 40,
        "deferred_at": 1763999400.25,
    }
    assert TaskResultTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_kwargs_serialized_before_deferred_at_existed_still_build_a_trigger() -> None:
    old = {
        "task_ids": ["a"],
        "novita_conn_id": "novita_x",
        "poll_interval": 2.0,
        "end_time": 1764000000.5,
        "max_poll_interval": 30.0,
    }
    classpath, kwargs = TaskResultTrigger(**old).serialize()
    assert (classpath, kwargs) == (CLASSPATH, {**old, "deferred_at": None})


def test_kwargs_hold_no_secret(novita_conn: str) -> None:
    _, kwargs = TaskResultTrigger.with_timeout(["a"], novita_conn, PollingPolicy(), 60)[0].serialize()
    assert API_KEY not in repr(kwargs)


def test_with_timeout_sets_an_absolute_deadline_and_a_later_backstop() -> None:
    before = time.time()
    trigger, backstop = TaskResultTrigger.with_timeout(["a"], "c", PollingPolicy(3, 20), 600)
    assert trigger.deferred_at is not None
    assert before <= trigger.deferred_at <= time.time()
    assert trigger.end_time == trigger.deferred_at + 600
    assert (trigger.poll_interval, trigger.max_poll_interval) == (3, 20)
    assert backstop.total_seconds() > 600


@pytest.mark.parametrize(
    ("deferred_at", "end_time", "earliest"),
    [
        (1000.0, 5000.0, 1000.0 + task_result.EVENT_HOLD),
        # The deadline bounds every wait, the hold included.
        (1000.0, 1000.0 + task_result.EVENT_HOLD / 2, 1000.0 + task_result.EVENT_HOLD / 2),
        (1000.0, 1000.0, 1000.0),
        # A trigger serialized by an earlier version knows no deferral: nothing is held back.
        (None, 5000.0, float("-inf")),
    ],
)
def test_the_earliest_event_time(deferred_at: float | None, end_time: float, earliest: float) -> None:
    trigger = TaskResultTrigger(["a"], "c", 1.0, end_time, deferred_at=deferred_at)
    assert trigger.earliest_event_time() == earliest


def test_the_hold_outlasts_a_workers_heartbeat_interval_and_not_the_polling_cap() -> None:
    # What EVENT_HOLD is weighed against (see earliest_event_time): a deferring worker's supervisor
    # may wait out a heartbeat interval before its exit is reported, and the hold should delay a
    # short job by no more than polling may already notice a finished one late.
    heartbeat_interval = conf.getfloat("workers", "min_heartbeat_interval")
    assert heartbeat_interval < task_result.EVENT_HOLD <= DEFAULT_MAX_POLL_INTERVAL


async def test_success_event_carries_every_result_in_order(fake: FakeNovita) -> None:
    ids = [_submit(fake) for _ in range(3)]
    fake.scripts[ids[1]] = (QUEUED, PROCESSING, PROCESSING, SUCCEED)
    event = await first_event(TaskResultTrigger(ids, "novita_default", 0.01, time.time() + 30))
    assert event.payload["status"] == "success"
    assert event.payload["task_ids"] == ids
    assert [r["task_id"] for r in event.payload["results"]] == ids
    assert all(r["status"] == SUCCEED for r in event.payload["results"])
    # Finished tasks are not polled again.
    assert fake.polls == {ids[0]: 3, ids[1]: 4, ids[2]: 3}


async def test_the_event_waits_for_the_hold_after_the_deferral(
    fake: FakeNovita, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_result, "EVENT_HOLD", 2.0)
    ids = [_submit(fake)]
    fake.scripts[ids[0]] = (SUCCEED,)
    trigger = TaskResultTrigger(ids, "novita_default", 0.01, time.time() + 30, deferred_at=time.time())
    polled_at: list[float] = []
    serve = fake.handle

    def timed(request: httpx.Request) -> httpx.Response:
        polled_at.append(time.time())
        return serve(request)

    fake.handle = timed  # type: ignore[method-assign]
    event = await first_event(trigger)
    fired_at = time.time()
    assert event.payload["status"] == "success"
    assert polled_at[-1] < trigger.earliest_event_time(), "the job was known done before the hold ended"
    assert fired_at >= trigger.earliest_event_time()
    print(
        f"done {polled_at[-1] - trigger.deferred_at:.2f}s, fired {fired_at - trigger.deferred_at:.2f}s after"
    )


async def test_the_hold_never_outlasts_the_deadline(
    fake: FakeNovita, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A success known before the deadline is reported as a success, at the deadline at the latest,
    # however long the hold.
    monkeypatch.setattr(task_result, "EVENT_HOLD", 3600.0)
    ids = [_submit(fake)]
    fake.scripts[ids[0]] = (SUCCEED,)
    now = time.time()
    trigger = TaskResultTrigger(ids, "novita_default", 0.01, now + 0.5, deferred_at=now)
    event = await asyncio.wait_for(first_event(trigger), timeout=60)
    assert event.payload["status"] == "success"
    assert time.time() >= trigger.end_time


async def test_a_trigger_rebuilt_from_kwargs_without_deferred_at_holds_nothing(
    fake: FakeNovita, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a triggerer running this version rebuilds a trigger that an earlier version deferred.
    monkeypatch.setattr(task_result, "EVENT_HOLD", 3600.0)
    ids = [_submit(fake)]
    fake.scripts[ids[0]] = (SUCCEED,)
    old = {
        "task_ids": ids,
        "novita_conn_id": "novita_default",
        "poll_interval": 0.01,
        "end_time": time.time() + 600,
    }
    event = await asyncio.wait_for(first_event(TaskResultTrigger(**old)), timeout=60)
    assert event.payload["status"] == "success"


async def test_a_trigger_rebuilt_late_holds_only_what_is_left(
    fake: FakeNovita, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rebuilt on another triggerer after the hold has passed (a restart, a takeover): the deferral
    # counts from the kwargs, not from the rebuild.
    monkeypatch.setattr(task_result, "EVENT_HOLD", 3600.0)
    ids = [_submit(fake)]
    fake.scripts[ids[0]] = (SUCCEED,)
    now = time.time()
    _, kwargs = TaskResultTrigger(ids, "novita_default", 0.01, now + 7200, deferred_at=now - 3600).serialize()
    event = await asyncio.wait_for(first_event(TaskResultTrigger(**kwargs)), timeout=60)
    assert event.payload["status"] == "success"


async def test_failed_event_when_a_task_fails(fake: FakeNovita) -> None:
    ids = [_submit(fake), _submit(fake)]
    fake.scripts[ids[0]] = (QUEUED, FAILED)
    event = await first_event(TaskResultTrigger(ids, "novita_default", 0.01, time.time() + 30))
    assert event.payload["status"] == "failed"
    assert event.payload["results"][0]["reason"] == "cannot upscale https://img.test/a.png"


async def test_timeout_event_at_the_deadline(fake: FakeNovita) -> None:
    ids = [_submit(fake)]
    fake.scripts[ids[0]] = (PROCESSING,)
    event = await first_event(TaskResultTrigger(ids, "novita_default", 0.01, time.time() + 0.1))
    assert event.payload["status"] == "timeout"


async def test_a_rebuilt_trigger_keeps_the_original_deadline(fake: FakeNovita) -> None:
    # As after a triggerer restart: rebuilt from serialize() once the deadline has passed, the trigger
    # times out at once, without a poll whose answer could no longer change the outcome, instead of
    # granting itself a fresh timeout.
    ids = [_submit(fake)]
    fake.scripts[ids[0]] = (PROCESSING,)
    _, kwargs = TaskResultTrigger(ids, "novita_default", 5.0, time.time() - 1).serialize()
    started = time.monotonic()
    event = await first_event(TaskResultTrigger(**kwargs))
    assert event.payload["status"] == "timeout"
    assert ids[0] not in fake.polls
    assert time.monotonic() - started < 5.0, "it did not wait a poll interval past the deadline"


async def test_error_event_on_a_permanent_error(fake: FakeNovita) -> None:
    fake.fail_next(error(403, "INVALID_API_KEY", "invalid api-key"))
    event = await first_event(TaskResultTrigger(["t"], "novita_default", 0.01, time.time() + 30))
    assert event.payload["status"] == "error"
    assert "HTTP 403 INVALID_API_KEY" in event.payload["message"]
    assert API_KEY not in repr(event.payload)


async def test_transient_failures_are_tolerated(fake: FakeNovita) -> None:
    ids = [_submit(fake)]
    # Four failed requests: the hook's 3 retries absorb three, the poller one round.
    fake.fail_next(*[error(503, "", "overloaded")] * 4)
    event = await first_event(TaskResultTrigger(ids, "novita_default", 0.01, time.time() + 30))
    assert event.payload["status"] == "success"


async def test_the_client_is_released_when_the_trigger_is_cancelled(fake: FakeNovita) -> None:
    ids = [_submit(fake)]
    fake.scripts[ids[0]] = (PROCESSING,)
    run = asyncio.ensure_future(first_event(TaskResultTrigger(ids, "novita_default", 0.01, time.time() + 30)))
    for _ in range(500):
        if fake.polls:
            break
        await asyncio.sleep(0.01)
    assert len(clients.shared_async_clients) == 1
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert len(clients.shared_async_clients) == 0


async def test_many_triggers_never_block_the_event_loop(
    fake: FakeNovita, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """
    200 triggers of 2 tasks each, polling every second, run beside a 10 ms heartbeat; no beat may
    come later than the triggerer's own warning threshold (0.2 s). The tight figures belong to
    benchmarks/, not here.

    A beat's lateness leaves out the time the loop's thread waited for a CPU: on a machine busy with
    other work that is the machine's load, not the loop being blocked. Anything the loop itself does,
    computing or waiting on a blocking call, still counts.
    """
    created: list[clients.SharedClient] = []
    real_shared = clients.SharedClient

    def counting(*args: Any, **kwargs: Any) -> clients.SharedClient:
        shared = real_shared(*args, **kwargs)
        created.append(shared)
        return shared

    monkeypatch.setattr(clients, "SharedClient", counting)
    looked_up: list[str] = []
    real_lookup = NovitaHook.aget_connection

    async def counting_lookup(cls: type[NovitaHook], conn_id: str) -> object:
        looked_up.append(conn_id)
        return await real_lookup(conn_id)

    monkeypatch.setattr(NovitaHook, "aget_connection", classmethod(counting_lookup))
    batches = [[_submit(fake) for _ in range(2)] for _ in range(200)]
    for task_id in fake.scripts:
        fake.scripts[task_id] = (PROCESSING, SUCCEED)
    # A triggerer has imported Airflow's connection machinery and made its SSL context long before;
    # do the same here so that one-off work is not counted as the provider blocking the loop.
    await NovitaHook("novita_default").asettings()
    await clients.ashared_ssl_context()
    # A full garbage collection over this process's heap (pytest plus Airflow, hundreds of thousands
    # of objects) stalls any event loop for ~0.1 s, whatever runs on it. Freezing what exists now,
    # as long-running servers do, keeps this test about the provider's own code.
    gc.freeze()
    request.addfinalizer(gc.unfreeze)

    worst_gap = 0.0
    stop = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal worst_gap
        last, queued_before = time.perf_counter(), _waited_for_a_cpu()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now, queued = time.perf_counter(), _waited_for_a_cpu()
            worst_gap = max(worst_gap, now - last - (queued - queued_before) - 0.01)
            last, queued_before = now, queued

    beat = asyncio.create_task(heartbeat())
    events = await asyncio.gather(
        *(first_event(TaskResultTrigger(ids, "novita_default", 1.0, time.time() + 60)) for ids in batches)
    )
    stop.set()
    await beat
    assert [e.payload["status"] for e in events] == ["success"] * 200
    assert len(created) == 1, "all triggers of one connection share one transport"
    assert looked_up == ["novita_default"], "the warm-up's lookup serves every trigger started after it"
    print(f"worst heartbeat gap {worst_gap:.3f}s")
    assert worst_gap < 0.2, f"event loop blocked for {worst_gap:.3f}s"


def _waited_for_a_cpu() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux's schedstat)."""
    return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9


async def test_a_waiting_trigger_keeps_few_objects_for_the_garbage_collector(fake: FakeNovita) -> None:
    """
    What a trigger keeps alive while it waits, beyond what a bare ``asyncio.sleep`` in its place
    keeps, in objects the garbage collector tracks. A thousand triggers deferred at once bring a
    thousand times that into the oldest generation, and enough of it sets off a full collection over
    the triggerer's whole heap, a stall of about 100 ms (benchmarks/triggerer_polling.py). Counted,
    not timed.
    """
    # What a triggerer has done long before: imports, the connection lookup, the SSL context.
    await NovitaHook("novita_default").asettings()
    await clients.ashared_ssl_context()
    n = 200

    async def tracked_while_waiting(waiter: Any) -> int:
        """Tracked objects that ``n`` waiters hold while they wait and that go with them."""
        tasks = [asyncio.ensure_future(waiter()) for _ in range(n)]
        await asyncio.sleep(0.05)  # every one of them is in its first wait now
        gc.collect()
        waiting = len(gc.get_objects())
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        tasks.clear()
        gc.collect()
        return waiting - len(gc.get_objects())

    async def trigger() -> None:
        await anext(TaskResultTrigger(["waiting"], "novita_default", 600.0, time.time() + 3600).run())

    async def bare_sleep() -> None:
        await asyncio.sleep(600)

    per_trigger = (await tracked_while_waiting(trigger) - await tracked_while_waiting(bare_sleep)) / n
    assert fake.polls == {}, "no trigger was due yet"
    assert len(clients.shared_async_clients) == 0, "cancelled triggers returned their lease"
    assert per_trigger <= 12, f"a waiting trigger keeps {per_trigger:.1f} tracked objects more than a sleep"


async def test_the_deadline_holds_against_a_long_retry_after(fake: FakeNovita) -> None:
    ids = [_submit(fake)]
    fake.fail_next(*[error(429, "RATE_LIMIT_EXCEEDED", "slow down", {"Retry-After": "60"})] * 1000)
    started = time.time()
    event = await first_event(TaskResultTrigger(ids, "novita_default", 0.05, started + 0.5))
    assert event.payload["status"] == "timeout"
    assert time.time() - started < 10, "it waited for a Retry-After past its deadline"


async def test_an_answer_naming_another_task_id_still_ends_the_wait(fake: FakeNovita) -> None:
    ids = [_submit(fake)]
    fake.scripts[ids[0]] = (SUCCEED,)
    serve = fake.handle

    def answer_for_another_id(request: httpx.Request) -> httpx.Response:
        response = serve(request)
        if request.url.path.endswith("task-result"):
            body = response.json()
            body["task"]["task_id"] = "not-the-polled-one"
            return httpx.Response(200, json=body)
        return response

    fake.handle = answer_for_another_id  # type: ignore[method-assign]
    event = await first_event(TaskResultTrigger(ids, "novita_default", 0.01, time.time() + 30))
    assert event.payload["status"] == "success"
    assert event.payload["results"][0]["task_id"] == ids[0]


@pytest.mark.parametrize("odd", [float("nan"), float("inf"), "1e999", 10**400, -3, "soon"])
async def test_odd_numbers_in_an_answer_do_not_kill_the_wait(fake: FakeNovita, odd: object) -> None:
    ids = [_submit(fake)]
    fake.scripts[ids[0]] = (PROCESSING, SUCCEED)
    serve = fake.handle

    def odd_numbers(request: httpx.Request) -> httpx.Response:
        response = serve(request)
        if request.url.path.endswith("task-result"):
            body = response.json()
            body["task"].update(eta=odd, progress_percent=odd)
            for image in body["images"]:
                image["image_url_ttl"] = odd
            # Python's json writes NaN and Infinity as Novita's JSON would have to carry them.
            return httpx.Response(200, content=json.dumps(body), headers={"Content-Type": "application/json"})
        return response

    fake.handle = odd_numbers  # type: ignore[method-assign]
    event = await first_event(TaskResultTrigger(ids, "novita_default", 0.01, time.time() + 30))
    assert event.payload["status"] == "success"
    json.dumps(event.payload, allow_nan=False)  # the event stays strict JSON


async def test_with_an_exact_eta_each_task_costs_two_polls_and_none_comes_early(fake: FakeNovita) -> None:
    """A batch whose tasks end at different times: each is polled once to learn its eta, once when done."""
    ids = [_submit(fake) for _ in range(3)]
    started = time.time()
    ends = {task_id: started + 0.6 + 0.4 * index for index, task_id in enumerate(ids)}
    polled_at: dict[str, list[float]] = {task_id: [] for task_id in ids}

    def exact_eta(request: httpx.Request) -> httpx.Response:
        task_id = request.url.params["task_id"]
        now = time.time()
        polled_at[task_id].append(now)
        done = now >= ends[task_id]
        task = {
            "task_id": task_id,
            "status": SUCCEED if done else PROCESSING,
            "eta": 0 if done else ends[task_id] - now,
        }
        images = [{"image_url": f"https://cdn.test/{task_id}.png", "image_type": "png"}] if done else []
        return httpx.Response(200, json={"task": task, "images": images})

    fake.handle = exact_eta  # type: ignore[method-assign]
    event = await first_event(
        TaskResultTrigger(ids, "novita_default", 0.05, started + 30, max_poll_interval=0.1)
    )
    assert event.payload["status"] == "success"
    assert {task_id: len(times) for task_id, times in polled_at.items()} == dict.fromkeys(ids, 2)
    assert all(times[1] >= ends[task_id] for task_id, times in polled_at.items())
