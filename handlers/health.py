"""GET /health: every dependency checked for real; 200 only when all are ok.

Public, so a load balancer can poll it without a key; only an admin key sees
each dependency's error text and latency.
"""

from __future__ import annotations

from handlers.base import BaseHandler
from service.health import HealthMonitor


class HealthHandler(BaseHandler):
    public = True

    async def get(self) -> None:
        monitor = HealthMonitor.instance()
        report = await monitor.check()
        monitor.maybe_publish_event(report)
        if self.principal is None or not self.principal.is_admin:
            report = public_view(report)
        self.write_json(report, 200 if report["status"] == "ok" else 503)


def public_view(report: dict) -> dict:
    """Each part's status, without error texts, latencies or anything else."""
    return {
        "status": report["status"],
        **{
            part: {name: {"status": r["status"]} for name, r in report[part].items()}
            for part in report
            if part in ("dependencies", "consumers")
        },
    }


default_handlers = [(r"/health", HealthHandler)]
