"""GET /demo: a small page that watches one user's live events over /ws (public).

The page is the static file demo/index.html at the repository root, read once
and kept in memory. It asks for an API key, trades it for a WebSocket token
(POST /api/v1/ws-tokens) and connects back to this service, so Tornado's
same-host Origin check lets it in whatever ``cors.allowed_origins`` says.
"""

from __future__ import annotations

import functools
from pathlib import Path

from handlers.base import BaseHandler

PAGE = Path(__file__).resolve().parent.parent / "demo" / "index.html"


@functools.cache
def page() -> bytes:
    return PAGE.read_bytes()


class DemoHandler(BaseHandler):
    public = True
    checks_key = False  # the same page for everyone

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page())


default_handlers = [(r"/demo", DemoHandler)]
