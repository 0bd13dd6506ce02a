"""Health in the shapes orchestrators expect, all public and answered from the
HealthMonitor's last report (within a second, even while a dependency hangs):

- ``GET /health/live``: 200 while the event loop runs (restart the process if not);
- ``GET /health/ready``: 200 when this instance can serve its API (MariaDB reached
  and migrated), else 503 (take it out of the load balancer, do not restart it);
- ``GET /health``: the report, ``status`` ``ok`` | ``degraded`` (200) or ``down``
  (503). Only an admin key sees error texts, latencies, lag and the rate limiter.
"""

from __future__ import annotations

from typing import Any

from handlers.base import BaseHandler
from managers.health import HealthMonitor


class HealthHandler(BaseHandler):
    public = True

    async def get(self) -> None:
        report = await HealthMonitor.instance().latest()
        if self.principal is None or not self.principal.is_admin:
            report = public_view(report)
        self.write_json(report, 503 if report["status"] == "down" else 200)


class LiveHandler(BaseHandler):
    public = True
    rate_limited = False  # an orchestrator's probe, and no Redis round trip to answer it

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    public = True
    rate_limited = False

    def get(self) -> None:
        ready = HealthMonitor.instance().ready()
        self.write_json({"status": "ready" if ready else "not_ready"}, 200 if ready else 503)


def public_view(report: dict[str, Any]) -> dict[str, Any]:
    """Each part's status, without error texts, latencies or anything else."""
    parts: dict[str, Any] = {
        section: {name: {"status": r["status"]} for name, r in report[section].items()}
        for section in ("dependencies", "consumers")
        if section in report
    }
    return {"status": report["status"], **parts}


default_handlers = [
    (r"/health", HealthHandler),
    (r"/health/live", LiveHandler),
    (r"/health/ready", ReadyHandler),
]
