"""WebSockets: ``POST /api/v1/ws-tokens`` issues a short-lived token, and
``GET /ws?token=..&client_id=..[&last_event_id=..]`` streams that user's events.

Browsers cannot set headers on a WebSocket, so the socket carries a signed token
(``?token=`` or ``Authorization: Bearer``) instead of an API key; the user comes
from the token. Everything is checked before the upgrade (no or bad token 401,
a ``user_id`` other than the token's 403, bad parameters 400, too many sockets
429, foreign Origin 403), with the same JSON errors as the REST API. After it
the socket is the hub's: open, on_message and on_close stay a few lines.

The socket lives on its token: it closes when the token expires (4002, after
``websocket.token_expiry_grace_s``) unless the client sends a fresh one first
(``{"type": "refresh", "token"}``, answered ``{"type": "refreshed", "expires_at"}``),
and when the key that minted it is revoked (4003, domain/revocations.py).
"""

from __future__ import annotations

import logging
import re
from asyncio import Future
from typing import Any

import tornado.websocket
from tornado import httputil

from domain import codec, replay, schemas, users
from domain.auth import Authenticator, InvalidToken, TokenClaims, expires_at
from domain.errors import APIError, user_not_found
from handlers import tornado_internals
from handlers.base import BaseHandler, forbidden, origin_allowed, unauthorized
from managers import mysql
from managers.metrics import SocketClosed
from managers.websocket_hub import CLOSE_KEY_REVOKED, CLOSE_TRY_AGAIN, Connection, Frame, WebSocketHub

log = logging.getLogger("singleton.websocket")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")  # the document's Jwt
MAX_TOKEN_CHARS = 1024
SUPPORTED_VERSIONS = ("7", "8", "13")  # what Tornado's WebSocket protocol accepts
EMPTY_HEADERS = httputil.HTTPHeaders()  # shared by every open socket, never written to


class WsTokensHandler(BaseHandler):
    async def post(self) -> None:
        body = schemas.validate("WsTokenCreate", self.get_json_body() if self._body else {})
        user_id = body.get("user_id") or self.caller.user_id
        if user_id is None:
            raise APIError(422, "validation_failed", "an admin key must name the user_id", [{"field": "user_id"}])
        if not self.caller.can_see(user_id) or not await users.exists(user_id):
            raise user_not_found(user_id)
        self.write_json(Authenticator.instance().mint_token(user_id, self.caller.key_id), 201)


