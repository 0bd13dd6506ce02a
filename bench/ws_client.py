"""A WebSocket client process of the fan-out stage (``python -m bench.ws_client PORT``).
Commands on stdin, a JSON line back for each: ``open TOKEN CLIENT_ID ...`` opens a socket per
pair; ``collect`` waits until no frame has come for a second, then gives each event frame's
latency since the last collect: arrival minus the send time the REST driver wrote into the
payment's description (``bench:<epoch s>``). End of input exits. Frames are read with a few
lines of RFC 6455, a fraction of a library's cost per frame."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import uvloop

MARK = b'"description":"bench:'
HANDSHAKE = (
    "GET /ws?token={token}&client_id={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: YmVuY2gtZmFuLW91dC1rZXk=\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Socket(asyncio.Protocol):
    latencies: list[float] = []  # every socket's event frames since the last collect (class-level)
    last = 0.0

    def __init__(self, request: bytes, opened: asyncio.Future):
        self.request, self.opened, self.buf = request, opened, bytearray()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the upgrade: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        now, buf = time.time(), self.buf
        buf += data
        if not self.opened.done():
            if (end := buf.find(b"\r\n\r\n")) < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                return self.opened.set_exception(ConnectionError(buf[:200].decode(errors="replace")))
            self.opened.set_result(None)
            del buf[: end + 4]
        at = 0
        while len(buf) - at >= 2:
            opcode, size, head = buf[at] & 0x0F, buf[at + 1] & 0x7F, 2
            if size >= 126:
                head = 4 if size == 126 else 10
                if len(buf) - at < head:
                    break
                size = int.from_bytes(buf[at + 2 : at + head], "big")
            if len(buf) - at < head + size:
                break
            payload = bytes(buf[at + head : at + head + size])
            at += head + size
            if opcode == 0x9:  # ping: a masked pong (mask 0) with the same payload
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif opcode == 0x1 and (mark := payload.find(MARK)) >= 0:
                sent = payload[mark + len(MARK) : payload.index(b'"', mark + len(MARK))]
                Socket.latencies.append(now - float(sent))
                Socket.last = now
        del buf[:at]


async def open_sockets(pairs: list[tuple[str, str]], port: int) -> dict:
    loop, gate, errors, started = asyncio.get_running_loop(), asyncio.Semaphore(100), [], time.monotonic()

    async def one(token: str, client_id: str) -> None:
        request = HANDSHAKE.format(token=token, client_id=client_id, port=port).encode()
        async with gate:
            opened = loop.create_future()
            try:
                await loop.create_connection(lambda: Socket(request, opened), "127.0.0.1", port)
                await asyncio.wait_for(opened, 60)
            except (OSError, TimeoutError) as exc:
                errors.append(repr(exc)[:200])

    await asyncio.gather(*(one(*pair) for pair in pairs))
    took = round(time.monotonic() - started, 2)
    return {"open": len(pairs) - len(errors), "failed": len(errors), "errors": errors[:3], "seconds": took}


async def collect(quiet_s: float = 1.0) -> dict:
    seen = -1
    while seen != len(Socket.latencies):  # until a second passes without a frame
        seen = len(Socket.latencies)
        await asyncio.sleep(quiet_s)
    latencies, Socket.latencies = Socket.latencies, []
    return {"latencies_ms": [round(x * 1000, 2) for x in latencies], "last": Socket.last}


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command, *args = line.split()
        if command == "open":
            answer = await open_sockets(list(zip(args[::2], args[1::2], strict=True)), port)
        else:
            answer = await collect()
        print(json.dumps(answer), flush=True)
    os._exit(0)  # no closing handshakes: the kernel closes the sockets


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))  # the faster the client's loop, the less CPU it takes from the service
