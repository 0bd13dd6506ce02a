"""The one error type the API shows clients: a status, a stable code, a message."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """Raised anywhere below a handler; BaseHandler renders it as the error envelope."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def not_found(what: str, ident: str) -> APIError:
    return APIError(404, "not_found", f"{what} {ident} not found")
