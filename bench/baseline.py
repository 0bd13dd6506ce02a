"""The baseline: one bare Tornado RequestHandler returning a small JSON dict.

``python bench/baseline.py --port N`` (its own process). Every service endpoint
is reported as a ratio to this, measured right before and after it, so the
machine's own speed and drift cancel out. ``BENCH_UVLOOP=1`` runs it on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import tornado.web


class BaselineHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"status": "ok", "service": "baseline"})


async def serve(port: int) -> None:
    app = tornado.web.Application([(r"/", BaselineHandler)], log_function=lambda handler: None)
    app.listen(port, address="127.0.0.1")
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="bare Tornado JSON handler")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    if os.environ.get("BENCH_UVLOOP", "") not in ("", "0"):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
