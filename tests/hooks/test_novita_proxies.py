"""
NovitaHook behind a corporate proxy: every call, sync and async, goes through a real forward proxy.

The API's host name (``novita.proxied.test``) resolves only in the proxy, so a request that bypasses
the proxy fails to connect instead of passing unnoticed.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_novita.emulator import EmulatorServer
from airflow_provider_novita.exceptions import NovitaConnectionError, NovitaProxyError
from airflow_provider_novita.hooks import clients
from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.models import UpscaleRequest
from airflow_provider_novita.retries import is_permanent
from benchmarks.job_status_server import write_self_signed_certificate
from tests.forward_proxy import ForwardProxy, pipe_both

HOST = "novita.proxied.test"
PROXY_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_from_the_developer(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    with ForwardProxy(tmp_path, hosts={HOST: "127.0.0.1"}) as running:
        yield running


def connect(
    monkeypatch: pytest.MonkeyPatch, emulator: EmulatorServer, base_url: str, **extra: Any
) -> NovitaHook:
    """``novita_proxied``: the emulator's key at ``base_url``, with ``extra``; retries only once."""
    conn = {"conn_type": "novita", "host": base_url, "password": emulator.api_key}
    conn["extra"] = {"max_retries": 1, "timeout": 10, **extra}
    monkeypatch.setenv("AIRFLOW_CONN_NOVITA_PROXIED", json.dumps(conn))
    return NovitaHook("novita_proxied")


def round_trip(hook: NovitaHook, emulator: EmulatorServer) -> None:
    """Submit and poll, synchronously and then asynchronously, and check that Novita answered each."""
    request = UpscaleRequest(f"{emulator.base_url}/samples/landscape.png", "2k", "png")
    try:
        task_id = hook.submit_upscale(request)
        assert hook.get_task_result(task_id).task_id == task_id
    finally:
        hook.close()

    async def asynchronously() -> None:
        async with hook.session() as session:
            async_id = await session.submit_upscale(request)
            assert (await session.get_task_result(async_id)).task_id == async_id

    asyncio.run(asynchronously())


def through(proxy: ForwardProxy) -> list[tuple[str, str]]:
    return [(entry["method"], entry["target"]) for entry in proxy.requests()]


def api_calls(base_url: str) -> list[tuple[str, str]]:
    """What the proxy sees of :func:`round_trip`: two submissions and two polls, in absolute form."""
    submit = ("POST", f"{base_url}/v3/async/image-upscaler")
    return [
        submit,
        ("GET", f"{base_url}/v3/async/task-result"),
        submit,
        ("GET", f"{base_url}/v3/async/task-result"),
    ]


def without_query(calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(method, target.split("?")[0]) for method, target in calls]


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY", "http_proxy"])
def test_the_proxy_environment_variables_carry_every_call(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer, proxy: ForwardProxy, variable: str
) -> None:
    base_url = f"http://{HOST}:{novita_emulator.port}"
    monkeypatch.setenv(variable, proxy.url)
    round_trip(connect(monkeypatch, novita_emulator, base_url), novita_emulator)
    assert without_query(through(proxy)) == api_calls(base_url)


def test_without_the_proxy_the_api_host_does_not_resolve(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer
) -> None:
    hook = connect(monkeypatch, novita_emulator, f"http://{HOST}:{novita_emulator.port}")
    with pytest.raises(NovitaConnectionError, match="ConnectError"):
        hook.get_task_result("task-1")


def test_no_proxy_sends_a_host_directly(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer, proxy: ForwardProxy
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    round_trip(connect(monkeypatch, novita_emulator, novita_emulator.base_url), novita_emulator)
    assert through(proxy) == []


def test_the_proxy_extra_with_credentials_takes_precedence_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer, tmp_path: Path
) -> None:
    base_url = f"http://{HOST}:{novita_emulator.port}"
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", HOST)
    with ForwardProxy(tmp_path, hosts={HOST: "127.0.0.1"}, auth="corp-user:p@ss w0rd") as proxy:
        extra_proxy = f"http://corp-user:p%40ss%20w0rd@127.0.0.1:{proxy.port}"
        round_trip(connect(monkeypatch, novita_emulator, base_url, proxy=extra_proxy), novita_emulator)
        assert without_query(through(proxy)) == api_calls(base_url)
        assert all(entry["authorized"] for entry in proxy.requests())


def test_wrong_proxy_credentials_are_the_proxys_error_naming_it_without_them(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer, tmp_path: Path
) -> None:
    with ForwardProxy(tmp_path, hosts={HOST: "127.0.0.1"}, auth="corp-user:right") as proxy:
        hook = connect(
            monkeypatch,
            novita_emulator,
            f"http://{HOST}:{novita_emulator.port}",
            proxy=f"http://corp-user:wrong-secret@127.0.0.1:{proxy.port}",
        )
        with pytest.raises(NovitaProxyError) as info:
            hook.submit_upscale(
                UpscaleRequest(f"{novita_emulator.base_url}/samples/landscape.png", "2k", "png")
            )
        ok, message = hook.test_connection()
        sent = len(proxy.requests())
    assert str(info.value) == (
        f"Proxy error: the proxy http://127.0.0.1:{proxy.port} (from extra 'proxy' of Airflow connection "
        "'novita_proxied') answered HTTP 407 Proxy Authentication Required; Novita was not reached; fix the "
        "credentials in extra 'proxy' of Airflow connection 'novita_proxied'"
    )
    assert (info.value.http_status, info.value.request_sent) == (407, False)
    assert is_permanent(info.value)
    assert sent == 2, "neither the submission nor the connection test was sent again"
    assert not ok
    assert message == str(info.value)
    for text in (str(info.value), repr(info.value), message):
        assert "wrong-secret" not in text
    assert novita_emulator.stats()["requests"].get("image-upscaler", 0) == 0


