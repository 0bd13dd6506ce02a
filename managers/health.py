"""HealthMonitor: real round trips to each dependency, in the background; the last
report is what every health endpoint serves, so each answers within a second
even while a dependency hangs.

Every ``health_probe_interval_s`` the monitor pings the dependencies this
process uses (concurrently, each under ``health_check_timeout_s``), asks the
parts it watches (the Kafka consumers' loops, the rate limiter) for their state,
and keeps the report:

- ``status``: ``down`` when the instance cannot serve its API (its essential
  dependency, MariaDB's home for the API, is unreachable or not migrated yet),
  ``degraded`` when anything else is not ok (writes still go to the outbox,
  reads skip the cache, analytics waits), else ``ok``;
- ``ready``: not ``down``; ``/health/ready`` and ``singleton_ready`` show it.

A dependency changing state is logged once, here, and opens the log filter for
its client library's next warning. Only the errors its manager calls unavailable
mean ``down``: any other failure of a check is a bug in it, reported as ``error``
(not ready, never "unreachable"), logged with its traceback and counted in
``singleton_background_errors_total{task="health_check_<dependency>"}``; so is a
failure of the report itself. Reports can be handed to listeners (the
``health_check`` event), at most once per ``health_event_interval_s``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from tornado.ioloop import PeriodicCallback

from managers import metrics
from managers.background import Failures, no_dependency
from managers.base import BackingService, Manager
from managers.config import Config, KafkaConfig, ServerConfig
from managers.dependencies import BACKING_SERVICES
from managers.logger import LoggerManager
from managers.mongodb import MongoManager
from managers.mysql import MySQLManager, NotReady

log = logging.getLogger("singleton.health")

SUMMARY_EVERY_S = 60.0  # how often suppressed client-library warnings are summed up in the log
SERVING = ("ok", "degraded")  # a dependency that serves (degraded: MariaDB with a shard down)

StatusOf = Callable[[], dict[str, Any]]
Listener = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


class HealthMonitor(Manager):
    def __init__(self, server_cfg: ServerConfig, kafka_cfg: KafkaConfig):
        self.timeout_s: float = server_cfg["health_check_timeout_s"]
        self.interval_s: float = server_cfg["health_probe_interval_s"]
        self.event_interval_s: float = kafka_cfg["health_event_interval_s"]
        self.report: dict[str, Any] | None = None
        self._states: dict[str, str] = {}  # per dependency: ok, down, connecting (or unknown)
        self._reported_at = 0.0
        self._watched: dict[str, StatusOf] = {}  # "consumers.broadcast" -> its status()
        self._listeners: list[Listener] = []
        self._last_event_at: float | None = None
        self._last_summary = time.monotonic()
        self._refreshing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe = PeriodicCallback(self._tick, self.interval_s * 1000)
        self._failures = Failures("health_report", no_dependency, logger=log)
        self._check_failures = {
            cls.dependency: Failures(f"health_check_{cls.dependency}", cls.is_unavailable, logger=log)
            for cls in BACKING_SERVICES
        }

    @classmethod
    def start(cls, config: Config) -> HealthMonitor:
        inst = cls._install(cls(config["server"], config["kafka"]))
        inst._probe.start()
        inst._tick()
        return inst

    # -- what it watches --------------------------------------------------------------------
    def watch(self, path: str, status: StatusOf) -> None:
        """Report ``status()`` (a dict with a ``status``) at ``path`` ("rate_limiter",
        or "consumers.broadcast" for ``report["consumers"]["broadcast"]``)."""
        self._watched[path] = status

    def on_report(self, listener: Listener) -> None:
        """Hand reports to ``listener``, at most once per ``health_event_interval_s``."""
        self._listeners.append(listener)

    # -- the reports ----------------------------------------------------------------------------
    async def latest(self, max_wait_s: float = 0.8) -> dict[str, Any]:
        """The last report; a fresh one if it comes within ``max_wait_s``."""
        if self.report is None or time.monotonic() - self._reported_at > 2 * self.interval_s:
            self._tick()
        if self.report is None and self._refreshing is not None:
            await asyncio.wait({self._refreshing}, timeout=max_wait_s)
        return self.report or {"status": "down", "ready": False, "dependencies": {}, "note": "not checked yet"}

    def ready(self) -> bool:
        return self.report is not None and self.report["ready"]

    async def wait_ready(self) -> None:
        """Until a report says ready (a fresh check at least every probe interval)."""
        while not self.ready():
            await asyncio.sleep(self.interval_s / 4)
            self._tick()

    def _tick(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_in_background(), name="health-refresh")
        if LoggerManager.started() and time.monotonic() - self._last_summary >= SUMMARY_EVERY_S:
            self._last_summary = time.monotonic()
            LoggerManager.instance().summarize_suppressed()

    async def _refresh_in_background(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # a watched part's status() or a listener broke: a bug, said once
            self._failures.failed(exc)
        else:
            self._failures.succeeded()

    async def refresh(self) -> dict[str, Any]:
        """Check every dependency now and keep the report."""
        deps = [cls for cls in BACKING_SERVICES if cls.started()]
        results = await asyncio.gather(*(self._check(cls) for cls in deps))
        dependencies = dict(zip((cls.dependency for cls in deps), results, strict=True))
        watched: dict[str, dict[str, Any]] = {}
        for path, status in self._watched.items():
            section, _, name = path.partition(".")
            if name:
                watched.setdefault(section, {})[name] = status()
            else:
                watched[section] = status()
        self._log_changes(dependencies)
        report = assess(dependencies, watched, essential=self._essential(deps))
        report["checked_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        was_ready = self.ready()
        self.report, self._reported_at = report, time.monotonic()
        if report["ready"] != was_ready:
            log.info("instance ready" if report["ready"] else "instance not ready")
        metrics.READY.set(1 if report["ready"] else 0)
        self._maybe_notify(report)
        return report

    @staticmethod
    def _essential(deps: list[type[BackingService]]) -> str:
        """What this process cannot serve without: MariaDB, or for analytics alone MongoDB."""
        return (MySQLManager if MySQLManager in deps else MongoManager).dependency

    async def _check(self, cls: type[BackingService]) -> dict[str, Any]:
        failures = self._check_failures[cls.dependency]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                result: dict[str, Any] = await cls.instance().check()
            failures.succeeded()
        except NotReady as exc:  # still making its first connection
            result = {"status": "down", "error": str(exc), "connecting": True}
        except Exception as exc:
            # Its own unavailability is "down"; anything else is a bug in the check, which
            # says nothing about the server: "error", logged and counted as such.
            outage = cls.is_unavailable(exc)
            if not outage:
                failures.failed(exc)
            result = {"status": "down" if outage else "error", "error": str(exc)[:300] or type(exc).__name__}
        elapsed = time.perf_counter() - started
        result["latency_ms"] = round(elapsed * 1000, 2)
        metrics.DEPENDENCY_CHECK_DURATION.labels(cls.dependency).observe(elapsed)
        if result["status"] != "error":  # a bug in the check leaves the last known state
            metrics.DEPENDENCY_UP.labels(cls.dependency).set(1 if result["status"] in SERVING else 0)
        return result

    def _log_changes(self, dependencies: dict[str, dict[str, Any]]) -> None:
        """One line per change between up and down. Not known yet, or still making its
        first connection (MariaDB before its migrations), is neither: nothing is logged
        for it, and the reconnect loop says whatever it has to say."""
        for name, now in dependencies.items():
            state = "connecting" if now.get("connecting") else now["status"]
            was = self._states.get(name, "unknown")
            self._states[name] = state
            if {was, state} != {"ok", "down"}:
                continue
            if state == "ok":
                log.info("dependency up", extra={"dependency": name})
            else:
                log.warning("dependency down", extra={"dependency": name, "error": now.get("error")})
            if LoggerManager.started():
                LoggerManager.instance().outages.state_changed(name)

    def _maybe_notify(self, report: dict[str, Any]) -> None:
        now = time.monotonic()
        recent = self._last_event_at is not None and now - self._last_event_at < self.event_interval_s
        if not self._listeners or recent:
            return
        self._last_event_at = now
        for listener in self._listeners:
            task = asyncio.create_task(listener(report))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def release(self) -> None:
        self._probe.stop()
        pending = self._tasks | ({self._refreshing} if self._refreshing else set())
        if pending:
            await asyncio.wait(pending, timeout=self.timeout_s)
        metrics.READY.set(0)


def assess(
    dependencies: dict[str, dict[str, Any]], watched: dict[str, dict[str, Any]], essential: str
) -> dict[str, Any]:
    """The report's verdict: ``down`` without the essential dependency, ``degraded``
    with anything else not ok, else ``ok``."""
    parts = {name: r for name, r in dependencies.items()}
    for section, value in watched.items():
        parts.update(value if "status" not in value else {section: value})
    not_ok = [name for name, r in parts.items() if r["status"] not in ("ok", "disabled")]
    essential_ok = dependencies.get(essential, {}).get("status") in SERVING
    status = "down" if not essential_ok else "degraded" if not_ok else "ok"
    report = {"status": status, "ready": essential_ok, "dependencies": dependencies, **watched}
    if not_ok:
        report["down"] = not_ok
    return report
