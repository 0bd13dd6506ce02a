"""/api/v1/payments: idempotent create, read, status changes."""

from __future__ import annotations

import re
from decimal import Decimal

from domain import payments, schemas
from domain.errors import APIError
from handlers.base import BaseHandler

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as HTTP header tokens are


class PaymentsHandler(BaseHandler):
    async def post(self) -> None:
        key = self.request.headers.get("Idempotency-Key")
        if key is not None and not _IDEMPOTENCY_KEY.match(key):
            raise APIError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters")
        body = schemas.validate("PaymentCreate", self.get_json_body())
        max_amount = Decimal(self.config["payments"]["max_amount"])
        created = await payments.create(body, max_amount, key)
        if created.replayed:
            self.set_header("Idempotent-Replayed", "true")
        self.set_status(created.status)
        self.finish(created.body)


class PaymentHandler(BaseHandler):
    async def get(self, payment_id: str) -> None:
        self.finish(await payments.get_json(self.resource_id(payment_id, "payment")))


class PaymentStatusHandler(BaseHandler):
    async def put(self, payment_id: str) -> None:
        payment_id = self.resource_id(payment_id, "payment")
        body = schemas.validate("PaymentStatusUpdate", self.get_json_body())
        self.write_json(await payments.update_status(payment_id, body["status"]))


default_handlers = [
    (r"/api/v1/payments", PaymentsHandler),
    (r"/api/v1/payments/([^/]+)", PaymentHandler),
    (r"/api/v1/payments/([^/]+)/status", PaymentStatusHandler),
]
