"""The places the service reaches into Tornado's private parts, in one module.

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
- ``reset_response`` and ``set_trusted_header``: ``RequestHandler.clear()``'s state
  (``_headers``, ``_write_buffer``, ``_status_code``, ``_reason``), so that a request's
  default headers are written once, and headers whose values the service made are
  written without ``set_header()``'s check. Together they took 19 µs off the
  326 of a cached GET (an A/B by hand; docs/BENCHMARKS.md's history table).
"""

from __future__ import annotations

import time
from asyncio import Future
from collections.abc import Callable, Mapping
from http import HTTPStatus

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


_OK = HTTPStatus.OK.phrase  # what clear() takes from httputil.responses
_date = (0, "")  # the Date header's value, formatted once a second: (its second, the text)


def reset_response(handler: tornado.web.RequestHandler, headers: Mapping[str, str]) -> None:
    """What ``RequestHandler.clear()`` does, with ``headers`` and a Date as the response's
    headers. Tornado's writes a Server, a Content-Type and a Date formatted on each call,
    each value checked, for ``set_default_headers()`` to remove or replace them."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, httputil.format_timestamp(now))
    response = httputil.HTTPHeaders()
    for name, value in headers.items():
        response[name] = value
    response["Date"] = _date[1]
    handler._headers = response
    handler._write_buffer = []
    handler._status_code = 200
    handler._reason = _OK


def set_trusted_header(handler: tornado.web.RequestHandler, name: str, value: str) -> None:
    """A response header whose value the service made (digits, a checked request id), so
    that it cannot hold what ``set_header()`` checks for (control characters)."""
    handler._headers[name] = value
