"""``python -m bench.unmetered ARGS``: ``python -m service ARGS`` recording no metric: every
update of a Prometheus series (``inc``, ``dec``, ``set``, ``observe``) does nothing, and
``labels()`` finds no series. The bench's comparison "no metrics" runs it to measure what
metrics cost a request, however the service binds its series; nothing else should, and no
configuration turns metrics off."""

from __future__ import annotations

import sys

from prometheus_client import metrics

from service.__main__ import main

UPDATES = {metrics.Counter: ("inc",), metrics.Gauge: ("inc", "dec", "set"), metrics.Histogram: ("observe",)}


def _nothing(self: object, *args: object, **kwargs: object) -> None:
    return None


if __name__ == "__main__":
    for cls, names in UPDATES.items():
        for name in names:
            setattr(cls, name, _nothing)
    metrics.MetricWrapperBase.labels = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    sys.exit(main())
