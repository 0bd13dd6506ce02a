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

A socket lives on its token's authority. It closes (4002) when the token expires, plus
``token_expiry_grace_s``, unless the client sent a fresh one (``refresh``); and (4003)
when the API key that minted its token is revoked (``close_key``, called for the
``api_key_revoked`` event on the topic and by domain/revocations.py's poll of MariaDB).
Expiries wait in one heap, swept once a second: a socket costs a heap entry, not a
timer, and a refresh pushes a new entry (the old one is skipped when it comes up).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import functools
import heapq
import itertools
import json
import logging
import struct
import time
from asyncio import Future
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from tornado.websocket import WebSocketClosedError

from managers import metrics
from managers.background import Failures, no_dependency
from managers.base import Manager
from managers.config import Config, WebSocketConfig
from managers.metrics import SocketClosed, SocketOutcome

log = logging.getLogger("singleton.websocket")

# Close codes (4000-4999 are the application's own).
CLOSE_GOING_AWAY = 1001  # server shutting down
CLOSE_TRY_AGAIN = 1013  # server full
CLOSE_REPLACED = 4001  # a newer connection with the same user and client id
CLOSE_TOKEN_EXPIRED = 4002  # the token expired (plus the grace) and no fresh one came
CLOSE_KEY_REVOKED = 4003  # the API key that minted the token was revoked
CLOSE_SLOW = 4008  # unsent data passed the bound

RECENT_EVENTS = 10_000  # event ids remembered to drop a re-published event
REVOKED_KEYS = 10_000  # revoked key ids remembered, so a socket opened late with one is closed too
SWEEP_EVERY_S = 1.0  # expired sockets are closed at most this late (on top of the grace)

# The topic's one event that is not a user's: it closes sockets and is never forwarded
# (domain/events.py's EventType.API_KEY_REVOKED; its data is {"key_id"}).
KEY_REVOKED_EVENT = "api_key_revoked"


class Frame(enum.StrEnum):
    """The hub's own messages (events are forwarded as they came)."""

    CONNECTED = "connected"
    PONG = "pong"
    ERROR = "error"
    REPLAY = "replay"  # a missed event, replayed (its own type inside)
    REPLAY_COMPLETE = "replay_complete"
    REPLAY_UNAVAILABLE = "replay_unavailable"
    REFRESHED = "refreshed"  # a refresh was accepted: the new token's expires_at


metrics.count_by_name(Frame, metrics.WS_FRAMES_SENT)


class Socket(Protocol):
    """What the hub needs of a connection (``handlers.ws.EventsSocket``)."""

    def write_frame(self, frame: bytes) -> Future[None] | None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Connection:
    """The hub's state for one open socket."""

    __slots__ = (
        "socket",
        "user_id",
        "client_id",
        "remote_ip",
        "key_id",
        "expires_at",
        "pending_bytes",
        "live",
        "held",
        "replayed_ids",
    )

    def __init__(
        self,
        socket: Socket,
        user_id: str,
        client_id: str,
        remote_ip: str,
        key_id: str | None = None,
        expires_at: float | None = None,
    ):
        self.socket = socket
        self.user_id = user_id
        self.client_id = client_id
        self.remote_ip = remote_ip
        self.key_id = key_id  # the key that minted its token (None: a token from before kid)
        self.expires_at = expires_at  # its token's exp, in epoch seconds (None: never)
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
        self.expiry_grace_s: float = cfg["token_expiry_grace_s"]
        self.by_user: dict[str, dict[str, Connection]] = {}
        self.by_ip: dict[str, int] = {}
        self.count = 0
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._revoked: OrderedDict[str, None] = OrderedDict()
        # (close at, tie-breaker, connection): one entry per token a connection has held
        self._expiries: list[tuple[float, int, Connection]] = []
        self._seq = itertools.count()

    @classmethod
    def start(cls, config: Config) -> WebSocketHub:
        inst = cls._install(cls(config["websocket"]))
        inst._run_in_background(inst._sweep_every_second(), "websocket-expiry-sweep")
        return inst

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

    def add(
        self,
        socket: Socket,
        user_id: str,
        client_id: str,
        remote_ip: str,
        key_id: str | None = None,
        expires_at: float | None = None,
    ) -> Connection | None:
        """Register a new connection; None (and the socket closed) when the hub is full, or
        when its token's key was revoked (the revocation may have come before the socket)."""
        if key_id is not None and key_id in self._revoked:
            metrics.WS_DISCONNECTS.labels(SocketClosed.REVOKED).inc()
            socket.close(CLOSE_KEY_REVOKED, "token revoked")
            return None
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
        conn = Connection(socket, user_id, client_id, remote_ip, key_id, expires_at)
        self._expire_at(conn)
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

    # -- the token's authority -------------------------------------------------------------
    def refresh(self, conn: Connection, key_id: str | None, expires_at: float) -> bool:
        """The connection now holds a fresh token (checked by the caller: valid, same user):
        its expiry moves on, and the key that minted it is the one whose revocation closes
        it. False (and nothing changed) when that key was revoked already."""
        if key_id is not None and key_id in self._revoked:
            return False
        conn.key_id, conn.expires_at = key_id, expires_at
        self._expire_at(conn)
        return True

    def close_key(self, key_id: str) -> int:
        """Key ``key_id`` is revoked: close every connection whose token it minted (4003),
        and remember it, for a socket that opens with such a token after this. Idempotent
        (the event and the poll both call it); how many connections it closed.

        A scan of every connection, not an index by key: revocations are rare, and a scan
        of 10,000 connections takes about a millisecond, where an index costs every
        connect, refresh and close."""
        self._revoked[key_id] = None
        self._revoked.move_to_end(key_id)
        if len(self._revoked) > REVOKED_KEYS:
            self._revoked.popitem(last=False)
        doomed = [c for clients in self.by_user.values() for c in clients.values() if c.key_id == key_id]
        for conn in doomed:
            self._drop(conn, SocketClosed.REVOKED)
            conn.socket.close(CLOSE_KEY_REVOKED, "token revoked")
        if doomed:
            log.info("closed the sockets of a revoked key", extra={"key_id": key_id, "sockets": len(doomed)})
        return len(doomed)

    def knows_revoked(self, key_id: str) -> bool:
        """Whether ``close_key(key_id)`` was called (among the last ``REVOKED_KEYS`` keys)."""
        return key_id in self._revoked

    def _expire_at(self, conn: Connection) -> None:
        if conn.expires_at is not None:
            heapq.heappush(self._expiries, (conn.expires_at + self.expiry_grace_s, next(self._seq), conn))

    def close_expired(self, now: float | None = None) -> int:
        """Close the connections whose token expired more than the grace ago (4002); an
        entry for a token since refreshed, or a connection gone, is dropped. How many closed."""
        now = time.time() if now is None else now
        closed = 0
        while self._expiries and self._expiries[0][0] <= now:
            close_at, _, conn = heapq.heappop(self._expiries)
            if conn.expires_at is None or conn.expires_at + self.expiry_grace_s != close_at:
                continue  # refreshed since: a later entry stands for it
            clients = self.by_user.get(conn.user_id)
            if clients is None or clients.get(conn.client_id) is not conn:
                continue  # closed already
            self._drop(conn, SocketClosed.EXPIRED)
            conn.socket.close(CLOSE_TOKEN_EXPIRED, "token expired")
            closed += 1
        return closed

    async def _sweep_every_second(self) -> None:
        """``close_expired`` once a second. It touches only memory, so a failure is a bug:
        logged and counted (managers/background.py), and the next second tries again."""
        failures = Failures("websocket_expiry_sweep", no_dependency, logger=log)
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                self.close_expired()
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.succeeded()

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
        """Consumer callback: the event's bytes to every connection of its user (an
        ``api_key_revoked`` event closes that key's connections instead).

        The WebSocket frame is built once and the same bytes written to each
        connection (no compression is negotiated, so they are identical).
        """
        event_id, event_type = event["event_id"], event["type"]
        if event_type == KEY_REVOKED_EVENT:  # acted on here, never forwarded to anyone
            data = event.get("data")
            key_id = data.get("key_id") if isinstance(data, dict) else None
            if isinstance(key_id, str):
                self.close_key(key_id)
            else:
                log.warning("api_key_revoked event without a key_id", extra={"event_id": event_id})
            return
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
        await self._stop_background(1)
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
