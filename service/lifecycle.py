"""Startup and shutdown: the managers are created once, in dependency order,
before the port opens, and closed in reverse order after it closes."""

from __future__ import annotations

import asyncio
import inspect
import logging

from domain import events
from domain.analytics_consumer import AnalyticsConsumer
from domain.outbox import OutboxRelay
from managers.config import ConfigManager
from managers.kafka_consumer import KafkaConsumerManager
from managers.kafka_producer import KafkaProducerManager
from managers.metrics import MetricsManager
from managers.mongodb import MongoManager
from managers.mysql import MySQLManager
from managers.redis import RedisManager
from managers.websocket_hub import WebSocketHub
from service.health import HealthMonitor

log = logging.getLogger("singleton.lifecycle")

# Startup order; shutdown walks it backwards. The logger is outside it: it is
# started first by main() and closed last, so every step can be logged.
ORDER = (
    ConfigManager,
    MetricsManager,
    MySQLManager,
    RedisManager,
    MongoManager,
    KafkaProducerManager,
    WebSocketHub,
    KafkaConsumerManager,
    AnalyticsConsumer,
    OutboxRelay,
    HealthMonitor,
)


async def startup(config: dict) -> None:
    """Create every manager; on failure close what was created and re-raise."""
    retry = {"attempts": config["startup"]["attempts"], "retry_delay_s": config["startup"]["retry_delay_s"]}
    try:
        ConfigManager.start(config)
        MetricsManager.start()
        mysql = await MySQLManager.start(config["mysql"], **retry)
        await mysql.migrate()
        await RedisManager.start(config["redis"], **retry)
        await MongoManager.start(config["mongodb"], **retry)
        await KafkaProducerManager.start(config["kafka"], **retry)
        hub = WebSocketHub.start(config["websocket"])
        consumer = await KafkaConsumerManager.start(config["kafka"], **retry)
        for event_type in events.DOMAIN_TYPES:
            consumer.subscribe(event_type, hub.broadcast)
        await AnalyticsConsumer.start(config["kafka"], **retry)
        OutboxRelay.start(config["outbox"], config["payments"])
        HealthMonitor.start(config["server"], config["kafka"])
    except BaseException:
        await shutdown()
        raise
    log.info("managers started", extra={"managers": [cls.__name__ for cls in ORDER]})


async def shutdown() -> None:
    """Close every started manager in reverse order; one failure does not stop the rest."""
    for cls in reversed(ORDER):
        if not cls.started():
            continue
        try:
            result = cls.instance().close()
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, 10)
        except Exception:
            log.exception("close failed", extra={"manager": cls.__name__})
            cls._uninstall()
