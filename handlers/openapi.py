"""GET /openapi.json: the same document the request validation uses (public)."""

from __future__ import annotations

import functools

from domain import codec, schemas
from handlers.base import BaseHandler


@functools.cache
def document() -> bytes:
    return codec.dumps(schemas.openapi())


class OpenAPIHandler(BaseHandler):
    public = True
    checks_key = False  # the same document for everyone: no key is looked up for it

    def get(self) -> None:
        self.finish(document())


default_handlers = [(r"/openapi.json", OpenAPIHandler)]
