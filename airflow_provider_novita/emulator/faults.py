"""Transient API failures on demand: 429 rate limiting and 503 overload, counted or random.

The counted forms (``rate_limit_first``, ``error_first``) make a test's story exact: with
``rate_limit_first=2, error_first=1`` the first two calls to each ``/v3`` endpoint answer 429, the third
503, and every later one is served normally. The random forms draw from their own seeded generators, one
draw per request whatever the outcome, so the sequence of decisions depends only on the seed and on the
order of requests.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING

from .errors import RATE_LIMIT_EXCEEDED, SERVICE_UNAVAILABLE, ApiError

if TYPE_CHECKING:
    from .config import EmulatorConfig


def format_retry_after(seconds: float) -> str:
    """HTTP wants whole seconds; fractions are kept (as a decimal) because fast tests need them."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class FaultInjector:
    def __init__(self, config: EmulatorConfig) -> None:
        self._config = config
        self.reset()

    def reset(self) -> None:
        self._requests_seen: Counter[str] = Counter()
        self._rate_limit_rng = random.Random(f"{self._config.seed}:rate-limit")
        self._error_rng = random.Random(f"{self._config.seed}:errors")

    def check(self, endpoint: str) -> None:
        """Raise the injected error for this request to ``endpoint``, if any."""
        config = self._config
        index = self._requests_seen[endpoint]
        self._requests_seen[endpoint] += 1
        rate_limit_draw = self._rate_limit_rng.random()
        error_draw = self._error_rng.random()
        if index < config.rate_limit_first or rate_limit_draw < config.rate_limit_rate:
            headers = {}
            if config.retry_after is not None:
                headers["Retry-After"] = format_retry_after(config.retry_after)
            raise ApiError(429, RATE_LIMIT_EXCEEDED, "rate limit exceeded, retry later", headers=headers)
        if index < config.rate_limit_first + config.error_first or error_draw < config.error_rate:
            raise ApiError(503, SERVICE_UNAVAILABLE, "service temporarily unavailable, retry later")
