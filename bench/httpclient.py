"""A small keep-alive HTTP/1.1 client on asyncio streams, for seeding and the
fixed-rate REST driver: no dependency, one connection per in-flight request."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class HTTPError(RuntimeError):
    pass


class Connection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            await self._open()
        assert self.reader is not None and self.writer is not None
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(data)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server closed an idle keep-alive connection: one retry on a new one.
            self.close()
            await self._open()
            return await self.request(method, path, body, headers)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        length = 0
        close = False
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Pool:
    """``size`` connections; ``request`` waits for a free one."""

    def __init__(self, host: str, port: int, size: int):
        self._free: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(size):
            self._free.put_nowait(Connection(host, port))
        self.size = size

    async def request(self, method: str, path: str, body: Any = None, headers: dict | None = None):
        conn = await self._free.get()
        try:
            return await conn.request(method, path, body, headers)
        except BaseException:
            conn.close()
            raise
        finally:
            self._free.put_nowait(conn)

    async def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, payload = await self.request(method, path, body)
        if status != expect:
            raise HTTPError(f"{method} {path}: {status} {payload[:300]!r}")
        return json.loads(payload)

    async def close(self) -> None:
        while not self._free.empty():
            self._free.get_nowait().close()


async def gather_limited(limit: int, coros) -> list:
    """Run coroutines with at most ``limit`` at once, results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(coro):
        async with sem:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))
