"""UpscaleOperator: validation, submission, XCom, every way of waiting, and reattaching on retry."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pendulum
import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_novita.exceptions import (
    NovitaAuthError,
    NovitaError,
    NovitaTaskFailedError,
    NovitaTimeoutError,
)
from airflow_provider_novita.operators import upscale
from airflow_provider_novita.operators.upscale import STATE_STORE_KEY, UpscaleOperator
from airflow_provider_novita.triggers.task_result import TaskResultTrigger
from tests.conftest import API_KEY
from tests.fakes import FAILED, PROCESSING, SUCCEED, FakeNovita, error

IMAGES = ["https://img.test/a.png", "https://img.test/b.png"]


class FakeTaskInstance:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class FakeStateStore:
    """``context["task_state_store"]`` of Airflow 3.3: survives retries of one task instance."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any, *, retention: timedelta | None = None) -> None:
        self.values[key] = value


@pytest.fixture
def fake(novita_conn: str, monkeypatch: pytest.MonkeyPatch) -> FakeNovita:
    fake = FakeNovita(script=(PROCESSING, SUCCEED))
    fake.serve(monkeypatch, upscale)
    return fake


def context(store: FakeStateStore | None = None) -> dict[str, Any]:
    ctx: dict[str, Any] = {"ti": FakeTaskInstance()}
    if store is not None:
        ctx["task_state_store"] = store
    return ctx


