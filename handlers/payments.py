"""/api/v1/payments: idempotent create, read, status changes and their history.

A user key creates, reads and annotates (metadata) its own user's payments only
(anyone else's answers as if it did not exist); changing a status needs an admin key.
"""

from __future__ import annotations

import re

from domain import payments, refunds, schemas
from domain.errors import APIError, user_not_found
from handlers.base import BaseHandler
from managers.redis import Cached

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as HTTP header tokens are


def idempotency_key(key: str | None) -> str | None:
    """An ``Idempotency-Key`` header's value, if well formed (400 otherwise)."""
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise APIError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters")
    return key


class PaymentsHandler(BaseHandler):
    async def post(self) -> None:
        key = idempotency_key(self.request.headers.get("Idempotency-Key"))
        body = schemas.validate("PaymentCreate", self.get_json_body())
        if not self.caller.can_see(body["user_id"]):
            raise user_not_found(body["user_id"])
        max_amount: int = self.config["payments"]["max_amount"]
        scope = "admin" if self.caller.is_admin else f"user:{self.caller.user_id}"
        created = await payments.create(body, max_amount, key, scope, actor=self.actor)
        if created.replayed:
            self.set_header("Idempotent-Replayed", "true")
        self.set_status(created.status)
        self.finish(created.body)


class PaymentReader(BaseHandler):
    async def visible_payment(self, payment_id: str) -> Cached:
        payment_id = self.resource_id(payment_id, "payment")
        payment = await payments.get(payment_id)
        self.check_owner(payment.owner, "payment", payment_id)
        return payment


class PaymentHandler(PaymentReader):
    async def get(self, payment_id: str) -> None:
        self.finish_cached(await self.visible_payment(payment_id))

    async def patch(self, payment_id: str) -> None:
        await self.visible_payment(payment_id)
        body = schemas.validate("MetadataPatch", self.get_json_body())
        self.write_json(await payments.update_metadata(payment_id, body))


class PaymentStatusHandler(BaseHandler):
    async def put(self, payment_id: str) -> None:
        self.require_admin()
        payment_id = self.resource_id(payment_id, "payment")
        body = schemas.validate("PaymentStatusUpdate", self.get_json_body())
        if body["status"] == refunds.REFUNDED:  # one refund of what is left
            self.write_json(await refunds.refund_rest(payment_id, self.actor))
            return
        self.write_json(await payments.update_status(payment_id, body["status"], self.actor))


class PaymentHistoryHandler(PaymentReader):
    async def get(self, payment_id: str) -> None:
        payment = await self.visible_payment(payment_id)
        items = await payments.history(payment_id)
        if not self.caller.is_admin:  # who did it, and from where, is the back office's business
            items = [{k: v for k, v in item.items() if k not in ("actor_key_id", "remote_ip")} for item in items]
        self.write_json({"payment_id": payment_id, "version": payment.version, "items": items})


default_handlers = [
    (r"/api/v1/payments", PaymentsHandler),
    (r"/api/v1/payments/([^/]+)", PaymentHandler),
    (r"/api/v1/payments/([^/]+)/status", PaymentStatusHandler),
    (r"/api/v1/payments/([^/]+)/history", PaymentHistoryHandler),
]
