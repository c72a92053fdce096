"""
The provider's exceptions, and the one place where Novita's error responses are mapped onto them.

Everything the provider raises derives from :class:`NovitaError`, so a DAG author can catch one
class. The subclasses follow what a caller does next and name the party to blame: an
:class:`NovitaAuthError` needs a new key in the connection it names, a :class:`NovitaRateLimitError`
needs patience, a :class:`NovitaTaskFailedError` needs a look at the source image, a
:class:`NovitaProxyError` is the proxy's, a :class:`NovitaStorageError` the object store's. Messages
name Novita's ``reason``, the HTTP status and the task id, and never the API key, a proxy's
credentials or a signed URL's query string.
"""

from __future__ import annotations

import math
import re
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.sdk.exceptions import AirflowException

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import httpx


class NovitaError(AirflowException):
    """Base class of every error this provider raises."""


class NovitaAPIError(NovitaError):
    """
    Novita answered a request with an error status.

    :param http_status: the HTTP status of the answer.
    :param reason: Novita's machine-readable reason, e.g. ``INVALID_API_KEY`` (empty if the body had none).
    :param message: Novita's human-readable message.
    :param task_id: the Novita task the request was about, if any.
    :param fix: what to change, and where, when that is known (the connection to correct).
    """

    def __init__(
        self, http_status: int, reason: str, message: str, task_id: str | None = None, fix: str = ""
    ) -> None:
        self.http_status = http_status
        self.reason = reason
        self.message = message
        self.task_id = task_id
        detail = f"Novita API error: HTTP {http_status} {reason or 'no reason given'}"
        if message:
            detail += f": {message}"
        if task_id:
            detail += f" (task id {task_id})"
        if fix:
            detail += f". {fix}"
        super().__init__(detail)


class NovitaBadRequestError(NovitaAPIError):
    """
    HTTP 400: the request was invalid (a parameter, the image), or the account cannot pay for it
    (``BILLING_BALANCE_NOT_ENOUGH``). Sending the same request again will not help.
    """


class NovitaAuthError(NovitaAPIError):
    """HTTP 401/403: the API key is missing, wrong or not allowed to use this API; names the connection."""


class NovitaNotFoundError(NovitaAPIError):
    """HTTP 404: an unknown task id (``TASK_NOT_FOUND``) or endpoint (``API_NOT_FOUND``)."""


