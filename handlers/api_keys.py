"""/api/v1/api-keys: create, list and revoke API keys (admin only).

The secret is in the create response and nowhere else: the list shows each
key's prefix, role, owner and dates.
"""

from __future__ import annotations

from domain import auth, schemas
from handlers.base import BaseHandler


class ApiKeysHandler(BaseHandler):
    admin_only = True

    async def post(self) -> None:
        body = schemas.validate("ApiKeyCreate", self.get_json_body())
        created = await auth.create_key(body["role"], body.get("user_id"), self.actor)
        self.set_header("Location", f"/api/v1/api-keys/{created['id']}")
        self.write_json(created, 201)

    async def get(self) -> None:
        self.write_json({"items": await auth.list_keys()})


class ApiKeyHandler(BaseHandler):
    admin_only = True

    async def delete(self, key_id: str) -> None:
        self.write_json(await auth.revoke_key(self.resource_id(key_id, "api key"), self.actor))


default_handlers = [
    (r"/api/v1/api-keys", ApiKeysHandler),
    (r"/api/v1/api-keys/([^/]+)", ApiKeyHandler),
]
