"""NovitaHook: connection handling, requests, error mapping, retries and the shared async client."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import sys
import time
import types
from typing import Any

import httpx
import pytest
from airflow.sdk import Connection

from airflow_provider_novita import CONNECTION_FIELDS
from airflow_provider_novita.exceptions import (
    NovitaAuthError,
    NovitaBadRequestError,
    NovitaConnectionError,
    NovitaError,
    NovitaNotFoundError,
    NovitaRateLimitError,
    NovitaServerError,
)
from airflow_provider_novita.hooks import clients
from airflow_provider_novita.hooks.clients import (
    MAX_IN_FLIGHT,
    SETTINGS_TTL,
    ConnectionSettings,
    connection_settings,
    shared_async_clients,
)
from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.models import TaskStatus, UpscaleRequest
from airflow_provider_novita.polling import PollingPolicy
from airflow_provider_novita.retries import RetryPolicy, may_have_billed
from tests.conftest import API_KEY
from tests.fakes import FAILED, QUEUED, SUCCEED, FakeNovita, error

FAST = RetryPolicy(max_retries=3, initial_wait=0.001)
REQUEST = UpscaleRequest("https://img.test/cat.png", "2k", "png")


@pytest.fixture
def fake() -> FakeNovita:
    return FakeNovita()


@pytest.fixture
def hook(novita_conn: str, fake: FakeNovita) -> NovitaHook:
    return NovitaHook(novita_conn, transport=fake.transport(), retry_policy=FAST)


class TestConnection:
    def test_reads_key_host_and_extra_from_an_env_connection(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_NOVITA_EMU",
            '{"conn_type": "novita", "host": "http://127.0.0.1:8765", "password": "k",'
            ' "extra": {"timeout": 5, "max_retries": 2}}',
        )
        settings = NovitaHook("novita_emu").settings
        assert (settings.base_url, settings.api_key, settings.timeout, settings.max_retries) == (
            "http://127.0.0.1:8765",
            "k",
            5.0,
            2,
        )

    def test_defaults_to_the_novita_api(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_NOVITA_DEFAULT", '{"conn_type": "novita", "password": "k"}')
        assert NovitaHook().settings.base_url == "https://api.novita.ai"

    @pytest.mark.parametrize(
        ("host", "base_url"),
        [
            ("novita.test/", "https://novita.test"),  # a bare host name is https
            (" http://127.0.0.1:8765// ", "http://127.0.0.1:8765"),
            ("http://emulator.test/X/", "http://emulator.test/X"),
        ],
    )
    def test_the_host_is_the_base_url_without_trailing_slashes(
        self, monkeypatch: pytest.MonkeyPatch, host: str, base_url: str
    ) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_NOVITA_DEFAULT", json.dumps({"conn_type": "novita", "host": host, "password": "k"})
        )
        assert NovitaHook().settings.base_url == base_url

    def test_a_uri_connection_with_port_works(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_NOVITA_DEFAULT", "novita://:secret@localhost:8765/http")
        assert NovitaHook().settings.base_url == "http://localhost:8765"

    def test_missing_key_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_NOVITA_DEFAULT", '{"conn_type": "novita"}')
        with pytest.raises(ValueError, match="no API key: set its password"):
            NovitaHook().settings  # noqa: B018

    def test_bad_extra_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_NOVITA_DEFAULT",
            '{"conn_type": "novita", "password": "k", "extra": {"timeout": "soon"}}',
        )
        with pytest.raises(ValueError, match="'timeout' must be a non-negative number"):
            NovitaHook().settings  # noqa: B018

    @pytest.mark.parametrize(
        ("extra", "timeout", "max_retries"),
        [({"timeout": "", "max_retries": ""}, 60.0, 5), ({"timeout": 0.5, "max_retries": 0}, 0.5, 0)],
    )
    def test_an_empty_extra_field_is_the_default_and_zero_retries_is_allowed(
        self, monkeypatch: pytest.MonkeyPatch, extra: dict[str, object], timeout: float, max_retries: int
    ) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_NOVITA_DEFAULT",
            json.dumps({"conn_type": "novita", "password": "k", "extra": extra}),
        )
        settings = NovitaHook().settings
        assert (settings.timeout, settings.max_retries) == (timeout, max_retries)

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            ({"max_retries": -1}, "Connection 'novita_default': extra 'max_retries' must be a non-negative"),
            ({"timeout": -1}, "Connection 'novita_default': extra 'timeout' must be a non-negative"),
            ({"proxy": "proxy.corp"}, "Connection 'novita_default': extra 'proxy' must be an http://"),
        ],
    )
    def test_a_bad_extra_names_the_connection(
        self, monkeypatch: pytest.MonkeyPatch, extra: object, message: str
    ) -> None:
        conn: dict[str, object] = {"conn_type": "novita", "password": "k", "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_NOVITA_DEFAULT", json.dumps(conn))
        with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
            NovitaHook().settings  # noqa: B018

    def test_an_extra_that_is_not_json_names_the_connection(self) -> None:
        """Built directly: Airflow 3.1 refuses it in ``AIRFLOW_CONN_*`` before a hook sees it."""
        conn = Connection(conn_id="novita_default", conn_type="novita", password="k", extra='"not json')
        with pytest.raises(
            ValueError, match=r"^Connection 'novita_default' has an extra that is not valid JSON$"
        ):
            ConnectionSettings.from_connection(conn)

    def test_key_is_not_in_the_settings_repr(self, hook: NovitaHook) -> None:
        assert API_KEY not in repr(hook.settings)


class TestConnectionFormOfAirflow31:
    """Airflow 3.1 asks the hook for the form that 3.2+ reads from the provider info: the same one."""

    def test_the_standard_fields_are_relabelled_and_hidden_as_in_the_provider_info(self) -> None:
        assert NovitaHook.get_ui_field_behaviour() == {
            "hidden_fields": ["schema", "port", "login", "extra"],
            "relabeling": {"password": "API Key", "host": "API base URL"},
            "placeholders": {"password": "your Novita API key", "host": "https://api.novita.ai"},
        }

    def test_the_extra_fields_are_inputs_of_their_type_labelled_and_described(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """WTForms and Flask-AppBuilder as the 3.1 api-server provides them, stood in for here."""

        class Field:
            def __init__(self, label: str, **options: Any) -> None:
                self.label, self.options = label, options

        class IntegerField(Field): ...

        class StringField(Field): ...

        class Optional: ...

        class BS3TextFieldWidget: ...

        for name, attributes in {
            "wtforms": {"IntegerField": IntegerField, "StringField": StringField},
            "wtforms.validators": {"Optional": Optional},
            "flask_appbuilder": {},
            "flask_appbuilder.fieldwidgets": {"BS3TextFieldWidget": BS3TextFieldWidget},
            "flask_babel": {"lazy_gettext": lambda text: f"translated: {text}"},
        }.items():
            module = types.ModuleType(name)
            module.__dict__.update(attributes)
            monkeypatch.setitem(sys.modules, name, module)

        widgets = NovitaHook.get_connection_form_widgets()
        assert {name: (type(field).__name__, field.label) for name, field in widgets.items()} == {
            "timeout": ("StringField", "translated: Request timeout (seconds)"),
            "max_retries": ("IntegerField", "translated: Max retries"),
            "max_images_per_task": ("IntegerField", "translated: Max images per task"),
            "proxy": ("StringField", "translated: Proxy URL"),
        }
        for name, field in widgets.items():
            assert field.options["description"] == CONNECTION_FIELDS[name]["description"]
            assert isinstance(field.options["widget"], BS3TextFieldWidget)
            assert [type(validator) for validator in field.options["validators"]] == [Optional]


class TestRequests:
    def test_submit_sends_the_documented_body_and_returns_the_task_id(
        self, hook: NovitaHook, fake: FakeNovita
    ) -> None:
        assert hook.submit_upscale(REQUEST) == "task-0"
        (request,) = fake.requests
        assert request.method == "POST"
        assert str(request.url) == "https://novita.test/v3/async/image-upscaler"
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        assert fake.submissions == [
            {"image": "https://img.test/cat.png", "resolution": "2k", "output_format": "png"}
        ]

    def test_get_task_result_parses_the_answer(self, hook: NovitaHook, fake: FakeNovita) -> None:
        fake.script = (SUCCEED,)
        task_id = hook.submit_upscale(REQUEST)
        result = hook.get_task_result(task_id)
        assert result.status is TaskStatus.SUCCEED
        assert result.images[0].image_url == "https://cdn.test/task-0.jpeg"
        assert result.images[0].image_url_ttl == 3600
        assert fake.requests[-1].url.params["task_id"] == task_id

    @pytest.mark.parametrize("answer", [{}, [], {"task_id": 7}, {"task_id": "../../etc"}])
    def test_submit_without_task_id_in_the_answer_fails(
        self, hook: NovitaHook, fake: FakeNovita, answer: object
    ) -> None:
        fake.fail_next(httpx.Response(200, json=answer))
        with pytest.raises(
            NovitaError,
            match=r"^Novita accepted the upscale request but returned no usable task id; "
            r"it may have created and billed a task$",
        ):
            hook.submit_upscale(REQUEST)

    def test_a_non_json_answer_to_a_submission_fails_at_once_naming_no_task(
        self, hook: NovitaHook, fake: FakeNovita
    ) -> None:
        fake.fail_next(httpx.Response(200, text="<html>"))
        with pytest.raises(NovitaError, match=r"^Novita answered HTTP 200 with a body that is not JSON$"):
            hook.submit_upscale(REQUEST)
        assert len(fake.requests) == 1

    def test_a_non_json_answer_is_retried_then_fails_clearly(
        self, hook: NovitaHook, fake: FakeNovita
    ) -> None:
        fake.fail_next(*[httpx.Response(200, text="<html>")] * (FAST.max_retries + 1))
        with pytest.raises(NovitaError, match=r"not JSON \(task id t1\)"):
            hook.get_task_result("t1")
        assert len(fake.requests) == FAST.max_retries + 1


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "reason", "exc_type"),
        [
            (400, "INVALID_REQUEST_BODY", NovitaBadRequestError),
            (400, "BILLING_BALANCE_NOT_ENOUGH", NovitaBadRequestError),
            (403, "INVALID_API_KEY", NovitaAuthError),
            (401, "", NovitaAuthError),
            (404, "TASK_NOT_FOUND", NovitaNotFoundError),
        ],
    )
    def test_client_errors_are_mapped_and_never_retried(
        self, hook: NovitaHook, fake: FakeNovita, status: int, reason: str, exc_type: type[NovitaError]
    ) -> None:
        fake.fail_next(error(status, reason, "nope"))
        with pytest.raises(exc_type) as info:
            hook.get_task_result("task-42")
        assert len(fake.requests) == 1
        assert info.value.http_status == status  # type: ignore[attr-defined]
        message = str(info.value)
        assert f"HTTP {status}" in message
        assert reason in message
        assert "task id task-42" in message

    def test_wrong_key_gives_auth_error_without_the_key(
        self, monkeypatch: pytest.MonkeyPatch, fake: FakeNovita
    ) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_NOVITA_DEFAULT", '{"conn_type": "novita", "password": "sk-wrong-key-value"}'
        )
        hook = NovitaHook(transport=fake.transport(), retry_policy=FAST)
        with pytest.raises(NovitaAuthError, match="INVALID_API_KEY") as info:
            hook.submit_upscale(REQUEST)
        assert "sk-wrong-key-value" not in str(info.value)
        assert "sk-wrong-key-value" not in repr(info.value)

    def test_rate_limit_is_retried_honouring_retry_after(
        self,
        hook: NovitaHook,
        fake: FakeNovita,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.WARNING, logger="airflow_provider_novita.hooks.novita")
        slept: list[float] = []
        monkeypatch.setattr("airflow_provider_novita.hooks.novita.time.sleep", slept.append)
        fake.fail_next(error(429, "RATE_LIMIT_EXCEEDED", "slow down", {"Retry-After": "7"}))
        assert hook.submit_upscale(REQUEST) == "task-0"
        assert slept == [7.0]
        assert len(fake.submissions) == 2
        (retry,) = caplog.messages
        assert re.fullmatch(r"Novita request failed \(.*HTTP 429.*\); retrying in 7\.0s \(attempt 2\)", retry)

    def test_server_errors_and_connect_errors_are_retried_for_reads(
        self, hook: NovitaHook, fake: FakeNovita
    ) -> None:
        fake.script = (SUCCEED,)
        task_id = hook.submit_upscale(REQUEST)
        fake.fail_next(error(503, "", "overloaded"), httpx.ConnectError("refused"), httpx.ReadTimeout("slow"))
        assert hook.get_task_result(task_id).status is TaskStatus.SUCCEED

    def test_retries_stop_after_max_retries(self, hook: NovitaHook, fake: FakeNovita) -> None:
        fake.fail_next(*[error(500, "GET_RESULT_FAILED", "boom")] * 10)
        with pytest.raises(NovitaServerError, match="HTTP 500 GET_RESULT_FAILED"):
            hook.get_task_result("t")
        assert len(fake.requests) == FAST.max_retries + 1

    @pytest.mark.parametrize(
        "answer",
        [
            error(500, "CREATE_TASK_FAILED", "internal"),
            error(502, "", "bad gateway"),
            error(504, "", "gateway timeout"),
            httpx.ReadTimeout("no answer"),
            httpx.WriteTimeout("half sent"),
            httpx.RemoteProtocolError("connection closed mid-answer"),
            httpx.Response(200, text="<html>proxy</html>"),
            httpx.Response(200, json={"task_id": ""}),
        ],
    )
    def test_submission_is_not_resent_when_novita_may_have_created_the_task(
        self, hook: NovitaHook, fake: FakeNovita, answer: httpx.Response | Exception
    ) -> None:
        fake.fail_next(answer)
        with pytest.raises(NovitaError) as info:
            hook.submit_upscale(REQUEST)
        assert len(fake.requests) == 1
        assert may_have_billed(info.value)

    def test_submission_is_resent_only_on_429_503_and_errors_before_sending(
        self, hook: NovitaHook, fake: FakeNovita
    ) -> None:
        fake.fail_next(
            httpx.ConnectError("refused"),
            error(503, "", "overloaded"),
            error(429, "RATE_LIMIT_EXCEEDED", "slow down", {"Retry-After": "0"}),
        )
        assert hook.submit_upscale(REQUEST) == "task-0"
        assert len(fake.requests) == 4

    def test_unreachable_novita_names_the_host(self, hook: NovitaHook, fake: FakeNovita) -> None:
        fake.fail_next(*[httpx.ConnectError("refused")] * 10)
        with pytest.raises(NovitaConnectionError, match=r"Could not reach Novita at https://novita\.test"):
            hook.get_task_result("t")

    @pytest.mark.parametrize(
        ("failure", "message"),
        [
            (
                httpx.ConnectError("connection refused"),
                "Could not reach Novita at https://novita.test: ConnectError: connection refused",
            ),
            (
                httpx.ReadTimeout("timed out"),
                "Could not reach Novita at https://novita.test: ReadTimeout: timed out"
                " (the request may have reached Novita)",
            ),
        ],
    )
    def test_a_transport_error_says_whether_the_submission_may_have_reached_novita(
        self, hook: NovitaHook, fake: FakeNovita, failure: Exception, message: str
    ) -> None:
        """Whether a task may have been created and billed; a refused connection never got that far."""
        fake.fail_next(*[failure] * 10)
        with pytest.raises(NovitaConnectionError) as info:
            hook.submit_upscale(REQUEST)
        assert str(info.value) == message

    def test_the_key_never_appears_in_logs_or_errors(
        self, hook: NovitaHook, fake: FakeNovita, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        fake.fail_next(
            error(429, "RATE_LIMIT_EXCEEDED", "x"), *[error(403, "INVALID_API_KEY", "invalid api-key")] * 2
        )
        with pytest.raises(NovitaAuthError) as info:
            hook.submit_upscale(REQUEST)
        assert "RATE_LIMIT_EXCEEDED" in caplog.text  # the retry was logged ...
        assert API_KEY not in caplog.text  # ... without the key
        assert API_KEY not in str(info.value)
        assert API_KEY not in repr(info.value.__cause__)


class TestTestConnection:
    def test_success_reports_host_and_balance(self, hook: NovitaHook) -> None:
        assert hook.test_connection() == (
            True,
            "Connected to Novita at https://novita.test; credit balance 12.35 USD",
        )

    def test_failure_reports_novitas_reason(self, hook: NovitaHook, fake: FakeNovita) -> None:
        fake.fail_next(error(403, "INVALID_API_KEY", "invalid api-key"))
        ok, message = hook.test_connection()
        assert not ok
        assert message == (
            "Novita API error: HTTP 403 INVALID_API_KEY: invalid api-key. Check the API key (the password) "
            "of Airflow connection 'novita_default'"
        )

    @pytest.mark.parametrize("answer", [{"credit_balance": None}, {"credit_balance": True}, {}, []])
    def test_an_answer_without_a_usable_balance_still_connects(
        self, hook: NovitaHook, fake: FakeNovita, answer: object
    ) -> None:
        fake.fail_next(httpx.Response(200, json=answer))
        assert hook.test_connection() == (True, "Connected to Novita at https://novita.test")

    def test_it_asks_with_a_get_and_retries_a_transient_failure(
        self, hook: NovitaHook, fake: FakeNovita
    ) -> None:
        """A read: retried even after a failure following which a submission never is."""
        fake.fail_next(error(502, "", "bad gateway"))
        assert hook.test_connection()[0] is True
        assert [(request.method, request.url.path) for request in fake.requests] == [("GET", "/v3/user")] * 2

    def test_it_waits_at_most_its_own_short_time_for_an_answer(
        self, hook: NovitaHook, fake: FakeNovita
    ) -> None:
        """Someone is waiting in the UI: not the connection's 60 s per request."""
        hook.test_connection()
        (request,) = fake.requests
        assert all(0 < seconds <= 10 for seconds in request.extensions["timeout"].values())

    def test_a_missing_connection_is_reported_with_the_errors_kind(self) -> None:
        assert NovitaHook("novita_missing").test_connection() == (
            False,
            "AirflowNotFoundException: The conn_id `novita_missing` isn't defined",
        )

    def test_a_key_novita_echoes_back_is_not_shown(self, hook: NovitaHook, fake: FakeNovita) -> None:
        fake.fail_next(error(401, "INVALID_API_KEY", f"unknown key {API_KEY}"))
        ok, message = hook.test_connection()
        assert not ok
        assert "unknown key" in message
        assert API_KEY not in message


