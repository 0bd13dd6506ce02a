"""The hub's one-frame-for-all-connections encoding (pure logic; the socket tests use it for real)."""

from __future__ import annotations

import struct

import pytest

from managers.websocket_hub import text_frame


def parse(frame: bytes) -> tuple[int, bytes]:
    first, second = frame[0], frame[1]
    assert second & 0x80 == 0, "a server never masks"
    length, offset = second & 0x7F, 2
    if length == 126:
        (length,), offset = struct.unpack("!H", frame[2:4]), 4
    elif length == 127:
        (length,), offset = struct.unpack("!Q", frame[2:10]), 10
    assert len(frame) == offset + length
    return first, frame[offset:]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_text_frame_header_fits_every_length_form(size):
    payload = bytes(i % 251 for i in range(size))
    first, body = parse(text_frame(payload))
    assert first == 0x81  # FIN, text
    assert body == payload
