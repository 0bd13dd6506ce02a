"""The application factories: the API (each handler module's ``default_handlers``)
and the metrics listener, and the HTTP server's limits."""

from __future__ import annotations

import importlib
from typing import Any

import tornado.web

from handlers import health
from handlers.base import NotFoundHandler, Traffic, log_request
from managers.config import Config

Routes = list[tuple[str, type[tornado.web.RequestHandler]]]  # what each module's default_handlers is
API_ROLES = ("all", "api")
HANDLER_MODULES = (
    "handlers.users",
    "handlers.payments",
    "handlers.refunds",
    "handlers.api_keys",
    "handlers.audit",
    "handlers.analytics",
    "handlers.health",
    "handlers.openapi",
    "handlers.ws",
    "handlers.demo",
)


def make_app(config: Config, role: str = "all") -> tornado.web.Application:
    """The API for the roles that serve it (all, api); the health endpoints alone for the others."""
    ws = config["websocket"]
    routes: Routes = []
    if role in API_ROLES:
        for name in HANDLER_MODULES:
            routes.extend(importlib.import_module(name).default_handlers)
    else:
        routes.extend(health.probe_handlers)
    return tornado.web.Application(
        routes,
        log_function=log_request,
        default_handler_class=NotFoundHandler,
        traffic=Traffic(),
        websocket_ping_interval=ws["ping_interval_s"],
        websocket_ping_timeout=ws["ping_timeout_s"],
        websocket_max_message_size=ws["max_message_bytes"],
    )


def make_ops_app() -> tornado.web.Application:
    """The listener on ``metrics.host``/``metrics.port``: /metrics, and this process's own
    /health/live and /health/ready (what a supervisor asks of one worker)."""
    routes = importlib.import_module("handlers.metrics").default_handlers
    return tornado.web.Application(
        routes, log_function=log_request, default_handler_class=NotFoundHandler, traffic=Traffic()
    )


def server_options(config: Config) -> dict[str, Any]:
    """HTTPServer limits: a client that trickles its request cannot hold a socket for long."""
    server = config["server"]
    return {
        "max_body_size": server["max_body_bytes"],
        "max_header_size": server["max_header_bytes"],
        "idle_connection_timeout": server["idle_connection_timeout_s"],
        "body_timeout": server["body_timeout_s"],
    }