class TestAsync:
    async def test_async_side_polls_through_the_same_api(self, hook: NovitaHook, fake: FakeNovita) -> None:
        fake.script = (FAILED,)
        task_id = await hook.asubmit_upscale(REQUEST)
        result = await hook.aget_task_result(task_id)
        assert (result.status, result.reason) == (
            TaskStatus.FAILED,
            "cannot upscale https://img.test/cat.png",
        )

    async def test_connection_is_looked_up_with_the_async_api(
        self, hook: NovitaHook, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def forbidden(*args: object) -> None:
            raise AssertionError("sync get_connection called on the event loop")

        monkeypatch.setattr(NovitaHook, "get_connection", classmethod(forbidden))
        assert (await hook.asettings()).api_key == API_KEY

    async def test_concurrent_users_of_one_connection_share_one_client(self, novita_conn: str) -> None:
        fake = FakeNovita(script=(SUCCEED,))
        transport = fake.transport()
        seen: list[httpx.AsyncBaseTransport] = []

        async def use() -> None:
            hook = NovitaHook(novita_conn, transport=transport, retry_policy=FAST)
            async with hook.session() as session:
                seen.append(session._shared.client)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(use() for _ in range(20)))
        assert len({id(shared) for shared in seen}) == 1
        assert len(shared_async_clients) == 0

    async def test_the_shared_client_is_closed_with_its_last_user(
        self, novita_conn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        closed: list[httpx.AsyncClient] = []

        class Recording(httpx.AsyncClient):
            async def aclose(self) -> None:
                closed.append(self)
                await super().aclose()

        monkeypatch.setattr(clients.httpx, "AsyncClient", Recording)
        async with contextlib.AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(NovitaHook(novita_conn).session()) for _ in range(3)]
            shared = {session._shared.client for session in sessions if session._shared}
            assert len(shared) == 1
            assert closed == []
        assert closed == list(shared), "closed once, when the last session ended"

    async def test_sessions_opened_at_once_look_the_connection_up_once(
        self, novita_conn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A burst of 1000 triggers deferred together: one lookup, not a thread hop and mask each."""
        looked_up: list[str] = []
        real = NovitaHook.aget_connection

        async def counting(cls: type[NovitaHook], conn_id: str) -> object:
            looked_up.append(conn_id)
            return await real(conn_id)

        monkeypatch.setattr(NovitaHook, "aget_connection", classmethod(counting))
        transport = FakeNovita().transport()
        keys: list[str] = []

        async def use() -> None:
            async with NovitaHook(novita_conn, transport=transport).session() as session:
                keys.append(session._settings.api_key)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(use() for _ in range(1000)))
        assert looked_up == [novita_conn]
        assert keys == [API_KEY] * 1000

    async def test_sessions_of_two_connections_on_one_loop_keep_their_own_settings(
        self, novita_conn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_NOVITA_OTHER",
            '{"conn_type": "novita", "host": "https://other.test", "password": "sk-other"}',
        )
        async with NovitaHook(novita_conn).session() as first, NovitaHook("novita_other").session() as second:
            assert (first._settings.base_url, first._settings.api_key) == ("https://novita.test", API_KEY)
            assert (second._settings.base_url, second._settings.api_key) == ("https://other.test", "sk-other")

    async def test_an_edited_connection_reaches_new_sessions_after_the_ttl(
        self, novita_conn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        now = [1000.0]
        monkeypatch.setattr(connection_settings, "clock", lambda: now[0])
        seen: list[str] = []

        def novita(request: httpx.Request) -> httpx.Response:
            seen.append(request.headers["Authorization"])
            return httpx.Response(200, json={"task_id": "t-1"})

        def hook() -> NovitaHook:
            return NovitaHook(novita_conn, transport=httpx.MockTransport(novita))

        async with hook().session() as before:
            await before.submit_upscale(REQUEST)
            monkeypatch.setenv(
                "AIRFLOW_CONN_NOVITA_DEFAULT",
                '{"conn_type": "novita", "host": "https://novita.test", "password": "sk-new"}',
            )
            now[0] += SETTINGS_TTL - 0.1
            await hook().asubmit_upscale(REQUEST)
            now[0] += 0.1
            await hook().asubmit_upscale(REQUEST)
            # A session keeps the settings it started with.
            await before.submit_upscale(REQUEST)
        assert seen == [f"Bearer {API_KEY}", f"Bearer {API_KEY}", "Bearer sk-new", f"Bearer {API_KEY}"]

    async def test_a_session_is_entered_once_and_sends_only_inside_its_block(self, hook: NovitaHook) -> None:
        session = hook.session()
        with pytest.raises(
            RuntimeError, match=r"^A NovitaSession sends requests only inside its async with block$"
        ):
            await session.submit_upscale(REQUEST)
        async with session:
            assert await session.submit_upscale(REQUEST)
        with pytest.raises(
            RuntimeError, match=r"^A NovitaSession sends requests only inside its async with block$"
        ):
            await session.submit_upscale(REQUEST)
        with pytest.raises(
            RuntimeError, match=r"^A NovitaSession is entered once; get another from NovitaHook\.session\(\)$"
        ):
            await session.__aenter__()
        assert len(shared_async_clients) == 0

    async def test_retries_async_too(self, hook: NovitaHook, fake: FakeNovita) -> None:
        fake.script = (SUCCEED,)
        fake.fail_next(error(429, "RATE_LIMIT_EXCEEDED", "x", {"Retry-After": "0"}))
        task_id = await hook.asubmit_upscale(REQUEST)
        fake.fail_next(error(502, "", "bad gateway"))
        assert (await hook.aget_task_result(task_id)).status is TaskStatus.SUCCEED

    async def test_transport_errors_are_retried_and_reported_async_too(
        self, hook: NovitaHook, fake: FakeNovita
    ) -> None:
        fake.fail_next(*[httpx.ConnectError("refused")] * (FAST.max_retries + 1))
        with pytest.raises(
            NovitaConnectionError,
            match=r"^Could not reach Novita at https://novita\.test: ConnectError: refused$",
        ):
            await hook.aget_task_result("t")
        assert len(fake.requests) == FAST.max_retries + 1

    async def test_errors_name_the_polled_task_async_too(self, hook: NovitaHook, fake: FakeNovita) -> None:
        fake.fail_next(error(404, "TASK_NOT_FOUND", "nope"))
        async with hook.session() as session:
            with pytest.raises(NovitaNotFoundError, match="task id task-42"):
                await session.get_task_result("task-42")

    async def test_rate_limit_error_carries_retry_after(self, hook: NovitaHook, fake: FakeNovita) -> None:
        fake.fail_next(*[error(429, "RATE_LIMIT_EXCEEDED", "x", {"Retry-After": "0"})] * 10)
        with pytest.raises(NovitaRateLimitError) as info:
            await hook.aget_task_result("t")
        assert info.value.retry_after == 0.0


async def test_a_shared_client_keeps_at_most_max_in_flight_requests(novita_conn: str) -> None:
    """Bursts wait on the client's slots, not inside httpcore's pool, whose hand-over is quadratic."""
    in_flight = 0
    most = 0

    async def slow_novita(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        # Slow enough that more requests are admitted than slots exist.
        await asyncio.sleep(0.2)
        in_flight -= 1
        task = {"task_id": request.url.params["task_id"], "status": "TASK_STATUS_FAILED"}
        return httpx.Response(200, json={"task": task})

    transport = httpx.MockTransport(slow_novita)
    hooks = [NovitaHook(novita_conn, transport=transport, retry_policy=FAST) for _ in range(10)]
    await asyncio.gather(
        *(
            hook.await_tasks([f"t{i}-{j}" for j in range(20)], PollingPolicy(0.01), time.time() + 60)
            for i, hook in enumerate(hooks)
        )
    )
    assert most == MAX_IN_FLIGHT


async def test_polls_past_the_admission_allowance_start_at_the_admission_rate(
    novita_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    An allowance of one request and ten a second, on a clock that stands still: the second poll starts
    a tenth of a second later, the third two tenths.
    """
    monkeypatch.setattr(clients, "ADMISSION_BURST", 1.0)
    monkeypatch.setattr(clients, "ADMISSION_RATE", 10.0)
    monkeypatch.setattr(clients, "Admission", functools.partial(clients.Admission, clock=lambda: 1000.0))
    slept: list[float] = []

    class RecordingSleeps:
        """asyncio, as the hook module sees it, with its sleeps recorded."""

        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        async def sleep(self, delay: float) -> None:
            slept.append(delay)
            await asyncio.sleep(delay)

    fake = FakeNovita(script=(SUCCEED,))
    hook = NovitaHook(novita_conn, transport=fake.transport(), retry_policy=FAST)
    task_ids = [await hook.asubmit_upscale(REQUEST) for _ in range(3)]
    monkeypatch.setattr("airflow_provider_novita.hooks.novita.asyncio", RecordingSleeps())
    async with hook.session() as session:
        results = [await session.get_task_result(task_id) for task_id in task_ids]
    assert [result.status for result in results] == [TaskStatus.SUCCEED] * 3
    assert slept == pytest.approx([0.1, 0.2])


async def test_event_loops_and_transports_never_share_a_client(novita_conn: str) -> None:
    """An httpx client belongs to the loop it was made on; a test's transport answers only its hooks."""
    settings = await NovitaHook(novita_conn).asettings()
    transport, other_transport = FakeNovita().transport(), FakeNovita().transport()

    async def client_on_this_loop(answering: httpx.MockTransport) -> httpx.AsyncClient:
        shared = await shared_async_clients.acquire(settings, answering)
        await shared_async_clients.release(shared)
        return shared.client

    held = await shared_async_clients.acquire(settings, transport)
    try:
        on_another_loop = await asyncio.to_thread(asyncio.run, client_on_this_loop(transport))
        with_another_transport = await client_on_this_loop(other_transport)
        assert on_another_loop is not held.client
        assert with_another_transport is not held.client
        assert await client_on_this_loop(transport) is held.client
    finally:
        await shared_async_clients.release(held)


async def test_concurrent_waits_on_one_hook_each_keep_their_own_session(novita_conn: str) -> None:
    """Sessions are explicit: one wait ending cannot take the client from under another."""
    fake = FakeNovita(script=(QUEUED, SUCCEED))
    hook = NovitaHook(novita_conn, transport=fake.transport(), retry_policy=FAST)
    fake.script = (SUCCEED,)
    short = [await hook.asubmit_upscale(REQUEST)]
    fake.script = (QUEUED, QUEUED, QUEUED, SUCCEED)
    long = [await hook.asubmit_upscale(REQUEST)]
    outcomes = await asyncio.gather(
        hook.await_tasks(short, PollingPolicy(0.01, 0.01), time.time() + 30),
        hook.await_tasks(long, PollingPolicy(0.01, 0.01), time.time() + 30),
    )
    assert [outcome.status.value for outcome in outcomes] == ["success", "success"]
    assert len(shared_async_clients) == 0


def test_close_closes_the_sync_client_the_hook_made(
    novita_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[httpx.Client] = []

    class Recording(httpx.Client):
        def close(self) -> None:
            closed.append(self)
            super().close()

    monkeypatch.setattr("airflow_provider_novita.hooks.novita.httpx.Client", Recording)
    hook = NovitaHook(novita_conn)
    made = hook.client
    hook.close()
    assert closed == [made]
    assert hook.client is not made, "a closed hook makes a new client if used again"
