"""WebSocketHub: this instance's open connections, indexed by user and client id.

The broadcast consumer hands it every domain event; it writes the event's
bytes, unchanged, to that user's connections. Writes are never awaited one
by one: each connection's unsent bytes are counted, and a connection whose
backlog passes ``max_pending_bytes`` is closed as slow, so one slow client
never delays the others or grows memory without bound.

A connection starts in catch-up: live events are held while missed events
are replayed from the outbox, then the held ones follow, minus duplicates.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import struct
from asyncio import Future
from typing import Protocol

from tornado.websocket import WebSocketClosedError

from domain import codec, replay
from managers import metrics, mysql
from managers.base import Manager

log = logging.getLogger("singleton.websocket")

# Close codes (4000-4999 are the application's own).
CLOSE_GOING_AWAY = 1001  # server shutting down
CLOSE_TRY_AGAIN = 1013  # server full
CLOSE_REPLACED = 4001  # a newer connection with the same user and client id
CLOSE_SLOW = 4008  # unsent data passed the bound


class Socket(Protocol):
    """What the hub needs of a connection (``handlers.ws.EventsSocket``)."""

    user_id: str
    client_id: str
    pending_bytes: int
    live: bool
    held: list[tuple[str, bytes, str]]
    replayed_ids: set[str]

    def write_frame(self, frame: bytes) -> Future[None]: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class WebSocketHub(Manager):
    def __init__(self, cfg: dict):
        self.max_connections: int = cfg["max_connections"]
        self.max_pending_bytes: int = cfg["max_pending_bytes"]
        self.replay_max_events: int = cfg["replay_max_events"]
        self.by_user: dict[str, dict[str, Socket]] = {}
        self.count = 0

    @classmethod
    def start(cls, cfg: dict) -> WebSocketHub:
        inst = cls(cfg)
        cls._install(inst)
        return inst

    # -- membership ------------------------------------------------------------------------
    def add(self, conn: Socket) -> bool:
        """Register a new connection; False (and closed) when the hub is full."""
        old = self.by_user.get(conn.user_id, {}).get(conn.client_id)
        if old is None and self.count >= self.max_connections:
            metrics.WS_CONNECTS.labels("refused_full").inc()
            metrics.WS_DISCONNECTS.labels("full").inc()
            conn.close(CLOSE_TRY_AGAIN, "server is at its connection limit")
            return False
        if old is not None:
            self._drop(old, "replaced")
            old.close(CLOSE_REPLACED, "replaced by a newer connection with the same client_id")
            metrics.WS_CONNECTS.labels("replaced").inc()
        self.by_user.setdefault(conn.user_id, {})[conn.client_id] = conn
        self.count += 1
        metrics.WS_CONNECTIONS.set(self.count)
        metrics.WS_CONNECTS.labels("accepted").inc()
        return True

    def remove(self, conn: Socket, reason: str = "client") -> None:
        """Called from on_close; a no-op for a connection already dropped by the hub."""
        self._drop(conn, reason)

    def _drop(self, conn: Socket, reason: str) -> None:
        clients = self.by_user.get(conn.user_id)
        if clients is None or clients.get(conn.client_id) is not conn:
            return
        del clients[conn.client_id]
        if not clients:
            del self.by_user[conn.user_id]
        self.count -= 1
        metrics.WS_CONNECTIONS.set(self.count)
        metrics.WS_DISCONNECTS.labels(reason).inc()

    def connections(self, user_id: str) -> list[Socket]:
        return list(self.by_user.get(user_id, {}).values())

    # -- catch-up --------------------------------------------------------------------------
    async def catch_up(self, conn: Socket, last_event_id: str | None) -> None:
        """Replay what the client missed since ``last_event_id``, then go live."""
        if last_event_id is not None:
            try:
                missed = await replay.missed_events(conn.user_id, last_event_id, self.replay_max_events)
            except mysql.UNAVAILABLE as exc:  # the database is out of reach: say so and go live
                log.warning("replay unavailable", extra={"user_id": conn.user_id, "error": repr(exc)})
                missed = None
            if missed is None:
                self.send_frame(
                    conn,
                    {
                        "type": "replay_unavailable",
                        "last_event_id": last_event_id,
                        "message": "cannot replay from that id: refetch state over REST",
                    },
                )
            else:
                for event_id, payload in missed:
                    conn.replayed_ids.add(event_id)
                    self.send(conn, payload, "replay")
                self.send_frame(conn, {"type": "replay_complete", "count": len(missed)})
        held, conn.held = conn.held, []
        conn.live = True
        for event_id, payload, event_type in held:
            if event_id not in conn.replayed_ids:
                self.send(conn, payload, event_type)

    # -- sending ---------------------------------------------------------------------------
    async def broadcast(self, event: dict, raw: bytes) -> None:
        """Consumer callback: the event's bytes to every connection of its user.

        The WebSocket frame is built once and the same bytes written to each
        connection (no compression is negotiated, so they are identical).
        """
        conns = self.by_user.get(event.get("user_id") or "")
        if not conns:
            return
        event_id, event_type = event["event_id"], event["type"]
        frame = text_frame(raw)
        sent = 0
        for conn in list(conns.values()):
            if not conn.live:
                if len(conn.held) >= self.replay_max_events:
                    self._close_slow(conn)
                else:
                    conn.held.append((event_id, raw, event_type))
            elif event_id not in conn.replayed_ids:
                sent += self._write(conn, frame)
        if sent:
            metrics.WS_FRAMES_SENT.labels(event_type).inc(sent)
            delay = _age_s(event.get("occurred_at"))
            if delay is not None:
                metrics.WS_DELIVERY_DELAY.observe(delay)

    def send_frame(self, conn: Socket, frame: dict) -> bool:
        return self.send(conn, codec.dumps(frame), frame["type"])

    def send(self, conn: Socket, payload: bytes, frame_type: str) -> bool:
        """One message to one connection, unless its backlog would pass the bound."""
        if not self._write(conn, text_frame(payload)):
            return False
        metrics.WS_FRAMES_SENT.labels(frame_type).inc()
        return True

    def _write(self, conn: Socket, frame: bytes) -> bool:
        size = len(frame)
        if conn.pending_bytes + size > self.max_pending_bytes:
            self._close_slow(conn)
            return False
        try:
            written = conn.write_frame(frame)
        except WebSocketClosedError:
            return False
        conn.pending_bytes += size
        written.add_done_callback(functools.partial(_flushed, conn, size))
        return True

    def _close_slow(self, conn: Socket) -> None:
        metrics.WS_SLOW_CLOSED.inc()
        log.warning(
            "closing slow websocket client",
            extra={"user_id": conn.user_id, "client_id": conn.client_id, "pending_bytes": conn.pending_bytes},
        )
        self._drop(conn, "slow")
        conn.close(CLOSE_SLOW, "too much unsent data: reconnect with last_event_id")

    def close(self) -> None:
        for clients in list(self.by_user.values()):
            for conn in list(clients.values()):
                self._drop(conn, "shutdown")
                conn.close(CLOSE_GOING_AWAY, "server shutting down")
        type(self)._uninstall()


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455, 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def _flushed(conn: Socket, size: int, future: Future[None]) -> None:
    conn.pending_bytes -= size
    if not future.cancelled():
        future.exception()  # retrieved: a write to a closed socket is expected, not an error


def _age_s(occurred_at: str | None) -> float | None:
    if not occurred_at:
        return None
    try:
        then = dt.datetime.fromisoformat(occurred_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((dt.datetime.now(dt.UTC) - then).total_seconds(), 0.0)
