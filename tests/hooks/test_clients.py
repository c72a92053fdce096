"""What a connection's requests are built from, the admission that spreads bursts, and the settings cache."""

from __future__ import annotations

import asyncio
import gc
import re
import time

import httpx
import pytest

from airflow_provider_novita.hooks import clients
from airflow_provider_novita.hooks.clients import Admission, ConnectionSettings, SettingsCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestAdmission:
    def test_a_lone_request_never_waits(self) -> None:
        clock = Clock()
        admission = Admission(rate=10, burst=5, clock=clock)
        for _ in range(20):
            assert admission.delay() == 0
            clock.now += 0.5  # slower than the rate: the allowance never runs out

    def test_a_burst_starts_its_allowance_at_once_then_the_rest_at_the_rate(self) -> None:
        admission = Admission(rate=10, burst=5, clock=Clock())
        delays = [admission.delay() for _ in range(10)]
        assert delays[:5] == [0] * 5
        assert delays[5:] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])

    def test_the_allowance_refills_while_idle_but_never_above_the_burst(self) -> None:
        clock = Clock()
        admission = Admission(rate=10, burst=5, clock=clock)
        for _ in range(10):
            admission.delay()
        clock.now += 60
        assert [admission.delay() for _ in range(6)] == pytest.approx([0, 0, 0, 0, 0, 0.1])

    def test_a_request_that_fits_a_partly_refilled_allowance_starts_at_once(self) -> None:
        clock = Clock()
        admission = Admission(rate=10, burst=5, clock=clock)
        for _ in range(5):
            admission.delay()
        clock.now += 0.15  # one and a half requests' worth
        assert admission.delay() == 0
        assert admission.delay() == pytest.approx(0.05)


class TestRequests:
    SETTINGS = ConnectionSettings("https://novita.test", "sk-1", timeout=60)

    def test_a_request_carries_the_connection_headers_and_timeouts(self) -> None:
        request = self.SETTINGS.request("GET", "/v3/async/task-result?task_id=a%2Fb")
        assert str(request.url) == "https://novita.test/v3/async/task-result?task_id=a%2Fb"
        assert request.headers["Authorization"] == "Bearer sk-1"
        assert request.extensions["timeout"] == {"connect": 10, "read": 60, "write": 60, "pool": 60}

    def test_a_client_keeps_its_connections_open_between_the_slowest_polls(self) -> None:
        """Up to 32 connections, all kept alive for 60 s: longer than the longest wait between polls."""
        options = self.SETTINGS.client_options(clients.shared_ssl_context(), None)
        assert options["limits"] == httpx.Limits(
            max_connections=32, max_keepalive_connections=32, keepalive_expiry=60.0
        )

    def test_timeouts_are_cut_only_when_the_deadline_is_closer_than_the_connections(self) -> None:
        far = self.SETTINGS.request("GET", "/x", deadline=time.time() + 3600)
        assert far.extensions["timeout"]["read"] == 60
        near = self.SETTINGS.request("GET", "/x", deadline=time.time() + 5)
        assert 0 < near.extensions["timeout"]["read"] <= 5
        assert near.extensions["timeout"]["connect"] <= 5


class TestProxy:
    @pytest.mark.parametrize("value", [None, ""])
    def test_an_empty_proxy_means_the_environments(self, value: object) -> None:
        assert clients.proxy_url(value, "novita_default") is None

    @pytest.mark.parametrize("value", ["http://proxy.corp:3128", " https://u:p@proxy.corp:3128 "])
    def test_an_http_or_https_proxy_url_is_taken(self, value: str) -> None:
        assert clients.proxy_url(value, "novita_default") == value.strip()

    @pytest.mark.parametrize(
        ("value", "got"),
        [
            (3128, "a int"),
            ("proxy.corp:3128", "'proxy.corp:3128'"),
            ("http://[::1", "'http://[::1'"),
            # Whatever stands before the last "@" or after a "?" may be a credential: never shown.
            ("socks5://corp:s3cret@proxy.corp:1080/?token=t0k", "'proxy.corp:1080/'"),
            ("a@b:s3cret@proxy.corp", "'proxy.corp'"),
        ],
    )
    def test_a_bad_proxy_is_refused_naming_it_without_credentials(self, value: object, got: str) -> None:
        with pytest.raises(
            ValueError, match=f"extra 'proxy' must be an http:// or https:// URL.*; got {re.escape(got)}$"
        ):
            clients.proxy_url(value, "novita_default")

    @pytest.mark.parametrize(
        ("proxy", "secrets"),
        [
            ("http://u:pw@proxy.corp:3128", {"u:pw", "pw"}),
            ("http://u:p@proxy.corp:3128", {"u:p"}),  # one character is no secret to mask everywhere
            ("http://u:pa:ss@proxy.corp:3128", {"u:pa:ss", "pa:ss"}),
            ("http://u:s3cr%21t@proxy.corp:3128", {"u:s3cr%21t", "s3cr%21t", "u:s3cr!t", "s3cr!t"}),
        ],
    )
    def test_the_proxy_credentials_are_its_secrets(self, proxy: str, secrets: set[str]) -> None:
        assert set(clients.proxy_secrets(proxy)) == secrets


class Lookups:
    """A connection lookup that counts its calls and answers with the key it is set to."""

    def __init__(self, key: str = "sk-1") -> None:
        self.key = key
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.error: Exception | None = None

    async def __call__(self) -> ConnectionSettings:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return ConnectionSettings("https://novita.test", self.key)


