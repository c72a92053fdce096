"""
Which failed requests are retried, and how long to wait in between.

Reads (task results, account) are retried on 429, any 5xx and any transport error. A submission is
retried only when Novita certainly did not create a task, because Novita has no idempotency key and
bills every task it creates: on 429, on 5xx other than 502/504 (a gateway may have passed the
request on before failing), and on transport errors raised before the request was sent. 400, 401,
403 and 404 are never retried: the same request would fail the same way.

Waits grow exponentially with full jitter up to ``MAX_WAIT``; a ``Retry-After`` from the server
overrides that (up to ``MAX_RETRY_AFTER``), because the server knows best when it will have room.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import tenacity

from airflow_provider_novita.exceptions import (
    NovitaConnectionError,
    NovitaRateLimitError,
    NovitaServerError,
)

log = logging.getLogger(__name__)

MAX_WAIT = 60.0
MAX_RETRY_AFTER = 300.0
_AMBIGUOUS_GATEWAY_STATUSES = (502, 504)


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass if the same request is sent again later."""
    return isinstance(exc, (NovitaRateLimitError, NovitaServerError, NovitaConnectionError))


def is_safe_to_resubmit(exc: BaseException) -> bool:
    """True for submission failures after which Novita certainly created no task."""
    if isinstance(exc, NovitaRateLimitError):
        return True
    if isinstance(exc, NovitaServerError):
        return exc.http_status not in _AMBIGUOUS_GATEWAY_STATUSES
    return isinstance(exc, NovitaConnectionError) and not exc.request_sent


class _WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    def __init__(self, initial: float) -> None:
        self._backoff = tenacity.wait_random_exponential(multiplier=initial, max=MAX_WAIT)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, NovitaRateLimitError) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER)
        return float(self._backoff(retry_state))


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
    log.warning(
        "Novita request failed (%s); retrying in %.1fs (attempt %d)", exc, wait, retry_state.attempt_number
    )


@dataclass(frozen=True)
class RetryPolicy:
    """
    :param max_retries: retries after the first attempt.
    :param initial_wait: scale of the exponential backoff, in seconds.
    """

    max_retries: int = 5
    initial_wait: float = 1.0

    def _kwargs(self, idempotent: bool) -> dict[str, Any]:
        return {
            "stop": tenacity.stop_after_attempt(self.max_retries + 1),
            "wait": _WaitRetryAfterOrBackoff(self.initial_wait),
            "retry": tenacity.retry_if_exception(is_transient if idempotent else is_safe_to_resubmit),
            "before_sleep": _log_retry,
            "reraise": True,
        }

    def retrying(self, *, idempotent: bool) -> tenacity.Retrying:
        return tenacity.Retrying(**self._kwargs(idempotent))

    def async_retrying(self, *, idempotent: bool) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(**self._kwargs(idempotent))
