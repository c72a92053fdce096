"""UpscaleOperator: validation, submission, XCom, every way of waiting, and reattaching on retry."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pendulum
import pytest
from airflow.sdk import DAG, ObjectStoragePath, task, task_group

from airflow_provider_novita import results
from airflow_provider_novita.events import BatchOutcome, OutcomeStatus
from airflow_provider_novita.exceptions import (
    NovitaAuthError,
    NovitaError,
    NovitaTaskFailedError,
    NovitaTimeoutError,
)
from airflow_provider_novita.ledger import LedgerChunks
from airflow_provider_novita.operators import upscale
from airflow_provider_novita.operators.upscale import UpscaleOperator
from airflow_provider_novita.storage import Destination, output_name
from airflow_provider_novita.triggers.task_result import TaskResultTrigger
from tests.compat import AirflowFailException, TaskDeferred
from tests.conftest import API_KEY
from tests.fakes import FAILED, PROCESSING, SUCCEED, FakeNovita, FakeStateStore, context, error, retry
from tests.s3 import S3Bucket
from tests.test_sources import signed_for

IMAGES = ["https://img.test/a.png", "https://img.test/b.png"]


@pytest.fixture
def fake(novita_conn: str, monkeypatch: pytest.MonkeyPatch) -> FakeNovita:
    fake = FakeNovita(script=(PROCESSING, SUCCEED))
    fake.serve(monkeypatch, upscale)
    return fake


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
            ({"image": "s3://bucket/"}, "image must be an http\\(s\\) URL, .* it names no object"),
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
        with pytest.raises(AirflowFailException, match=f"{field} must be"):
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

    def test_a_key_refused_while_waiting_fails_the_task_once(self, fake: FakeNovita) -> None:
        fake.poll_answer = error(403, "INVALID_API_KEY", "invalid api-key")
        with pytest.raises(
            AirflowFailException,
            match=r"^Waiting for Novita tasks task-0, task-1 failed: Novita API error: HTTP 403 "
            r"INVALID_API_KEY: invalid api-key \(task id task-[01]\)\. Check the API key \(the password\) "
            r"of Airflow connection 'novita_default'$",
        ):
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

    def test_the_files_found_before_deferring_go_with_it_and_are_not_looked_for_again(
        self, fake: FakeNovita, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32 + b"IEND\xaeB`\x82"
        kept = tmp_path / output_name("", "png", Destination(IMAGES[1], "4k", 1), -1)
        kept.write_bytes(png)
        op = operator(deferrable=True, output_path=str(tmp_path), output_format="png")
        with pytest.raises(TaskDeferred) as info:
            op.execute(context())
        assert info.value.kwargs == {"reused": [1]}
        assert info.value.trigger.task_ids == ["task-0"]

        def no_listing(folder: Any) -> dict[str, int]:
            raise AssertionError("the resume listed output_path again")

        monkeypatch.setattr(upscale, "existing_results", no_listing)
        monkeypatch.setattr(results, "persist_results", lambda found, *a, **k: ["file:///out/new.png"])
        event = BatchOutcome(OutcomeStatus.SUCCESS, ["task-0"], [None], "").to_event()
        event["results"] = [
            {
                "task_id": "task-0",
                "status": SUCCEED,
                "images": [{"image_url": "https://o.test/0.png", "image_type": "png", "image_url_ttl": 3600}],
            }
        ]
        records = op.execute_complete(context(), event, **info.value.kwargs)  # type: ignore[arg-type]
        assert [(r["task_id"], r["path"], r["reused"]) for r in records] == [
            ("task-0", "file:///out/new.png", False),
            (None, f"file://{kept}", True),
        ]

    def test_execute_complete_fails_once_for_an_error_no_retry_can_change(self) -> None:
        event = BatchOutcome(OutcomeStatus.ERROR, ["task-0"], [None], "HTTP 403", permanent=True).to_event()
        with pytest.raises(AirflowFailException, match=r"^Waiting for Novita tasks task-0 failed: HTTP 403$"):
            operator(image=IMAGES[0]).execute_complete(context(), event)  # type: ignore[arg-type]

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

        records = operator(deferrable=False).execute(retry(store))  # type: ignore[arg-type]
        assert len(fake.submissions) == 2, "nothing was billed twice"
        assert [r["task_id"] for r in records] == ["task-0", "task-1"]

    def test_ids_answered_before_a_failure_are_saved_for_the_retry(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        serve = fake.handle

        def second_submission_fails(request: Any) -> Any:
            if request.url.path.endswith("image-upscaler") and len(fake.submissions) == 1:
                fake.requests.append(request)
                return error(403, "INVALID_API_KEY", "invalid api-key")
            return serve(request)

        fake.handle = second_submission_fails  # type: ignore[method-assign]
        with pytest.raises(AirflowFailException) as info:
            operator(wait_for_completion=False).execute(context(store))  # type: ignore[arg-type]
        assert isinstance(info.value.__cause__, NovitaAuthError)
        assert list(store.entries().values()) == [{"task_id": "task-0"}]

    def test_a_chunk_lost_mid_write_bills_again_only_what_it_and_the_submissions_in_flight_held(
        self, fake: FakeNovita
    ) -> None:
        """The worker dies while the store writes the third chunk: the retry reattaches the first two."""
        images = [f"https://img.test/{n}.png" for n in range(20)]
        store = FakeStateStore()
        write = store.set

        def third_chunk_lost(key: str, value: Any, *, retention: timedelta | None = None) -> None:
            if key.endswith("chunk-0002"):
                raise ConnectionResetError("the API server went away mid-write")
            write(key, value, retention=retention)

        store.set = third_chunk_lost  # type: ignore[method-assign]
        with pytest.raises(ConnectionResetError):
            operator(image=images, wait_for_completion=False, submit_concurrency=4).execute(context(store))
        created = len(fake.submissions)
        store.set = write  # type: ignore[method-assign]

        ids = operator(image=images, wait_for_completion=False, submit_concurrency=4).execute(retry(store))
        assert len(ids) == 20
        assert len(fake.submissions) - 20 == created - 8, "only the 8 recorded tasks were reattached"
        assert 4 <= created - 8 < 2 * 4, "the lost chunk's 4, and those in flight"

    def test_failed_or_vanished_tasks_are_submitted_again(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        operator(wait_for_completion=False).execute(context(store))  # type: ignore[arg-type]
        fake.scripts["task-0"] = (FAILED,)
        del fake.scripts["task-1"]  # Novita answers TASK_NOT_FOUND
        ids = operator(wait_for_completion=False).execute(retry(store))  # type: ignore[arg-type]
        assert ids == ["task-2", "task-3"]

    def test_a_success_whose_url_expired_is_submitted_again(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        fake.completed_at_ms = int((time.time() - 3601) * 1000)  # the fake's URLs live 3600 s
        operator(wait_for_completion=False).execute(context(store))  # type: ignore[arg-type]
        fake.scripts = {task_id: (SUCCEED,) for task_id in fake.scripts}
        assert operator(wait_for_completion=False).execute(retry(store)) == ["task-2", "task-3"]  # type: ignore[arg-type]

    def test_changed_inputs_are_not_reattached(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        operator(wait_for_completion=False).execute(context(store))  # type: ignore[arg-type]
        ids = operator(wait_for_completion=False, resolution="2k").execute(retry(store))  # type: ignore[arg-type]
        assert ids == ["task-2", "task-3"]

    def test_without_a_state_store_or_output_path_every_try_submits(self, fake: FakeNovita) -> None:
        operator(wait_for_completion=False).execute(context())  # type: ignore[arg-type]
        operator(wait_for_completion=False).execute(context())  # type: ignore[arg-type]
        assert len(fake.submissions) == 4


class TestRetryReattachThroughTheLedger:
    """Before Airflow 3.3 (no task state store), a task with output_path remembers in a ledger there."""

    def test_a_retry_reattaches_instead_of_submitting_again(self, fake: FakeNovita, tmp_path: Any) -> None:
        fake.script = (PROCESSING,)
        # The first try defers, and its resume never comes, as when Airflow fails it or the worker dies.
        with pytest.raises(TaskDeferred):
            operator(deferrable=True, output_path=str(tmp_path)).execute(context())
        assert len(fake.submissions) == 2
        (ledger,) = tmp_path.iterdir()
        assert ledger.name.startswith(".novita-ledger-")
        assert [chunk.name for chunk in ledger.iterdir()] == ["chunk-0000.json"], "one chunk of 8"

        with pytest.raises(TaskDeferred) as deferred:
            operator(deferrable=True, output_path=str(tmp_path)).execute(retry())
        assert len(fake.submissions) == 2, "nothing was billed twice"
        assert deferred.value.trigger.task_ids == ["task-0", "task-1"]

    def test_the_ledger_is_removed_once_the_files_are_saved(
        self, fake: FakeNovita, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        before_saving: list[str] = []

        def save(context: Any, outcome: Any, **kwargs: Any) -> list[dict[str, Any]]:
            before_saving.extend(path.name for path in tmp_path.iterdir())
            return []

        monkeypatch.setattr(upscale, "finish_batch", save)
        operator(deferrable=False, output_path=str(tmp_path)).execute(context())
        assert [name[:15] for name in before_saving] == [".novita-ledger-"]
        assert list(tmp_path.iterdir()) == []

    def test_a_failed_batch_keeps_its_ledger_for_the_retry(self, fake: FakeNovita, tmp_path: Any) -> None:
        fake.scripts["task-1"] = (FAILED,)
        with pytest.raises(NovitaTaskFailedError):
            operator(deferrable=False, output_path=str(tmp_path)).execute(context())
        (ledger,) = tmp_path.iterdir()
        (chunk,) = ledger.iterdir()
        assert sorted(json.loads(chunk.read_text()).values(), key=str) == [
            {"task_id": "task-0"},
            {"task_id": "task-1"},
        ]

    def test_with_a_state_store_the_store_is_the_memory(self, fake: FakeNovita, tmp_path: Any) -> None:
        store = FakeStateStore()
        with pytest.raises(TaskDeferred):
            operator(deferrable=True, output_path=str(tmp_path)).execute(context(store))
        assert len(store.entries()) == 2
        assert list(tmp_path.iterdir()) == []


class TestDagIdioms:
    """What DAG authors write must parse: only plain literals are checked when the DAG is parsed."""

    def test_xcomargs_mapped_arguments_and_jinja_statements_parse(self) -> None:
        with DAG("idioms", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:

            @task
            def make(name: str) -> str:
                return f"https://img.test/{name}.png"

            @task
            def pick() -> str:
                return "2k"

            UpscaleOperator(task_id="listed", image=[make("a"), make("b")], resolution=pick())
            UpscaleOperator(
                task_id="statements",
                image="{% for url in params.urls %}{{ url }}{% endfor %}",
                resolution="{% if params.big %}8k{% else %}2k{% endif %}",
                output_format="{# chosen upstream #}png",
                output_path="{% if true %}/data/out{% endif %}",
            )

            @task_group
            def per_image(url: str) -> None:
                UpscaleOperator(task_id="mapped", image=url, output_path=make("folder"))

            per_image.expand(url=["https://img.test/a.png", "https://img.test/b.png"])
        assert {"listed", "statements", "per_image.mapped"} <= set(dag.task_dict)

    @pytest.mark.parametrize(
        ("rendered", "shown"),
        [(5, "int"), (None, "NoneType"), ({"url": "https://img.test/a.png"}, "dict"), ([5], "int")],
    )
    def test_a_template_that_renders_to_no_url_fails_at_task_start_naming_image(
        self, fake: FakeNovita, rendered: object, shown: str
    ) -> None:
        op = operator(image="{{ params.image }}")
        op.image = rendered  # as Airflow renders it with render_template_as_native_obj
        with pytest.raises(AirflowFailException, match=f"^image must be .*{shown}"):
            op.execute(context())
        assert fake.requests == []

    @pytest.mark.parametrize(
        "image",
        [
            "http://:80/a.png",
            "https://img.test/a b.png",
            "https://img.test/a.png\x00",
            "https://img.test/\x7fa.png",
            ["https://img.test/a.png", "https://img.test/b\n.png"],
        ],
    )
    def test_malformed_urls_fail_at_parse_time_naming_image(self, image: object) -> None:
        with pytest.raises(ValueError, match="image must be an http\\(s\\) URL"):
            UpscaleOperator(task_id="t", image=image)

    def test_surrounding_whitespace_is_stripped_before_submission(self, fake: FakeNovita) -> None:
        operator(image=["  https://img.test/a.png\n"], wait_for_completion=False).execute(context())
        assert fake.submissions[0]["image"] == "https://img.test/a.png"


class TestPollingArguments:
    def test_a_long_poll_interval_alone_is_valid(self) -> None:
        op = UpscaleOperator(task_id="t", image=IMAGES[0], poll_interval=60)
        assert (op.policy.poll_interval, op.policy.max_poll_interval) == (60, 60)

    def test_a_cap_set_below_the_interval_names_both(self) -> None:
        with pytest.raises(
            ValueError, match=r"max_poll_interval \(10s\) must not be below poll_interval \(60s\)"
        ):
            UpscaleOperator(task_id="t", image=IMAGES[0], poll_interval=60, max_poll_interval=10)


class TestDeadlineInTheWorker:
    def test_rate_limits_with_a_long_retry_after_end_at_the_deadline(self, fake: FakeNovita) -> None:
        fake.script = (PROCESSING,)
        serve = fake.handle

        def polls_rate_limited(request: Any) -> Any:
            if request.url.path.endswith("task-result"):
                fake.requests.append(request)
                return error(429, "RATE_LIMIT_EXCEEDED", "slow down", {"Retry-After": "60"})
            return serve(request)

        fake.handle = polls_rate_limited  # type: ignore[method-assign]
        started = time.time()
        with pytest.raises(NovitaTimeoutError, match="still unfinished: task-0, task-1"):
            operator(deferrable=False, timeout=0.5).execute(context())
        assert time.time() - started < 10, "it waited for a Retry-After past its deadline"


class TestUncertainSubmissions:
    @pytest.mark.parametrize(
        ("answer", "kind"),
        [
            (error(500, "CREATE_TASK_FAILED", "x"), "HTTP 500 CREATE_TASK_FAILED"),
            (httpx.ReadTimeout("x"), "ReadTimeout"),
        ],
    )
    def test_an_uncertain_submission_is_recorded_and_its_retry_warns(
        self, fake: FakeNovita, capsys: pytest.CaptureFixture[str], answer: Any, kind: str
    ) -> None:
        store = FakeStateStore()
        fake.fail_next(answer)
        with pytest.raises(NovitaError):
            operator(image=f"{IMAGES[0]}?X-Amz-Signature=s3cr3t", wait_for_completion=False).execute(
                context(store)
            )
        assert len(fake.submissions) == 1, "not resent in the same try"
        assert list(store.entries().values()) == [{"uncertain": kind}]

        capsys.readouterr()
        ids = operator(image=f"{IMAGES[0]}?X-Amz-Signature=s3cr3t", wait_for_completion=False).execute(
            retry(store)
        )
        assert ids == ["task-0"]
        logged = capsys.readouterr().out
        (warning,) = [line for line in logged.splitlines() if "uncertain" in line]
        assert "warning" in warning
        assert f"submission of {IMAGES[0]} ended uncertain ({kind})" in warning
        assert "may have created and billed" in warning
        assert "s3cr3t" not in logged
        assert list(store.entries().values()) == [{"task_id": "task-0"}]

    def test_a_certain_failure_leaves_nothing_to_warn_about(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        fake.fail_next(error(400, "INVALID_REQUEST_BODY", "bad image"))
        # One image: with two, the other's concurrent submission may succeed and be recorded, rightly.
        with pytest.raises(AirflowFailException, match="HTTP 400 INVALID_REQUEST_BODY"):
            operator(image=IMAGES[0], wait_for_completion=False).execute(context(store))
        assert store.values == {}


class TestStateStoreContents:
    def test_no_source_url_is_stored_in_keys_or_values(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        presigned = [f"https://bucket.test/{n}.png?X-Amz-Signature=s3cr3t" for n in "ab"]
        operator(image=presigned, wait_for_completion=False).execute(context(store))
        dumped = json.dumps(store.values)
        assert "bucket.test" not in dumped
        assert "s3cr3t" not in dumped
        assert len(store.entries()) == 2

    def test_a_batch_writes_a_chunk_per_submit_concurrency_answers(self, fake: FakeNovita) -> None:
        """Each write is a request to Airflow's API server and a database row: few, and small."""
        store = FakeStateStore()
        images = [f"https://img.test/{n}.png" for n in range(500)]
        operator(image=images, wait_for_completion=False, submit_concurrency=8).execute(context(store))
        assert [key for key, _ in store.writes] == [
            f"novita_submitted_tasks/chunk-{n:04d}" for n in range(63)
        ], "500 answers in chunks of 8"
        assert len(store.entries()) == 500
        assert sum(size for _, size in store.writes) / 500 < 50, "bytes per image"

    def test_chunks_expire_hours_after_the_wait_could_end_not_in_30_days(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        operator(wait_for_completion=False, timeout=timedelta(hours=2)).execute(context(store))
        assert store.retentions == [timedelta(hours=6)], "the wait's 2 h and 4 h beyond it"

    def test_saved_files_leave_nothing_in_the_store(
        self, fake: FakeNovita, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With output_path the files are the memory: a success clears the task's state, in one call."""
        saved = [f"file:///out/{n}.png" for n in range(2)]
        monkeypatch.setattr(results, "persist_results", lambda *args, **kwargs: saved)
        store = FakeStateStore()
        operator(deferrable=False, output_path=str(tmp_path)).execute(context(store))
        assert store.values == {}
        assert store.clears == 1
        assert store.requests == 2, "one chunk written, then cleared"

    def test_without_output_path_the_chunks_stay_for_a_clear(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        operator(deferrable=False).execute(context(store))
        assert store.clears == 0
        assert len(store.entries()) == 2


class TestFirstTries:
    """Each read of the memory is a request to Airflow's API server (3.3) or to output_path (the ledger)."""

    def test_a_first_try_reads_nothing_back_and_a_retry_reads_chunks_until_one_is_missing(
        self, fake: FakeNovita
    ) -> None:
        store = FakeStateStore()
        images = [f"https://img.test/{n}.png" for n in range(20)]
        fake.script = (PROCESSING,)
        with pytest.raises(TaskDeferred):
            operator(image=images, deferrable=True, submit_concurrency=8).execute(context(store))
        assert store.reads == []
        assert len(store.writes) == 3

        with pytest.raises(TaskDeferred):
            operator(image=images, deferrable=True, submit_concurrency=8).execute(retry(store))
        assert store.reads == [f"novita_submitted_tasks/chunk-{n:04d}" for n in range(4)]
        assert len(fake.submissions) == 20

    def test_a_first_try_reads_no_ledger_chunk(
        self, fake: FakeNovita, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        read: list[int] = []
        real = LedgerChunks.read
        monkeypatch.setattr(LedgerChunks, "read", lambda self: read.append(1) or real(self))
        fake.script = (PROCESSING,)
        with pytest.raises(TaskDeferred):
            operator(deferrable=True, output_path=str(tmp_path)).execute(context())
        assert read == []
        with pytest.raises(TaskDeferred):
            operator(deferrable=True, output_path=str(tmp_path)).execute(retry())
        assert read == [1]


class TestReattachWhenExpiryIsUnknown:
    @pytest.fixture
    def no_expiry(self, fake: FakeNovita) -> FakeNovita:
        # Novita's documented example: complete_time_ms is "", so the URL's expiry cannot be computed.
        fake.completed_at_ms = None
        return fake

    def test_a_url_that_still_answers_is_reattached(
        self, no_expiry: FakeNovita, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        asked: list[str] = []
        monkeypatch.setattr(upscale, "url_answers", lambda url, proxy: asked.append(url) or True)
        store = FakeStateStore()
        operator(wait_for_completion=False).execute(context(store))
        no_expiry.scripts = {task_id: (SUCCEED,) for task_id in no_expiry.scripts}
        assert operator(wait_for_completion=False).execute(retry(store)) == ["task-0", "task-1"]
        assert asked == ["https://cdn.test/task-0.jpeg", "https://cdn.test/task-1.jpeg"]

    def test_a_url_that_no_longer_answers_is_submitted_again_saying_why(
        self, no_expiry: FakeNovita, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setattr(upscale, "url_answers", lambda url, proxy: False)
        store = FakeStateStore()
        operator(wait_for_completion=False).execute(context(store))
        no_expiry.scripts = {task_id: (SUCCEED,) for task_id in no_expiry.scripts}
        assert operator(wait_for_completion=False).execute(retry(store)) == ["task-2", "task-3"]
        logged = capsys.readouterr().out
        assert "Not reattaching to Novita task task-0" in logged
        assert "its result URL no longer answers (Novita gave no expiry time)" in logged


class TestOutputPath:
    @pytest.mark.parametrize("output_path", ["relative/out", "", "  "])
    def test_a_literal_path_that_names_no_folder_fails_at_parse_time(self, output_path: str) -> None:
        with pytest.raises(ValueError, match="output_path must be an absolute path or a URI"):
            UpscaleOperator(task_id="t", image=IMAGES[0], output_path=output_path)

    def test_a_rendered_relative_path_fails_before_anything_is_submitted(self, fake: FakeNovita) -> None:
        op = operator(output_path="{{ params.out }}")
        op.output_path = "relative/out"
        with pytest.raises(AirflowFailException, match="output_path must be"):
            op.execute(context())
        assert fake.requests == []


def test_the_sync_client_is_released_when_the_task_ends(fake: FakeNovita) -> None:
    op = operator(deferrable=False)
    op.execute(context())
    assert op.hook._client is None


class TestConcurrentSubmissions:
    @staticmethod
    def slow_submissions(fake: FakeNovita, seconds: Callable[[str], float]) -> dict[str, int]:
        """Submissions answer after ``seconds(image)``; returns the live count of submissions in flight."""
        serve, lock = fake.handle, threading.Lock()
        seen = {"now": 0, "most": 0}

        def slow(request: httpx.Request) -> httpx.Response:
            if not request.url.path.endswith("image-upscaler"):
                return serve(request)
            with lock:
                seen["now"] += 1
                seen["most"] = max(seen["most"], seen["now"])
            time.sleep(seconds(json.loads(request.content)["image"]))
            with lock:
                seen["now"] -= 1
                return serve(request)

        fake.handle = slow  # type: ignore[method-assign]
        return seen

    def test_a_batch_is_submitted_concurrently_and_ids_keep_the_input_order(self, fake: FakeNovita) -> None:
        images = [f"https://img.test/{n}.png" for n in range(12)]
        # Later images answer sooner, so Novita's answers arrive out of order.
        seen = self.slow_submissions(fake, lambda image: 0.01 * (12 - int(image.rsplit("/", 1)[1][:-4])))
        store = FakeStateStore()
        ids = operator(image=images, wait_for_completion=False, submit_concurrency=4).execute(context(store))
        assert seen["most"] == 4
        by_image = {submission["image"]: f"task-{n}" for n, submission in enumerate(fake.submissions)}
        assert ids == [by_image[image] for image in images]
        assert sorted(value["task_id"] for value in store.entries().values()) == sorted(ids)

    def test_after_a_failure_no_new_submission_starts_and_those_sent_are_recorded(
        self, fake: FakeNovita
    ) -> None:
        images = [f"https://img.test/{n}.png" for n in range(10)]
        self.slow_submissions(fake, lambda image: 0.05)
        serve = fake.handle

        def third_is_refused(request: httpx.Request) -> httpx.Response:
            if (
                request.url.path.endswith("image-upscaler")
                and json.loads(request.content)["image"] == images[2]
            ):
                fake.requests.append(request)
                return error(400, "INVALID_IMAGE_FORMAT", "not an image")
            return serve(request)

        fake.handle = third_is_refused  # type: ignore[method-assign]
        store = FakeStateStore()
        with pytest.raises(AirflowFailException, match="INVALID_IMAGE_FORMAT"):
            operator(image=images, wait_for_completion=False, submit_concurrency=3).execute(context(store))
        submitted = [submission["image"] for submission in fake.submissions]
        assert len(submitted) < len(images), "submissions stopped after the failure"
        assert len(store.entries()) == len(submitted) - 1, "every created task is recorded for the retry"

    @pytest.mark.parametrize("concurrency", [1, 4])
    def test_no_more_than_twice_submit_concurrency_created_tasks_are_ever_unrecorded(
        self, fake: FakeNovita, concurrency: int
    ) -> None:
        """Novita answers faster than the store records: a lost worker must not leave a backlog to bill."""
        images = [f"https://img.test/{n}.png" for n in range(40)]
        store, unrecorded = FakeStateStore(), []
        serve = fake.handle

        def created(request: httpx.Request) -> httpx.Response:
            answer = serve(request)
            if request.url.path.endswith("image-upscaler"):  # a task now exists: is it on record?
                unrecorded.append(len(fake.submissions) - len(store.entries()))
            return answer

        def slow_set(key: str, value: Any, *, retention: timedelta | None = None) -> None:
            time.sleep(0.02)
            FakeStateStore.set(store, key, value, retention=retention)

        fake.handle = created  # type: ignore[method-assign]
        store.set = slow_set  # type: ignore[method-assign]
        self.slow_submissions(fake, lambda image: 0.001)
        operator(image=images, wait_for_completion=False, submit_concurrency=concurrency).execute(
            context(store)
        )
        assert len(store.entries()) == 40
        assert max(unrecorded) < 2 * concurrency
        if concurrency > 1:
            assert max(unrecorded) > concurrency, "answers wait for their chunk while others are in flight"

    @pytest.mark.parametrize("value", [0, -1, 2.5, True, "8"])
    def test_submit_concurrency_must_be_a_positive_whole_number(self, value: object) -> None:
        with pytest.raises(ValueError, match="submit_concurrency must be a whole number of at least 1"):
            UpscaleOperator(task_id="t", image=IMAGES[0], submit_concurrency=value)


class TestSourcesInObjectStorage:
    """Storage URIs are signed right before submission; everything else names them as given."""

    @pytest.fixture
    def sources(self, s3: S3Bucket) -> list[str]:
        return [s3.put(f"in/{name}.png", b"\x89PNG" + name.encode()) for name in "ab"]

    def test_novita_gets_a_signed_url_and_the_records_name_the_uri(
        self, fake: FakeNovita, sources: list[str], s3: S3Bucket
    ) -> None:
        records = operator(image=sources, deferrable=False, source_url_expiry=timedelta(minutes=7)).execute(
            context()
        )
        assert [record["image"] for record in records] == sources
        urls = sorted(submitted["image"] for submitted in fake.submissions)
        for url, key in zip(urls, ("in/a.png", "in/b.png"), strict=True):
            assert url.startswith(f"{s3.endpoint}/{s3.name}/{key}?")
            assert signed_for(url) == pytest.approx(420, abs=5)
            assert httpx.get(url).status_code == 200, "the signed URL fetches the object"

    def test_object_storage_paths_mixed_with_urls_are_accepted(
        self, fake: FakeNovita, sources: list[str]
    ) -> None:
        image = [ObjectStoragePath(sources[0]), IMAGES[0]]
        records = operator(image=image, wait_for_completion=True, deferrable=False).execute(context())
        assert [record["image"] for record in records] == [sources[0], IMAGES[0]]
        # Submitted concurrently, so in any order: the URL as it is, the path signed.
        assert IMAGES[0] in [submitted["image"] for submitted in fake.submissions]

    def test_a_retry_signs_again_but_reattaches_by_uri(self, fake: FakeNovita, sources: list[str]) -> None:
        store = FakeStateStore()
        first = operator(image=sources, wait_for_completion=False).execute(context(store))
        fake.scripts = {task_id: (SUCCEED,) for task_id in fake.scripts}
        records = operator(image=sources, deferrable=False).execute(retry(store))
        assert len(fake.submissions) == 2, "a new signature is not a new image"
        assert [record["task_id"] for record in records] == first
        dumped = json.dumps(store.values)
        assert "Signature" not in dumped
        assert "in/a.png" not in dumped

    def test_a_missing_object_fails_before_anything_is_submitted(
        self, fake: FakeNovita, sources: list[str], s3: S3Bucket
    ) -> None:
        with pytest.raises(
            AirflowFailException,
            match=f"^image 's3://aws_default@{s3.name}/in/c.png' cannot be submitted: its object does not",
        ):
            operator(image=[*sources, s3.uri("in/c.png")], deferrable=False).execute(context())
        assert fake.requests == []

    @pytest.mark.parametrize("expiry", [0, -5, timedelta(0), "3600"])
    def test_an_expiry_that_is_not_a_positive_duration_is_refused(self, expiry: object) -> None:
        with pytest.raises(ValueError, match="source_url_expiry must be a positive number of seconds"):
            operator(source_url_expiry=expiry)


class TestSpendGuard:
    """A batch over its cap submits nothing; what bills nothing does not count."""

    BATCH: tuple[str, ...] = tuple(f"https://img.test/{n}.png" for n in range(3))

    @classmethod
    def rendered(cls, **kwargs: Any) -> UpscaleOperator:
        """The operator as the task starts with ``image`` templated: counted only then."""
        op = operator(image="{{ params.images }}", **kwargs)
        op.image = list(cls.BATCH)
        return op

    @staticmethod
    def cap_connection(monkeypatch: pytest.MonkeyPatch, cap: object) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_NOVITA_DEFAULT",
            json.dumps(
                {
                    "conn_type": "novita",
                    "host": "https://novita.test",
                    "password": API_KEY,
                    "extra": {"max_images_per_task": cap},
                }
            ),
        )

    def test_a_literal_batch_over_a_literal_cap_fails_when_the_dag_is_parsed(self) -> None:
        with pytest.raises(ValueError, match=r"^refusing to submit 3 images: max_images of this task is 2$"):
            operator(image=list(self.BATCH), max_images=2)

    @pytest.mark.parametrize("cap", [0, -1, True, 2.5, "two"])
    def test_a_literal_cap_that_is_no_whole_number_of_at_least_1_fails_when_parsed(self, cap: object) -> None:
        with pytest.raises(ValueError, match="max_images must be a whole number of at least 1"):
            operator(max_images=cap)

    def test_a_rendered_cap_is_checked_when_the_task_starts_and_submits_nothing(
        self, fake: FakeNovita
    ) -> None:
        op = operator(image=list(self.BATCH), max_images="{{ params.cap }}")
        op.max_images = "2"  # as Jinja renders it
        with pytest.raises(
            AirflowFailException, match="refusing to submit 3 images: max_images of this task"
        ):
            op.execute(context())
        assert fake.requests == []

    def test_the_connections_cap_applies_to_every_task_and_is_named(
        self, fake: FakeNovita, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.cap_connection(monkeypatch, "2")
        with pytest.raises(AirflowFailException) as info:
            operator(image=list(self.BATCH)).execute(context())
        assert str(info.value) == (
            "refusing to submit 3 images: max_images_per_task of connection 'novita_default' is 2"
        )
        assert fake.requests == []

    @pytest.mark.parametrize(("task_cap", "origin"), [(5, "of connection"), (1, "of this task")])
    def test_with_both_set_the_smaller_is_in_force(
        self, fake: FakeNovita, monkeypatch: pytest.MonkeyPatch, task_cap: int, origin: str
    ) -> None:
        self.cap_connection(monkeypatch, 2)
        with pytest.raises(AirflowFailException, match=origin):
            self.rendered(max_images=task_cap).execute(context())
        assert fake.requests == []

    def test_a_batch_at_its_cap_is_submitted(self, fake: FakeNovita, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cap_connection(monkeypatch, 3)
        assert len(operator(image=list(self.BATCH), wait_for_completion=False).execute(context())) == 3

    @pytest.mark.parametrize("cap", ["0", "-3", "abc", 2.5, True])
    def test_a_bad_cap_in_the_connection_is_refused_naming_the_extra(
        self, fake: FakeNovita, monkeypatch: pytest.MonkeyPatch, cap: object
    ) -> None:
        self.cap_connection(monkeypatch, cap)
        with pytest.raises(
            AirflowFailException,
            match="Connection 'novita_default': extra 'max_images_per_task' must be a whole number",
        ):
            operator(image=list(self.BATCH)).execute(context())
        assert fake.requests == []

    def test_images_reused_from_output_path_do_not_count(self, fake: FakeNovita, tmp_path: Any) -> None:
        png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32 + b"IEND\xaeB`\x82"
        for position, source in enumerate(self.BATCH[:2]):
            name = output_name("", "png", Destination(source, "2k", position), -1)
            (tmp_path / name).write_bytes(png)
        op = self.rendered(
            resolution="2k",
            output_format="png",
            output_path=str(tmp_path),
            max_images=1,
            wait_for_completion=False,
        )
        assert len(op.execute(context())) == 1
        assert len(fake.submissions) == 1

    def test_tasks_a_retry_reattaches_to_do_not_count(self, fake: FakeNovita) -> None:
        store = FakeStateStore()
        first = operator(image=list(self.BATCH), wait_for_completion=False).execute(context(store))
        fake.scripts = {task_id: (SUCCEED,) for task_id in fake.scripts}
        again = self.rendered(max_images=1, wait_for_completion=False).execute(retry(store))
        assert again == first
        assert len(fake.submissions) == 3