def test_a_proxy_from_the_environment_that_refuses_the_tunnel_is_named_with_its_variable(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """HTTPS goes through CONNECT; a proxy refusing it never lets a byte reach Novita."""
    with ForwardProxy(tmp_path, hosts={HOST: "127.0.0.1"}, auth="corp-user:right") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://corp-user:wrong-secret@127.0.0.1:{proxy.port}")
        hook = connect(monkeypatch, novita_emulator, f"https://{HOST}:1")
        with pytest.raises(NovitaProxyError) as info:
            hook.get_task_result("task-1")
        tunnels = through(proxy)
    assert str(info.value).startswith(
        f"Proxy error: the proxy http://127.0.0.1:{proxy.port} (from the environment variable HTTPS_PROXY) "
        f"refused to open a tunnel to https://{HOST}:1: 407 "
    )
    assert str(info.value).endswith("fix the credentials in the environment variable HTTPS_PROXY")
    assert "wrong-secret" not in str(info.value)
    assert tunnels == [("CONNECT", f"{HOST}:1")], "a read refused for good is not retried"


def test_a_proxy_that_cannot_be_reached_is_named_and_retried(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://corp-user:s3cret@127.0.0.1:9")  # nothing listens there
    hook = connect(monkeypatch, novita_emulator, f"http://{HOST}:{novita_emulator.port}")
    with pytest.raises(NovitaProxyError) as info:
        hook.get_task_result("task-1")
    assert str(info.value).startswith(
        "Proxy error: the proxy http://127.0.0.1:9 (from the environment variable HTTP_PROXY) could not be "
        "reached: ConnectError: "
    )
    assert "s3cret" not in str(info.value)
    assert info.value.http_status is None
    assert not is_permanent(info.value), "a proxy that is down may be up again for the task's retry"


def test_a_host_the_environment_exempts_is_no_proxys_fault(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", HOST)
    hook = connect(monkeypatch, novita_emulator, f"http://{HOST}:{novita_emulator.port}")
    with pytest.raises(NovitaConnectionError, match=f"^Could not reach Novita at http://{HOST}") as info:
        hook.get_task_result("task-1")
    assert not isinstance(info.value, NovitaProxyError)


def test_the_proxy_credentials_are_masked_as_soon_as_the_connection_is_read(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer
) -> None:
    masked: list[object] = []
    monkeypatch.setattr("airflow_provider_novita.hooks.novita.sdk_log.mask_secret", masked.append)
    hook = connect(
        monkeypatch, novita_emulator, novita_emulator.base_url, proxy="http://u:s3cr%21t@proxy.test:3128"
    )
    assert hook.settings.proxy == "http://u:s3cr%21t@proxy.test:3128"
    assert {"s3cr%21t", "s3cr!t", novita_emulator.api_key} <= {m for m in masked if isinstance(m, str)}
    assert "s3cr" not in repr(hook.settings)


@pytest.mark.parametrize(
    "value",
    [
        "proxy.corp:3128",
        "corp:s3cret@proxy.corp:3128",
        "socks5://corp:s3cret@proxy.corp:1080",
        "ftp://proxy.corp",
        "http://",
        3128,
        ["http://proxy.corp"],
    ],
)
def test_a_proxy_extra_that_is_not_an_http_url_is_refused_without_its_credentials(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer, value: object
) -> None:
    hook = connect(monkeypatch, novita_emulator, novita_emulator.base_url, proxy=value)
    with pytest.raises(
        ValueError, match="extra 'proxy' must be an http:// or https:// URL of a proxy"
    ) as info:
        hook.settings  # noqa: B018
    assert "s3cret" not in str(info.value)


def test_https_goes_through_the_proxy_with_connect_so_tls_stays_end_to_end(
    monkeypatch: pytest.MonkeyPatch, novita_emulator: EmulatorServer, proxy: ForwardProxy, tmp_path: Path
) -> None:
    cert, key = write_self_signed_certificate(tmp_path, HOST)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    clients.shared_ssl_context.cache_clear()
    try:
        with tls_front(cert, key, novita_emulator.port) as port:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            round_trip(connect(monkeypatch, novita_emulator, f"https://{HOST}:{port}"), novita_emulator)
    finally:
        clients.shared_ssl_context.cache_clear()
    tunnels = through(proxy)
    assert tunnels, "the calls went through the proxy"
    assert set(tunnels) == {("CONNECT", f"{HOST}:{port}")}, "the proxy saw only tunnels, never a request"


class tls_front:
    """A TLS server on a free loopback port that passes the decrypted bytes on to ``backend_port``."""

    def __init__(self, cert: Path, key: Path, backend_port: int) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.backend_port = backend_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = await asyncio.open_connection("127.0.0.1", self.backend_port)
        await pipe_both(reader, writer, *backend)

    def __enter__(self) -> int:
        self.thread.start()
        start = asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=self.context)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        return int(self.server.sockets[0].getsockname()[1])

    def __exit__(self, *exc_info: object) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
            # Relays still piping (the client's keep-alive connection) end here, while their loop
            # runs: left pending, they would be closed by the collector after the loop is gone.
            relays = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for relay in relays:
                relay.cancel()
            await asyncio.gather(*relays, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
