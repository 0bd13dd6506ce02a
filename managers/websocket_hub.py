"""WebSocketHub: this instance's open connections, indexed by user and client id.

The broadcast consumer hands it every domain event; it writes the event's
bytes, unchanged, to that user's connections. Writes are never awaited one
by one: each connection's unsent bytes are counted, and a connection whose
backlog passes ``max_pending_bytes`` is closed as slow, so one slow client
never delays the others or grows memory without bound.

The hub owns each connection's state (``Connection``); the socket handler only
holds it. A connection starts in catch-up: live events are held while missed
events are replayed, then the held ones follow, minus duplicates. An event the
hub delivered recently is never delivered again, so an event published twice
(at-least-once Kafka) reaches each socket once.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import logging
import struct
from asyncio import Future
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from tornado.websocket import WebSocketClosedError

from managers import metrics
from managers.base import Manager
from managers.config import Config, WebSocketConfig
from managers.metrics import SocketClosed, SocketOutcome

log = logging.getLogger("singleton.websocket")

# Close codes (4000-4999 are the application's own).
CLOSE_GOING_AWAY = 1001  # server shutting down
CLOSE_TRY_AGAIN = 1013  # server full
CLOSE_REPLACED = 4001  # a newer connection with the same user and client id
CLOSE_SLOW = 4008  # unsent data passed the bound

RECENT_EVENTS = 10_000  # event ids remembered to drop a re-published event


class Frame(enum.StrEnum):
    """The hub's own messages (events are forwarded as they came)."""

    CONNECTED = "connected"
    PONG = "pong"
    ERROR = "error"
    REPLAY = "replay"  # a missed event, replayed (its own type inside)
    REPLAY_COMPLETE = "replay_complete"
    REPLAY_UNAVAILABLE = "replay_unavailable"


metrics.count_by_name(Frame, metrics.WS_FRAMES_SENT)


class Socket(Protocol):
    """What the hub needs of a connection (``handlers.ws.EventsSocket``)."""

    def write_frame(self, frame: bytes) -> Future[None] | None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Connection:
    """The hub's state for one open socket."""

    __slots__ = ("socket", "user_id", "client_id", "remote_ip", "pending_bytes", "live", "held", "replayed_ids")

    def __init__(self, socket: Socket, user_id: str, client_id: str, remote_ip: str):
        self.socket = socket
        self.user_id = user_id
        self.client_id = client_id
        self.remote_ip = remote_ip
        self.pending_bytes = 0  # written, not yet flushed to the kernel
        self.live = False  # False while missed events are being replayed
        self.held: list[tuple[str, bytes, str]] = []  # live events that arrived during the replay
        self.replayed_ids: set[str] = set()


