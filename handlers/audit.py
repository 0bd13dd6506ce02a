"""/api/v1/audit-events: who did what (admin only), newest first, in cursor pages.

``?resource_type=payment&resource_id=…`` reads one resource's rows from the one shard that
holds them; otherwise every shard that may hold such rows is read and the rows merged by
time (domain/audit.py).
"""

from __future__ import annotations

import re

from domain import audit
from domain.errors import APIError
from handlers.base import BaseHandler

_LIMIT = re.compile(r"^[0-9]{1,3}$")


class AuditEventsHandler(BaseHandler):
    admin_only = True

    async def get(self) -> None:
        limit = self.query("limit", "20")
        if not _LIMIT.fullmatch(limit) or not 1 <= int(limit) <= 100:
            raise APIError(400, "invalid_limit", "limit must be an integer from 1 to 100")
        kind = self.query("resource_type")
        resource_type = None
        if kind is not None:
            try:
                resource_type = audit.Resource(kind)
            except ValueError:
                names = ", ".join(audit.Resource)
                raise APIError(400, "invalid_resource_type", f"resource_type must be one of: {names}") from None
        resource_id = self.query("resource_id")
        if resource_id is not None:
            resource_id = self.resource_id(resource_id, "resource", status=400)
        self.write_json(await audit.page(int(limit), self.query("cursor"), resource_type, resource_id))


default_handlers = [(r"/api/v1/audit-events", AuditEventsHandler)]
