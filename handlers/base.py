"""BaseHandler: who is calling, JSON in and out, one error envelope, request ids,
CORS, security headers, the access log.

Every handler derives from it, so route handlers read as the HTTP contract:
parse, call, respond. Before a handler runs, ``prepare`` checks the body's size,
the caller's API key (``Authorization: Bearer``), its rate limit and the body's
media type. A key this instance has no verdict for is looked up in MariaDB only
after a token of the client address's bucket was taken, so an unknown key costs
what any call without a key costs, and key guessing cannot reach MariaDB faster
than that bucket allows. Errors are rendered as
``{"error": {"code": ..., "message": ..., "details": ...}}`` and logged once,
here. Request metrics are recorded once, in ``log_request`` (the application's
``log_function``), labelled by handler class, never by URL.
"""

from __future__ import annotations

import logging
import os
import re
from http import HTTPStatus
from typing import Any, overload

import tornado.web

from domain import codec, ratelimit
from domain.audit import Actor
from domain.auth import ADMIN, Authenticator, Principal
from domain.errors import APIError, not_found
from domain.ratelimit import RateLimiter
from handlers import tornado_internals
from managers import metrics
from managers.config import ConfigManager
from managers.dependencies import UNAVAILABLE  # a backing service failing mid-request: 503
from managers.logger import LoggerManager, request_id_var
from managers.mysql import is_shard_moving
from managers.redis import Cached

