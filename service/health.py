"""HealthMonitor: real round trips to each dependency, on demand and periodically.

``check()`` pings MySQL, MongoDB, Redis and Kafka concurrently, each under its
own deadline, updates the up/down gauges and returns the report GET /health
serves. A periodic probe keeps the gauges fresh when nobody polls. Each check
may hand a ``health_check`` event to Kafka, at most once per configured interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from tornado.ioloop import PeriodicCallback

from domain import codec, events
from domain.analytics_consumer import AnalyticsConsumer
from managers import metrics
from managers.base import Manager
from managers.kafka_consumer import KafkaConsumerManager
from managers.kafka_producer import KafkaProducerManager
from managers.metrics import Dependency
from managers.mongodb import MongoManager
from managers.mysql import MySQLManager
from managers.redis import RedisManager

log = logging.getLogger("singleton.health")

# Background consumers whose loops /health watches (a stopped loop reads nothing).
CONSUMERS = {"broadcast": KafkaConsumerManager, "analytics": AnalyticsConsumer}

PINGS: dict[Dependency, Callable[[], Awaitable[None]]] = {
    Dependency.MYSQL: lambda: MySQLManager.instance().ping(),
    Dependency.MONGODB: lambda: MongoManager.instance().ping(),
    Dependency.REDIS: lambda: RedisManager.instance().ping(),
    Dependency.KAFKA: lambda: KafkaProducerManager.instance().ping(),
}


class HealthMonitor(Manager):
    def __init__(self, timeout_s: float, probe_interval_s: float, event_interval_s: float):
        self.timeout_s = timeout_s
        self.event_interval_s = event_interval_s
        self._last_event_at: float | None = None
        self._tasks: set[asyncio.Task] = set()
        self._probe = PeriodicCallback(self.check, probe_interval_s * 1000)

    @classmethod
    def start(cls, server_cfg: dict, kafka_cfg: dict) -> HealthMonitor:
        inst = cls(
            server_cfg["health_check_timeout_s"],
            server_cfg["health_probe_interval_s"],
            kafka_cfg["health_event_interval_s"],
        )
        inst._probe.start()
        cls._install(inst)
        return inst

    async def _check_one(self, dep: Dependency) -> dict:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(PINGS[dep](), self.timeout_s)
            result = {"status": "ok"}
        except Exception as exc:  # any failure of the round trip means "down"
            result = {"status": "down", "error": str(exc) or type(exc).__name__}
        elapsed = time.perf_counter() - started
        result["latency_ms"] = round(elapsed * 1000, 2)
        metrics.DEPENDENCY_CHECK_DURATION.labels(dep.value).observe(elapsed)
        metrics.DEPENDENCY_UP.labels(dep.value).set(1 if result["status"] == "ok" else 0)
        return result

    async def check(self) -> dict:
        results = await asyncio.gather(*(self._check_one(dep) for dep in Dependency))
        deps = {dep.value: r for dep, r in zip(Dependency, results, strict=True)}
        consumers = {name: cls.instance().status() for name, cls in CONSUMERS.items() if cls.started()}
        down = [name for name, r in {**deps, **consumers}.items() if r["status"] != "ok"]
        status = "ok" if not down else "down" if len(down) == len(deps) + len(consumers) else "degraded"
        report = {"status": status, "dependencies": deps, "consumers": consumers}
        if down:
            report["down"] = down
        return report

    def maybe_publish_event(self, report: dict) -> bool:
        """Hand a health_check event to Kafka unless one went out within the interval."""
        now = time.monotonic()
        if self._last_event_at is not None and now - self._last_event_at < self.event_interval_s:
            return False
        self._last_event_at = now
        task = asyncio.create_task(self._publish(report))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _publish(self, report: dict) -> None:
        event = events.envelope(events.HEALTH_CHECK, None, report)
        try:
            await KafkaProducerManager.instance().send(codec.dumps(event))
            metrics.HEALTH_EVENTS.labels("sent").inc()
        except Exception as exc:
            metrics.HEALTH_EVENTS.labels("failed").inc()
            log.warning("health_check event not sent", extra={"error": repr(exc)})

    async def close(self) -> None:
        self._probe.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.timeout_s)
        type(self)._uninstall()
