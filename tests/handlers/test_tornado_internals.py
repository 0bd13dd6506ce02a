"""What handlers/tornado_internals.py relies on in Tornado's private parts, held to the
pinned version: if an upgrade renames or changes one of them, these fail before a
WebSocket does. No server: a bare request, and a real socket pair."""

from __future__ import annotations

import asyncio
import email.utils
import socket
from types import SimpleNamespace
from typing import cast

import pytest
import tornado.web
from tornado import httputil
from tornado.iostream import IOStream
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from handlers import tornado_internals


def handler_for(**headers: str) -> tornado.web.RequestHandler:
    """A handler for ``GET /ws`` with ``headers``, on a connection that is never used."""
    request = httputil.HTTPServerRequest(
        start_line=httputil.RequestStartLine("GET", "/ws", "HTTP/1.1"),
        headers=httputil.HTTPHeaders({"Host": "api.example", **{k.replace("_", "-"): v for k, v in headers.items()}}),
        connection=cast(httputil.HTTPConnection, SimpleNamespace(set_close_callback=lambda callback: None)),
    )
    return tornado.web.RequestHandler(tornado.web.Application(), request)


def allow(origin: str) -> bool:
    return origin == "https://app.example"


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),  # no Origin: not a browser
        ({"Origin": "http://api.example"}, False),  # the same host
        ({"Origin": "https://evil.example"}, True),
        ({"Origin": "https://app.example"}, False),  # allowed by check_origin
        ({"Sec_Fetch_Site": "same-origin", "Origin": "https://evil.example"}, False),
        ({"Sec_Fetch_Site": "cross-site", "Origin": "https://evil.example"}, True),
        ({"Sec_Fetch_Site": "cross-site", "Origin": "https://app.example"}, False),
    ],
)
def test_cross_origin_refusal_follows_tornados_algorithm(headers, refused):
    assert (tornado_internals.cross_origin_refusal(handler_for(**headers), allow) is not None) is refused


def test_response_headers_live_where_they_are_dropped():
    handler = handler_for()
    handler.set_header("X-Request-ID", "abc")
    assert handler._headers.get("X-Request-ID") == "abc"  # what drop_response_headers replaces
    empty = httputil.HTTPHeaders()
    tornado_internals.drop_response_headers(handler, empty)
    assert handler._headers is empty


def test_reset_response_leaves_a_handler_as_clear_does():
    ours, tornados = handler_for(), handler_for()
    for handler in (ours, tornados):  # a response half made, as before an error page
        handler.set_status(404)
        handler.set_header("X-Something", "1")
        handler.write("partial")
    before = dict(vars(tornados))
    tornado.web.RequestHandler.clear(tornados)
    # Every attribute clear() sets, reset_response sets to the same: an upgrade that makes
    # clear() reset something more fails here.
    cleared = {name for name, value in vars(tornados).items() if name not in before or before[name] is not value}
    assert cleared == {"_headers", "_write_buffer", "_status_code", "_reason"}
    ours_before = dict(vars(ours))
    tornado_internals.reset_response(ours, {"Content-Type": "application/json"})
    assert {name for name, value in vars(ours).items() if ours_before.get(name) is not value} == cleared
    assert (tornados.get_status(), tornados._reason, tornados._write_buffer) == (200, "OK", [])
    assert (ours.get_status(), ours._reason, ours._write_buffer) == (200, "OK", [])
    assert sorted(ours._headers) == ["Content-Type", "Date"]
    assert ours._headers["Content-Type"] == "application/json"
    theirs = email.utils.parsedate_to_datetime(tornados._headers["Date"])
    assert abs((email.utils.parsedate_to_datetime(ours._headers["Date"]) - theirs).total_seconds()) <= 1


def test_a_trusted_header_lands_where_set_header_puts_it():
    ours, tornados = handler_for(), handler_for()
    tornado_internals.set_trusted_header(ours, "RateLimit-Remaining", "41")
    tornados.set_header("RateLimit-Remaining", "41")
    assert ours._headers.get_all() and list(ours._headers.get_all()) == list(tornados._headers.get_all())


async def _stream_pair() -> tuple[IOStream, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    return IOStream(ours), peer


def _socket_of(stream: IOStream, closing: bool = False) -> WebSocketHandler:
    """A handler's view of its connection: the two attributes send_frame reads (closing as
    WebSocketProtocol13.is_closing says: once its stream is closed, or it started closing)."""
    connection = SimpleNamespace(stream=stream, is_closing=lambda: closing or stream.closed())
    return cast(WebSocketHandler, SimpleNamespace(ws_connection=connection))


def _read_exactly(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        assert chunk, "the peer's end closed early"
        data += chunk
    return data


@pytest.mark.gen_test
async def test_a_small_frame_goes_straight_to_the_socket():
    stream, peer = await _stream_pair()
    try:
        assert tornado_internals.send_frame(_socket_of(stream), b"\x81\x02hi") is None
        assert _read_exactly(peer, 4) == b"\x81\x02hi"
    finally:
        stream.close()
        peer.close()


@pytest.mark.gen_test
async def test_a_frame_larger_than_the_socket_buffer_is_queued_and_arrives_whole():
    stream, peer = await _stream_pair()
    frame = bytes(range(256)) * 40_000  # 10 MB: more than any socket buffer takes at once
    try:
        pending = tornado_internals.send_frame(_socket_of(stream), frame)
        assert pending is not None and stream.writing()
        received = await asyncio.get_running_loop().run_in_executor(None, _read_exactly, peer, len(frame))
        await pending
        assert received == frame
    finally:
        stream.close()
        peer.close()


@pytest.mark.gen_test
async def test_a_closed_or_closing_connection_raises_websocket_closed():
    stream, peer = await _stream_pair()
    with pytest.raises(WebSocketClosedError):
        tornado_internals.send_frame(_socket_of(stream, closing=True), b"x")
    stream.close()
    peer.close()
    with pytest.raises(WebSocketClosedError):
        tornado_internals.send_frame(_socket_of(stream), b"x")
