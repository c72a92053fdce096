"""NovitaHook: the Novita connection and every HTTP call the provider makes to Novita."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx
from airflow.sdk import BaseHook
from airflow.sdk import log as sdk_log

from airflow_provider_novita.exceptions import NovitaConnectionError, NovitaError, error_from_response
from airflow_provider_novita.hooks.clients import (
    ConnectionSettings,
    SharedClient,
    shared_async_clients,
    shared_ssl_context,
)
from airflow_provider_novita.models import TaskResult, UpscaleRequest
from airflow_provider_novita.polling import BatchPoller, PollingPolicy
from airflow_provider_novita.retries import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from airflow_provider_novita.events import BatchOutcome

SUBMIT_PATH = "/v3/async/image-upscaler"
TASK_RESULT_PATH = "/v3/async/task-result"
USER_PATH = "/v3/user"
# Polls of one batch in flight at once: enough to keep a batch moving, few enough not to be a burst.
MAX_CONCURRENT_POLLS = 8

# Raised before a single byte left: resending cannot create a second Novita task.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class NovitaHook(BaseHook):
    """
    Talks to Novita AI's async image-upscaler API over httpx, synchronously and asynchronously.

    The connection (type ``novita``) holds the API key as its password, optionally the API base URL
    as its host (default ``https://api.novita.ai``), and in its extra ``timeout`` (seconds per
    request, default 60) and ``max_retries`` (default 5). Requests that fail transiently are retried
    as :mod:`airflow_provider_novita.retries` describes; every error raised is a
    :class:`~airflow_provider_novita.exceptions.NovitaError`.

    The async methods look the connection up without blocking the event loop and share one client
    per event loop and connection (see :mod:`airflow_provider_novita.hooks.clients`).

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
        self._settings: ConnectionSettings | None = None
        self._shared: SharedClient | None = None

    # -- connection ---------------------------------------------------------------------------

    @property
    def settings(self) -> ConnectionSettings:
        if self._settings is None:
            settings = ConnectionSettings.from_connection(self.get_connection(self.novita_conn_id))
            sdk_log.mask_secret(settings.api_key)
            self._settings = settings
        return self._settings

    async def asettings(self) -> ConnectionSettings:
        if self._settings is None:
            settings = ConnectionSettings.from_connection(await self.aget_connection(self.novita_conn_id))
            await _amask_secret(settings.api_key)
            self._settings = settings
        return self._settings

    def _retries(self) -> RetryPolicy:
        assert self._settings is not None
        return self._retry_policy or RetryPolicy(max_retries=self._settings.max_retries)

    # -- sync ---------------------------------------------------------------------------------

    @cached_property
    def client(self) -> httpx.Client:
        return httpx.Client(transport=self._transport, **self.settings.client_options(shared_ssl_context()))

    def get_conn(self) -> httpx.Client:
        return self.client

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]

    def _request(self, method: str, path: str, *, task_id: str | None = None, **kwargs: Any) -> Any:
        client = self.client
        for attempt in self._retries().retrying(idempotent=method == "GET"):
            with attempt:
                try:
                    response = client.request(method, path, **kwargs)
                except httpx.TransportError as err:
                    raise _connection_error(err, client.base_url) from err
                return _json_or_raise(response, task_id)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def submit_upscale(self, request: UpscaleRequest) -> str:
        """Create an upscaling task and return its Novita task id. Each call is billed."""
        return _task_id(self._request("POST", SUBMIT_PATH, json=request.to_json()))

    def get_task_result(self, task_id: str) -> TaskResult:
        body = self._request("GET", TASK_RESULT_PATH, task_id=task_id, params={"task_id": task_id})
        return TaskResult.from_api(body, task_id)

    def get_task_results(self, task_ids: Sequence[str]) -> list[TaskResult | NovitaError]:
        """One poll of each task; a task whose poll failed gets the error in its place."""
        answers: list[TaskResult | NovitaError] = []
        for task_id in task_ids:
            try:
                answers.append(self.get_task_result(task_id))
            except NovitaError as err:
                answers.append(err)
        return answers

    def wait_for_tasks(self, task_ids: Sequence[str], policy: PollingPolicy, end_time: float) -> BatchOutcome:
        """Poll in this thread until every task is final or ``end_time`` (epoch seconds) passes."""
        poller = BatchPoller(task_ids, policy, end_time)
        while True:
            time.sleep(poller.next_delay(time.time()))
            poller.record(self.get_task_results(poller.pending()))
            if (outcome := poller.outcome(time.time())) is not None:
                return outcome

    def test_connection(self) -> tuple[bool, str]:
        """Check the key with ``GET /v3/user``, which is cheap and bills nothing."""
        try:
            user = self._request("GET", USER_PATH)
        except (NovitaError, ValueError) as err:
            return False, str(err)
        finally:
            self.close()
        balance = user.get("credit_balance") if isinstance(user, dict) else None
        detail = f"; credit balance {balance / 10000:.2f} USD" if isinstance(balance, (int, float)) else ""
        return True, f"Connected to Novita at {self.settings.base_url}{detail}"

    # -- async --------------------------------------------------------------------------------

    @asynccontextmanager
    async def _leased_client(self) -> AsyncIterator[SharedClient]:
        settings = await self.asettings()
        async with shared_async_clients.lease(settings, self._transport) as shared:
            self._shared = shared
            try:
                yield shared
            finally:
                self._shared = None

    async def _arequest(self, method: str, path: str, *, task_id: str | None = None, **kwargs: Any) -> Any:
        if self._shared is None:
            async with self._leased_client():
                return await self._arequest(method, path, task_id=task_id, **kwargs)
        shared = self._shared
        async for attempt in self._retries().async_retrying(idempotent=method == "GET"):
            with attempt:
                try:
                    async with shared.slots:
                        response = await shared.client.request(method, path, **kwargs)
                except httpx.TransportError as err:
                    raise _connection_error(err, shared.client.base_url) from err
                return _json_or_raise(response, task_id)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def asubmit_upscale(self, request: UpscaleRequest) -> str:
        return _task_id(await self._arequest("POST", SUBMIT_PATH, json=request.to_json()))

    async def aget_task_result(self, task_id: str) -> TaskResult:
        body = await self._arequest("GET", TASK_RESULT_PATH, task_id=task_id, params={"task_id": task_id})
        return TaskResult.from_api(body, task_id)

    async def aget_task_results(self, task_ids: Sequence[str]) -> list[TaskResult | NovitaError]:
        """Like :meth:`get_task_results`, with at most ``MAX_CONCURRENT_POLLS`` polls in flight."""
        slots = asyncio.Semaphore(MAX_CONCURRENT_POLLS)

        async def poll(task_id: str) -> TaskResult | NovitaError:
            async with slots:
                try:
                    return await self.aget_task_result(task_id)
                except NovitaError as err:
                    return err

        return list(await asyncio.gather(*(poll(task_id) for task_id in task_ids)))

    async def await_tasks(
        self, task_ids: Sequence[str], policy: PollingPolicy, end_time: float
    ) -> BatchOutcome:
        """The async twin of :meth:`wait_for_tasks`, holding one shared client for the whole wait."""
        poller = BatchPoller(task_ids, policy, end_time)
        async with self._leased_client():
            while True:
                await asyncio.sleep(poller.next_delay(time.time()))
                poller.record(await self.aget_task_results(poller.pending()))
                if (outcome := poller.outcome(time.time())) is not None:
                    return outcome


