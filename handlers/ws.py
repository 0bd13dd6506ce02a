"""GET /ws?user_id=..&client_id=..[&last_event_id=..]: a user's live events.

Everything is checked before the upgrade (bad parameters 400, unknown user
404, foreign Origin 403), with the same JSON errors as the REST API. After it
the socket is the hub's: open, on_message and on_close stay a few lines.
"""

from __future__ import annotations

import json
import re
from asyncio import Future

import tornado.websocket
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from domain import users
from domain.errors import APIError
from handlers.base import BaseHandler
from managers.websocket_hub import WebSocketHub

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class EventsSocket(tornado.websocket.WebSocketHandler, BaseHandler):
    user_id: str
    client_id: str

    async def get(self, *args, **kwargs) -> None:
        self.user_id = self.resource_id(self.get_query_argument("user_id", ""), "user", status=400)
        client_id = self.get_query_argument("client_id", "")
        if not _CLIENT_ID.match(client_id):
            raise APIError(400, "invalid_client_id", "client_id must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        self.client_id = client_id
        last = self.get_query_argument("last_event_id", None)
        self.last_event_id = None if last is None else self.resource_id(last, "event", status=400)
        if not await users.exists(self.user_id):
            raise APIError(404, "not_found", f"user {self.user_id} not found")
        self.pending_bytes, self.live, self.held, self.replayed_ids = 0, False, [], set()
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        allowed = self.config["cors"]["allowed_origins"]
        return origin in allowed or "*" in allowed or super().check_origin(origin)

    async def open(self, *args, **kwargs) -> None:
        hub = WebSocketHub.instance()
        if not hub.add(self):
            return
        hub.send_frame(self, {"type": "connected", "user_id": self.user_id, "client_id": self.client_id})
        await hub.catch_up(self, self.last_event_id)

    def on_message(self, message: str | bytes) -> None:
        hub = WebSocketHub.instance()
        try:
            kind = json.loads(message).get("type")
        except (ValueError, AttributeError):
            kind = None
        if kind == "ping":
            hub.send_frame(self, {"type": "pong"})
        else:
            hub.send_frame(
                self,
                {
                    "type": "error",
                    "error": {"code": "unknown_message", "message": 'the only client message is {"type": "ping"}'},
                },
            )

    def write_frame(self, frame: bytes) -> Future[None]:
        """Write a message the hub already framed (``websocket_hub.text_frame``).

        The hub frames an event once for all of its user's connections; Tornado's
        ``write_message`` would frame it again per connection and wrap each write
        in a new task. No compression is negotiated (``get_compression_options``
        is left at None), so these bytes are exactly what ``write_message`` sends.
        """
        ws = self.ws_connection
        if ws is None or ws.is_closing() or ws.stream is None:
            raise WebSocketClosedError()
        try:
            return ws.stream.write(frame)
        except StreamClosedError:
            raise WebSocketClosedError() from None

    def on_close(self) -> None:
        if WebSocketHub.started():
            # No close code: the peer vanished or stopped answering pings.
            WebSocketHub.instance().remove(self, "client" if self.close_code is not None else "lost")


default_handlers = [(r"/ws", EventsSocket)]