class TestSettingsCache:
    async def test_overlapping_lookups_of_a_connection_are_one(self) -> None:
        cache, lookup = SettingsCache(), Lookups()
        lookup.release.clear()
        waiting = [asyncio.ensure_future(cache.get("novita_default", lookup)) for _ in range(1000)]
        await asyncio.sleep(0)
        lookup.release.set()
        settings = await asyncio.gather(*waiting)
        assert lookup.calls == 1
        assert len({id(s) for s in settings}) == 1

    async def test_kept_settings_are_returned_without_suspending(self) -> None:
        """A burst's sessions after the lookup go on in the same step, not all in one later iteration."""
        cache, lookup = SettingsCache(), Lookups()
        await cache.get("novita_default", lookup)
        step = cache.get("novita_default", lookup).__await__()
        with pytest.raises(StopIteration) as done:
            step.send(None)
        assert done.value.value.api_key == "sk-1"
        assert lookup.calls == 1

    async def test_an_edited_connection_is_looked_up_again_once_the_ttl_has_passed(self) -> None:
        clock = Clock()
        cache, lookup = SettingsCache(ttl=10, clock=clock), Lookups("sk-old")
        assert (await cache.get("novita_default", lookup)).api_key == "sk-old"
        lookup.key = "sk-new"
        clock.now += 9.9
        assert (await cache.get("novita_default", lookup)).api_key == "sk-old"
        clock.now += 0.1
        assert (await cache.get("novita_default", lookup)).api_key == "sk-new"
        assert lookup.calls == 2

    async def test_a_lookup_in_progress_for_longer_than_the_ttl_is_not_joined(self) -> None:
        """The bound holds for a slow lookup too: a session after it looks the connection up afresh."""
        clock = Clock()
        cache, slow = SettingsCache(ttl=10, clock=clock), Lookups("sk-old")
        slow.release.clear()
        first = asyncio.ensure_future(cache.get("novita_default", slow))
        await asyncio.sleep(0)
        clock.now += 10
        assert (await cache.get("novita_default", Lookups("sk-new"))).api_key == "sk-new"
        slow.release.set()
        assert (await first).api_key == "sk-old"
        # The slow lookup, ending last, did not replace the newer settings.
        assert (await cache.get("novita_default", Lookups("sk-other"))).api_key == "sk-new"

    async def test_a_failed_lookup_reaches_its_waiters_and_is_not_kept(self) -> None:
        cache, lookup = SettingsCache(), Lookups()
        lookup.release.clear()
        lookup.error = ValueError("Connection 'novita_default' has no API key")
        waiting = [asyncio.ensure_future(cache.get("novita_default", lookup)) for _ in range(3)]
        await asyncio.sleep(0)
        lookup.release.set()
        for outcome in await asyncio.gather(*waiting, return_exceptions=True):
            assert isinstance(outcome, ValueError)
        lookup.error = None
        assert (await cache.get("novita_default", lookup)).api_key == "sk-1"
        assert lookup.calls == 2

    async def test_a_cancelled_session_does_not_cancel_the_lookup_others_wait_for(self) -> None:
        cache, lookup = SettingsCache(), Lookups()
        lookup.release.clear()
        cancelled = asyncio.ensure_future(cache.get("novita_default", lookup))
        other = asyncio.ensure_future(cache.get("novita_default", lookup))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        lookup.release.set()
        assert (await other).api_key == "sk-1"
        assert cancelled.cancelled()
        assert lookup.calls == 1

    async def test_connections_are_kept_apart(self) -> None:
        cache, first, second = SettingsCache(), Lookups("sk-a"), Lookups("sk-b")
        assert (await cache.get("novita_a", first)).api_key == "sk-a"
        assert (await cache.get("novita_b", second)).api_key == "sk-b"

    def test_each_event_loop_looks_up_on_its_own(self) -> None:
        """A lookup in progress is a task of its loop, and nothing of a closed loop is kept."""
        cache, lookup = SettingsCache(), Lookups()
        for _ in range(2):
            asyncio.run(cache.get("novita_default", lookup))
        assert lookup.calls == 2
        gc.collect()
        assert len(cache._loops) == 0


async def test_only_the_first_ssl_context_is_built_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building it blocks for milliseconds; returning it does not need a thread hop per lease."""
    clients.shared_ssl_context()

    def no_thread(*args: object) -> None:
        raise AssertionError("a thread hop for an SSL context that already exists")

    monkeypatch.setattr(asyncio.get_running_loop(), "run_in_executor", no_thread)
    assert await clients.ashared_ssl_context() is clients.shared_ssl_context()


async def test_a_burst_before_the_first_ssl_context_builds_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A triggerer restarted with many deferred triggers: they wait for one build, not one each."""
    builds: list[None] = []
    real = clients.httpx.create_ssl_context

    def counting() -> object:
        builds.append(None)
        time.sleep(0.05)  # long enough for every caller below to arrive while it runs
        return real()

    monkeypatch.setattr(clients.httpx, "create_ssl_context", counting)
    clients.shared_ssl_context.cache_clear()
    contexts = await asyncio.gather(*(clients.ashared_ssl_context() for _ in range(100)))
    assert len(builds) == 1
    assert all(context is contexts[0] for context in contexts)
    assert await clients.ashared_ssl_context() is contexts[0]


async def test_a_failed_ssl_context_build_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> object:
        raise OSError("no CA bundle")

    clients.shared_ssl_context.cache_clear()
    monkeypatch.setattr(clients.httpx, "create_ssl_context", broken)
    with pytest.raises(OSError, match="no CA bundle"):
        await clients.ashared_ssl_context()
    monkeypatch.undo()
    assert await clients.ashared_ssl_context() is clients.shared_ssl_context()
