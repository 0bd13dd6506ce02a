"""/api/v1/users: create, read, partial update, and a user's payments."""

from __future__ import annotations

from domain import codec, payments, schemas, users
from domain.errors import APIError
from handlers.base import BaseHandler


class UsersHandler(BaseHandler):
    async def post(self) -> None:
        body = schemas.validate("UserCreate", self.get_json_body())
        user = await users.create(body["email"], body["name"])
        self.set_header("ETag", users.etag(user["version"]))
        self.set_header("Location", f"/api/v1/users/{user['id']}")
        self.write_json(user, 201)


class UserHandler(BaseHandler):
    async def get(self, user_id: str) -> None:
        body = await users.get_json(self.resource_id(user_id, "user"))
        self.set_header("ETag", users.etag(codec.loads(body)["version"]))
        self.finish(body)

    async def put(self, user_id: str) -> None:
        user_id = self.resource_id(user_id, "user")
        changes = schemas.validate("UserUpdate", self.get_json_body())
        user = await users.update(user_id, changes, self.request.headers.get("If-Match"))
        self.set_header("ETag", users.etag(user["version"]))
        self.write_json(user)


class UserPaymentsHandler(BaseHandler):
    async def get(self, user_id: str) -> None:
        user_id = self.resource_id(user_id, "user")
        limit = self.get_query_argument("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= 100:
            raise APIError(400, "invalid_limit", "limit must be an integer from 1 to 100")
        status = self.get_query_argument("status", None)
        if status is not None and status not in payments.TRANSITIONS:
            raise APIError(400, "invalid_status", f"status must be one of: {', '.join(payments.TRANSITIONS)}")
        cursor = self.get_query_argument("cursor", None)
        self.write_json(await payments.list_for_user(user_id, int(limit), cursor, status))


default_handlers = [
    (r"/api/v1/users", UsersHandler),
    (r"/api/v1/users/([^/]+)", UserHandler),
    (r"/api/v1/users/([^/]+)/payments", UserPaymentsHandler),
]
