"""The application factory: gathers each handler module's ``default_handlers``."""

from __future__ import annotations

import importlib

import tornado.web

from handlers.base import NotFoundHandler, log_request

HANDLER_MODULES = (
    "handlers.users",
    "handlers.payments",
    "handlers.analytics",
    "handlers.health",
    "handlers.metrics",
    "handlers.openapi",
    "handlers.ws",
    "handlers.demo",
)


def make_app(config: dict, extra_handlers: list | None = None) -> tornado.web.Application:
    ws = config["websocket"]
    routes: list = []
    for name in HANDLER_MODULES:
        routes.extend(importlib.import_module(name).default_handlers)
    routes.extend(extra_handlers or [])
    return tornado.web.Application(
        routes,
        log_function=log_request,
        default_handler_class=NotFoundHandler,
        websocket_ping_interval=ws["ping_interval_s"],
        websocket_ping_timeout=ws["ping_timeout_s"],
        websocket_max_message_size=ws["max_message_bytes"],
    )
