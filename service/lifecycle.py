"""Startup and shutdown, for each role a process can play.

``ROLES`` lists, per role, the managers a process starts, in dependency order:
this is the one place to read what runs where. ``Lifecycle.start`` pushes each
manager it starts onto a stack, and ``stop`` unwinds it, so a failed start
closes exactly what was started.

Registering something new is one line in one place: a backing service in
managers/dependencies.py and in the roles here; a Kafka reader (a ``TopicReader``
with its ``name``) or any manager with a background task, in the roles here. Each
manager that reports a state of its own (its ``health_path``) is shown in /health
from that alone.

Nothing here waits for a dependency. MariaDB and the Kafka readers connect in the
background, retrying with backoff for as long as it takes (managers/background.py);
Redis, MongoDB and the Kafka producer connect on first use, and a failed call is
simply tried again by the next one. So the port opens at once and
``/health/ready`` says when the API can be served.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from domain import events
from domain.analytics_consumer import AnalyticsConsumer
from domain.auth import Authenticator
from domain.outbox import OutboxRelay
from domain.ratelimit import RateLimiter
from domain.revocations import RevocationWatch
from managers.base import Manager
from managers.config import Config, ConfigManager
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


class ManagerClass(Protocol):
    """What ROLES lists: a manager class that starts from the whole configuration."""

    def start(self, config: Config) -> Manager: ...


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
    RevocationWatch,  # and close when their key is revoked, even while Kafka lags
)
ROLES: dict[str, tuple[ManagerClass, ...]] = {
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
    def __init__(self, config: Config, role: str = "all"):
        self.config = config
        self.role = role
        self._stack: list[Manager] = []

    async def start(self) -> None:
        """Start the role's managers in order; on failure close what was started and re-raise."""
        try:
            for cls in ROLES[self.role]:
                self._stack.append(cls.start(self.config))
            self.watch()
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

    def watch(self) -> None:
        """What /health reports beyond the dependencies: each started manager's own state."""
        monitor = HealthMonitor.instance()
        for manager in self._stack:
            if manager.health_path is not None:
                monitor.watch(manager.health_path, manager.status)
        if KafkaProducerManager.started():
            monitor.on_report(events.publish_health_check)
