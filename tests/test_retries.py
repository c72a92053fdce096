"""Which failures are retried, and what a failed submission may have cost."""

from __future__ import annotations

import random

import pytest

from airflow_provider_novita.exceptions import (
    NovitaAuthError,
    NovitaConnectionError,
    NovitaError,
    NovitaInvalidResponseError,
    NovitaRateLimitError,
    NovitaServerError,
)
from airflow_provider_novita.retries import RetryPolicy, may_have_billed


@pytest.mark.parametrize(
    ("failure", "billed"),
    [
        # Novita's "overloaded, retry" answers, and a request that never left: no task was created.
        (NovitaRateLimitError(429, "RATE_LIMIT_EXCEEDED", "slow down", None, None), False),
        (NovitaServerError(503, "", "overloaded", None), False),
        (NovitaConnectionError("refused", request_sent=False), False),
        # Sent, and no usable answer: Novita may have created a task whose id never arrived.
        (NovitaServerError(500, "CREATE_TASK_FAILED", "internal", None), True),
        (NovitaServerError(504, "", "gateway timeout", None), True),
        (NovitaConnectionError("read timeout", request_sent=True), True),
        (NovitaInvalidResponseError("not JSON"), True),
        # Refused outright: the same request fails the same way, and nothing was created.
        (NovitaAuthError(403, "INVALID_API_KEY", "invalid api-key", None), False),
    ],
)
def test_only_a_submission_that_may_have_reached_novita_may_have_billed(
    failure: NovitaError, billed: bool
) -> None:
    assert may_have_billed(failure) is billed


class Extreme(random.Random):
    """Jitter that always draws the shortest (``longest=False``) or the longest possible wait."""

    def __init__(self, longest: bool) -> None:
        super().__init__()
        self.longest = longest

    def uniform(self, a: float, b: float) -> float:
        return b if self.longest else a


OVERLOADED = NovitaServerError(503, "", "overloaded", None)


def test_waits_double_from_the_initial_wait_up_to_the_longest_with_full_jitter() -> None:
    policy = RetryPolicy(max_retries=10, initial_wait=1.0, max_wait=60.0)
    longest = [
        policy.wait_before_retry(OVERLOADED, n, idempotent=True, rng=Extreme(True)) for n in range(1, 9)
    ]
    shortest = [
        policy.wait_before_retry(OVERLOADED, n, idempotent=True, rng=Extreme(False)) for n in range(1, 9)
    ]
    assert longest == [1, 2, 4, 8, 16, 32, 60, 60]
    assert shortest == [0] * 8
