"""Locust scenarios for the users-and-payments service (see loadtests/README.md).

Two kinds of simulated user:

- ``ApiUser`` (REST): creates users with unique emails, reads them, creates payments
  for existing users, reads them, moves them along valid status transitions and
  lists a user's payments (sometimes filtered by status and creation time), refunds
  completed payments in part and reads their refunds, with weights roughly like real
  traffic (reads dominate).
- ``EventsUser`` (WebSocket): creates its own user, holds ``/ws`` open and counts
  the events pushed to it; ``ApiUser`` creates payments for these users too, so
  the events flow. Each frame is reported as a request named ``event <type>``
  whose "response time" is its age (now − ``occurred_at``).

Each simulated user starts by minting an admin key of its own with the run's key
(``LOAD_API_KEY``, else the dev key that the service wrote to ``.devstack/admin.key``),
calls with it, and revokes it when it stops: the service's per-key limits then hold per
simulated user, as they do for real clients, and the run measures the service, not one
key's bucket. A socket gets its token from ``POST /api/v1/ws-tokens``. Locust's summary
gives p50 and p99 per request type, the events' age included.

Responses are checked: an expected 4xx (409 when two simulated users race to move
the same payment, 422 ``refund_exceeds_payment`` when refunds race for what is left)
counts as a success; anything else unexpected is a failure, and
``make load`` exits non-zero on any failure.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import threading
import time
import uuid
from collections import Counter

import gevent
import websocket
from locust import FastHttpUser, between, constant, events, task

RUN = uuid.uuid4().hex[:8]  # keeps emails unique across runs
CURRENCIES = ("USD", "EUR", "GBP", "JPY")
# Where a payment may go next (the service's state machine).
NEXT = {
    "pending": ("processing", "completed", "failed", "cancelled"),
    "processing": ("completed", "failed"),
    "completed": ("refunded",),
}
MAX_POOL = 5000
KEY_FILE = os.path.join(os.path.dirname(__file__), "..", ".devstack", "admin.key")


def api_key() -> str:
    key = os.environ.get("LOAD_API_KEY")
    if key:
        return key
    try:
        with open(KEY_FILE) as f:
            return f.read().strip()
    except OSError:
        raise SystemExit(f"no API key: set LOAD_API_KEY, or start the service once (it writes {KEY_FILE})") from None


HEADERS = {"Authorization": f"Bearer {api_key()}"}


class Pools:
    """Ids this locust process has created, shared by all its simulated users."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users: list[str] = []
        self.ws_users: list[str] = []
        self.payments: dict[str, str] = {}  # id -> last known status
        self.movable: list[str] = []  # payments that are not final yet
        self.counter = 0
        self.ws_events: Counter[str] = Counter()

    def next_n(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def add_user(self, user_id: str, ws: bool = False) -> None:
        with self.lock:
            (self.ws_users if ws else self.users).append(user_id)
            if len(self.users) > MAX_POOL:
                del self.users[: MAX_POOL // 2]

    def any_user(self) -> str | None:
        with self.lock:
            if self.ws_users and random.random() < 0.3:
                return random.choice(self.ws_users)
            pool = self.users or self.ws_users
            return random.choice(pool) if pool else None

    def set_payment(self, payment_id: str, status: str) -> None:
        with self.lock:
            if payment_id not in self.payments and len(self.payments) >= MAX_POOL:
                oldest = next(iter(self.payments))
                del self.payments[oldest]
            self.payments[payment_id] = status
            if status in NEXT and payment_id not in self.movable:
                self.movable.append(payment_id)
            if len(self.movable) > MAX_POOL:
                del self.movable[: MAX_POOL // 2]

    def any_payment(self, status: str | None = None) -> str | None:
        with self.lock:
            pool = [p for p, s in self.payments.items() if s == status] if status else list(self.payments)
            return random.choice(pool) if pool else None

    def take_movable(self) -> tuple[str, str] | None:
        """A payment with a next status; removed from the pool while it is being moved."""
        with self.lock:
            while self.movable:
                payment_id = self.movable.pop(random.randrange(len(self.movable)))
                status = self.payments.get(payment_id)
                if status in NEXT:
                    return payment_id, status
            return None


POOLS = Pools()


def _check(response, *expected: int, also_ok: tuple[int, ...] = ()) -> dict | None:
    """Mark the response: success for ``expected`` (body returned) or ``also_ok``
    (expected 4xx, no body), failure for anything else. A 429 is the service's rate
    limit doing its job (a simulated user past its key's rate): counted, not a failure."""
    also_ok = (*also_ok, 429)
    if response.status_code in expected:
        try:
            body = response.json()
        except (ValueError, TypeError) as exc:
            response.failure(f"{response.status_code} with a body that is not JSON: {exc}")
            return None
        response.success()
        return body
    if response.status_code in also_ok:
        response.success()
        return None
    response.failure(f"unexpected {response.status_code}: {(response.text or '')[:200]}")
    return None


def use_own_key(user: FastHttpUser) -> None:
    """Mint an admin key for ``user`` with the run's key, and call with it from now on."""
    user.key_id = None
    with user.client.post(
        "/api/v1/api-keys", json={"role": "admin"}, name="POST /api/v1/api-keys", catch_response=True
    ) as r:
        made = _check(r, 201)
    if made:
        user.key_id = made["id"]
        user.client.auth_header = f"Bearer {made['key']}"


def revoke_own_key(user: FastHttpUser) -> None:
    """Revoke ``user``'s own key with the run's key: a run leaves no admin key behind."""
    if getattr(user, "key_id", None):
        user.client.auth_header = None
        path = f"/api/v1/api-keys/{user.key_id}"
        with user.client.delete(path, name="DELETE /api/v1/api-keys/:id", catch_response=True) as r:
            _check(r, 200)
        user.key_id = None


class ApiUser(FastHttpUser):
    weight = 9
    wait_time = between(0.05, 0.5)
    default_headers = HEADERS

    def on_start(self) -> None:
        use_own_key(self)
        self.create_user()

    def on_stop(self) -> None:
        revoke_own_key(self)

    @task(2)
    def create_user(self) -> None:
        n = POOLS.next_n()
        body = {"email": f"load-{RUN}-{n}-{uuid.uuid4().hex[:6]}@example.com", "name": f"Load User {n}"}
        with self.client.post("/api/v1/users", json=body, name="POST /api/v1/users", catch_response=True) as r:
            user = _check(r, 201)
            if user:
                POOLS.add_user(user["id"])

    @task(10)
    def read_user(self) -> None:
        user_id = POOLS.any_user()
        if user_id is None:
            return
        with self.client.get(f"/api/v1/users/{user_id}", name="GET /api/v1/users/:id", catch_response=True) as r:
            _check(r, 200)

    @task(6)
    def create_payment(self) -> None:
        user_id = POOLS.any_user()
        if user_id is None:
            return
        body = {
            "user_id": user_id,
            "amount": f"{random.randint(1, 999)}.{random.randint(0, 99):02d}",
            "currency": random.choice(CURRENCIES[:3]),
            "description": "locust",
        }
        if body["currency"] == "JPY":
            body["amount"] = str(random.randint(1, 99999))
        headers = {"Idempotency-Key": f"load-{RUN}-{uuid.uuid4()}"} if random.random() < 0.5 else {}
        with self.client.post(
            "/api/v1/payments", json=body, headers=headers, name="POST /api/v1/payments", catch_response=True
        ) as r:
            payment = _check(r, 201)
            if payment:
                POOLS.set_payment(payment["id"], payment["status"])

    @task(8)
    def read_payment(self) -> None:
        payment_id = POOLS.any_payment()
        if payment_id is None:
            return
        with self.client.get(
            f"/api/v1/payments/{payment_id}", name="GET /api/v1/payments/:id", catch_response=True
        ) as r:
            payment = _check(r, 200)
            if payment:
                POOLS.set_payment(payment["id"], payment["status"])

    @task(3)
    def update_status(self) -> None:
        picked = POOLS.take_movable()
        if picked is None:
            return
        payment_id, status = picked
        new_status = random.choice(NEXT[status])
        with self.client.put(
            f"/api/v1/payments/{payment_id}/status",
            json={"status": new_status},
            name="PUT /api/v1/payments/:id/status",
            catch_response=True,
        ) as r:
            # 409: another simulated user moved it first (an expected race, not an error).
            payment = _check(r, 200, also_ok=(409,))
            if payment:
                POOLS.set_payment(payment_id, payment["status"])
            elif r.status_code == 409:
                try:
                    current = r.json()["error"]["details"]["from"]
                    POOLS.set_payment(payment_id, current)
                except (ValueError, KeyError, TypeError):
                    pass

    @task(4)
    def list_payments(self) -> None:
        user_id = POOLS.any_user()
        if user_id is None:
            return
        query = "limit=20"
        if random.random() < 0.2:
            query += "&status=" + random.choice(("pending", "processing", "completed"))
        if random.random() < 0.2:  # the last minute's payments
            since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
            query += "&created_gte=" + since.strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.client.get(
            f"/api/v1/users/{user_id}/payments?{query}", name="GET /api/v1/users/:id/payments", catch_response=True
        ) as r:
            page = _check(r, 200)
        if page and page.get("next_cursor"):
            with self.client.get(
                f"/api/v1/users/{user_id}/payments?{query}&cursor={page['next_cursor']}",
                name="GET /api/v1/users/:id/payments (next page)",
                catch_response=True,
            ) as r:
                _check(r, 200)

    @task(2)
    def refund(self) -> None:
        """A part of a completed payment, or (one time in four) what is left of it."""
        payment_id = POOLS.any_payment("completed")
        if payment_id is None:
            return
        body = {"amount": "1", "reason": "requested_by_customer"} if random.random() < 0.75 else {}
        with self.client.post(
            f"/api/v1/payments/{payment_id}/refunds",
            json=body,
            headers={"Idempotency-Key": f"refund-{RUN}-{POOLS.next_n()}"},
            name="POST /api/v1/payments/:id/refunds",
            catch_response=True,
        ) as r:
            # 422: nothing (or less) is left, another refund came first; 409: not completed.
            _check(r, 201, also_ok=(409, 422))
        with self.client.get(
            f"/api/v1/payments/{payment_id}/refunds", name="GET /api/v1/payments/:id/refunds", catch_response=True
        ) as r:
            _check(r, 200)
        with self.client.get(
            f"/api/v1/payments/{payment_id}", name="GET /api/v1/payments/:id", catch_response=True
        ) as r:
            payment = _check(r, 200)
            if payment:
                POOLS.set_payment(payment_id, payment["status"])


def _refresh_at(expires_at: str) -> float:
    """When to send a fresh token: a minute before ``expires_at`` (epoch seconds)."""
    return dt.datetime.fromisoformat(expires_at).timestamp() - 60


class EventsUser(FastHttpUser):
    """Holds one WebSocket for its own user and counts the events pushed to it."""

    weight = 1
    wait_time = constant(5)
    default_headers = HEADERS

    def on_start(self) -> None:
        self.ws: websocket.WebSocket | None = None
        self.reader = None
        self.stopping = False
        use_own_key(self)
        n = POOLS.next_n()
        body = {"email": f"load-ws-{RUN}-{n}-{uuid.uuid4().hex[:6]}@example.com", "name": f"WS User {n}"}
        with self.client.post("/api/v1/users", json=body, name="POST /api/v1/users", catch_response=True) as r:
            user = _check(r, 201)
        if not user:
            return
        self.user_id = user["id"]
        token = self._token()
        if not token:
            return
        url = self.host.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
        url += f"/ws?token={token['token']}&client_id=locust-{n}"
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(url, timeout=10)
            first = json.loads(self.ws.recv())
            if first.get("type") != "connected":
                raise RuntimeError(f"first frame was {first!r}")
            self.ws.settimeout(None)
            self.refresh_at = _refresh_at(first["expires_at"])
        except Exception as exc:
            self._fire("WS", "connect", started, 0, exc)
            self.ws = None
            return
        self._fire("WS", "connect", started, 0, None)
        POOLS.add_user(self.user_id, ws=True)
        self.reader = gevent.spawn(self._read)

    def _fire(self, kind: str, name: str, started: float, length: int, exc: Exception | None) -> None:
        events.request.fire(
            request_type=kind,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exc,
            context={},
        )

    def _read(self) -> None:
        while not self.stopping and self.ws is not None:
            try:
                raw = self.ws.recv()
            except Exception as exc:
                if not self.stopping:
                    self._fire("WS", "disconnected", time.perf_counter(), 0, exc)
                return
            if not raw:  # the server closed the connection
                if not self.stopping:
                    self._fire("WS", "disconnected", time.perf_counter(), 0, ConnectionError("closed by server"))
                return
            try:
                frame = json.loads(raw)
            except ValueError as exc:
                self._fire("WS", "bad frame", time.perf_counter(), len(raw), exc)
                continue
            kind = frame.get("type", "?")
            POOLS.ws_events[kind] += 1
            age_ms = 0.0
            if frame.get("occurred_at"):
                then = dt.datetime.fromisoformat(frame["occurred_at"])
                age_ms = max((dt.datetime.now(dt.UTC) - then).total_seconds() * 1000, 0.0)
            events.request.fire(
                request_type="WS",
                name=f"event {kind}",
                response_time=age_ms,
                response_length=len(raw),
                exception=None,
                context={},
            )

    def _token(self) -> dict | None:
        with self.client.post(
            "/api/v1/ws-tokens", json={"user_id": self.user_id}, name="POST /api/v1/ws-tokens", catch_response=True
        ) as r:
            return _check(r, 201)

    @task
    def ping(self) -> None:
        if self.ws is None:
            return
        if time.time() >= self.refresh_at:  # the socket closes (4002) once its token expires
            token = self._token()
            if token:
                self.ws.send(json.dumps({"type": "refresh", "token": token["token"]}))
                self.refresh_at = _refresh_at(token["expires_at"])
        started = time.perf_counter()
        try:
            self.ws.send(json.dumps({"type": "ping"}))
            self._fire("WS", "send ping", started, 0, None)
        except Exception as exc:
            self._fire("WS", "send ping", started, 0, exc)

    def on_stop(self) -> None:
        self.stopping = True
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
        if self.reader is not None:
            self.reader.kill(block=False)
        revoke_own_key(self)  # after the socket closed: a revocation would close it with 4003


@events.test_stop.add_listener
def _summary(environment, **kwargs) -> None:
    received = sum(POOLS.ws_events.values())
    print(f"WebSocket frames received: {received} {dict(POOLS.ws_events)}")