log = logging.getLogger("singleton.http")
access_log = logging.getLogger("singleton.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BEARER = re.compile(r"^Bearer +(\S+) *$", re.IGNORECASE)
_LENGTH = re.compile(r"^[0-9]{1,19}$")  # not str.isdigit(), which takes '²'
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Request metrics label the method from this list; any other token is "other", so
# invented methods cannot create new series.
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# Every response's headers before a handler adds its own (and Date, tornado_internals.reset_response).
DEFAULT_HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
# With API keys not checked (the bench's own switch, bench/without.py), every caller acts as admin.
AUTH_DISABLED = Principal("", ADMIN, None)


class Traffic:
    """An application's requests in flight, and whether it is draining: shutdown stops
    accepting, asks each client to close (``Connection: close``) and waits for zero."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False

    def started(self) -> None:
        self.in_flight += 1
        metrics.REQUESTS_IN_FLIGHT.set(self.in_flight)

    def finished(self) -> None:
        self.in_flight -= 1
        metrics.REQUESTS_IN_FLIGHT.set(self.in_flight)


def unauthorized(message: str, error: str | None = None) -> APIError:
    challenge = 'Bearer realm="api"' + (f', error="{error}"' if error else "")
    return APIError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def forbidden(message: str) -> APIError:
    return APIError(403, "forbidden", message)


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    # Callable without an API key (the caller is then None, and rate limited by address).
    public = False
    # Every method needs an admin key; a user key gets 403.
    admin_only = False
    # Calls take a token from the caller's bucket (rate_limit in config.yaml).
    rate_limited = True
    # The caller's key matters to the answer. False: an Authorization header is not even
    # looked at (probes, /metrics, the document): such calls never reach MariaDB.
    checks_key = True
    request_id: str = ""
    principal: Principal | None = None
    error: str | None = None  # why a request failed with 503, for the access line
    _body: bytearray

    @property
    def config(self) -> ConfigManager:
        return ConfigManager.instance()

    # -- request lifecycle --------------------------------------------------------------------
    def clear(self) -> None:
        """Tornado's ``clear()`` with our default headers written once, and no Server header."""
        tornado_internals.reset_response(self, DEFAULT_HEADERS)
        self.set_default_headers()

    def set_default_headers(self) -> None:
        if not self.request_id:  # also called again by clear() before an error page
            incoming = self.request.headers.get("X-Request-ID", "")
            self.request_id = incoming if _REQUEST_ID.match(incoming) else os.urandom(16).hex()
        tornado_internals.set_trusted_header(self, "X-Request-ID", self.request_id)
        request_id_var.set(self.request_id)
        self._set_cors_headers()

    def _set_cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if not origin or not ConfigManager.started():
            return
        cors = ConfigManager.instance()["cors"]
        if origin_allowed(origin, cors["allowed_origins"]):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Allow-Methods", ", ".join(cors["allowed_methods"]))
            self.set_header("Access-Control-Allow-Headers", ", ".join(cors["allowed_headers"]))
            self.set_header(
                "Access-Control-Expose-Headers",
                "X-Request-ID, ETag, Idempotent-Replayed, Retry-After, RateLimit-Limit, RateLimit-Remaining, "
                "RateLimit-Reset",
            )

    async def prepare(self) -> None:
        traffic: Traffic = self.application.settings["traffic"]
        traffic.started()
        self._counted = True
        if traffic.draining:  # this connection's last request: the process is stopping
            self.set_header("Connection", "close")
        self._body = bytearray()
        self._limit_body()
        preflight = self.request.method == "OPTIONS"
        self._address_charged = False
        self.principal = await self._authenticate() if self.checks_key else None
        if self.rate_limited and not (self.principal is None and self._address_charged):
            verdict = await RateLimiter.instance().check(self.request.method or "", self.principal, self.remote_ip)
            self._rate_limit_headers(verdict)
        if self.principal is None and not (self.public or preflight):
            if self.request.headers.get("Authorization"):
                raise unauthorized("the API key is not valid (unknown, revoked or malformed)", "invalid_token")
            raise unauthorized("an API key is required: Authorization: Bearer <key>")
        if self.admin_only and not preflight:
            self.require_admin()
        self._check_media_type()

    def _limit_body(self) -> None:
        # The body is streamed in (see the class decorator), so an oversized one is
        # refused here, from its Content-Length, before any of it is read. A chunked
        # body has no length up front: Tornado cuts it off at the same limit.
        limit = self.config["server"]["max_body_bytes"]
        length = self.request.headers.get("Content-Length", "")
        if _LENGTH.match(length) and int(length) > limit:
            raise APIError(413, "body_too_large", f"request body exceeds {limit} bytes")
        if self.request.connection is not None:
            self.request.connection.set_max_body_size(limit)  # type: ignore[attr-defined]  # on HTTP1Connection (every server connection), not on the HTTPConnection interface

    async def _authenticate(self) -> Principal | None:
        authenticator = Authenticator.instance()
        if not authenticator.enabled:
            return AUTH_DISABLED
        key = self.bearer()
        if key is None:
            return None
        try:
            return await authenticator.authenticate(key, self._limit_address)
        except UNAVAILABLE:
            if self.public:  # a public answer does not need to know who asked
                return None
            raise

    async def _limit_address(self) -> None:
        """Before a key is looked up: a token of the client address's bucket (429 without
        one), which is then this call's token if the key turns out not to be valid."""
        verdict = await RateLimiter.instance().check(self.request.method or "", None, self.remote_ip)
        self._address_charged = True
        self._rate_limit_headers(verdict)

    def _rate_limit_headers(self, verdict: ratelimit.Verdict | None) -> None:
        for name, value in ratelimit.headers(verdict).items() if verdict else ():
            tornado_internals.set_trusted_header(self, name, value)  # digits

    def bearer(self) -> str | None:
        """The credential of an ``Authorization: Bearer`` header, if there is one."""
        match = _BEARER.match(self.request.headers.get("Authorization", ""))
        return match.group(1) if match else None

    def _check_media_type(self) -> None:
        """A body sent with POST or PUT must be JSON: a cross-site form post cannot be."""
        if self.request.method not in BODY_METHODS:
            return
        has_body = self.request.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.request.headers
        media_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if has_body and media_type != "application/json":
            raise APIError(415, "unsupported_media_type", "the request body must be application/json")

    @property
    def remote_ip(self) -> str:
        return self.request.remote_ip or ""

    def data_received(self, chunk: bytes) -> None:
        self._body += chunk

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            self.application.settings["traffic"].finished()
            self._counted = False

    def options(self, *args: Any, **kwargs: Any) -> None:
        """CORS preflight: the headers were set in set_default_headers."""
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

    # -- who may see what -----------------------------------------------------------------
    @property
    def caller(self) -> Principal:
        """The authenticated caller (handlers that are not ``public`` always have one)."""
        if self.principal is None:
            raise unauthorized("an API key is required: Authorization: Bearer <key>")
        return self.principal

    @property
    def actor(self) -> Actor:
        """The caller as the audit trail records it: its key, this request's id, its address."""
        return Actor(self.caller.key_id or None, self.request_id, self.remote_ip)

    def require_admin(self) -> None:
        if not self.caller.is_admin:
            raise forbidden("this needs an admin key")

    def check_owner(self, owner: str, what: str, ident: str) -> None:
        """Another user's resource answers 404, exactly as one that does not exist."""
        if not self.caller.can_see(owner):
            raise not_found(what, ident)

    def visible_user_id(self, value: str) -> str:
        """A user id from the path, if the caller may see that user (404 otherwise)."""
        user_id = self.resource_id(value, "user")
        self.check_owner(user_id, "user", user_id)
        return user_id

    # -- input -------------------------------------------------------------------------------
    @overload
    def query(self, name: str) -> str | None: ...
    @overload
    def query(self, name: str, default: str) -> str: ...
    def query(self, name: str, default: str | None = None) -> str | None:
        """A query parameter exactly as sent (the last, if repeated). Tornado's own getters
        strip whitespace and turn control characters into spaces, so ``limit=5%0A`` or
        ``client_id=c%01`` would pass for values the document's patterns refuse."""
        values = self.request.query_arguments.get(name)
        return self.decode_argument(values[-1], name=name) if values else default

    def resource_id(self, value: str, what: str, status: int = 404) -> str:
        """Ids are UUIDs. In a path anything else names nothing (404); in a query
        parameter it is a bad request (``status=400``)."""
        if codec.is_uuid(value):
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

    def finish_cached(self, entry: Cached) -> None:
        """A cached resource, its version as the ETag; 304 and no body when the GET's
        If-None-Match names it. (Tornado's own ETag, made when a 200 has none, is a SHA-1
        of the body: 2.6 µs more, timeit.)"""
        tornado_internals.set_trusted_header(self, "ETag", codec.etag(entry.version))  # a quoted integer
        if "If-None-Match" in self.request.headers and self.check_etag_header():
            self.set_status(304)
            self.finish()
        else:
            self.finish(entry.body)

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(codec.dumps(value))

    # -- errors ------------------------------------------------------------------------------
    def allowed_methods(self) -> list[str]:
        """The methods this handler implements, for a 405's ``Allow``."""
        base = tornado.web.RequestHandler
        return [m for m in self.SUPPORTED_METHODS if getattr(type(self), m.lower()) is not getattr(base, m.lower())]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            self.set_status(exc.status)
            code, message, details = exc.code, exc.message, exc.details
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, UNAVAILABLE):
            self.set_status(503)
            self.set_header("Retry-After", "1")
            code, message, details = "dependency_unavailable", "a backing service is unavailable; retry later", None
            if is_shard_moving(exc):
                code, message = "shard_moving", "this user's data is moving to another shard; retry in a moment"
        elif isinstance(exc, tornado.web.HTTPError) or exc is None:
            code = HTTPStatus(status_code).phrase.lower().replace(" ", "_")
            message = getattr(exc, "log_message", None) or HTTPStatus(status_code).phrase
            details = None
            if status_code == 405:
                self.set_header("Allow", ", ".join(self.allowed_methods()))
                message = f"{self.request.method} is not allowed here"
        else:
            code, message, details = "internal_error", "internal server error", None
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(codec.dumps({"error": {"code": code, "message": message, "details": details}}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """The one place request errors are logged: client errors are not logged here."""
        if isinstance(value, (APIError, tornado.web.HTTPError)):
            return
        if isinstance(value, UNAVAILABLE):
            self.error = repr(value)[:300]  # on the access line: one line per request, not two
            return
        log.error("unhandled error", exc_info=(typ, value, tb), extra={"path": self.request.path})


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    return origin in allowed or "*" in allowed


class NotFoundHandler(BaseHandler):
    """Unknown routes get the same JSON envelope as everything else, whatever the method."""

    public = True

    async def prepare(self) -> None:
        await super().prepare()
        raise APIError(404, "not_found", f"no route for {self.request.path}")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:  # an unknown method on an unknown route: the route is what is missing
            kwargs = {"exc_info": (APIError, not_found("route", self.request.path), None)}
        super().write_error(status_code, **kwargs)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's log_function: one access line and the request metrics, per request."""
    status = handler.get_status()
    duration = handler.request.request_time()
    name = type(handler).__name__
    method = handler.request.method or ""
    duration_series, count_series = metrics.request_series(name, method if method in METHOD_LABELS else "other", status)
    duration_series.observe(duration)
    count_series.inc()
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    principal = getattr(handler, "principal", None)
    fields = {
        "request_id": getattr(handler, "request_id", None),
        "method": method[:16],
        "route": name,
        "path": handler.request.path[:256],
        "status": status,
        "duration_ms": round(duration * 1000, 3),
        "remote_ip": handler.request.remote_ip,
        "user_agent": handler.request.headers.get("User-Agent", "")[:256],
    }
    # Only what the request has: a line without a None to leave out is cheaper to write.
    if principal is not None and principal.key_id is not None:
        fields["key_id"] = principal.key_id
    if isinstance(handler, BaseHandler) and handler.error is not None:
        fields["error"] = handler.error
    if LoggerManager.started():  # the service: one line of text, no LogRecord
        LoggerManager.instance().line(access_log, level, "request", fields)
    else:  # the application alone (tests, tools): a record, to whatever handlers there are
        access_log.log(level, "request", extra=fields)
