"""
What a Novita connection says, the requests built from it, and the httpx clients that send them.

An httpx client is expensive to make and to keep, most of it its own SSL context, and a client per
trigger opens a TCP connection per poll. So every client here shares one SSL context per process,
keeps connections alive longer than the longest poll interval, and on the triggerer all triggers of
one event loop that use the same connection share one client (:data:`shared_async_clients`) and,
for :data:`SETTINGS_TTL` seconds, one lookup of the connection (:data:`connection_settings`).

Requests are built here once per connection (headers, timeouts, the URL as the base URL plus the
path) and sent with ``client.send``: the client adds what only it knows, the proxy for the URL (the
connection's ``proxy`` extra, else ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``, as
any httpx client reads them), and closes a response whose request was cancelled.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import urllib.request
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx

from airflow_provider_novita import __version__
from airflow_provider_novita.models import redact_url
from airflow_provider_novita.polling import DEFAULT_MAX_POLL_INTERVAL
from airflow_provider_novita.retries import RetryPolicy
from airflow_provider_novita.spend import image_cap

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Coroutine, Mapping

    from airflow.sdk import Connection

DEFAULT_BASE_URL = "https://api.novita.ai"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5
CONNECT_TIMEOUT = 10.0
# Longer than the default longest wait between polls, so a waiting batch reuses its connection.
KEEPALIVE_EXPIRY = DEFAULT_MAX_POLL_INTERVAL + 30.0
# Requests one shared client has in flight at once, and so its connections. More requests wait on
# a semaphore, which is cheap, instead of in httpcore's pool, where handing a connection over costs
# time in proportion to the queue.
MAX_IN_FLIGHT = 32
# Requests a shared client starts per second once a burst has used its allowance: at most about
# half a core of requests, so that a burst (tens of thousands of tasks with the same eta) cannot
# saturate the loop, and high enough not to delay the first polls of a large burst (see the
# CHANGELOG for the rates tried). A lone job never waits: its allowance is full.
ADMISSION_RATE = 1000.0
ADMISSION_BURST = 100.0
# How long the settings of a connection, once looked up on an event loop, serve its new sessions: the
# longest a connection edited in Airflow can go unnoticed by new triggers.
SETTINGS_TTL = 10.0


@dataclass(frozen=True)
class ConnectionSettings:
    """
    What a Novita connection says: where the API is, the key, the proxy, request tuning and the
    spend guard's cap from ``extra``.

    The key and the proxy URL (which may hold credentials) are excluded from ``repr`` so that no log
    line or traceback of this object shows them.
    """

    base_url: str
    api_key: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    proxy: str | None = field(default=None, repr=False)
    max_images_per_task: int | None = None
    conn_id: str | None = None
    """The Airflow connection these settings come from, named in errors that ask to fix it."""

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
            proxy=proxy_url(extra.get("proxy"), conn.conn_id),
            max_images_per_task=image_cap(
                extra.get("max_images_per_task"), f"Connection {conn.conn_id!r}: extra 'max_images_per_task'"
            ),
            conn_id=conn.conn_id,
        )

    def proxy_for(self, url: str) -> tuple[str, str] | None:
        """
        The proxy a request to ``url`` goes through, shown without its credentials, and where it was
        set, or None when it goes direct: the connection's extra ``proxy`` for everything, else the
        environment variables as httpx reads them (``NO_PROXY`` first, then the scheme's variable,
        then ``ALL_PROXY``).
        """
        if self.proxy:
            return redact_url(self.proxy), f"extra 'proxy' of Airflow connection {self.conn_id!r}"
        target = httpx.URL(url)
        environment = urllib.request.getproxies_environment()
        if urllib.request.proxy_bypass(target.host):
            return None
        for name in (target.scheme, "all"):
            if environment.get(name):
                return redact_url(environment[name]), f"the environment variable {name.upper()}_PROXY"
        return None

    @property
    def secrets(self) -> tuple[str, ...]:
        """What no message may show: the key and the proxy's credentials."""
        return (self.api_key, *proxy_secrets(self.proxy))

    @cached_property
    def headers(self) -> httpx.Headers:
        return httpx.Headers(
            {
                "Authorization": f"Bearer {self.api_key}",
                "User-Agent": f"airflow-provider-novita/{__version__}",
                "Accept": "application/json",
            }
        )

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        """The retries ``max_retries`` asks for; one object, shared by every session of these settings."""
        return RetryPolicy(max_retries=self.max_retries)

    @cached_property
    def _timeouts(self) -> dict[str, float]:
        return _timeouts(self.timeout)

    def timeouts(self, deadline: float | None) -> dict[str, float]:
        """
        A request's timeouts (httpx's ``timeout`` extension), cut to what is left before ``deadline``
        (epoch seconds) when that is less than the connection's own, so that no single network wait
        outlasts it.
        """
        if deadline is not None and (left := deadline - time.time()) < self.timeout:
            return _timeouts(max(0.0, left))
        return self._timeouts

    def request(
        self, method: str, path: str, *, deadline: float | None = None, json: Any = None
    ) -> httpx.Request:
        """
        A request to ``path`` (with its query string, if any) on this connection, with its headers and
        timeouts: the URL is parsed once, here, and nothing is merged per request.
        """
        return httpx.Request(
            method,
            self.base_url + path,
            headers=self.headers,
            json=json,
            extensions={"timeout": self.timeouts(deadline)},
        )

    def client_options(
        self, verify: ssl.SSLContext, transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None
    ) -> dict[str, Any]:
        """
        What an ``httpx.Client`` or ``AsyncClient`` for this connection is made with.

        :param transport: answers every request itself (tests): then no proxy stands in between.
        """
        if transport is not None:
            return {"transport": transport}
        return {
            # Keep-alive for every connection: httpcore 1.0 closes an idle connection whenever the pool
            # holds more than max_keepalive_connections in all, which under load means one per request.
            "limits": httpx.Limits(
                max_connections=MAX_IN_FLIGHT,
                max_keepalive_connections=MAX_IN_FLIGHT,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
            "verify": verify,
            # None leaves the choice to the environment (trust_env), as in any httpx client.
            "proxy": self.proxy,
        }


def _timeouts(seconds: float) -> dict[str, float]:
    return {"connect": min(seconds, CONNECT_TIMEOUT), "read": seconds, "write": seconds, "pool": seconds}


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


def proxy_url(value: object, conn_id: str) -> str | None:
    """
    The ``proxy`` extra: an http(s) URL, credentials allowed (``http://user:pass@proxy.corp:3128``).

    A proxy given here is used for everything the connection does, ahead of the proxy environment
    variables, ``NO_PROXY`` included. A message about a bad value never repeats its credentials.
    """
    if value in (None, ""):
        return None
    problem = ""
    if not isinstance(value, str):
        problem = f"a {type(value).__name__}"
    else:
        try:
            url = httpx.URL(value.strip())
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            # Whatever precedes an "@" may be credentials, even where it does not parse as a URL.
            problem = repr(value.strip().rpartition("@")[2].partition("?")[0])
    if problem:
        raise ValueError(
            f"Connection {conn_id!r}: extra 'proxy' must be an http:// or https:// URL of a proxy, such "
            f"as http://user:password@proxy.corp:3128; got {problem}"
        )
    return str(value).strip()


def proxy_secrets(proxy: str | None) -> tuple[str, ...]:
    """The credentials in a proxy URL, as written and decoded, for masking and redaction."""
    if not proxy:
        return ()
    userinfo = httpx.URL(proxy).userinfo.decode()
    password = userinfo.partition(":")[2]
    return tuple(
        secret for secret in {userinfo, password, unquote(userinfo), unquote(password)} if len(secret) > 1
    )


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


# The first build on each event loop while it runs, so that a burst of sessions that all start before
# the process has a context (a triggerer restarted with a thousand deferred triggers) waits for one
# build in one thread instead of queueing a thread hop, or a build, each.
_ssl_builds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[ssl.SSLContext]] = (
    weakref.WeakKeyDictionary()
)


