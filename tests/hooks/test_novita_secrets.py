"""NovitaHook and the API key: stripped as secrets backends deliver it, and never in any message or log."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import httpx
import pytest

from airflow_provider_novita.exceptions import NovitaError, error_from_response
from airflow_provider_novita.hooks.novita import NovitaHook
from airflow_provider_novita.models import TaskResult, UpscaleRequest
from airflow_provider_novita.retries import RetryPolicy
from tests.fakes import FakeNovita

FAST = RetryPolicy(max_retries=1, initial_wait=0.001)
REQUEST = UpscaleRequest("https://img.test/cat.png")
# Printable, but with the characters that repr() and bytes reprs escape.
ODD_KEY = "sk-o'dd\"key\\with-quotes"


def connection(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_NOVITA_DEFAULT",
        json.dumps({"conn_type": "novita", "host": "https://novita.test", "password": key}),
    )


def all_subclasses(cls: type[Exception]) -> set[type[Exception]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= all_subclasses(sub)
    return found


# Every transport error httpx can raise, and the errors of reading an answer it cannot decode.
HTTPX_ERRORS = sorted(all_subclasses(httpx.TransportError) | {httpx.DecodingError}, key=lambda c: c.__name__)


@pytest.mark.parametrize("surrounding", ["\n", "\r\n", " ", "\t", " \n\t "])
def test_whitespace_around_the_key_is_stripped(monkeypatch: pytest.MonkeyPatch, surrounding: str) -> None:
    connection(monkeypatch, f"{surrounding}sk-live-123{surrounding}")
    fake = FakeNovita()
    fake.handle = lambda request: httpx.Response(  # type: ignore[method-assign]
        200 if request.headers["Authorization"] == "Bearer sk-live-123" else 403, json={"task_id": "t-1"}
    )
    assert NovitaHook(transport=fake.transport(), retry_policy=FAST).submit_upscale(REQUEST) == "t-1"


@pytest.mark.parametrize("key", ["sk-live\n123", "sk live 123", "sk-live-\x00", "sk-clé-123", "sk-\u200b123"])
def test_a_key_no_header_can_carry_is_refused_without_repeating_it(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    connection(monkeypatch, key)
    fake = FakeNovita()
    hook = NovitaHook(transport=fake.transport(), retry_policy=FAST)
    with pytest.raises(
        ValueError,
        match=r"^Connection 'novita_default': the API key contains spaces, control or non-ASCII characters, "
        r"which an HTTP header cannot carry; check for a stray character copied along with the key$",
    ) as info:
        hook.submit_upscale(REQUEST)
    assert key not in str(info.value)
    ok, message = NovitaHook(transport=fake.transport(), retry_policy=FAST).test_connection()
    assert not ok
    assert "the API key contains" in message
    assert key not in message
    assert fake.requests == []


@pytest.mark.parametrize("error_type", HTTPX_ERRORS, ids=lambda c: c.__name__)
def test_no_httpx_error_carries_the_key_into_a_message_or_a_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error_type: type[Exception]
) -> None:
    """httpx and h11 quote header values in some messages; the worst case quotes ours in every form."""
    caplog.set_level(logging.DEBUG)
    connection(monkeypatch, ODD_KEY)
    quoted = f"Illegal header value b'Bearer {ODD_KEY}' / {ODD_KEY!r} / {ODD_KEY.encode()!r} / {ODD_KEY}"

    def fail(request: httpx.Request) -> httpx.Response:
        raise error_type(quoted, request=request)  # type: ignore[call-arg]

    hook = NovitaHook(transport=httpx.MockTransport(fail), retry_policy=FAST)
    with pytest.raises(NovitaError) as info:
        hook.get_task_result("task-7")
    _, tested = NovitaHook(transport=httpx.MockTransport(fail), retry_policy=FAST).test_connection()
    with pytest.raises(NovitaError) as submitted:
        hook.submit_upscale(REQUEST)
    for text in (str(info.value), repr(info.value), tested, str(submitted.value), caplog.text):
        for spelling in (ODD_KEY, repr(ODD_KEY)[1:-1], repr(ODD_KEY.encode())[2:-1]):
            assert spelling not in text
    assert error_type.__name__ in str(info.value)


async def test_the_async_lookup_masks_the_key_without_blocking_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Airflow 3.3+: the async masker, awaited; the stored and the stripped key are both masked."""
    connection(monkeypatch, " sk-live-async-1\n")
    masked: list[str] = []

    async def amask_secret(secret: str) -> None:
        masked.append(secret)

    def blocking(secret: str) -> None:
        raise AssertionError("the sync masker was called on the event loop")

    # The SDK's log module as the hook sees it, with its two maskers.
    monkeypatch.setattr(
        "airflow_provider_novita.hooks.novita.sdk_log",
        SimpleNamespace(amask_secret=amask_secret, mask_secret=blocking),
    )
    assert (await NovitaHook("novita_default").asettings()).api_key == "sk-live-async-1"
    assert sorted(masked) == [" sk-live-async-1\n", "sk-live-async-1"]


async def test_before_airflow_3_3_the_async_lookup_masks_with_the_sync_masker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Airflow 3.1 and 3.2 have no async masker: the sync one, safe off a task process, is used."""
    connection(monkeypatch, "sk-live-async-2")
    masked: list[str] = []
    monkeypatch.setattr(
        "airflow_provider_novita.hooks.novita.sdk_log", SimpleNamespace(mask_secret=masked.append)
    )
    assert (await NovitaHook("novita_default").asettings()).api_key == "sk-live-async-2"
    assert masked == ["sk-live-async-2"]


def test_a_signed_source_url_that_novita_quotes_loses_its_query_string() -> None:
    """Novita may quote the source it failed to fetch; a signed source carries its credential there."""
    signed = "https://bucket.test/in/a.png?X-Amz-Credential=AKIA&X-Amz-Signature=s3cr3t"
    answer = httpx.Response(
        400,
        json={"code": 400, "reason": f"cannot fetch {signed}", "message": f"GET {signed} answered 403"},
    )
    error = error_from_response(answer, "task-1")
    result = TaskResult.from_api(
        {"task": {"status": "TASK_STATUS_FAILED", "reason": f"fetching '{signed}' failed"}}, "task-1"
    )
    for text in (str(error), error.reason, error.message, result.reason):
        assert "s3cr3t" not in text
        assert "AKIA" not in text
        assert "https://bucket.test/in/a.png?…" in text
