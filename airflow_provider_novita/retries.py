"""
Which failed requests are retried, how long to wait in between, and what a failed submission may have cost.

Reads (task results, account) are retried on 429, any 5xx, a body that is not what the API
documents, and any transport error. A submission is resent only when Novita certainly did not
create a task, because Novita has no idempotency key and bills every task it creates: on 429 and
503 (Novita's documented "overloaded, retry" answers), and on transport errors raised before the
request left this machine. Any other failure of a submission after the request was sent (500, 502,
504, a read timeout, a broken connection, an odd body) is *uncertain*: Novita may have created and
billed a task whose id never arrived. 400, 401, 403, 404 and a proxy's 407 are never retried: the
same request would fail the same way.

Some of those no retry of the whole Airflow task can change either (:func:`is_permanent`): a refused
key, an invalid parameter, a proxy that refuses its credentials. The operator and the sensor fail
the task at once for them instead of spending every Airflow retry on the same answer.

Waits grow exponentially with full jitter up to ``max_wait``; a ``Retry-After`` from the server
overrides that (up to ``max_retry_after``), because the server knows best when it will have room.
The hook cuts every wait at the caller's deadline (see ``NovitaHook``).

The policy is plain arithmetic with no I/O, and the hook's request loops call it only after a
failure, so a request that succeeds pays nothing for it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from airflow_provider_novita.exceptions import (
    NovitaAuthError,
    NovitaBadRequestError,
    NovitaConnectionError,
    NovitaInvalidResponseError,
    NovitaProxyError,
    NovitaRateLimitError,
    NovitaServerError,
    NovitaWaitRefusedError,
)

# Novita's documented answer to "overloaded, try again later": the request created nothing.
_RETRYABLE_SUBMIT_STATUSES = (429, 503)
# The one 400 that the account's owner can change in minutes, by paying.
_BALANCE_TOO_LOW = "BILLING_BALANCE_NOT_ENOUGH"
_JITTER = random.Random()


def is_permanent(exc: BaseException) -> bool:
    """
    True for failures that no retry of the Airflow task can change: the key or its permissions
    (401, 403), a request Novita found invalid (400, except a balance too low, which a payment
    changes), a proxy refusing its credentials (407). Each needs someone to change the connection
    or the DAG first.
    """
    if isinstance(exc, NovitaProxyError):
        return exc.http_status == 407
    if isinstance(exc, NovitaBadRequestError):
        return exc.reason != _BALANCE_TOO_LOW
    return isinstance(exc, (NovitaAuthError, NovitaWaitRefusedError))


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass if the same read is sent again later."""
    return not is_permanent(exc) and isinstance(
        exc, (NovitaRateLimitError, NovitaServerError, NovitaConnectionError, NovitaInvalidResponseError)
    )


def is_safe_to_resubmit(exc: BaseException) -> bool:
    """True for submission failures after which Novita certainly created no task and a resend may pass."""
    if is_permanent(exc):
        return False
    if isinstance(exc, (NovitaRateLimitError, NovitaServerError)):
        return exc.http_status in _RETRYABLE_SUBMIT_STATUSES
    return isinstance(exc, NovitaConnectionError) and not exc.request_sent


def may_have_billed(exc: BaseException) -> bool:
    """True for submission failures that leave open whether Novita created (and bills) a task."""
    return is_transient(exc) and not is_safe_to_resubmit(exc)


@dataclass(frozen=True)
class RetryPolicy:
    """
    :param max_retries: retries after the first attempt.
    :param initial_wait: scale of the exponential backoff, in seconds.
    :param max_wait: the longest backoff wait.
    :param max_retry_after: the longest wait a ``Retry-After`` header can ask for.
    """

    max_retries: int = 5
    initial_wait: float = 1.0
    max_wait: float = 60.0
    max_retry_after: float = 300.0

    def wait_before_retry(
        self, exc: BaseException, failures: int, *, idempotent: bool, rng: random.Random | None = None
    ) -> float | None:
        """
        Seconds to wait before sending the request again after its ``failures``-th failure, or None
        when ``exc`` is final: not retryable, or the retries are used up.
        """
        retryable = is_transient(exc) if idempotent else is_safe_to_resubmit(exc)
        if not retryable or failures > self.max_retries:
            return None
        if isinstance(exc, NovitaRateLimitError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        return (rng or _JITTER).uniform(0, min(self.max_wait, self.initial_wait * 2 ** (failures - 1)))
