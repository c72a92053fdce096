"""
Building httpx clients for a Novita connection, and sharing them on the triggerer.

Measured on peers (see the README's performance section): an ``httpx.AsyncClient`` costs about
850 KB and tens of milliseconds, most of it its own SSL context, and a client per trigger opens a
TCP connection per poll. So every client here shares one SSL context per process, keeps
connections alive longer than the longest poll interval, and on the triggerer all triggers of one
event loop that use the same connection share one ``AsyncClient`` (:data:`shared_async_clients`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from airflow_provider_novita import __version__
from airflow_provider_novita.polling import DEFAULT_MAX_POLL_INTERVAL

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Mapping

    from airflow.sdk import Connection

DEFAULT_BASE_URL = "https://api.novita.ai"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5
CONNECT_TIMEOUT = 10.0
# Longer than the default longest wait between polls, so a waiting batch reuses its connection.
KEEPALIVE_EXPIRY = DEFAULT_MAX_POLL_INTERVAL + 30.0
# Requests one shared client has in flight at once, and so its connections. More requests wait on a
# semaphore, which is cheap, instead of in httpcore's pool, where handing a connection over costs time
# in proportion to the queue (measured: a 1000-trigger burst spent 98% of its CPU there).
MAX_IN_FLIGHT = 32


@dataclass(frozen=True)
class ConnectionSettings:
    """
    What a Novita connection says: where the API is, the key, and request tuning from ``extra``.

    The key is excluded from ``repr`` so that no log line or traceback of this object shows it.
    """

    base_url: str
    api_key: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES

    @classmethod
    def from_connection(cls, conn: Connection) -> ConnectionSettings:
        # ``conn.extra`` is parsed here rather than through ``extra_dejson``, whose secret masking
        # talks to the supervisor synchronously and must not run on the triggerer's event loop.
        extra = _parse_extra(conn.conn_id, conn.extra)
        return cls(
            base_url=_base_url(conn),
            api_key=_api_key(conn),
            timeout=_number(extra, "timeout", DEFAULT_TIMEOUT, conn.conn_id),
            max_retries=int(_number(extra, "max_retries", DEFAULT_MAX_RETRIES, conn.conn_id)),
        )

    def request_timeout(self, deadline: float | None) -> httpx.Timeout | None:
        """
        A request's timeouts cut to what is left before ``deadline`` (epoch seconds), so that no
        single network wait outlasts it; None keeps the client's own timeouts.
        """
        if deadline is None:
            return None
        left = max(0.0, min(self.timeout, deadline - time.time()))
        return httpx.Timeout(left, connect=min(left, CONNECT_TIMEOUT))

    def client_options(self, verify: ssl.SSLContext) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "headers": {
                "Authorization": f"Bearer {self.api_key}",
                "User-Agent": f"airflow-provider-novita/{__version__}",
            },
            "timeout": httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
            # Keep-alive for every connection: httpcore 1.0 closes an idle connection whenever the pool
            # holds more than max_keepalive_connections in all, which under load means one per request.
            "limits": httpx.Limits(
                max_connections=MAX_IN_FLIGHT,
                max_keepalive_connections=MAX_IN_FLIGHT,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
            "verify": verify,
        }


def _api_key(conn: Connection) -> str:
    """
    The key, stripped: keys read from files and secrets backends often end in a newline.

    A key that still holds whitespace, control or non-ASCII characters cannot be sent in a header;
    httpx would fail with a message quoting the header, key included, so it is refused here, in
    words that do not repeat it.
    """
    key = (conn.password or "").strip()
    if not key:
        raise ValueError(
            f"Connection {conn.conn_id!r} has no API key: set its password to your Novita API key"
        )
    if not key.isascii() or not key.isprintable() or any(char.isspace() for char in key):
        raise ValueError(
            f"Connection {conn.conn_id!r}: the API key contains spaces, control or non-ASCII characters, "
            "which an HTTP header cannot carry; check for a stray character copied along with the key"
        )
    return key


def _parse_extra(conn_id: str, extra: str | None) -> Mapping[str, Any]:
    if not extra:
        return {}
    try:
        parsed = json.loads(extra)
    except ValueError as err:
        raise ValueError(f"Connection {conn_id!r} has an extra that is not valid JSON") from err
    if not isinstance(parsed, dict):
        raise ValueError(f"Connection {conn_id!r} has an extra that is not a JSON object")
    return parsed


def _number(extra: Mapping[str, Any], key: str, default: float, conn_id: str) -> float:
    value = extra.get(key)
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if number < 0:
        raise ValueError(
            f"Connection {conn_id!r}: extra {key!r} must be a non-negative number; got {value!r}"
        )
    return number


def _base_url(conn: Connection) -> str:
    """``host`` may be a full URL (``http://127.0.0.1:8765``) or a bare host name; empty means Novita."""
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        host = f"{conn.schema or 'https'}://{host}"
    if conn.port and httpx.URL(host).port is None:
        host = f"{host}:{conn.port}"
    return host


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One SSL context per process: building one takes milliseconds and hundreds of KB."""
    return httpx.create_ssl_context()


@dataclass
class SharedClient:
    """An ``AsyncClient`` shared by the triggers of one event loop and connection, and its request slots."""

    client: httpx.AsyncClient
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_IN_FLIGHT))
    users: int = 0


class SharedAsyncClients:
    """
    Hands out one :class:`SharedClient` per event loop and connection settings, reference-counted.

    Triggers of the same connection on one triggerer then share a connection pool and its request
    slots, and the client is closed when the last of them finishes. Clients are never shared across
    event loops, which httpx does not support.
    """

    def __init__(self) -> None:
        self._clients: dict[tuple[int, ConnectionSettings, int], SharedClient] = {}

    @asynccontextmanager
    async def lease(
        self, settings: ConnectionSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> AsyncIterator[SharedClient]:
        key = (id(asyncio.get_running_loop()), settings, id(transport))
        if key not in self._clients:
            # Off the loop: the first SSL context of the process blocks for tens of milliseconds.
            verify = await asyncio.to_thread(shared_ssl_context)
            if key not in self._clients:
                client = httpx.AsyncClient(transport=transport, **settings.client_options(verify))
                self._clients[key] = SharedClient(client)
        shared = self._clients[key]
        shared.users += 1
        try:
            yield shared
        finally:
            shared.users -= 1
            if shared.users == 0:
                del self._clients[key]
                await shared.client.aclose()

    def __len__(self) -> int:
        return len(self._clients)


shared_async_clients = SharedAsyncClients()
