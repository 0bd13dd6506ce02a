"""Startup and shutdown, for each role a process can play.

``ROLES`` lists, per role, the managers a process starts, in dependency order:
this is the one place to read what runs where. ``Lifecycle.start`` pushes each
manager it starts onto a stack, and ``stop`` unwinds it, so a failed start
closes exactly what was started.

Nothing here waits for a dependency. A manager that needs a connection makes it
in the background (MariaDB, Kafka and MongoDB retry with backoff for as long as
it takes; Redis connects on first use), so the port opens at once and
``/health/ready`` says when the API can be served.
"""

from __future__ import annotations

import asyncio
import logging

from domain import events
from domain.analytics_consumer import AnalyticsConsumer
from domain.auth import Authenticator
from domain.outbox import OutboxRelay
from domain.ratelimit import RateLimiter
from managers.base import Manager
from managers.config import ConfigManager
from managers.health import HealthMonitor
from managers.kafka_consumer import BroadcastConsumer
from managers.kafka_producer import KafkaProducerManager
from managers.metrics import MetricsManager
from managers.mongodb import MongoManager
from managers.mysql import MySQLManager
from managers.redis import RedisManager
from managers.websocket_hub import WebSocketHub

log = logging.getLogger("singleton.lifecycle")

CLOSE_TIMEOUT_S = 15  # per manager; the slot is cleared even past it

_API = (
    ConfigManager,
    MetricsManager,
    MySQLManager,
    Authenticator,
    RedisManager,
    RateLimiter,
    MongoManager,  # the analytics endpoints read it
    KafkaProducerManager,
    WebSocketHub,
    BroadcastConsumer,  # this instance's sockets get every event
)
ROLES: dict[str, tuple[type[Manager], ...]] = {
    # One process does everything: the default, and what `make run` starts.
    "all": (*_API, AnalyticsConsumer, OutboxRelay, HealthMonitor),
    # REST and WebSocket only; run the relay and analytics elsewhere.
    "api": (*_API, HealthMonitor),
    # MariaDB's outbox to Kafka.
    "relay": (ConfigManager, MetricsManager, MySQLManager, KafkaProducerManager, OutboxRelay, HealthMonitor),
    # Kafka to MongoDB, in the shared consumer group.
    "analytics": (ConfigManager, MetricsManager, MongoManager, AnalyticsConsumer, HealthMonitor),
}


class Lifecycle:
    def __init__(self, config: dict, role: str = "all"):
        self.config = config
        self.role = role
        self._stack: list[Manager] = []

    async def start(self) -> None:
        """Start the role's managers in order; on failure close what was started and re-raise."""
        try:
            for cls in ROLES[self.role]:
                self._stack.append(cls.start(self.config))
            watch(HealthMonitor.instance())
        except BaseException:
            await self.stop()
            raise
        log.info("managers started", extra={"role": self.role, "managers": [type(m).__name__ for m in self._stack]})

    async def stop(self) -> None:
        """Close every started manager, last started first; one failure does not stop the rest."""
        while self._stack:
            manager = self._stack.pop()
            try:
                await asyncio.wait_for(manager.close(), CLOSE_TIMEOUT_S)
            except Exception:
                log.exception("close failed", extra={"manager": type(manager).__name__})


def watch(monitor: HealthMonitor) -> None:
    """What /health reports beyond the dependencies, for the parts this process runs."""
    for consumer in (BroadcastConsumer, AnalyticsConsumer):
        if consumer.started():
            monitor.watch(f"consumers.{consumer.name}", consumer.instance().status)
    if RateLimiter.started():
        monitor.watch("rate_limiter", RateLimiter.instance().status)
    if KafkaProducerManager.started():
        monitor.on_report(events.publish_health_check)
