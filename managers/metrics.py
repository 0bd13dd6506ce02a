"""Every Prometheus metric the service exports, declared in one place.

Names read ``singleton_<noun>_<verb>_<unit>`` where the metric has a verb and a unit
(``singleton_http_request_duration_seconds``); a plain state has neither
(``singleton_ready``, 1 or 0). Labels are bounded: handler class names, not URLs;
every other label's values are an enum below, or the names of what the code declares
once elsewhere: the backing services (managers/dependencies.py), the Kafka readers
(their ``name``), background tasks (their ``Failures``), and event and frame types
(``count_by_name``). Each declarer creates its series up front, so dashboards see
zeros before the first event.
"""

from __future__ import annotations

import collections
import enum
import functools
import gc
import time
from collections.abc import Iterable
from typing import Any

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

from managers.base import Manager
from managers.config import Config

PREFIX = "singleton"


class CacheLookup(enum.StrEnum):
    HIT = "hit"
    MISS = "miss"
    ERROR = "error"  # Redis failed
    BYPASS = "bypass"  # Redis failed a moment ago: not tried


class RedisOp(enum.StrEnum):
    GET = "get"
    SET = "set"
    RATE_LIMIT = "rate_limit"


class SocketOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    REFUSED_FULL = "refused_full"
    REFUSED_USER_LIMIT = "refused_user_limit"
    REFUSED_IP_LIMIT = "refused_ip_limit"
    REPLACED = "replaced"


class SocketClosed(enum.StrEnum):
    CLIENT = "client"  # the peer closed it
    LOST = "lost"  # the peer vanished or stopped answering pings
    REPLACED = "replaced"  # a newer socket with the same client id
    SLOW = "slow"  # too much unsent data
    SHUTDOWN = "shutdown"
    FULL = "full"  # the hub was full
    EXPIRED = "expired"  # its token expired and no fresh one came
    REVOKED = "revoked"  # the key that minted its token was revoked