async def ashared_ssl_context() -> ssl.SSLContext:
    """
    :func:`shared_ssl_context` for the event loop: the first build, which blocks for tens of
    milliseconds, runs in a thread and is shared by every caller that comes while it runs; later
    calls return at once, without a thread hop each. A failed build is not kept: the next call tries
    again.
    """
    if shared_ssl_context.cache_info().currsize:
        return shared_ssl_context()
    loop = asyncio.get_running_loop()
    build = _ssl_builds.get(loop)
    if build is None:
        build = _ssl_builds[loop] = loop.run_in_executor(None, shared_ssl_context)
        build.add_done_callback(lambda _: _ssl_builds.pop(loop, None))
    # Shielded: a caller cancelled while it waits must not cancel the build the others wait for.
    return await asyncio.shield(build)


# A connection's entry in a SettingsCache: the lookup's start plus the TTL, and the lookup's task until
# it is done, then its settings.
_Kept = tuple[float, "asyncio.Task[ConnectionSettings] | ConnectionSettings"]


class SettingsCache:
    """
    The :class:`ConnectionSettings` of each connection id, looked up at most once per event loop every
    ``ttl`` seconds (:data:`SETTINGS_TTL`).

    Profiled on a triggerer's burst (1000 triggers deferred at once), a lookup per trigger meant 1000
    Connection objects and 1000 thread hops, whose threads kept the GIL from the event loop for tens
    of milliseconds. Here lookups that overlap share one, and its settings then serve every session
    opened within ``ttl`` seconds of its start without suspending it, so that the sessions of a burst
    do not all wake in one iteration of the loop.

    The bound on staleness: a session opened more than ``ttl`` seconds after a connection was edited in
    Airflow uses settings looked up after the edit (Airflow's own secrets cache, if enabled, adds its
    TTL). A session keeps the settings it started with. A failed lookup is not kept: the sessions
    waiting for it get its error, and the next session looks again.
    """

    def __init__(self, ttl: float = SETTINGS_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        # Per event loop, since a lookup in progress is a task of its loop; weak, so that a loop's entries
        # go with it.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Kept]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(
        self, conn_id: str, lookup: Callable[[], Coroutine[Any, Any, ConnectionSettings]]
    ) -> ConnectionSettings:
        """The settings of ``conn_id``: the kept ones while fresh, else those ``lookup`` returns."""
        loop = asyncio.get_running_loop()
        entries = self._loops.setdefault(loop, {})
        now = self.clock()
        expires, kept = entries.get(conn_id, (now, None))
        if kept is None or now >= expires:
            kept = loop.create_task(lookup())
            entries[conn_id] = (now + self.ttl, kept)
            kept.add_done_callback(functools.partial(_settle, entries, conn_id))
        if isinstance(kept, ConnectionSettings):
            return kept
        # Shielded: a session cancelled while it waits must not cancel the lookup others wait for.
        return await asyncio.shield(kept)