async def _amask_secret(secret: str) -> None:
    # ``amask_secret`` arrived in Airflow 3.3. Before it, the sync variant is safe here: off a task
    # process its supervisor notification fails at once, and the local masker is all that is needed.
    amask = getattr(sdk_log, "amask_secret", None)
    if amask is None:
        sdk_log.mask_secret(secret)
    else:
        await amask(secret)


def _connection_error(err: httpx.TransportError, base_url: httpx.URL) -> NovitaConnectionError:
    sent = not isinstance(err, _NOT_SENT_ERRORS)
    return NovitaConnectionError(
        f"Could not reach Novita at {base_url}: {type(err).__name__}: {err}"
        + (" (the request may have reached Novita)" if sent else ""),
        request_sent=sent,
    )


def _json_or_raise(response: httpx.Response, task_id: str | None) -> Any:
    if response.is_error:
        raise error_from_response(response, task_id)
    try:
        return response.json()
    except ValueError as err:
        raise NovitaError(
            f"Novita answered HTTP {response.status_code} with a body that is not JSON"
            + (f" (task id {task_id})" if task_id else "")
        ) from err


def _task_id(body: Any) -> str:
    task_id = body.get("task_id") if isinstance(body, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise NovitaError(f"Novita accepted the upscale request but returned no task id: {body!r}")
    return task_id
