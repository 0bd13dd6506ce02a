"""After a write run: how long until every outbox event reached Kafka."""

from __future__ import annotations

import datetime as dt
import time

from bench.env import metric_value, metrics_text, mysql_query

GAUGE = "singleton_outbox_pending_events"


def measure(port: int, run_ended_at: float, timeout_s: float = 60) -> dict:
    """Two views of the same thing, from ``run_ended_at`` (wrk's exit, epoch seconds):

    - ``metrics_zero_after_s``: when GET /metrics first showed the pending gauge at 0
      (polled every 50 ms; the gauge is refreshed when the relay goes idle);
    - ``last_published_after_s``: the newest ``published_at`` in the outbox (set once
      Kafka acknowledged the batch) minus the run's end, read once no row is pending.
      Negative means the relay had caught up before the last response was read.
    """
    out: dict = {"metrics_zero_after_s": None, "last_published_after_s": None, "pending_at_end": None}
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = metric_value(metrics_text(port), GAUGE)
        if out["pending_at_end"] is None:
            out["pending_at_end"] = value
        if value == 0:
            out["metrics_zero_after_s"] = round(time.time() - run_ended_at, 3)
            break
        time.sleep(0.05)
    while time.time() < deadline:
        pending = mysql_query("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")[0][0]
        if pending == 0:
            break
        time.sleep(0.1)
    else:
        out["db_pending_after_timeout"] = pending
        return out
    (newest,) = mysql_query("SELECT MAX(published_at) FROM outbox")[0]
    if newest is not None:
        published = newest.replace(tzinfo=dt.UTC).timestamp()
        out["last_published_after_s"] = round(published - run_ended_at, 3)
    return out


def events_between(start: float, end: float) -> int:
    """Outbox rows created in [start, end] (epoch seconds; the outbox stores UTC)."""
    lo = dt.datetime.fromtimestamp(start, dt.UTC).replace(tzinfo=None)
    hi = dt.datetime.fromtimestamp(end, dt.UTC).replace(tzinfo=None)
    return mysql_query("SELECT COUNT(*) FROM outbox WHERE created_at BETWEEN %s AND %s", (lo, hi))[0][0]
