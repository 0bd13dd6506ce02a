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


def user_not_found(user_id: str) -> APIError:
    """A body's ``user_id`` names no user (or none the caller may see): 422, not 404,
    since the path itself was found."""
    return APIError(
        422,
        "user_not_found",
        f"user {user_id} does not exist",
        details=[{"field": "user_id", "message": "no such user"}],
    )