def operator(**kwargs: Any) -> UpscaleOperator:
    kwargs.setdefault("image", IMAGES)
    return UpscaleOperator(task_id="upscale", poll_interval=0.01, **kwargs)


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"resolution": "16k"}, "resolution must be one of 2k, 4k, 8k"),
            ({"output_format": "gif"}, "output_format must be one of jpeg, png, webp"),
            ({"image": []}, "non-empty list"),
            ({"image": "ftp://x/a.png"}, "image must be an http\\(s\\) URL"),
            ({"image": ["https://ok.test/a.png", "a.png"]}, "image must be an http\\(s\\) URL"),
            ({"poll_interval": 0}, "poll_interval must be a positive number"),
            ({"timeout": -5}, "timeout must be a positive number"),
        ],
    )
    def test_literal_mistakes_fail_when_the_dag_is_parsed(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            UpscaleOperator(task_id="t", **{"image": IMAGES[0], **kwargs})

    def test_templated_values_are_left_for_the_task_to_check(self) -> None:
        UpscaleOperator(task_id="t", image="{{ params.url }}", resolution="{{ params.res }}")

    @pytest.mark.parametrize(
        ("field", "value"), [("resolution", "3k"), ("image", "not a url"), ("output_format", "bmp")]
    )
    def test_rendered_mistakes_fail_at_task_start_before_any_submission(
        self, fake: FakeNovita, field: str, value: str
    ) -> None:
        op = operator(image="{{ x }}", resolution="{{ y }}", output_format="{{ z }}")
        op.image, op.resolution, op.output_format = IMAGES[0], "2k", "png"
        setattr(op, field, value)
        with pytest.raises(ValueError, match=f"{field} must be"):
            op.execute(context())  # type: ignore[arg-type]
        assert fake.requests == []

    def test_templated_fields(self) -> None:
        assert set(UpscaleOperator.template_fields) >= {"image", "resolution", "output_format"}


class TestSubmission:
    def test_submits_each_image_and_pushes_task_ids_in_order(self, fake: FakeNovita) -> None:
        ctx = context()
        op = operator(wait_for_completion=False, resolution="8k", output_format="webp")
        assert op.execute(ctx) == ["task-0", "task-1"]  # type: ignore[arg-type]
        assert ctx["ti"].xcom == {"task_ids": ["task-0", "task-1"]}
        assert fake.submissions == [
            {"image": IMAGES[0], "resolution": "8k", "output_format": "webp"},
            {"image": IMAGES[1], "resolution": "8k", "output_format": "webp"},
        ]
        assert not fake.polls, "without wait_for_completion nothing is polled"

    def test_a_single_url_is_a_batch_of_one(self, fake: FakeNovita) -> None:
        assert operator(image=IMAGES[0], wait_for_completion=False).execute(context()) == ["task-0"]  # type: ignore[arg-type]

    def test_a_submission_error_names_novitas_reason(self, fake: FakeNovita) -> None:
        fake.fail_next(error(400, "BILLING_BALANCE_NOT_ENOUGH", "balance not enough"))
        with pytest.raises(Exception, match="HTTP 400 BILLING_BALANCE_NOT_ENOUGH"):
            operator().execute(context())  # type: ignore[arg-type]


class TestWaitingInTheWorker:
    def test_returns_one_record_per_image_in_input_order(self, fake: FakeNovita) -> None:
        ctx = context()
        records = operator(deferrable=False).execute(ctx)  # type: ignore[arg-type]
        assert ctx["ti"].xcom["task_ids"] == ["task-0", "task-1"]
        assert [(r["task_id"], r["image"], r["image_url"], r["image_type"]) for r in records] == [
            ("task-0", IMAGES[0], "https://cdn.test/task-0.jpeg", "jpeg"),
            ("task-1", IMAGES[1], "https://cdn.test/task-1.jpeg", "jpeg"),
        ]
        assert records[0]["image_url_ttl"] == 3600
        fake_completion = pendulum.from_timestamp(fake.completed_at_ms / 1000, tz="UTC")
        assert records[0]["completed_at"] == fake_completion.isoformat()

    def test_fails_naming_failed_tasks_and_reasons(self, fake: FakeNovita) -> None:
        fake.scripts["task-1"] = (FAILED,)
        fake.reasons["task-1"] = "INVALID_IMAGE_FORMAT"
        with pytest.raises(NovitaTaskFailedError, match="task-1: INVALID_IMAGE_FORMAT"):
            operator(deferrable=False).execute(context())  # type: ignore[arg-type]

    def test_times_out_naming_unfinished_tasks(self, fake: FakeNovita) -> None:
        fake.script = (PROCESSING,)
        with pytest.raises(
            NovitaTimeoutError,
            match=r"Timed out after 0\.2s waiting for Novita; 2 Novita task\(s\) still unfinished: "
            r"task-0, task-1",
        ):
            operator(deferrable=False, timeout=0.2).execute(context())  # type: ignore[arg-type]


class TestDeferring:
    def test_defers_to_the_trigger_after_pushing_task_ids(self, fake: FakeNovita) -> None:
        ctx = context()
        before = time.time()
        with pytest.raises(TaskDeferred) as info:
            operator(deferrable=True, timeout=timedelta(minutes=10), novita_conn_id="novita_default").execute(
                ctx
            )  # type: ignore[arg-type]
        assert ctx["ti"].xcom["task_ids"] == ["task-0", "task-1"]
        trigger = info.value.trigger
        assert isinstance(trigger, TaskResultTrigger)
        assert trigger.task_ids == ["task-0", "task-1"]
        assert trigger.novita_conn_id == "novita_default"
        assert before + 600 <= trigger.end_time <= time.time() + 600
        assert info.value.method_name == "execute_complete"
        assert info.value.timeout is not None
        assert info.value.timeout.total_seconds() > 600
        assert API_KEY not in repr(trigger.serialize())
        assert not fake.polls, "the worker does not poll when deferring"

    def test_default_deferrable_comes_from_airflow_config(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import inspect

        default = inspect.signature(UpscaleOperator.__init__).parameters["deferrable"].default
        assert default is False  # [operators] default_deferrable is unset in the tests

    def test_execute_complete_returns_records_from_a_success_event(self) -> None:
        event = {
            "status": "success",
            "message": "",
            "task_ids": ["t1"],
            "results": [
                {
                    "task_id": "t1",
                    "status": SUCCEED,
                    "images": [
                        {"image_url": "https://o.test/t1.png", "image_type": "png", "image_url_ttl": 3600}
                    ],
                }
            ],
        }
        (record,) = operator(image=IMAGES[0]).execute_complete(context(), event)  # type: ignore[arg-type]
        assert (record["task_id"], record["image"], record["image_url"]) == (
            "t1",
            IMAGES[0],
            "https://o.test/t1.png",
        )

    @pytest.mark.parametrize(
        ("event", "exc_type", "message"),
        [
            (None, NovitaError, "Unexpected trigger event"),
            (
                {"status": "timeout", "message": "", "task_ids": ["t1"], "results": [None]},
                NovitaTimeoutError,
                "t1",
            ),
            (
                {"status": "error", "message": "boom", "task_ids": ["t1"], "results": [None]},
                NovitaError,
                "boom",
            ),
            (
                {
                    "status": "failed",
                    "message": "",
                    "task_ids": ["t1"],
                    "results": [{"task_id": "t1", "status": FAILED}],
                },
                NovitaTaskFailedError,
                "t1",
            ),
        ],
    )
    def test_execute_complete_raises_for_anything_but_success(
        self, event: Any, exc_type: type[Exception], message: str
    ) -> None:
        with pytest.raises(exc_type, match=message):
            operator(image=IMAGES[0]).execute_complete(context(), event)  # type: ignore[arg-type]


class TestRetryReattach:
    def test_a_retry_reattaches_instead_of_submitting_again(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        fake.script = (PROCESSING,)
        with pytest.raises(NovitaTimeoutError):
            operator(deferrable=False, timeout=0.05).execute(context(store))  # type: ignore[arg-type]
        assert len(fake.submissions) == 2
        fake.scripts = {task_id: (SUCCEED,) for task_id in fake.scripts}

        records = operator(deferrable=False).execute(context(store))  # type: ignore[arg-type]
        assert len(fake.submissions) == 2, "nothing was billed twice"
        assert [r["task_id"] for r in records] == ["task-0", "task-1"]

    def test_ids_are_saved_one_by_one_so_a_crash_mid_batch_loses_none(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        serve = fake.handle

        def second_submission_fails(request: Any) -> Any:
            if request.url.path.endswith("image-upscaler") and len(fake.submissions) == 1:
                fake.requests.append(request)
                return error(403, "INVALID_API_KEY", "invalid api-key")
            return serve(request)

        fake.handle = second_submission_fails  # type: ignore[method-assign]
        with pytest.raises(NovitaAuthError):
            operator(wait_for_completion=False).execute(context(store))  # type: ignore[arg-type]
        assert list(store.values[STATE_STORE_KEY].values()) == ["task-0"]

    def test_failed_or_vanished_tasks_are_submitted_again(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        operator(wait_for_completion=False).execute(context(store))  # type: ignore[arg-type]
        fake.scripts["task-0"] = (FAILED,)
        del fake.scripts["task-1"]  # Novita answers TASK_NOT_FOUND
        ids = operator(wait_for_completion=False).execute(context(store))  # type: ignore[arg-type]
        assert ids == ["task-2", "task-3"]

    def test_a_success_whose_url_expired_is_submitted_again(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        fake.completed_at_ms = int((time.time() - 3601) * 1000)  # the fake's URLs live 3600 s
        operator(wait_for_completion=False).execute(context(store))  # type: ignore[arg-type]
        fake.scripts = {task_id: (SUCCEED,) for task_id in fake.scripts}
        assert operator(wait_for_completion=False).execute(context(store)) == ["task-2", "task-3"]  # type: ignore[arg-type]

    def test_changed_inputs_are_not_reattached(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        operator(wait_for_completion=False).execute(context(store))  # type: ignore[arg-type]
        ids = operator(wait_for_completion=False, resolution="2k").execute(context(store))  # type: ignore[arg-type]
        assert ids == ["task-2", "task-3"]

    def test_without_a_state_store_every_try_submits(self, fake: FakeNovita) -> None:
        operator(wait_for_completion=False).execute(context())  # type: ignore[arg-type]
        operator(wait_for_completion=False).execute(context())  # type: ignore[arg-type]
        assert len(fake.submissions) == 4
