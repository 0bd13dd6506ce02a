"""The three places the service reaches into Tornado's private parts, in one module.

Each is pinned to Tornado 6.6.1 (setup.cfg) and held to its behaviour by
tests/handlers/test_tornado_internals.py, which fails if an upgrade changes it:

- ``cross_origin_refusal``: ``RequestHandler._check_cross_origin``, the algorithm a
  WebSocket upgrade runs (Sec-Fetch-Site, then Origin against Host, then
  ``check_origin``), asked before the upgrade so the refusal is our JSON 403.
- ``drop_response_headers``: ``RequestHandler._headers``, the response headers an
  open socket no longer needs (one shared empty object instead of a copy per socket).
- ``send_frame``: an already framed WebSocket message written to the connection's
  ``IOStream`` (``WebSocketProtocol.stream``), straight to its socket when nothing is
  queued before it.
"""

from __future__ import annotations

from asyncio import Future
from collections.abc import Callable

import tornado.web
from tornado import httputil
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler


def cross_origin_refusal(handler: tornado.web.RequestHandler, check_origin: Callable[[str], bool]) -> str | None:
    """Why Tornado would refuse this request as cross-origin, or None if it would not."""
    return handler._check_cross_origin(check_origin)


def drop_response_headers(handler: tornado.web.RequestHandler, empty: httputil.HTTPHeaders) -> None:
    """Replace the handler's response headers, once they are sent, with a shared empty set."""
    handler._headers = empty


def send_frame(handler: WebSocketHandler, frame: bytes) -> Future[None] | None:
    """Write ``frame``, a complete WebSocket frame, to the handler's connection: None when
    the kernel took all of it, else a Future for the rest. Raises WebSocketClosedError
    when the connection is closed or closing."""
    ws = handler.ws_connection
    stream = getattr(ws, "stream", None)
    if ws is None or ws.is_closing() or stream is None:
        raise WebSocketClosedError()
    try:
        if type(stream) is IOStream and not stream.writing():  # plain TCP, nothing queued before it
            try:
                sent = stream.socket.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                raise WebSocketClosedError() from None
            if sent == len(frame):
                return None
            frame = frame[sent:]
        return stream.write(frame)
    except StreamClosedError:
        raise WebSocketClosedError() from None
