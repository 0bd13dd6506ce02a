"""GET /metrics in Prometheus text format."""

from __future__ import annotations

from handlers.base import BaseHandler
from managers.metrics import MetricsManager


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        content_type, body = MetricsManager.instance().render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


default_handlers = [(r"/metrics", MetricsHandler)]