def _settle(entries: dict[str, _Kept], conn_id: str, lookup: asyncio.Task[ConnectionSettings]) -> None:
    """Puts a finished lookup's settings in place of its task (which holds the loop); drops a failed one."""
    expires, kept = entries.get(conn_id, (0.0, None))
    if kept is not lookup:  # a newer lookup took its place
        return
    # Retrieving the exception also keeps asyncio from logging it when no session waited for it.
    if lookup.cancelled() or lookup.exception() is not None:
        del entries[conn_id]
    else:
        entries[conn_id] = (expires, lookup.result())


class Admission:
    """
    A token bucket: requests start at once while the allowance lasts, then ``rate`` per second.

    Each request reserves its start time when it asks, so waiting requests start in the order they
    asked, spaced evenly, with one timer each and no lock.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def delay(self) -> float:
        """Seconds until the request asking now may start (0 while the allowance lasts)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate) - 1
        self._stamp = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


@dataclass
class SharedClient:
    """A client shared by the triggers of one event loop and connection, its slots and admission."""

    client: httpx.AsyncClient
    key: tuple[int, ConnectionSettings, int]
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_IN_FLIGHT))
    admission: Admission = field(default_factory=lambda: Admission(ADMISSION_RATE, ADMISSION_BURST))
    users: int = 0


class SharedAsyncClients:
    """
    Hands out one :class:`SharedClient` per event loop and connection settings, reference-counted.

    Triggers of the same connection on one triggerer then share a connection pool and its request
    slots, and the client is closed when the last of them releases it. Clients are never shared
    across event loops, which httpx does not support.

    A pair of calls rather than a context manager: a session holds its lease for the whole wait of a
    trigger, and an ``@asynccontextmanager`` would keep a generator, its context manager and the event
    loop's weak reference to the generator alive per trigger as well (see :class:`NovitaSession
    <airflow_provider_novita.hooks.novita.NovitaSession>`).
    """

    def __init__(self) -> None:
        self._shared: dict[tuple[int, ConnectionSettings, int], SharedClient] = {}

    async def acquire(
        self, settings: ConnectionSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> SharedClient:
        """
        The shared client for ``settings`` on the running loop; hand it back with :meth:`release`.

        :param transport: answers the requests instead of the network; meant for tests. Its client is
            shared like any other; closing it leaves a ``MockTransport`` usable.
        """
        key = (id(asyncio.get_running_loop()), settings, id(transport))
        if key not in self._shared:
            verify = await ashared_ssl_context()
            if key not in self._shared:
                client = httpx.AsyncClient(**settings.client_options(verify, transport))
                self._shared[key] = SharedClient(client, key=key)
        shared = self._shared[key]
        shared.users += 1
        return shared

    async def release(self, shared: SharedClient) -> None:
        """Ends one use of ``shared``; the last one closes the client."""
        shared.users -= 1
        if shared.users == 0:
            del self._shared[shared.key]
            await shared.client.aclose()

    def __len__(self) -> int:
        return len(self._shared)


shared_async_clients = SharedAsyncClients()
connection_settings = SettingsCache()
