"""``python -m bench.run_variant [--port N ...]``: the service, unchanged, started with

- ``BENCH_UVLOOP=1``: uvloop's event loop policy installed before ``service.__main__``
  is imported (``asyncio.run`` then builds a uvloop loop; Tornado runs on it);
- ``BENCH_ORJSON=1``: ``domain.codec.dumps``/``loads`` swapped for orjson equivalents;
- ``BENCH_GC_THRESHOLD=a,b,c``: ``gc.set_threshold(a, b, c)``;
- ``BENCH_GC_FREEZE_EVERY=seconds``: ``gc.freeze()`` that often (from a daemon thread), so
  long-lived objects (open connections) leave the collector's generations;
- ``BENCH_GC_LOG=path``: every collection's generation and duration recorded, summed
  into ``path`` (JSON) when the process exits.

For measuring only (bench/variants.py). The orjson ``loads`` falls back to the
stdlib whenever a body holds a JSON float, so amounts sent as numbers stay exact
Decimals; the bench sends amounts as strings.
"""

from __future__ import annotations

import asyncio
import os
import sys


def _on(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def patch_codec_with_orjson() -> None:
    import orjson

    from domain import codec

    stdlib_loads = codec.loads

    def has_float(value) -> bool:
        if isinstance(value, float):
            return True
        if isinstance(value, dict):
            return any(has_float(v) for v in value.values())
        if isinstance(value, list):
            return any(has_float(v) for v in value)
        return False

    def loads(raw):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise codec.InvalidJSON(str(exc)) from None
        return stdlib_loads(raw) if has_float(value) else value

    def dumps(value) -> bytes:
        # datetimes go through the service's own RFC 3339 formatting, Decimals to str
        return orjson.dumps(value, default=codec._default, option=orjson.OPT_PASSTHROUGH_DATETIME)

    codec.loads, codec.dumps = loads, dumps


def log_gc(path: str) -> None:
    """Time every collection (``gc.callbacks``); cumulative totals per generation are
    rewritten to ``path`` every half second and at exit, so a reader can diff two reads."""
    import atexit
    import gc
    import json
    import threading
    import time

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    def dump() -> None:
        summary = {
            f"gen{g}": {
                "collections": len(p),
                "total_s": round(sum(p), 4),
                "max_ms": round(max(p, default=0) * 1000, 2),
            }
            for g, p in pauses.items()
        }
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"threshold": gc.get_threshold(), **summary}, f)
        os.replace(tmp, path)

    def loop() -> None:
        while True:
            time.sleep(0.5)
            dump()

    gc.callbacks.append(callback)
    atexit.register(dump)
    threading.Thread(target=loop, name="gc-log", daemon=True).start()


def freeze_every(seconds: float) -> None:
    import gc
    import threading
    import time

    def loop() -> None:
        while True:
            time.sleep(seconds)
            gc.freeze()

    threading.Thread(target=loop, name="gc-freeze", daemon=True).start()


def main() -> int:
    if os.environ.get("BENCH_GC_THRESHOLD"):
        import gc

        gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))
    if os.environ.get("BENCH_GC_LOG"):
        log_gc(os.environ["BENCH_GC_LOG"])
    if os.environ.get("BENCH_GC_FREEZE_EVERY"):
        freeze_every(float(os.environ["BENCH_GC_FREEZE_EVERY"]))
    if _on("BENCH_UVLOOP"):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if _on("BENCH_ORJSON"):
        patch_codec_with_orjson()
    from service.__main__ import main as service_main

    return service_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
