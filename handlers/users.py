"""/api/v1/users: create, read, partial update, and a user's payments.

An admin key reaches every user; a user key only its own (anyone else's answers
404, exactly like a user that does not exist) and cannot create users.
"""

from __future__ import annotations

import datetime as dt
import re

from domain import codec, payments, schemas, users
from domain.errors import APIError
from handlers.base import BaseHandler

_LIMIT = re.compile(r"^[0-9]{1,3}$")
MAX_IF_MATCH = 1024  # the document's maxLength: a list of a few ETags, not a payload


def page_limit(limit: str) -> int:
    """A page's ``limit`` query parameter: 1 to 100 (400 otherwise)."""
    if not _LIMIT.fullmatch(limit) or not 1 <= int(limit) <= 100:
        raise APIError(400, "invalid_limit", "limit must be an integer from 1 to 100")
    return int(limit)


def _created(value: str | None, name: str) -> dt.datetime | None:
    """A ``created_*`` filter: RFC 3339, as a naive UTC time like the column's (400 otherwise)."""
    if value is None:
        return None
    try:
        return codec.parse_rfc3339(value).replace(tzinfo=None)
    except ValueError:
        raise APIError(400, "invalid_time", f"{name} must be an RFC 3339 time such as 2026-01-31T00:00:00Z") from None


class UsersHandler(BaseHandler):
    async def post(self) -> None:
        self.require_admin()
        body = schemas.validate("UserCreate", users.normalized(self.get_json_body()))
        user = await users.create(body["email"], body["name"], body.get("metadata"))
        self.set_header("ETag", codec.etag(user["version"]))
        self.set_header("Location", f"/api/v1/users/{user['id']}")
        self.write_json(user, 201)


class UserHandler(BaseHandler):
    async def get(self, user_id: str) -> None:
        self.finish_cached(await users.get(self.visible_user_id(user_id)))

    async def put(self, user_id: str) -> None:
        user_id = self.visible_user_id(user_id)
        if_match = self.request.headers.get("If-Match")
        if if_match is not None and len(if_match) > MAX_IF_MATCH:
            raise APIError(400, "invalid_if_match", f"If-Match is longer than {MAX_IF_MATCH} characters")
        changes = schemas.validate("UserUpdate", users.normalized(self.get_json_body()))
        user = await users.update(user_id, changes, if_match)
        self.set_header("ETag", codec.etag(user["version"]))
        self.write_json(user)

    async def patch(self, user_id: str) -> None:
        user_id = self.visible_user_id(user_id)
        body = schemas.validate("MetadataPatch", self.get_json_body())
        user = await users.update_metadata(user_id, body)
        self.set_header("ETag", codec.etag(user["version"]))
        self.write_json(user)


class UserPaymentsHandler(BaseHandler):
    async def get(self, user_id: str) -> None:
        user_id = self.visible_user_id(user_id)
        limit = page_limit(self.query("limit", "20"))
        status = self.query("status")
        if status is not None and status not in payments.TRANSITIONS:
            raise APIError(400, "invalid_status", f"status must be one of: {', '.join(payments.TRANSITIONS)}")
        filters = payments.Filters(
            status, _created(self.query("created_gte"), "created_gte"), _created(self.query("created_lt"), "created_lt")
        )
        cursor = self.query("cursor")
        self.write_json(await payments.list_for_user(user_id, limit, cursor, filters))


default_handlers = [
    (r"/api/v1/users", UsersHandler),
    (r"/api/v1/users/([^/]+)", UserHandler),
    (r"/api/v1/users/([^/]+)/payments", UserPaymentsHandler),
]
