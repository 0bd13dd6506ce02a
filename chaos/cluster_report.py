"""What the cluster scenarios measure beyond the everyday tables (chaos/report.py): each
of issue 15's demands beside what the run measured, and the MariaDB shard scenario's
answers by shard. Read from ``Scenario.figures`` (chaos/cluster_scenarios.py)."""

from __future__ import annotations

from chaos.cluster_scenarios import (
    CONSUMER_STALL_MAX_S,
    KAFKA_RATE_PER_S,
    REDIS_BACK_WITHIN_S,
    REDIS_FAILOVER_MAX_S,
    REDIS_NODE_TIMEOUT_S,
)
from chaos.report import table


def _s(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f} s"


def _ok(good: bool) -> str:
    return "yes" if good else "**no**"


def demands(r: dict) -> list[list[str]]:
    """(scenario, asked, measured, met) rows for one scenario's result."""
    f, key, title = r.get("figures") or {}, r["key"], r["title"]
    if "error" in r or not f:
        return []
    rows: list[tuple[str, str, bool]] = []
    if key == "redis-master":
        rows.append(
            (
                f"the replica takes over within the node timeout ({REDIS_NODE_TIMEOUT_S:.0f} s) and the "
                f"election: a few seconds ({REDIS_FAILOVER_MAX_S:.0f} s at most here)",
                f"{f['replica']} took over {_s(f['failover_s'])} after the kill",
                f["failover_s"] is not None and f["failover_s"] <= REDIS_FAILOVER_MAX_S,
            )
        )
        back = f["redis_back_after_failover_s"]
        rows.append(
            (
                f"cache and limiter back on the cluster within {REDIS_BACK_WITHIN_S:.0f} s of the failover, no restart",
                "never missed Redis"
                if f["redis_missed_last_s"] is None
                else f"last miss {_s(back)} after the failover ({f['limiter_fail_open']} calls let through "
                f"unchecked meanwhile); cache hits after it: {'yes' if f['cache_hits_after'] else 'none'}",
                (back is None or back <= REDIS_BACK_WITHIN_S) and f["cache_hits_after"],
            )
        )
        rows.append(
            (
                "requests served throughout",
                f"5xx: {r['http_5xx']}; writes failed: {r['failed']}; reads: {f['reads']}, "
                f"{f['reads_failed']} not 200, slowest {_s(f['reads_slowest_s'], 2)}",
                r["http_5xx"] == 0 and r["failed"] == 0 and f["reads_failed"] == 0,
            )
        )
    elif key == "kafka-broker":
        rows.append(
            (
                f"{KAFKA_RATE_PER_S:.0f} payments/s offered",
                f"{r['rate_per_s']} sent per second",
                True,
            )
        )
        rows.append(
            (
                f"no consumer stalled over {CONSUMER_STALL_MAX_S:.0f} s",
                f"analytics: committed offsets still for {_s(f['analytics_stall_s'])} at most; "
                f"WebSocket (broadcast): longest gap between events {_s(f['ws_longest_gap_s'])}, "
                f"slowest event {_s(f['ws_max_delay_s'])} after its payment",
                f["analytics_stall_s"] <= CONSUMER_STALL_MAX_S and f["ws_longest_gap_s"] <= CONSUMER_STALL_MAX_S,
            )
        )
        rows.append(
            (
                "every WebSocket client gets every event once",
                f"{f['ws_delivered']} of {r['accepted']} payments' events delivered, {f['ws_duplicates']} twice, "
                f"{f['ws_reconnects']} reconnects",
                f["ws_missing"] == 0 and f["ws_duplicates"] == 0,
            )
        )
    elif key == "mariadb-shard":
        victim, by_shard = f["victim"], f["by_shard"]
        others = {s: v for s, v in by_shard.items() if s != victim}
        down = by_shard.get(victim, {})
        rows.append(
            (
                "that shard's users get 503 with Retry-After (the client retries with its key)",
                f"shard {victim}: {down.get('503', 0)} answers 503, {down.get('503_without_retry_after', 0)} "
                f"without Retry-After; {r['failed']} writes failed after retries",
                down.get("503_without_retry_after", 0) == 0 and r["failed"] == 0,
            )
        )
        rows.append(
            (
                "every other user served",
                "; ".join(
                    f"shard {s}: {v['201']} of {v['attempts']} attempts 201"
                    + "".join(f", {n}× {kind}" for kind, n in v["refused"].items())
                    + f", slowest {_s(v['slowest_s'], 2)}"
                    for s, v in sorted(others.items())
                ),
                all(not v["refused"] for v in others.values()),
            )
        )
        rows.append(
            (
                "/health degraded, not down",
                ", ".join(r["health_during"]),
                "down" not in r["health_during"],
            )
        )
    elif key == "shard-move":
        refused = f["refused"]
        outcomes = ", ".join(f"{n}× {c}" for c, n in f["refused_outcomes"].items()) or "none"
        rows.append(
            (
                "the switch's duration, reported",
                f"{f['switch_s']:.3f} s (the copy before it, writes going on: {f['copy_s']:.2f} s; "
                f"rows on {f['target']} after: {', '.join(f'{t} {n}' for t, n in f['rows_moved'].items())})",
                True,
            )
        )
        rows.append(
            (
                "writes refused only during the switch (503 with Retry-After)",
                f"the moved user's writes: {refused} answers refused ({outcomes}), "
                f"over {_s(f['refused_for_s'], 2)}; other users' writes refused: {f['refused_elsewhere']}",
                not [p for p in r["problems"] if "refused" in p],
            )
        )
    return [[title, asked, measured, _ok(met)] for asked, measured, met in rows]


def shard_table(results: list[dict]) -> list[str]:
    """Answers by physical shard while one was down (the MariaDB shard scenario)."""
    rows = []
    for r in results:
        f = r.get("figures") or {}
        if r["key"] != "mariadb-shard" or "error" in r or not f:
            continue
        for shard, v in sorted(f["by_shard"].items()):
            down = " (killed)" if shard == f["victim"] else ""
            other = sum(v["refused"].values()) - v["503"]
            rows.append([f"{shard}{down}", v["users"], v["attempts"], v["201"], v["503"], other])
            rows[-1].append(_s(v["slowest_s"], 2))
    if not rows:
        return []
    columns = ["shard", "users", "attempts during the outage", "201", "503", "other answers", "slowest attempt"]
    return ["Answers by shard while one was down:", "", *table(columns, rows), ""]


def extra(results: list[dict]) -> list[str]:
    """The cluster section's own tables, after the everyday ones."""
    rows = [row for r in results for row in demands(r)]
    lines = []
    if rows:
        lines += ["What issue 15 asks of each, and what the run measured:", ""]
        lines += [*table(["scenario", "asked", "measured", "met"], rows), ""]
    return lines + shard_table(results)
