"""What handlers/tornado_internals.py relies on in Tornado's private parts, held to the
pinned version: if an upgrade renames or changes one of them, these fail before a
WebSocket does. No server: a bare request, and a real socket pair."""

from __future__ import annotations

import asyncio
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
