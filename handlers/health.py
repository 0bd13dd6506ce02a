"""GET /health: every dependency checked for real; 200 only when all are ok."""

from __future__ import annotations

from handlers.base import BaseHandler
from service.health import HealthMonitor


class HealthHandler(BaseHandler):
    async def get(self) -> None:
        monitor = HealthMonitor.instance()
        report = await monitor.check()
        monitor.maybe_publish_event(report)
        self.write_json(report, 200 if report["status"] == "ok" else 503)


default_handlers = [(r"/health", HealthHandler)]