class WebSocketHub(Manager):
    def __init__(self, cfg: WebSocketConfig):
        self.max_connections: int = cfg["max_connections"]
        self.max_per_user: int = cfg["max_per_user"]
        self.max_per_ip: int = cfg["max_per_ip"]
        self.max_pending_bytes: int = cfg["max_pending_bytes"]
        self.replay_max_events: int = cfg["replay_max_events"]
        self.by_user: dict[str, dict[str, Connection]] = {}
        self.by_ip: dict[str, int] = {}
        self.count = 0
        self._recent: OrderedDict[str, None] = OrderedDict()

    @classmethod
    def start(cls, config: Config) -> WebSocketHub:
        return cls._install(cls(config["websocket"]))

    # -- membership ------------------------------------------------------------------------
    def refusal(self, user_id: str, client_id: str, remote_ip: str) -> str | None:
        """Why a new connection would pass a per-user or per-address limit, else None.

        Asked before the upgrade, so the client gets a 429 instead of a socket.
        A connection that replaces one with the same client id adds nothing.
        """
        clients = self.by_user.get(user_id, {})
        if client_id in clients:
            return None
        if len(clients) >= self.max_per_user:
            metrics.WS_CONNECTS.labels(SocketOutcome.REFUSED_USER_LIMIT).inc()
            return f"this user already has {self.max_per_user} open sockets"
        if self.by_ip.get(remote_ip, 0) >= self.max_per_ip:
            metrics.WS_CONNECTS.labels(SocketOutcome.REFUSED_IP_LIMIT).inc()
            return f"this address already has {self.max_per_ip} open sockets"
        return None

    def add(self, socket: Socket, user_id: str, client_id: str, remote_ip: str) -> Connection | None:
        """Register a new connection; None (and the socket closed) when the hub is full."""
        old = self.by_user.get(user_id, {}).get(client_id)
        if old is None and self.count >= self.max_connections:
            metrics.WS_CONNECTS.labels(SocketOutcome.REFUSED_FULL).inc()
            metrics.WS_DISCONNECTS.labels(SocketClosed.FULL).inc()
            socket.close(CLOSE_TRY_AGAIN, "server is at its connection limit")
            return None
        if old is not None:
            self._drop(old, SocketClosed.REPLACED)
            old.socket.close(CLOSE_REPLACED, "replaced by a newer connection with the same client_id")
            metrics.WS_CONNECTS.labels(SocketOutcome.REPLACED).inc()
        conn = Connection(socket, user_id, client_id, remote_ip)
        self.by_user.setdefault(user_id, {})[client_id] = conn
        self.by_ip[remote_ip] = self.by_ip.get(remote_ip, 0) + 1
        self.count += 1
        metrics.WS_CONNECTIONS.set(self.count)
        metrics.WS_CONNECTS.labels(SocketOutcome.ACCEPTED).inc()
        return conn

    def remove(self, conn: Connection, reason: SocketClosed = SocketClosed.CLIENT) -> None:
        """Called from on_close; a no-op for a connection already dropped by the hub."""
        self._drop(conn, reason)

    def _drop(self, conn: Connection, reason: SocketClosed) -> None:
        clients = self.by_user.get(conn.user_id)
        if clients is None or clients.get(conn.client_id) is not conn:
            return
        del clients[conn.client_id]
        if not clients:
            del self.by_user[conn.user_id]
        left = self.by_ip[conn.remote_ip] - 1
        if left:
            self.by_ip[conn.remote_ip] = left
        else:
            del self.by_ip[conn.remote_ip]
        self.count -= 1
        metrics.WS_CONNECTIONS.set(self.count)
        metrics.WS_DISCONNECTS.labels(reason).inc()

    # -- catch-up --------------------------------------------------------------------------
    def go_live(self, conn: Connection, last_event_id: str | None, missed: Sequence[tuple[str, bytes]] | None) -> None:
        """Replay what the client missed since ``last_event_id`` (``missed`` None: that
        cannot be done), then the live events held meanwhile, then go live."""
        if last_event_id is not None:
            if missed is None:
                self.send(
                    conn,
                    {
                        "type": Frame.REPLAY_UNAVAILABLE,
                        "last_event_id": last_event_id,
                        "message": "cannot replay from that id: refetch state over REST",
                    },
                )
            else:
                for event_id, payload in missed:
                    conn.replayed_ids.add(event_id)
                    self._write(conn, text_frame(payload), Frame.REPLAY)
                self.send(conn, {"type": Frame.REPLAY_COMPLETE, "count": len(missed)})
        held, conn.held = conn.held, []
        conn.live = True
        for event_id, payload, event_type in held:
            if event_id not in conn.replayed_ids:
                self._write(conn, text_frame(payload), event_type)

    # -- sending ---------------------------------------------------------------------------
    async def broadcast(self, event: Mapping[str, Any], raw: bytes) -> None:
        """Consumer callback: the event's bytes to every connection of its user.

        The WebSocket frame is built once and the same bytes written to each
        connection (no compression is negotiated, so they are identical).
        """
        event_id, event_type = event["event_id"], event["type"]
        if self._seen(event_id):
            metrics.WS_DUPLICATES_DROPPED.inc()
            return
        conns = self.by_user.get(event.get("user_id") or "")
        if not conns:
            return
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
            metrics.WS_FRAMES_SENT.labels(metrics.event_label(event_type)).inc(sent)
            delay = _age_s(event.get("occurred_at"))
            if delay is not None:
                metrics.WS_DELIVERY_DELAY.observe(delay)

    def _seen(self, event_id: str) -> bool:
        """Whether this event was broadcast recently (and remember it if not)."""
        if event_id in self._recent:
            return True
        self._recent[event_id] = None
        if len(self._recent) > RECENT_EVENTS:
            self._recent.popitem(last=False)
        return False

    def send(self, conn: Connection, message: dict[str, Any]) -> bool:
        """A message of the hub's own (a ``Frame``: connected, pong, ...) to one connection."""
        payload = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        return self._write(conn, text_frame(payload), message["type"])

    def _write(self, conn: Connection, frame: bytes, kind: str | None = None) -> bool:
        """One framed message to one connection, unless its backlog would pass the bound;
        counted as a frame of ``kind`` if given (a broadcast counts its frames at once)."""
        size = len(frame)
        if conn.pending_bytes + size > self.max_pending_bytes:
            self._close_slow(conn)
            return False
        try:
            pending = conn.socket.write_frame(frame)
        except WebSocketClosedError:
            return False
        if pending is not None:  # the kernel's buffer is full: count it until it is flushed
            conn.pending_bytes += size
            pending.add_done_callback(functools.partial(_flushed, conn, size))
        if kind is not None:
            metrics.WS_FRAMES_SENT.labels(metrics.event_label(kind)).inc()
        return True

    def _close_slow(self, conn: Connection) -> None:
        metrics.WS_SLOW_CLOSED.inc()
        log.warning(
            "closing slow websocket client",
            extra={"user_id": conn.user_id, "client_id": conn.client_id, "pending_bytes": conn.pending_bytes},
        )
        self._drop(conn, SocketClosed.SLOW)
        conn.socket.close(CLOSE_SLOW, "too much unsent data: reconnect with last_event_id")

    async def release(self) -> None:
        for clients in list(self.by_user.values()):
            for conn in list(clients.values()):
                self._drop(conn, SocketClosed.SHUTDOWN)
                conn.socket.close(CLOSE_GOING_AWAY, "server shutting down")


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


def _flushed(conn: Connection, size: int, future: Future[None]) -> None:
    conn.pending_bytes -= size
    if not future.cancelled():
        future.exception()  # retrieved: a write to a closed socket is expected, not an error


def _age_s(occurred_at: str | None) -> float | None:
    if not occurred_at:
        return None
    try:
        then = dt.datetime.fromisoformat(occurred_at)
    except (ValueError, TypeError):
        return None
    if then.tzinfo is None:
        return None
    return max((dt.datetime.now(dt.UTC) - then).total_seconds(), 0.0)
