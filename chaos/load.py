"""Steady payment writes as a careful client sends them, and a watch on /health.

``Load`` starts a payment every 1/rate seconds (open loop: a slow answer does not slow
the rate), spread over a scenario's users, each POST with its own Idempotency-Key. A
write is retried with the same key and body on a connection error, a 5xx, or any
answer carrying Retry-After (429, 503, 409 ``idempotency_key_in_use``), waiting what
Retry-After says or else a short backoff, until ``WRITE_DEADLINE_S``. Every attempt is
recorded: when it started, how long it took, what came back. Like a client with a pool of
connections, at most ``MAX_IN_FLIGHT`` attempts are on the wire; a write waits for a
free one, its deadline running, and only then is the attempt started and timed.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.iostream import StreamClosedError

RATE_PER_S = 50.0
WRITE_DEADLINE_S = 120.0  # a write not accepted by then has finally failed
ATTEMPT_TIMEOUT_S = 30.0  # one HTTP attempt; longer is a hang, and shows as such
MAX_CLIENTS = 512  # requests tornado's client runs at once; more wait in its queue, timed (connect_timeout)
MAX_IN_FLIGHT = 480  # writes and reads on the wire at once (never reached at 50/s unless every attempt
# hangs); the rest wait for a free one without a timer, so tornado's queue stays free for /health
BACKOFF_S = (0.1, 2.0)
HEALTH_EVERY_S = 0.25

CONNECTION = "connection"  # the outcome of an attempt that got no HTTP answer


@dataclass
class Attempt:
    started: float  # time.monotonic()
    seconds: float
    outcome: int | str  # the HTTP status, or CONNECTION
    retry_after: str | None = None  # the answer's Retry-After
    error: str | None = None  # the answer's error code (its JSON envelope's error.code)


@dataclass
class Write:
    key: str
    user_id: str
    amount: Decimal
    attempts: list[Attempt] = field(default_factory=list)
    payment_id: str | None = None  # from the 201
    payment_ids: set[str] = field(default_factory=set)  # every 201 of this key: one id, or a bug
    final: int | str | None = None  # the last outcome; 201 when accepted
    ended: float | None = None
    sending: bool = False  # an attempt is on the wire
    started: float = field(default_factory=time.monotonic)  # when the load made it (its deadline runs from here)

    @property
    def accepted(self) -> bool:
        return self.final == 201


class Client:
    """JSON over HTTP to the service with the admin key, on tornado's client."""

    def __init__(self, base_url: str, key: str):
        self.base_url, self.key = base_url, key
        self.http = AsyncHTTPClient(force_instance=True, max_clients=MAX_CLIENTS)
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)  # taken by each write's or read's attempt

    async def request(
        self, method: str, path: str, body=None, headers=None, timeout_s: float = ATTEMPT_TIMEOUT_S
    ) -> tuple[int, dict | None, dict]:
        """One attempt: (status, JSON body, headers); raises OSError when no answer came."""
        try:
            response = await self.http.fetch(
                self.base_url + path,
                method=method,
                body=None if body is None else json.dumps(body),
                headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json", **(headers or {})},
                raise_error=False,
                connect_timeout=min(5.0, timeout_s),
                request_timeout=timeout_s,
            )
        except (HTTPClientError, StreamClosedError) as exc:  # 599: timeout, or cut off
            raise ConnectionError(str(exc)) from exc
        if response.code == 599:
            raise ConnectionError(str(response.error))
        try:
            payload = json.loads(response.body) if response.body else None
        except ValueError:
            payload = None
        return response.code, payload, dict(response.headers)

    def close(self) -> None:
        self.http.close()


def retry_delay(headers: dict, tries: int) -> float:
    """What Retry-After asks (capped at 5 s), else a doubling backoff with jitter."""
    if "Retry-After" in headers:
        try:
            return min(5.0, float(headers["Retry-After"]))
        except ValueError:
            pass
    low, high = BACKOFF_S
    return min(high, low * 2**tries) * random.uniform(0.5, 1.0)


