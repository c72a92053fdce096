"""Transient API failures on demand: 429 rate limiting, 503 overload and dropped connections.

The counted forms (``rate_limit_first``, ``error_first``) make a test's story exact: with
``rate_limit_first=2, error_first=1`` the first two calls to each ``/v3`` endpoint answer 429, the third
503, and every later one is served normally. The random forms draw from their own seeded generators, one
draw per request whatever the outcome, so the sequence of decisions depends only on the seed and on the
order of requests.

A dropped connection is the worst case for a client: the connection breaks after the request was
sent, so it cannot tell whether anything was created. :class:`ConnectionDropped` drops it before the
request is handled; :meth:`FaultInjector.lose_answer` decides, after a task was created and billed,
that its answer is lost the same way.
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


class ConnectionDropped(Exception):
    """Raised while handling a request: answer by breaking the connection mid-answer."""


class FaultInjector:
    def __init__(self, config: EmulatorConfig) -> None:
        self._config = config
        self.reset()

    def reset(self) -> None:
        self._requests_seen: Counter[str] = Counter()
        # What was injected, by kind: the server logs nothing per fault (see server.py).
        self.injected: Counter[str] = Counter()
        self._rate_limit_rng = random.Random(f"{self._config.seed}:rate-limit")
        self._error_rng = random.Random(f"{self._config.seed}:errors")
        self._retry_after_rng = random.Random(f"{self._config.seed}:retry-after")
        self._drop_rng = random.Random(f"{self._config.seed}:drops")
        self._lost_answer_rng = random.Random(f"{self._config.seed}:lost-answers")

    def check(self, endpoint: str) -> None:
        """Raise the injected error for this request to ``endpoint``, if any."""
        config = self._config
        index = self._requests_seen[endpoint]
        self._requests_seen[endpoint] += 1
        rate_limit_draw = self._rate_limit_rng.random()
        error_draw = self._error_rng.random()
        drop_draw = self._drop_rng.random()
        if drop_draw < config.drop_rate:
            self.injected["dropped_connection"] += 1
            raise ConnectionDropped(endpoint)
        if index < config.rate_limit_first or rate_limit_draw < config.rate_limit_rate:
            headers = {}
            with_header = self._retry_after_rng.random() < config.retry_after_share
            if config.retry_after is not None and with_header:
                headers["Retry-After"] = format_retry_after(config.retry_after)
            self.injected["429"] += 1
            raise ApiError(429, RATE_LIMIT_EXCEEDED, "rate limit exceeded, retry later", headers=headers)
        if index < config.rate_limit_first + config.error_first or error_draw < config.error_rate:
            self.injected["503"] += 1
            raise ApiError(503, SERVICE_UNAVAILABLE, "service temporarily unavailable, retry later")

    def lose_answer(self) -> bool:
        """Whether the answer to the submission just accepted is lost (one draw per submission)."""
        lost = self._lost_answer_rng.random() < self._config.lost_answer_rate
        if lost:
            self.injected["lost_answer"] += 1
        return lost
