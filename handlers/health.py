"""Health in the shapes orchestrators expect, all public and answered from the
HealthMonitor's last report (within a second, even while a dependency hangs):

- ``GET /health/live``: 200 while the event loop runs (restart the process if not);
- ``GET /health/ready``: 200 when this instance can serve its API (MariaDB reached
  and migrated), else 503 (take it out of the load balancer, do not restart it);
- ``GET /health``: the report, ``status`` ``ok`` | ``degraded`` (200) or ``down``
  (503). Only an admin key sees more than that status: each part by name, error
  texts, latencies, lag, the rate limiter. The metrics listener, which is not
  public, serves the whole report at its own ``/health`` (``FullHealthHandler``).

Live and ready never look at an API key (``checks_key``): an orchestrator's probe
costs no MariaDB query whatever headers it sends. ``/health`` looks a key up at
most once per ``auth.key_cache_ttl_s`` and, for a key it has no verdict for, only
after the address's rate limit (handlers/base.py).
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


class StatusHealthHandler(HealthHandler):
    """``/health`` of a process without the API (``--role relay`` or ``analytics``): it has
    neither keys to check nor a rate limiter, so everyone gets the status alone; the whole
    report is on its metrics listener."""

    rate_limited = False
    checks_key = False


class FullHealthHandler(BaseHandler):
    """The whole report, for the metrics listener (loopback, or an address only the
    scraper and operators reach): dependency names and details without an admin key."""

    public = True
    rate_limited = False
    checks_key = False

    async def get(self) -> None:
        report = await HealthMonitor.instance().latest()
        self.write_json(report, 503 if report["status"] == "down" else 200)


class LiveHandler(BaseHandler):
    public = True
    rate_limited = False  # an orchestrator's probe, and no Redis round trip to answer it
    checks_key = False

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    public = True
    rate_limited = False
    checks_key = False

    def get(self) -> None:
        ready = HealthMonitor.instance().ready()
        self.write_json({"status": "ready" if ready else "not_ready"}, 200 if ready else 503)


def public_view(report: dict[str, Any]) -> dict[str, Any]:
    """The overall status alone: which dependencies this service has, and which of them
    is down, is for admin keys and the metrics listener."""
    return {"status": report["status"]}


default_handlers = [
    (r"/health", HealthHandler),
    (r"/health/live", LiveHandler),
    (r"/health/ready", ReadyHandler),
]

# The API port of a process that serves no API (service/app.py).
probe_handlers = [
    (r"/health", StatusHealthHandler),
    (r"/health/live", LiveHandler),
    (r"/health/ready", ReadyHandler),
]
