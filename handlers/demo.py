"""GET /demo: a small page that watches one user's live events over /ws.

The page is the static file demo/index.html at the repository root, read once
and kept in memory. It connects back to this service, so Tornado's same-host
Origin check lets it in whatever ``cors.allowed_origins`` says.
"""

from __future__ import annotations

from pathlib import Path

from handlers.base import BaseHandler

PAGE = Path(__file__).resolve().parent.parent / "demo" / "index.html"


class DemoHandler(BaseHandler):
    page: bytes | None = None  # demo/index.html, read on first request

    def get(self) -> None:
        if DemoHandler.page is None:
            DemoHandler.page = PAGE.read_bytes()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(DemoHandler.page)


default_handlers = [(r"/demo", DemoHandler)]
