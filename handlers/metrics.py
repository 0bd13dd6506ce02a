"""GET /metrics in Prometheus text format, served on its own listener
(``metrics.host``/``metrics.port``, loopback by default), as exporters usually
are: it needs no key, and the API port does not serve it. The listener also serves
the whole health report at ``/health`` (the API port's is redacted for callers
without an admin key), and this process's own live and ready probes."""

from __future__ import annotations

from handlers.base import BaseHandler
from handlers.health import FullHealthHandler, LiveHandler, ReadyHandler
from managers.metrics import MetricsManager


class MetricsHandler(BaseHandler):
    public = True
    rate_limited = False
    checks_key = False

    def get(self) -> None:
        content_type, body = MetricsManager.instance().render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


default_handlers = [
    (r"/metrics", MetricsHandler),
    (r"/health", FullHealthHandler),
    (r"/health/live", LiveHandler),
    (r"/health/ready", ReadyHandler),
]