class Outcome(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"


@functools.cache
def request_series(handler: str, method: str, code: int) -> tuple[Histogram, Counter]:
    """The duration and count series of one (handler, method, code), bound once: a
    request then costs a dictionary lookup, not two label resolutions. The inputs
    are bounded (handler classes, METHOD_LABELS, status codes)."""
    labels = (handler, method, str(code))
    return REQUEST_DURATION.labels(*labels), REQUESTS.labels(*labels)


_EVENT_TYPES: set[str] = set()


def count_by_name(types: Iterable[str], *series: Counter) -> None:
    """Declare event (or frame) types as label values: counted by name, and their
    series in ``series`` pre-created. Any other type a message claims is "other"."""
    for t in types:
        _EVENT_TYPES.add(t)
        for counter in series:
            counter.labels(t)


def event_label(event_type: object) -> str:
    """The label of a type a message claims: a declared one, or "other" (bounded)."""
    return event_type if event_type in _EVENT_TYPES else "other"


REQUEST_DURATION = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "HTTP request latency, by handler, method and status code",
    ["handler", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests served, by handler, method and status code",
    ["handler", "method", "code"],
)
DEPENDENCY_UP = Gauge(
    f"{PREFIX}_dependency_up",
    "1 if the dependency answered its last health check, else 0",
    ["dependency"],
)
DEPENDENCY_CHECK_DURATION = Histogram(
    f"{PREFIX}_dependency_check_duration_seconds",
    "Latency of the dependency health checks",
    ["dependency"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
HEALTH_EVENTS = Counter(
    f"{PREFIX}_health_check_events",
    "health_check events handed to Kafka, by outcome",
    ["outcome"],
)
EVENTS_CONSUMED = Counter(
    f"{PREFIX}_kafka_events_consumed",
    "Kafka events read, by consumer and event type",
    ["consumer", "type"],
)
CONSUMER_ERRORS = Counter(
    f"{PREFIX}_kafka_consumer_errors",
    "Failures while reading or dispatching Kafka events, by consumer",
    ["consumer"],
)
CONSUMER_RESTARTS = Counter(
    f"{PREFIX}_kafka_consumer_restarts",
    "Kafka readers replaced because they fetched nothing while messages waited for them, by consumer",
    ["consumer"],
)
CACHE_LOOKUPS = Counter(
    f"{PREFIX}_cache_lookups",
    "Cache reads by result: hit, miss, error (Redis failed) or bypass (Redis recently failed)",
    ["result"],
)
CACHE_ERRORS = Counter(
    f"{PREFIX}_cache_errors",
    "Redis failures absorbed (cache reads and writes, rate-limit checks), by operation",
    ["op"],
)
EVENTS_PUBLISHED = Counter(
    f"{PREFIX}_events_published",
    "Events the outbox relay published to Kafka, by type",
    ["type"],
)
OUTBOX_PENDING = Gauge(f"{PREFIX}_outbox_pending_events", "Outbox rows not yet published to Kafka")
OUTBOX_OLDEST_AGE = Gauge(
    f"{PREFIX}_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished outbox row (0 when none)"
)
OUTBOX_PUBLISH_FAILURES = Counter(
    f"{PREFIX}_outbox_publish_failures", "Relay batches that could not be published (they are retried)"
)
WS_CONNECTIONS = Gauge(f"{PREFIX}_websocket_connections", "Open WebSocket connections")
WS_CONNECTS = Counter(f"{PREFIX}_websocket_connects", "WebSocket connections opened, by outcome", ["outcome"])
WS_DISCONNECTS = Counter(f"{PREFIX}_websocket_disconnects", "WebSocket connections closed, by reason", ["reason"])
WS_FRAMES_SENT = Counter(f"{PREFIX}_websocket_frames_sent", "Frames written to WebSocket clients, by type", ["type"])
WS_DUPLICATES_DROPPED = Counter(
    f"{PREFIX}_websocket_duplicate_events_dropped",
    "Events not broadcast because this instance broadcast the same event_id recently (a re-publish)",
)
WS_SLOW_CLOSED = Counter(
    f"{PREFIX}_websocket_slow_clients_closed", "Connections closed because their unsent data passed the bound"
)
WS_DELIVERY_DELAY = Histogram(
    f"{PREFIX}_websocket_delivery_delay_seconds",
    "From an event's occurred_at to its frames being written to its user's connections (once per event)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_DELAY = Histogram(
    f"{PREFIX}_kafka_consumer_delay_seconds",
    "From a record's Kafka timestamp (the relay's send) to its hand-off (the broadcast reader's: to the hub)",
    ["consumer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GC_PAUSE = Histogram(
    f"{PREFIX}_gc_pause_seconds",
    "Passes of Python's cyclic collector, each holding every thread, by generation (0, 1, 2)",
    ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CONSUMER_LAG = Gauge(
    f"{PREFIX}_kafka_consumer_lag_messages", "Messages behind the partition high-water marks, by consumer", ["consumer"]
)
RATE_LIMITED = Counter(
    f"{PREFIX}_rate_limited",
    "Calls refused with 429 by the rate limiter, by the caller's role (admin, user, anonymous)",
    ["role"],
)
RATE_LIMIT_LOCAL = Counter(
    f"{PREFIX}_rate_limit_local",
    "Calls checked against this process's own token buckets because Redis could not be reached "
    "(rate_limit.redis_down: local)",
)
AUTH_DISABLED = Gauge(
    f"{PREFIX}_auth_disabled", "1 while API keys are not checked (the bench's switch: every caller is admin), else 0"
)
REQUESTS_IN_FLIGHT = Gauge(f"{PREFIX}_http_requests_in_flight", "HTTP requests started and not yet finished")
READY = Gauge(f"{PREFIX}_ready", "1 when this instance can serve its API (MariaDB reached and migrated), else 0")
LOG_LINES_SUPPRESSED = Counter(
    f"{PREFIX}_log_lines_suppressed",
    "Warnings of client libraries not logged during an outage (one per state change is), by library",
    ["source"],
)
BACKGROUND_ERRORS = Counter(
    f"{PREFIX}_background_errors",
    "Failures of a background task that are not an outage of its dependency (bugs), by task",
    ["task"],
)
ANALYTICS_WRITE_DURATION = Histogram(
    f"{PREFIX}_analytics_write_duration_seconds",
    "Time to write one batch of events to MongoDB",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# Every series of a one-label metric, created now: dashboards see zeros before the first event.
for _series, _values in (
    (CACHE_LOOKUPS, CacheLookup),
    (CACHE_ERRORS, RedisOp),
    (WS_CONNECTS, SocketOutcome),
    (WS_DISCONNECTS, SocketClosed),
    (HEALTH_EVENTS, Outcome),
):
    for _value in _values:
        _series.labels(_value)
# A cache lookup's outcome, bound once: the GET paths count one per request.
CACHE_LOOKUP = {outcome: CACHE_LOOKUPS.labels(outcome) for outcome in CacheLookup}

_GC_PAUSES: collections.deque[tuple[int, float]] = collections.deque(maxlen=10_000)  # not yet in GC_PAUSE
_gc_started = 0.0


def _time_gc(phase: str, info: dict[str, Any]) -> None:
    """gc.callbacks: note each pass's length. Observed into GC_PAUSE later (``gc_pauses_observed``),
    never here: a pass can start inside a metric's lock, which observing would take again."""
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _GC_PAUSES.append((info["generation"], time.perf_counter() - _gc_started))


def time_gc() -> None:
    """Time every pass of the cyclic collector from now on (once a process; again adds nothing)."""
    for generation in range(3):
        GC_PAUSE.labels(str(generation))
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)


def gc_pauses_observed() -> None:
    """The passes noted since the last call, into GC_PAUSE."""
    while _GC_PAUSES:
        generation, seconds = _GC_PAUSES.popleft()
        GC_PAUSE.labels(str(generation)).observe(seconds)


class MetricsManager(Manager):
    """Owns the registry the /metrics endpoint renders (process metrics included)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry):
        self.registry = registry

    @classmethod
    def start(cls, config: Config | None = None) -> MetricsManager:
        return cls._install(cls(prometheus_client.REGISTRY))

    def render(self) -> tuple[str, bytes]:
        gc_pauses_observed()
        return prometheus_client.CONTENT_TYPE_LATEST, prometheus_client.generate_latest(self.registry)