class NovitaRateLimitError(NovitaAPIError):
    """HTTP 429: too many requests. ``retry_after`` holds the server's hint in seconds, if it sent one."""

    def __init__(
        self,
        http_status: int,
        reason: str,
        message: str,
        task_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(http_status, reason, message, task_id)
        self.retry_after = retry_after


class NovitaServerError(NovitaAPIError):
    """HTTP 5xx: Novita failed or was overloaded; usually worth retrying."""


class NovitaInvalidResponseError(NovitaError):
    """
    Novita answered with a success status but a body that is not what its API documents.

    Usually a proxy or a passing fault; reads treat it as transient. After a submission it leaves
    open whether Novita created (and bills) a task.
    """


class NovitaConnectionError(NovitaError):
    """
    Novita could not be reached, or the connection broke before an answer arrived.

    :param request_sent: False when the request certainly never left (connection refused, connect
        timeout), True when it may have reached Novita. A submission is only resent in the first case.
    """

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class NovitaProxyError(NovitaConnectionError):
    """
    The proxy in front of Novita refused the request or could not be reached; Novita saw nothing.

    :param proxy: the proxy's URL without its credentials.
    :param origin: where the proxy came from: the connection's extra ``proxy`` or an environment variable.
    :param http_status: the proxy's refusal (407: it wants other credentials), or None when it could
        not be reached at all.
    """

    def __init__(self, problem: str, *, proxy: str, origin: str, http_status: int | None) -> None:
        self.proxy = proxy
        self.origin = origin
        self.http_status = http_status
        fix = f"; fix the credentials in {origin}" if http_status == 407 else ""
        super().__init__(
            f"Proxy error: the proxy {proxy} (from {origin}) {problem}; Novita was not reached{fix}",
            request_sent=False,
        )


class NovitaStorageError(NovitaError):
    """
    An object store, not Novita, failed: a source could not be checked or signed. Usually passing
    (a timeout, a throttled request); the message names the object and the store's error.
    """


class NovitaTaskFailedError(NovitaError):
    """
    One or more Novita tasks ended ``TASK_STATUS_FAILED``.

    :param failures: task id -> Novita's failure reason, for every failed task of the batch.
    """

    def __init__(self, failures: Mapping[str, str]) -> None:
        self.failures = dict(failures)
        listed = "; ".join(
            f"{task_id}: {reason or 'no reason given'}" for task_id, reason in failures.items()
        )
        super().__init__(f"{len(self.failures)} Novita task(s) failed: {listed}")


class NovitaWaitRefusedError(NovitaError):
    """
    A wait ended on an answer that no retry can change: Novita refused the key or the request while
    the tasks were polled (a key revoked after the submission), or the proxy refused its credentials.
    The wait may have run on the triggerer, so the original error travels by its message only.
    """


class NovitaTimeoutError(NovitaError):
    """
    The deadline passed before every task of the batch finished, or before a call about no task
    (a submission, the connection test) got its answer; then ``unfinished`` is empty.
    """

    def __init__(self, unfinished: Sequence[str], timeout_description: str) -> None:
        self.unfinished = list(unfinished)
        message = timeout_description
        if self.unfinished:
            message += f"; {len(self.unfinished)} Novita task(s) still unfinished: " + ", ".join(
                self.unfinished
            )
        super().__init__(message)


_ERRORS_BY_STATUS: dict[int, type[NovitaAPIError]] = {
    400: NovitaBadRequestError,
    401: NovitaAuthError,
    403: NovitaAuthError,
    404: NovitaNotFoundError,
}


def error_from_response(
    response: httpx.Response, task_id: str | None = None, conn_id: str | None = None
) -> NovitaAPIError:
    """
    Build the exception for a non-2xx answer; a refused key names ``conn_id``, the connection to fix.

    Novita's error body is ``{"code", "reason", "message", "metadata"}``; proxies in front of it
    answer with HTML or nothing, so every field is optional and the status line is the fallback.
    """
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    reason = _field(body.get("reason"))
    message = _field(body.get("message")) or response.reason_phrase
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata:
        message = f"{message} {str(metadata)[:_MAX_FIELD]}"
    status = response.status_code
    if status == 429:
        return NovitaRateLimitError(status, reason, message, task_id, parse_retry_after(response))
    if status >= 500:
        return NovitaServerError(status, reason, message, task_id)
    error = _ERRORS_BY_STATUS.get(status, NovitaAPIError)
    fix = ""
    if error is NovitaAuthError and conn_id is not None:
        fix = f"Check the API key (the password) of Airflow connection {conn_id!r}"
    return error(status, reason, message, task_id, fix)


def parse_retry_after(response: httpx.Response) -> float | None:
    """
    Read ``Retry-After`` as seconds.

    Novita does not document the header; when a proxy sends it, it may be seconds or an HTTP date.
    """
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
            seconds = (when - pendulum.now("UTC")).total_seconds()
        except (TypeError, ValueError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def redact(text: str, secret: str) -> str:
    """
    ``text`` with every spelling of ``secret`` replaced: as is, and escaped as ``repr`` shows it.

    Errors raised deep in httpx or h11 may quote a header value, as ``str`` or as ``bytes``; a message
    built from them passes through here before it can reach a log or the UI.
    """
    if not secret:
        return text
    # Longest first, so that a shorter spelling cannot break up a longer one before it is replaced.
    spellings = {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]}
    for spelling in sorted(spellings, key=len, reverse=True):
        text = text.replace(spelling, "***")
    return text


_MAX_FIELD = 500


def _field(value: object) -> str:
    """A text field of an error body: a proxy's answer may hold anything, and a lot of it."""
    return without_url_queries(value[:_MAX_FIELD]) if isinstance(value, str) else ""


# A URL and its query string, which a pre-signed URL's credential is.
_URL_QUERY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s'\"<>]*")


def without_url_queries(text: str) -> str:
    """
    ``text`` with the query string of every URL in it cut out.

    Novita may quote the source URL it failed to fetch in a reason or a message, and a source signed
    by the worker carries its credential in the query string.
    """
    return _URL_QUERY.sub("\\1?…", text)
