"""/api/v1/payments/{id}/refunds and /api/v1/refunds/{id}: refunds, made by an admin key,
read by it or by the payment's user (anyone else's answer 404, as if they did not exist)."""

from __future__ import annotations

from domain import refunds, schemas
from handlers.base import BaseHandler
from handlers.payments import PaymentReader, idempotency_key
from handlers.users import page_limit


class PaymentRefundsHandler(PaymentReader):
    async def post(self, payment_id: str) -> None:
        self.require_admin()
        payment_id = self.resource_id(payment_id, "payment")
        key = idempotency_key(self.request.headers.get("Idempotency-Key"))
        body = schemas.validate("RefundCreate", self.get_json_body())
        max_amount: int = self.config["payments"]["max_amount"]
        made = await refunds.create(payment_id, body.get("amount"), body.get("reason"), self.actor, max_amount, key)
        if made.replayed:
            self.set_header("Idempotent-Replayed", "true")
        self.set_status(made.status)
        self.finish(made.body)

    async def get(self, payment_id: str) -> None:
        await self.visible_payment(payment_id)
        limit = page_limit(self.query("limit", "20"))
        self.write_json(await refunds.list_for_payment(payment_id, limit, self.query("cursor")))


class RefundHandler(BaseHandler):
    async def get(self, refund_id: str) -> None:
        refund_id = self.resource_id(refund_id, "refund")
        refund, owner = await refunds.get(refund_id)
        self.check_owner(owner, "refund", refund_id)
        self.write_json(refund)


default_handlers = [
    (r"/api/v1/payments/([^/]+)/refunds", PaymentRefundsHandler),
    (r"/api/v1/refunds/([^/]+)", RefundHandler),
]
