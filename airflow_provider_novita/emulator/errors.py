"""The API's error answers: a flat JSON body whose ``code`` repeats the HTTP status.

Reason strings are the emulator's own copy of the documented ones; they are deliberately not imported
from the client code, so a typo on either side shows up as a failing test instead of agreeing with itself.
"""

from __future__ import annotations

from typing import Any

INVALID_REQUEST_BODY = "INVALID_REQUEST_BODY"
BILLING_BALANCE_NOT_ENOUGH = "BILLING_BALANCE_NOT_ENOUGH"
INVALID_API_KEY = "INVALID_API_KEY"
API_NOT_FOUND = "API_NOT_FOUND"
TASK_NOT_FOUND = "TASK_NOT_FOUND"
RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


class ApiError(Exception):
    """An error answer of the emulated API, raised anywhere while handling a request."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        metadata: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "code": self.status,
            "reason": self.reason,
            "message": self.message,
            "metadata": self.metadata,
        }


def invalid_field(field: str, message: str) -> ApiError:
    """A 400 that names the offending field both in words and in ``metadata`` for programs."""
    return ApiError(400, INVALID_REQUEST_BODY, message, {"field": field})
