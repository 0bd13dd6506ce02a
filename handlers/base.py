"""BaseHandler: JSON in and out, one error envelope, request ids, CORS, access log.

Every handler derives from it, so route handlers read as the HTTP contract:
parse, call, respond. Errors are rendered as
``{"error": {"code": ..., "message": ..., "details": ...}}`` and logged once,
here. Request metrics are recorded once, in ``log_request`` (the application's
``log_function``), labelled by handler class, never by URL.
"""

from __future__ import annotations

import logging
import re
import uuid
from http import HTTPStatus
from typing import Any

import tornado.web

from domain import codec
from domain.errors import APIError, not_found
from managers import kafka_producer, metrics, mongodb, mysql
from managers.config import ConfigManager
from managers.kafka_consumer import KafkaConsumerManager
from managers.kafka_producer import KafkaProducerManager
from managers.logger import request_id_var
from managers.mongodb import MongoManager
from managers.mysql import MySQLManager
from managers.redis import RedisManager

log = logging.getLogger("singleton.http")
access_log = logging.getLogger("singleton.access")

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A dependency failing mid-request is the service being unavailable, not a bug.
DEPENDENCY_ERRORS = mysql.UNAVAILABLE + mongodb.UNAVAILABLE + kafka_producer.UNAVAILABLE


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    # Requests that have started and not yet finished; shutdown waits for zero.
    in_flight = 0
    request_id: str = ""
    _body: bytearray

    # -- the managers every handler shares -------------------------------------------------
    @property
    def config(self) -> ConfigManager:
        return ConfigManager.instance()

    @property
    def mysql(self) -> MySQLManager:
        return MySQLManager.instance()

    @property
    def redis(self) -> RedisManager:
        return RedisManager.instance()

    @property
    def mongodb(self) -> MongoManager:
        return MongoManager.instance()

    @property
    def kafka(self) -> KafkaProducerManager:
        return KafkaProducerManager.instance()

    @property
    def kafka_consumer(self) -> KafkaConsumerManager:
        return KafkaConsumerManager.instance()

    # -- request lifecycle --------------------------------------------------------------------
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        if not self.request_id:  # also called again by clear() before an error page
            incoming = self.request.headers.get("X-Request-ID", "")
            self.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        self.set_header("X-Request-ID", self.request_id)
        request_id_var.set(self.request_id)
        self._set_cors_headers()

    def _set_cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if not origin or not ConfigManager.started():
            return
        cors = ConfigManager.instance()["cors"]
        if origin in cors["allowed_origins"] or "*" in cors["allowed_origins"]:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Allow-Methods", ", ".join(cors["allowed_methods"]))
            self.set_header("Access-Control-Allow-Headers", ", ".join(cors["allowed_headers"]))
            self.set_header("Access-Control-Expose-Headers", "X-Request-ID, ETag, Idempotent-Replayed")

    def prepare(self) -> None:
        BaseHandler.in_flight += 1
        self._counted = True
        # The body is streamed in (see the class decorator), so an oversized one is
        # refused here, from its Content-Length, before any of it is read. A chunked
        # body has no length up front: Tornado cuts it off at the same limit.
        limit = self.config["server"]["max_body_bytes"]
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise APIError(413, "body_too_large", f"request body exceeds {limit} bytes")
        if self.request.connection is not None:
            self.request.connection.set_max_body_size(limit)
        self._body = bytearray()

    def data_received(self, chunk: bytes) -> None:
        self._body += chunk

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            BaseHandler.in_flight -= 1
            self._counted = False

    def options(self, *args: Any, **kwargs: Any) -> None:
        """CORS preflight: the headers were set in set_default_headers."""
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

    # -- input -------------------------------------------------------------------------------
    def resource_id(self, value: str, what: str, status: int = 404) -> str:
        """Ids are UUIDs. In a path anything else names nothing (404); in a query
        parameter it is a bad request (``status=400``)."""
        if _UUID.match(value):
            return value
        if status == 404:
            raise not_found(what, value[:64])
        raise APIError(status, f"invalid_{what}_id", f"{what}_id must be a UUID")

    # -- JSON ---------------------------------------------------------------------------------
    def get_json_body(self) -> Any:
        body = bytes(self._body)
        if not body:
            raise APIError(400, "invalid_json", "request body is empty; a JSON object is expected")
        try:
            return codec.loads(body)
        except codec.InvalidJSON as exc:
            raise APIError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(codec.dumps(value))

    # -- errors ------------------------------------------------------------------------------
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            self.set_status(exc.status)
            code, message, details = exc.code, exc.message, exc.details
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, DEPENDENCY_ERRORS):
            self.set_status(503)
            self.set_header("Retry-After", "1")
            code, message, details = "dependency_unavailable", "a backing service is unavailable; retry later", None
        elif isinstance(exc, tornado.web.HTTPError):
            code = HTTPStatus(status_code).phrase.lower().replace(" ", "_")
            message, details = exc.log_message or HTTPStatus(status_code).phrase, None
        else:
            code, message, details = "internal_error", "internal server error", None
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(codec.dumps({"error": {"code": code, "message": message, "details": details}}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """The one place request errors are logged: client errors are not logged here."""
        if isinstance(value, (APIError, tornado.web.HTTPError)):
            return
        if isinstance(value, DEPENDENCY_ERRORS):
            log.warning("dependency unavailable", extra={"error": repr(value), "path": self.request.path})
            return
        log.error("unhandled error", exc_info=(typ, value, tb), extra={"path": self.request.path})


class NotFoundHandler(BaseHandler):
    """Unknown routes get the same JSON envelope as everything else."""

    def prepare(self) -> None:
        super().prepare()
        raise APIError(404, "not_found", f"no route for {self.request.path}")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's log_function: one access line and the request metrics, per request."""
    status = handler.get_status()
    duration = handler.request.request_time()
    name = type(handler).__name__
    method = handler.request.method or ""
    metrics.REQUEST_DURATION.labels(name, method, str(status)).observe(duration)
    metrics.REQUESTS.labels(name, method, str(status)).inc()
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
    access_log.log(
        level,
        "request",
        extra={
            "request_id": getattr(handler, "request_id", None),
            "method": method,
            "route": name,
            "path": handler.request.path,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
        },
    )
