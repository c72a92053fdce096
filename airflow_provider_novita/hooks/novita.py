"""NovitaHook: the Novita connection and every HTTP call the provider makes to Novita."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

import httpx
from airflow.sdk import BaseHook
from airflow.sdk import log as sdk_log

from airflow_provider_novita import CONNECTION_FIELDS, CONNECTION_UI_FIELD_BEHAVIOUR
from airflow_provider_novita.exceptions import (
    NovitaConnectionError,
    NovitaError,
    NovitaInvalidResponseError,
    NovitaProxyError,
    NovitaTimeoutError,
    error_from_response,
    redact,
)
from airflow_provider_novita.hooks.clients import (
    ConnectionSettings,
    SharedClient,
    connection_settings,
    shared_async_clients,
    shared_ssl_context,
)
from airflow_provider_novita.models import TaskResult, UpscaleRequest, redact_url
from airflow_provider_novita.polling import BatchPoller, PollingPolicy

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from airflow.sdk import Connection

    from airflow_provider_novita.events import BatchOutcome
    from airflow_provider_novita.retries import RetryPolicy

_log = logging.getLogger(__name__)

SUBMIT_PATH = "/v3/async/image-upscaler"
TASK_RESULT_PATH = "/v3/async/task-result"
USER_PATH = "/v3/user"
# Polls of one batch in flight at once: enough to keep a batch moving, few enough not to be a burst.
MAX_CONCURRENT_POLLS = 8
# How long "Test connection" may retry before it answers.
TEST_CONNECTION_SECONDS = 10.0

# What a Novita task id may look like (they are UUIDs): it goes into URLs, logs, file names and XCom.
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Raised before a single byte left: resending cannot create a second Novita task.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class NovitaHook(BaseHook):
    """
    Talks to Novita AI's async image-upscaler API over httpx, synchronously and asynchronously.

    The connection (type ``novita``) holds the API key as its password (surrounding whitespace is
    stripped), optionally the API base URL as its host (default ``https://api.novita.ai``), and in its
    extra ``timeout`` (seconds per request, default 60), ``max_retries`` (default 5) and ``proxy`` (a
    proxy URL for everything the connection does; without it, the proxy environment variables
    apply, as in any httpx client). Requests that
    fail transiently are retried as :mod:`airflow_provider_novita.retries` describes; a ``deadline``
    cuts every retry wait and request timeout. Every error raised is a
    :class:`~airflow_provider_novita.exceptions.NovitaError`, and none of their messages carries the key.

    The sync methods use one ``httpx.Client`` (a connection pool) per hook, closed by :meth:`close`.
    The async side is an explicit :meth:`session`: it looks the connection up without blocking the
    event loop, sharing the lookup with the sessions of the event loop opened within ``SETTINGS_TTL``
    (10) seconds (a connection edited in Airflow reaches new sessions at most that late, see
    :meth:`asettings`), and leases the ``httpx.AsyncClient`` shared by every session of the event loop
    and connection (see :mod:`airflow_provider_novita.hooks.clients`). The async convenience methods
    open a session each.

    :param novita_conn_id: the Airflow connection to use.
    :param transport: an httpx transport to send requests through instead of the network; meant for
        tests (``httpx.MockTransport`` serves both the sync and the async side).
    :param retry_policy: overrides the retry count from the connection and the backoff scale.
    """

    conn_name_attr = "novita_conn_id"
    default_conn_name = "novita_default"
    conn_type = "novita"
    hook_name = "Novita AI"

    def __init__(
        self,
        novita_conn_id: str = default_conn_name,
        *,
        transport: httpx.MockTransport | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self.novita_conn_id = novita_conn_id
        self._transport = transport
        self._retry_policy = retry_policy
        # Both made on first use and kept for the hook's life; close() ends the client's.
        self._settings: ConnectionSettings | None = None
        self._client: httpx.Client | None = None

    # -- connection ---------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """
        The connection form's standard fields, for Airflow 3.1, which reads them from here.

        Airflow 3.2+ reads the same form from the provider info (``ui-field-behaviour``) and does
        not call this; both come from one definition, so the form looks the same on every version.
        """
        behaviour = CONNECTION_UI_FIELD_BEHAVIOUR
        return {
            "hidden_fields": list(behaviour["hidden-fields"]),
            "relabeling": dict(behaviour["relabeling"]),
            "placeholders": dict(behaviour["placeholders"]),
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """
        The connection form's extra fields, for Airflow 3.1 (3.2+ reads ``conn-fields``).

        Its api-server stands in for WTForms and Flask-AppBuilder when they are not installed, so the
        imports here succeed there; nothing else calls this.
        """
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, StringField
        from wtforms.validators import Optional

        kinds = {"number": StringField, "integer": IntegerField, "string": StringField}
        widgets = {}
        for name, field in CONNECTION_FIELDS.items():
            kind = next(kind for kind in field["schema"]["type"] if kind != "null")
            widgets[name] = kinds[kind](
                lazy_gettext(field["label"]),
                widget=BS3TextFieldWidget(),
                validators=[Optional()],
                description=field["description"],
            )
        return widgets

    @property
    def settings(self) -> ConnectionSettings:
        """The connection's settings, looked up (and its secrets masked) on first use."""
        if self._settings is None:
            conn = self.get_connection(self.novita_conn_id)
            settings = ConnectionSettings.from_connection(conn)
            for secret in _secrets(conn, settings):
                sdk_log.mask_secret(secret)
            self._settings = settings
        return self._settings

    async def asettings(self) -> ConnectionSettings:
        """
        :attr:`settings`, looked up without blocking the event loop, and shared with the other hooks of
        the loop for :data:`~airflow_provider_novita.hooks.clients.SETTINGS_TTL` seconds (see
        :class:`~airflow_provider_novita.hooks.clients.SettingsCache`).
        """
        if self._settings is None:
            self._settings = await connection_settings.get(self.novita_conn_id, self._alook_up)
        return self._settings

    async def _alook_up(self) -> ConnectionSettings:
        conn = await self.aget_connection(self.novita_conn_id)
        settings = ConnectionSettings.from_connection(conn)
        for secret in _secrets(conn, settings):
            await _amask_secret(secret)
        return settings

    @property
    def retries(self) -> RetryPolicy:
        return self._retry_policy or self.settings.retry_policy

    # -- sync ---------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        """The sync client: a connection pool of the hook's own, over the given transport in tests."""
        if self._client is None:
            self._client = httpx.Client(**self.settings.client_options(shared_ssl_context(), self._transport))
        return self._client

    def get_conn(self) -> httpx.Client:
        return self.client

    def close(self) -> None:
        """Close the sync client, if the hook made one; it makes a new one if used again."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _send(self, call: Call) -> Any:
        client, settings = self.client, self.settings
        attempt = Attempts(self.retries, call)
        while True:
            with attempt:
                request = call.build(settings)
                try:
                    response = client.send(request)
                except httpx.HTTPError as err:
                    raise _connection_error(err, settings) from err
                return _json_or_raise(response, call.task_id, settings)
            time.sleep(attempt.wait)

    def submit_upscale(self, request: UpscaleRequest) -> str:
        """Create an upscaling task and return its Novita task id. Each call is billed."""
        return _task_id(self._send(Call("POST", SUBMIT_PATH, json=request.to_json())))

    def get_task_result(self, task_id: str, *, deadline: float | None = None) -> TaskResult:
        body = self._send(Call("GET", _task_result_path(task_id), task_id, deadline))
        return TaskResult.from_api(body, task_id)

    def get_task_results(
        self, task_ids: Sequence[str], *, deadline: float | None = None
    ) -> list[TaskResult | NovitaError]:
        """One poll of each task; a task whose poll failed gets the error in its place."""
        answers: list[TaskResult | NovitaError] = []
        for task_id in task_ids:
            try:
                answers.append(self.get_task_result(task_id, deadline=deadline))
            except NovitaError as err:
                answers.append(err)
        return answers

    def wait_for_tasks(self, task_ids: Sequence[str], policy: PollingPolicy, end_time: float) -> BatchOutcome:
        """Poll in this thread until every task is final or ``end_time`` (epoch seconds) passes."""
        poller = BatchPoller(task_ids, policy, end_time)
        while (outcome := poller.outcome(time.time())) is None:
            time.sleep(poller.next_delay(time.time()))
            if polled := poller.due(time.time()):
                poller.record(polled, self.get_task_results(polled, deadline=end_time), time.time())
        return outcome

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the key with ``GET /v3/user``, which is cheap and bills nothing.

        Someone is waiting in the UI: retries stop after :data:`TEST_CONNECTION_SECONDS`, so an
        unreachable host is reported in seconds rather than after the whole backoff.
        """
        try:
            user = self._send(Call("GET", USER_PATH, deadline=time.time() + TEST_CONNECTION_SECONDS))
            balance = user.get("credit_balance") if isinstance(user, dict) else None
            detail = (
                f"; credit balance {balance / 10000:.2f} USD"
                if isinstance(balance, (int, float)) and not isinstance(balance, bool)
                else ""
            )
            return True, f"Connected to Novita at {redact_url(self.settings.base_url)}{detail}"
        except Exception as err:  # The UI shows whatever this returns; nothing may escape unredacted.
            message = (
                str(err) if isinstance(err, (NovitaError, ValueError)) else f"{type(err).__name__}: {err}"
            )
            for secret in self._settings.secrets if self._settings else ():
                message = redact(message, secret)
            return False, message
        finally:
            self.close()

    # -- async --------------------------------------------------------------------------------

    def session(self) -> NovitaSession:
        """
        An async session with Novita, for as long as an ``async with hook.session() as session``
        block runs.

        Sessions are independent: two of one hook, used concurrently, each hold their own lease.
        """
        return NovitaSession(self)

    async def asubmit_upscale(self, request: UpscaleRequest) -> str:
        async with self.session() as session:
            return await session.submit_upscale(request)

    async def aget_task_result(self, task_id: str, *, deadline: float | None = None) -> TaskResult:
        async with self.session() as session:
            return await session.get_task_result(task_id, deadline=deadline)

    async def await_tasks(
        self, task_ids: Sequence[str], policy: PollingPolicy, end_time: float
    ) -> BatchOutcome:
        """The async twin of :meth:`wait_for_tasks`, holding one session for the whole wait."""
        async with self.session() as session:
            return await session.wait_for_tasks(task_ids, policy, end_time)


class Call(NamedTuple):
    """One API call, as the request loops send it and retry it (a tuple: one is made per request)."""

    method: str
    path: str
    task_id: str | None = None
    """The Novita task the call is about, named in its errors."""
    deadline: float | None = None
    """Epoch seconds after which no attempt is sent and no wait lasts."""
    json: Any = None

    def build(self, settings: ConnectionSettings) -> httpx.Request:
        """
        One attempt's request, its timeouts cut to the deadline. Nothing is sent once the deadline
        has passed: the answer could no longer change the outcome.
        """
        if self.deadline is not None and time.time() >= self.deadline:
            ids = [self.task_id] if self.task_id else []
            raise NovitaTimeoutError(ids, "Deadline passed before the request was sent")
        return settings.request(self.method, self.path, deadline=self.deadline, json=self.json)


class Attempts:
    """
    The retry decision of one request, shared by the sync and the async request loop; each loop
    only sleeps its own way::

        attempt = Attempts(retries, call)
        while True:
            with attempt:
                return send(call.build(settings))  # raises a NovitaError when it fails
            time.sleep(attempt.wait)  # or await asyncio.sleep(attempt.wait)

    A failure that :class:`~airflow_provider_novita.retries.RetryPolicy` retries is swallowed by the
    ``with``, which sets :attr:`wait`; any other failure goes through. A wait that would run past
    the deadline is cut at it, and the next ``with`` then raises
    :class:`~airflow_provider_novita.exceptions.NovitaTimeoutError` naming the last failure, instead
    of sending a request whose answer could no longer change the outcome. Only reads (GET) are
    retried on every transient failure; a submission only when Novita certainly created nothing.
    """

    def __init__(self, retries: RetryPolicy, call: Call) -> None:
        self._retries = retries
        self._idempotent = call.method == "GET"
        self._deadline = call.deadline
        self._task_id = call.task_id
        self._failures = 0
        self._last_failure: NovitaError | None = None
        self._gave_up = False
        self.wait = 0.0
        """Seconds to sleep before the next attempt, set by the failure the last ``with`` swallowed."""

    def __enter__(self) -> None:
        if self._gave_up and self._last_failure is not None:
            ids = [self._task_id] if self._task_id else []
            raise NovitaTimeoutError(
                ids, f"Deadline reached while retrying after: {self._last_failure}"
            ) from self._last_failure

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if not isinstance(exc, NovitaError) or isinstance(exc, NovitaTimeoutError):
            return False
        self._failures += 1
        wait = self._retries.wait_before_retry(exc, self._failures, idempotent=self._idempotent)
        if wait is None:
            return False
        self._last_failure = exc
        if self._deadline is not None and time.time() + wait >= self._deadline:
            self.wait, self._gave_up = max(0.0, self._deadline - time.time()), True
        else:
            self.wait = wait
            _log.warning(
                "Novita request failed (%s); retrying in %.1fs (attempt %d)", exc, wait, self._failures + 1
            )
        return True


class NovitaSession:
    """
    One async conversation with Novita: the connection's settings, a lease on the client shared
    by the event loop (with its request slots and admission) and the retry policy, fixed from
    ``async with`` to its end. Get one from :meth:`NovitaHook.session`.

    A class with ``__aenter__`` rather than an ``@asynccontextmanager``, and keeping nothing of the
    hook once entered, because a trigger holds its session for its whole wait: every object alive
    that long per trigger brings the next full collection of the triggerer's heap nearer, and a full
    collection stalls every trigger of the process (see docs/performance.md).
    """

    _settings: ConnectionSettings
    _retries: RetryPolicy

    def __init__(self, hook: NovitaHook) -> None:
        self._hook: NovitaHook | None = hook
        self._shared: SharedClient | None = None

    async def __aenter__(self) -> NovitaSession:
        hook, self._hook = self._hook, None
        if hook is None:
            raise RuntimeError("A NovitaSession is entered once; get another from NovitaHook.session()")
        self._settings = await hook.asettings()
        self._retries = hook.retries
        self._shared = await shared_async_clients.acquire(self._settings, hook._transport)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        shared, self._shared = self._shared, None
        if shared is not None:
            await shared_async_clients.release(shared)

    async def send(self, call: Call) -> Any:
        """The async twin of the hook's sync request loop: the same :class:`Attempts`, asleep its own way."""
        if self._shared is None:
            raise RuntimeError("A NovitaSession sends requests only inside its async with block")
        client, slots, admission = self._shared.client, self._shared.slots, self._shared.admission
        attempt = Attempts(self._retries, call)
        while True:
            with attempt:
                if (wait := admission.delay()) > 0:
                    await asyncio.sleep(wait)
                request = call.build(self._settings)
                try:
                    async with slots:
                        response = await client.send(request)
                except httpx.HTTPError as err:
                    raise _connection_error(err, self._settings) from err
                return _json_or_raise(response, call.task_id, self._settings)
            await asyncio.sleep(attempt.wait)

    async def submit_upscale(self, request: UpscaleRequest) -> str:
        """Create an upscaling task and return its Novita task id. Each call is billed."""
        return _task_id(await self.send(Call("POST", SUBMIT_PATH, json=request.to_json())))

    async def get_task_result(self, task_id: str, *, deadline: float | None = None) -> TaskResult:
        body = await self.send(Call("GET", _task_result_path(task_id), task_id, deadline))
        return TaskResult.from_api(body, task_id)

    async def get_task_results(
        self, task_ids: Sequence[str], *, deadline: float | None = None
    ) -> list[TaskResult | NovitaError]:
        """Like :meth:`NovitaHook.get_task_results`, with at most ``MAX_CONCURRENT_POLLS`` in flight."""
        if len(task_ids) == 1:
            # Most rounds poll one task (each task keeps its own time): no gather task, no semaphore.
            return [await self._result_or_error(task_ids[0], deadline)]
        slots = asyncio.Semaphore(MAX_CONCURRENT_POLLS)

        async def poll(task_id: str) -> TaskResult | NovitaError:
            async with slots:
                return await self._result_or_error(task_id, deadline)

        return list(await asyncio.gather(*(poll(task_id) for task_id in task_ids)))

    async def _result_or_error(self, task_id: str, deadline: float | None) -> TaskResult | NovitaError:
        try:
            return await self.get_task_result(task_id, deadline=deadline)
        except NovitaError as err:
            return err

    async def wait_for_tasks(
        self, task_ids: Sequence[str], policy: PollingPolicy, end_time: float
    ) -> BatchOutcome:
        """Poll until every task is final or ``end_time`` (epoch seconds) passes."""
        poller = BatchPoller(task_ids, policy, end_time)
        while (outcome := poller.outcome(time.time())) is None:
            await asyncio.sleep(poller.next_delay(time.time()))
            if polled := poller.due(time.time()):
                poller.record(polled, await self.get_task_results(polled, deadline=end_time), time.time())
        return outcome


def _secrets(conn: Connection, settings: ConnectionSettings) -> set[str]:
    """
    What to mask as soon as the connection is read: the key as stored and as sent (Airflow masks the
    password as stored; the key is sent stripped, which that mask does not match), and the proxy's
    credentials.
    """
    return {secret for secret in (conn.password, *settings.secrets) if secret}


async def _amask_secret(secret: str) -> None:
    # ``amask_secret`` arrived in Airflow 3.3. Before it, the sync variant is safe here: off a task
    # process its supervisor notification fails at once, and the local masker is all that is needed.
    amask = getattr(sdk_log, "amask_secret", None)
    if amask is None:
        sdk_log.mask_secret(secret)
    else:
        await amask(secret)


def _task_result_path(task_id: str) -> str:
    return f"{TASK_RESULT_PATH}?task_id={quote(task_id, safe='')}"


def _connection_error(err: httpx.HTTPError, settings: ConnectionSettings) -> NovitaError:
    if isinstance(err, httpx.DecodingError):
        return NovitaInvalidResponseError(f"Novita's answer could not be decoded: {type(err).__name__}")
    sent = not isinstance(err, _NOT_SENT_ERRORS)
    # httpx and h11 may quote a header in their messages; the key must not travel on with it, nor
    # the proxy's credentials.
    detail = str(err)
    for secret in settings.secrets:
        detail = redact(detail, secret)
    proxy = settings.proxy_for(settings.base_url)
    if proxy is not None and isinstance(err, httpx.ProxyError):
        # The proxy refused the tunnel to Novita; httpcore words it "<status> <reason>".
        status = detail.split(" ", 1)[0]
        return NovitaProxyError(
            f"refused to open a tunnel to {redact_url(settings.base_url)}: {detail}",
            proxy=proxy[0],
            origin=proxy[1],
            http_status=int(status) if status.isdigit() else None,
        )
    if proxy is not None and not sent:
        # Not a byte left for Novita: with a proxy, the only host this client connects to is the proxy.
        return NovitaProxyError(
            f"could not be reached: {type(err).__name__}: {detail}",
            proxy=proxy[0],
            origin=proxy[1],
            http_status=None,
        )
    return NovitaConnectionError(
        f"Could not reach Novita at {redact_url(settings.base_url)}: {type(err).__name__}: {detail}"
        + (" (the request may have reached Novita)" if sent else ""),
        request_sent=sent,
    )


def _json_or_raise(response: httpx.Response, task_id: str | None, settings: ConnectionSettings) -> Any:
    if response.status_code == 407 and (proxy := settings.proxy_for(settings.base_url)) is not None:
        # Only a proxy answers 407: the request it forwards for plain http:// never reached Novita.
        raise NovitaProxyError(
            "answered HTTP 407 Proxy Authentication Required",
            proxy=proxy[0],
            origin=proxy[1],
            http_status=407,
        )
    if response.is_error:
        raise error_from_response(response, task_id, settings.conn_id)
    try:
        return response.json()
    except ValueError as err:
        raise NovitaInvalidResponseError(
            f"Novita answered HTTP {response.status_code} with a body that is not JSON"
            + (f" (task id {task_id})" if task_id else "")
        ) from err


def _task_id(body: Any) -> str:
    task_id = body.get("task_id") if isinstance(body, dict) else None
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise NovitaInvalidResponseError(
            "Novita accepted the upscale request but returned no usable task id; it may have created "
            "and billed a task"
        )
    return task_id
