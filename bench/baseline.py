"""The baseline: one bare Tornado RequestHandler returning a small JSON dict, in its
own process (``python -m bench.baseline --port N``). Every service endpoint is
reported as a ratio to it, measured right before and after, so the machine's own
speed and drift cancel out."""

from __future__ import annotations

import asyncio
import sys

import tornado.web


class BaselineHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"status": "ok", "service": "baseline"})


async def serve(port: int) -> None:
    app = tornado.web.Application([(r"/", BaselineHandler)], log_function=lambda handler: None)
    app.listen(port, address="127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[sys.argv.index("--port") + 1])))