class EventsSocket(tornado.websocket.WebSocketHandler, BaseHandler):
    # The socket's credential is its token, not an API key, and its limits are the
    # per-user and per-address socket counts, not the request rate.
    public = True
    rate_limited = False
    checks_key = False  # a Bearer here is a token, not an API key
    conn: Connection | None = None
    user_id: str = ""
    claims: TokenClaims | None = None  # the token that opened the socket

    async def get(self, *args: Any, **kwargs: Any) -> None:
        self._check_query()
        self._check_handshake()
        self.user_id = self._token_user()
        requested = self.query("user_id")
        if requested is not None and requested != self.user_id:
            raise forbidden("user_id is not the token's user")
        self.client_id = self.query("client_id", "")
        self.last_event_id = self.query("last_event_id")
        refusal = WebSocketHub.instance().refusal(self.user_id, self.client_id, self.remote_ip)
        if refusal is not None:
            raise APIError(429, "too_many_sockets", refusal, headers={"Retry-After": "5"})
        await super().get(*args, **kwargs)

    def _check_query(self) -> None:
        """The query against the parameters the document declares, before anything else:
        one it calls invalid is a 400 (a malformed token, a 401), handshake or not, so
        that only a well-formed request meets the 426 of a missing handshake. Every
        answer /ws gives before the upgrade is one the document declares."""
        token = self.query("token")
        if token is not None and not (len(token) <= MAX_TOKEN_CHARS and _JWT.fullmatch(token)):
            raise unauthorized("the token is not valid (not a JSON Web Token)", "invalid_token")
        requested = self.query("user_id")
        if requested is not None:
            self.resource_id(requested, "user", status=400)
        if not _CLIENT_ID.fullmatch(self.query("client_id", "")):
            raise APIError(400, "invalid_client_id", "client_id must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        last = self.query("last_event_id")
        if last is not None:
            self.resource_id(last, "event", status=400)

    def _check_handshake(self) -> None:
        """What Tornado checks before an upgrade, answered in JSON instead of its plain text."""
        headers = self.request.headers
        connection = {part.strip().lower() for part in headers.get("Connection", "").split(",")}
        if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection:
            raise APIError(426, "upgrade_required", "this is a WebSocket endpoint", headers={"Upgrade": "websocket"})
        if headers.get("Sec-WebSocket-Version") not in SUPPORTED_VERSIONS or not headers.get("Sec-WebSocket-Key"):
            raise APIError(
                426,
                "upgrade_required",
                "a WebSocket handshake needs Sec-WebSocket-Key and Sec-WebSocket-Version 13",
                headers={"Upgrade": "websocket", "Sec-WebSocket-Version": ", ".join(SUPPORTED_VERSIONS)},
            )
        # Tornado's own cross-origin algorithm, the one its get() would run next, asked
        # first for a JSON 403.
        if tornado_internals.cross_origin_refusal(self, self.check_origin) is not None:
            raise forbidden("this Origin may not open a WebSocket here (cors.allowed_origins)")

    def _token_user(self) -> str:
        token = self.query("token") or self.bearer()
        if token is None:
            raise unauthorized("a token is required: POST /api/v1/ws-tokens, then /ws?token=...")
        try:
            self.claims = Authenticator.instance().verify_token(token)
            return self.claims.user_id
        except InvalidToken:
            message = "the token is not valid (expired, or not signed by this service)"
            raise unauthorized(message, "invalid_token") from None

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(origin, self.config["cors"]["allowed_origins"]) or super().check_origin(origin)

    async def open(self, *args: Any, **kwargs: Any) -> None:
        hub = WebSocketHub.instance()
        self._forget_the_handshake()
        assert self.claims is not None
        try:
            revoked = await Authenticator.instance().key_revoked(self.claims.key_id)
        except mysql.UNAVAILABLE as exc:  # the key cannot be checked now: no socket on it
            log.warning("token's key not checked: MariaDB unavailable", extra={"error": repr(exc)})
            self.close(CLOSE_TRY_AGAIN, "cannot check the token now: try again")
            return
        if revoked:
            self.close(CLOSE_KEY_REVOKED, "token revoked")
            return
        key_id, expires = self.claims.key_id, self.claims.expires_at
        self.conn = hub.add(self, self.user_id, self.client_id, self.remote_ip, key_id, expires)
        if self.conn is None:
            return
        hub.send(
            self.conn,
            {
                "type": Frame.CONNECTED,
                "user_id": self.user_id,
                "client_id": self.client_id,
                "expires_at": expires_at(expires),
            },
        )
        missed = None
        if self.last_event_id is not None:
            try:
                missed = await replay.missed_events(self.user_id, self.last_event_id, hub.replay_max_events)
            except mysql.UNAVAILABLE as exc:  # the database is out of reach: say so and go live
                log.warning("replay unavailable", extra={"user_id": self.user_id, "error": repr(exc)})
        hub.go_live(self.conn, self.last_event_id, missed)

    def _forget_the_handshake(self) -> None:
        """Drop what only the upgrade needed (its headers, the token in its query): a
        socket lives for hours, and across 10,000s of them each kilobyte counts."""
        self.request.headers = EMPTY_HEADERS
        self.request.arguments = self.request.query_arguments = {}
        self.request.uri = self.request.query = ""
        tornado_internals.drop_response_headers(self, EMPTY_HEADERS)

    async def on_message(self, message: str | bytes) -> None:
        if self.conn is None:
            return
        try:
            body = codec.loads(message)
            kind = body.get("type")
        except (codec.InvalidJSON, AttributeError):
            kind = None
        if kind == "ping":
            WebSocketHub.instance().send(self.conn, {"type": Frame.PONG})
        elif kind == "refresh":
            await self._refresh(self.conn, body.get("token"))
        else:
            message = 'the client messages are {"type": "ping"} and {"type": "refresh", "token": "..."}'
            self._error("unknown_message", message)

    async def _refresh(self, conn: Connection, token: object) -> None:
        """A fresh token for this socket: ours, unexpired, the same user's, its key not
        revoked. Refused with an error frame, the socket keeping its old token's expiry."""
        if not isinstance(token, str):
            return self._error("invalid_token", "refresh needs a token: POST /api/v1/ws-tokens")
        try:
            claims = Authenticator.instance().verify_token(token)
        except InvalidToken:
            return self._error("invalid_token", "the token is not valid (expired, or not signed by this service)")
        if claims.user_id != self.user_id:
            return self._error("forbidden", "the token is another user's")
        try:
            revoked = await Authenticator.instance().key_revoked(claims.key_id)
        except mysql.UNAVAILABLE:
            return self._error("dependency_unavailable", "cannot check the token now: try again")
        hub = WebSocketHub.instance()
        if revoked or not hub.refresh(conn, claims.key_id, claims.expires_at):
            return self._error("invalid_token", "the token's key is revoked")
        hub.send(conn, {"type": Frame.REFRESHED, "expires_at": expires_at(claims.expires_at)})
        return None

    def _error(self, code: str, message: str) -> None:
        if self.conn is not None:
            WebSocketHub.instance().send(self.conn, {"type": Frame.ERROR, "error": {"code": code, "message": message}})

    def write_frame(self, frame: bytes) -> Future[None] | None:
        """Write a message the hub already framed (``websocket_hub.text_frame``); a
        Future for what is left to send, or None when the kernel took it all.

        The hub frames an event once for all of its user's connections; Tornado's
        ``write_message`` would frame it again per connection and wrap each write
        in a new task. No compression is negotiated (``get_compression_options``
        is left at None), so these bytes are exactly what ``write_message`` sends.
        """
        return tornado_internals.send_frame(self, frame)

    def on_close(self) -> None:
        # Also called for a request that closed before its handshake completed: no conn then.
        if self.conn is not None and WebSocketHub.started():
            # No close code: the peer vanished or stopped answering pings.
            reason = SocketClosed.CLIENT if self.close_code is not None else SocketClosed.LOST
            WebSocketHub.instance().remove(self.conn, reason)


default_handlers = [
    (r"/api/v1/ws-tokens", WsTokensHandler),
    (r"/ws", EventsSocket),
]
