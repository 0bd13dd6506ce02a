"""GET /openapi.json: the same document the request validation uses."""

from __future__ import annotations

from domain import codec, schemas
from handlers.base import BaseHandler


class OpenAPIHandler(BaseHandler):
    _body: bytes | None = None

    def get(self) -> None:
        if OpenAPIHandler._body is None:
            OpenAPIHandler._body = codec.dumps(schemas.openapi())
        self.finish(OpenAPIHandler._body)


default_handlers = [(r"/openapi.json", OpenAPIHandler)]
