"""What a cluster scenario watches beside the writes: the service's own counters
(``MetricsWatch``: does the cache, does the rate limiter reach Redis) and its users'
live events (``EventSockets``: one WebSocket per user, as a browser holds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import time
import uuid

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, websocket_connect

from chaos.load import Client, Poller

METRICS_EVERY_S = 0.5  # /metrics costs the service a render of every series: twice a second is enough
METRICS_TIMEOUT_S = 2.0
# A sample line of Prometheus's text format: name{labels} value
_SAMPLE = re.compile(r"^([a-z_:]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN|[+-]Inf)$")

# The counters that say Redis was not reached: a cache read or write that failed or was
# skipped (bypass: Redis failed a moment ago), and a call the rate limiter checked on its own buckets.
REDIS_MISSED = (
    'singleton_cache_lookups_total{result="error"}',
    'singleton_cache_lookups_total{result="bypass"}',
    "singleton_rate_limit_local_total",
)
CACHE_HITS = 'singleton_cache_lookups_total{result="hit"}'
LIMITER_MISSED = "singleton_rate_limit_local_total"


class MetricsWatch(Poller):
    """GET /metrics every METRICS_EVERY_S: the singleton_* counters, by time."""

    every_s = METRICS_EVERY_S

    def __init__(self, url: str):
        self.url = url
        self.http = AsyncHTTPClient(force_instance=True)
        self.samples: list[tuple[float, dict[str, float]]] = []

    async def poll(self, started: float) -> None:
        try:
            response = await self.http.fetch(self.url, request_timeout=METRICS_TIMEOUT_S, raise_error=False)
        except (OSError, HTTPClientError, StreamClosedError):  # no answer in time (599): the next poll
            return
        if response.code != 200:
            return
        values = {}
        for line in response.body.decode(errors="replace").splitlines():
            match = _SAMPLE.match(line)
            if match and match.group(1).startswith("singleton_"):
                values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        self.samples.append((started, values))

    async def stop(self) -> None:
        await super().stop()
        self.http.close()

    def rises(self, series: tuple[str, ...] | str, since: float) -> list[float]:
        """When any of ``series`` was seen higher than in the sample before, from ``since`` on."""
        names = (series,) if isinstance(series, str) else series
        out, before = [], None
        for t, values in self.samples:
            now = sum(values.get(name, 0.0) for name in names)
            if before is not None and now > before and t >= since:
                out.append(t)
            before = now
        return out

    def total(self, series: str, since: float, until: float) -> float:
        """How much ``series`` rose between the samples nearest ``since`` and ``until``."""
        inside = [values.get(series, 0.0) for t, values in self.samples if since <= t <= until]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0


class EventSockets:
    """One WebSocket per user (``/ws`` with a token from ``POST /api/v1/ws-tokens``),
    reconnecting with ``last_event_id`` if the socket closes: every event frame's
    arrival, and how late it came after the event's ``occurred_at``."""

    def __init__(self, client: Client, users: list[str]):
        self.client = client
        self.users = users
        self.ws_base = client.base_url.replace("http://", "ws://", 1) + "/ws"
        self.received: list[tuple[float, str, str, float | None]] = []  # (time, user, payment id, delay in s)
        self.event_ids: list[str] = []  # every event frame, duplicates included
        self.reconnects = 0
        self.replay_unavailable = 0
        self._tasks: list[asyncio.Task] = []
        self._sockets: dict[str, WebSocketClientConnection] = {}
        self._running = True

    async def start(self) -> None:
        """Every user's socket open and live (its ``connected`` frame read)."""
        for user in self.users:
            connected = asyncio.get_running_loop().create_future()
            self._tasks.append(asyncio.create_task(self._follow(user, connected)))
            await asyncio.wait_for(connected, 30)

    async def _connect(self, user: str, last_event_id: str | None) -> WebSocketClientConnection:
        code, body, _ = await self.client.request("POST", "/api/v1/ws-tokens", {"user_id": user}, timeout_s=10)
        if code != 201:
            raise ConnectionError(f"ws token for {user}: {code} {body}")
        url = f"{self.ws_base}?token={body['token']}&client_id=chaos-{uuid.uuid4().hex[:8]}"
        if last_event_id is not None:
            url += f"&last_event_id={last_event_id}"
        return await asyncio.wait_for(websocket_connect(url), 10)

    async def _follow(self, user: str, connected: asyncio.Future) -> None:
        last_event_id: str | None = None
        while self._running:
            try:
                socket = await self._connect(user, last_event_id)
            except (OSError, TimeoutError, HTTPClientError, StreamClosedError) as exc:
                if not connected.done():
                    connected.set_exception(exc)
                    return
                await asyncio.sleep(0.5)  # deliberate: the service is not answering; try again
                continue
            self._sockets[user] = socket
            while (message := await socket.read_message()) is not None:
                frame = json.loads(message)
                if frame.get("type") == "connected" and not connected.done():
                    connected.set_result(None)
                elif frame.get("type") == "replay_unavailable":
                    self.replay_unavailable += 1
                elif "event_id" in frame:
                    self._record(user, frame)
                    last_event_id = frame["event_id"]
            if self._running:
                self.reconnects += 1

    def _record(self, user: str, event: dict) -> None:
        now = time.monotonic()
        self.event_ids.append(event["event_id"])
        if event.get("type") != "payment_created":
            return
        delay = None
        with contextlib.suppress(TypeError, ValueError):
            occurred = dt.datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
            delay = time.time() - occurred.timestamp()
        self.received.append((now, user, event["data"]["id"], delay))

    def payments(self) -> set[str]:
        return {pid for _, _, pid, _ in self.received}

    async def wait_for(self, payment_ids: set[str], timeout_s: float) -> float | None:
        """Until every one of ``payment_ids`` came over a socket; seconds it took (None: not all)."""
        started = time.monotonic()
        while not payment_ids <= self.payments():
            if time.monotonic() - started > timeout_s:
                return None
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def stop(self) -> None:
        self._running = False
        for socket in self._sockets.values():
            socket.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
