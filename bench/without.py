"""``python -m bench.without auth|metrics ARGS``: ``python -m service ARGS`` without a part, for the
costs phase to measure what the part costs a request; nothing else should run it, and no
configuration or environment variable takes either part away from ``python -m service``.

- ``auth``: API keys not checked, every caller an admin, and said so (docs/SECURITY.md).
- ``metrics``: no metric recorded: every update of a Prometheus series (``inc``, ``dec``, ``set``,
  ``observe``) does nothing and ``labels()`` finds no series, however the service binds its series."""

from __future__ import annotations

import sys

from prometheus_client import metrics

from service.__main__ import main

UPDATES = {metrics.Counter: ("inc",), metrics.Gauge: ("inc", "dec", "set"), metrics.Histogram: ("observe",)}

if __name__ == "__main__":
    part, argv = (sys.argv[1:2] or [""])[0], sys.argv[2:]
    if part == "metrics":
        for cls, names in UPDATES.items():
            for name in names:
                setattr(cls, name, lambda self, *args, **kwargs: None)
        metrics.MetricWrapperBase.labels = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    elif part != "auth":
        sys.exit(f"usage: python -m bench.without auth|metrics ARGS (not {part!r})")
    sys.exit(main(argv, check_keys=part != "auth"))