async def send(client: Client, write: Write) -> None:
    """POST the payment until accepted, refused for good, or past the deadline."""
    body = {"user_id": write.user_id, "amount": str(write.amount), "currency": "USD"}
    deadline = write.started + WRITE_DEADLINE_S
    for tries in range(10_000):
        headers: dict = {}
        payload = None
        async with client.slots:  # a free connection of the pool: waited for untimed
            started = time.monotonic()
            write.sending = True
            try:
                code, payload, headers = await client.request(
                    "POST", "/api/v1/payments", body, {"Idempotency-Key": write.key}
                )
                outcome: int | str = code
                error = ((payload or {}).get("error") or {}).get("code") if code != 201 else None
            except OSError as exc:  # no answer: say why (refused, reset, which timeout)
                outcome, error = CONNECTION, str(exc)[:80] or type(exc).__name__
            finally:
                write.sending = False
        write.attempts.append(Attempt(started, time.monotonic() - started, outcome, headers.get("Retry-After"), error))
        write.final = outcome
        if outcome == 201:
            write.payment_id = payload["id"]
            write.payment_ids.add(payload["id"])
            break
        retryable = outcome == CONNECTION or outcome >= 500 or "Retry-After" in headers
        delay = retry_delay(headers, tries)
        if not retryable or time.monotonic() + delay > deadline:
            break
        await asyncio.sleep(delay)
    write.ended = time.monotonic()


async def read(client: Client, user_id: str, reads: list[Attempt]) -> None:
    """GET the user once (the cache's read-through path), no retry: what a reader saw."""
    async with client.slots:
        started = time.monotonic()
        try:
            outcome: int | str = (await client.request("GET", f"/api/v1/users/{user_id}"))[0]
        except OSError:
            outcome = CONNECTION
    reads.append(Attempt(started, time.monotonic() - started, outcome))


class Load:
    """Payments at ``rate`` per second over ``users`` until ``stop()`` (a user named
    twice in ``users`` gets twice the writes); with ``read_rate``, reads of the users too."""

    def __init__(self, client: Client, users: list[str], rate: float = RATE_PER_S, read_rate: float = 0.0):
        self.client, self.users, self.rate, self.read_rate = client, users, rate, read_rate
        self.writes: list[Write] = []
        self.reads: list[Attempt] = []
        self._tasks: set[asyncio.Task] = set()
        self._running = asyncio.Event()
        self._drivers: list[asyncio.Task] = []

    def start(self) -> None:
        self._running.set()
        self._drivers.append(asyncio.create_task(self._drive(self.rate, self._write)))
        if self.read_rate:
            self._drivers.append(asyncio.create_task(self._drive(self.read_rate, self._read)))

    def _write(self, n: int) -> Awaitable[None]:
        write = Write(uuid.uuid4().hex, self.users[n % len(self.users)], Decimal(random.randint(100, 9999)) / 100)
        self.writes.append(write)
        return send(self.client, write)

    def _read(self, n: int) -> Awaitable[None]:
        return read(self.client, self.users[n % len(self.users)], self.reads)

    async def _drive(self, rate: float, start_one: Callable[[int], Awaitable[None]]) -> None:
        """Open loop: the n-th call starts at n / rate seconds, however slow the answers."""
        interval, n = 1.0 / rate, 0
        begin = time.monotonic()
        while self._running.is_set():
            task = asyncio.ensure_future(start_one(n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, begin + n * interval - time.monotonic()))

    def in_flight(self) -> int:
        return sum(1 for w in self.writes if w.sending)

    async def stop(self) -> None:
        """No new writes; wait for those in flight (each ends by its own deadline)."""
        self._running.clear()
        await asyncio.gather(*self._drivers)
        await asyncio.gather(*self._tasks)


class Poller:
    """Calls ``poll(started)`` every ``every_s`` seconds, counted from each call's start,
    from ``start()`` until ``stop()``."""

    every_s = 1.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            await self.poll(started)
            await asyncio.sleep(max(0.0, started + self.every_s - time.monotonic()))

    async def poll(self, started: float) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class HealthWatch(Poller):
    """GET /health every HEALTH_EVERY_S: each answer's time and status ("unreachable" when
    none), and the analytics consumer's lag as the admin's report gives it."""

    every_s = HEALTH_EVERY_S

    def __init__(self, client: Client):
        self.client = client
        self.seen: list[tuple[float, str]] = []
        self.lags: list[tuple[float, int]] = []

    async def poll(self, started: float) -> None:
        try:
            _, report, _ = await self.client.request("GET", "/health", timeout_s=2.0)
            report = report or {}
            status = report.get("status", "?")
            lag = report.get("consumers", {}).get("analytics", {}).get("lag")
            if lag is not None:
                self.lags.append((started, lag))
        except OSError:
            status = "unreachable"
        self.seen.append((started, status))

    def first_ok(self, after: float) -> float | None:
        """When the first ok report came that was asked for at or after ``after``."""
        return next((t for t, status in self.seen if t >= after and status == "ok"), None)

    def statuses(self, start: float, end: float) -> list[str]:
        """The statuses reported between ``start`` and ``end``, each once, in order."""
        return list(dict.fromkeys(status for t, status in self.seen if start <= t <= end))
