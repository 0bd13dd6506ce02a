"""docs/BENCHMARKS.md and docs/bench/*.png from docs/bench/results.json (and,
when present, variants.json from bench/variants.py and profile.json from
bench/profile.py). ``python -m bench.report`` rewrites them without re-running."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.env import DOCS, DOCS_BENCH

TARGETS = {
    "get_user_ratio": 0.60,
    "get_user_p99_ms": 25.0,
    "post_payments_ratio": 0.30,
    "post_payments_drain_s": 1.0,
    "ws_connections": 10000,
    "ws_rss_mb": 600.0,
    "ws_p99_ms": 100.0,
    "ws_rate": 200.0,
}


def _load(name: str) -> dict | None:
    path = DOCS_BENCH / name
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def _by(endpoints: list[dict], key: str) -> dict | None:
    return next((e for e in endpoints if e["key"] == key), None)


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**missed**")


def targets(results: dict) -> list[dict]:
    """Each target: what, goal, measured, met, and the margin in words."""
    out = []
    eps = results["endpoints"]
    gu, pp, ws = _by(eps, "get_user"), _by(eps, "post_payments"), results.get("ws")
    if gu:
        ratio = gu["ratio"]
        out.append(
            {
                "what": "GET user (cache hit) throughput",
                "goal": f"≥ {TARGETS['get_user_ratio']:.0%} of baseline req/s",
                "measured": f"{ratio:.1%} ({gu['rps']:,.0f} vs {gu['baseline_rps']:,.0f} req/s)",
                "met": ratio >= TARGETS["get_user_ratio"],
                "margin": _margin_ratio(ratio, TARGETS["get_user_ratio"], gu["baseline_rps"]),
            }
        )
        p99 = gu["p99_ms"]
        out.append(
            {
                "what": "GET user (cache hit) p99 at 50 connections",
                "goal": f"≤ {TARGETS['get_user_p99_ms']:g} ms",
                "measured": f"{p99:.1f} ms",
                "met": p99 <= TARGETS["get_user_p99_ms"],
                "margin": _margin_max(p99, TARGETS["get_user_p99_ms"], "ms"),
            }
        )
    if pp:
        ratio = pp["ratio"]
        out.append(
            {
                "what": "POST payments throughput",
                "goal": f"≥ {TARGETS['post_payments_ratio']:.0%} of baseline req/s",
                "measured": f"{ratio:.1%} ({pp['rps']:,.0f} vs {pp['baseline_rps']:,.0f} req/s)",
                "met": ratio >= TARGETS["post_payments_ratio"],
                "margin": _margin_ratio(ratio, TARGETS["post_payments_ratio"], pp["baseline_rps"]),
            }
        )
        d = pp.get("drain") or {}
        gauge, db = d.get("metrics_zero_after_s"), d.get("last_published_after_s")
        worst = max(x for x in (gauge, db, 0) if x is not None) if (gauge is not None and db is not None) else None
        out.append(
            {
                "what": "POST payments: every event on Kafka after the run",
                "goal": f"≤ {TARGETS['post_payments_drain_s']:g} s after the run's end",
                "measured": f"gauge 0 after {_fmt(gauge, 2, ' s')}; last event acked {_fmt(db, 2, ' s')} after the end",
                "met": None if worst is None else worst <= TARGETS["post_payments_drain_s"],
                "margin": "n/a" if worst is None else _margin_max(worst, TARGETS["post_payments_drain_s"], "s"),
            }
        )
    if ws:
        rss_mb = ws["service_rss_mib"]["peak_hwm"] * 1.048576
        opened = ws["connections_open"]
        out.append(
            {
                "what": f"{opened:,} WebSocket connections: service memory",
                "goal": f"{TARGETS['ws_connections']:,} connections, ≤ {TARGETS['ws_rss_mb']:g} MB RSS",
                "measured": f"{opened:,} open; peak RSS {rss_mb:,.0f} MB "
                f"({ws['service_rss_mib']['peak_hwm']:,.0f} MiB)",
                "met": opened >= TARGETS["ws_connections"] and rss_mb <= TARGETS["ws_rss_mb"],
                "margin": _margin_max(rss_mb, TARGETS["ws_rss_mb"], "MB")
                + ("" if opened >= TARGETS["ws_connections"] else f"; {TARGETS['ws_connections'] - opened:,} too few"),
            }
        )
        p99 = ws["latency_ms"]["p99"]
        rate = ws["payments"]["achieved_rate"]
        out.append(
            {
                "what": "WebSocket delivery p99 (REST send → frame received)",
                "goal": f"≤ {TARGETS['ws_p99_ms']:g} ms at {TARGETS['ws_rate']:g} events/s",
                "measured": f"{_fmt(p99, 1, ' ms')} at {_fmt(rate, 0)} events/s, "
                f"{ws['frames_received']:,}/{ws['frames_expected']:,} frames",
                "met": None if p99 is None else (p99 <= TARGETS["ws_p99_ms"] and ws["delivered_ratio"] == 1.0),
                "margin": "n/a" if p99 is None else _margin_max(p99, TARGETS["ws_p99_ms"], "ms"),
            }
        )
    return out


def _margin_ratio(ratio: float, goal: float, baseline_rps: float) -> str:
    diff = ratio - goal
    rps = abs(diff) * baseline_rps
    word = "above" if diff >= 0 else "short"
    return f"{abs(diff) * 100:.1f} points {word} (≈{rps:,.0f} req/s)"


def _margin_max(value: float, goal: float, unit: str) -> str:
    if value <= goal:
        return f"{goal - value:,.1f} {unit} to spare"
    return f"{value - goal:,.1f} {unit} over ({value / goal:.1f}× the limit)"


# -- plots ----------------------------------------------------------------------------------------
def plots(results: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = results["endpoints"]
    base = results["baseline"]
    names = ["bare handler"] + [e["label"].replace(" (", "\n(") for e in eps]
    written = []

    fig, ax = plt.subplots(figsize=(11, 5))
    xs = range(len(names))
    svc = [base["rps_mean"]] + [e["rps"] for e in eps]
    adj = [base["rps_mean"]] + [e["baseline_rps"] for e in eps]
    ax.bar([x - 0.2 for x in xs], adj, width=0.4, label="adjacent baseline", color="#bbbbbb")
    bars = ax.bar([x + 0.2 for x in xs], svc, width=0.4, label="endpoint", color="#3b75af")
    for bar, e in zip(bars[1:], eps, strict=True):
        ax.annotate(
            f"{e['ratio']:.0%}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("requests/s")
    ax.set_title(
        f"Throughput at {results['settings']['connections']} connections "
        f"(wrk, {results['settings']['duration_s']} s runs; label = ratio to adjacent baseline)"
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(DOCS_BENCH / "throughput.png", dpi=110)
    plt.close(fig)
    written.append("throughput.png")

    fig, ax = plt.subplots(figsize=(11, 5))
    p50 = [base["p50_ms"]] + [e["p50_ms"] for e in eps]
    p99 = [base["p99_ms"]] + [e["p99_ms"] for e in eps]
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50", color="#7fb3d5")
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99", color="#c0392b")
    ax.axhline(
        TARGETS["get_user_p99_ms"],
        color="#555555",
        linestyle="--",
        linewidth=1,
        label=f"GET user p99 target ({TARGETS['get_user_p99_ms']:g} ms)",
    )
    ax.set_yscale("log")
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title(f"Latency at {results['settings']['connections']} connections")
    ax.legend()
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(DOCS_BENCH / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    ws = results.get("ws")
    if ws and ws.get("latency_cdf_ms"):
        lat = ws["latency_cdf_ms"]
        if lat:
            fig, ax = plt.subplots(figsize=(8, 4.5))
            n = len(lat)
            ax.plot(lat, [i / n for i in range(n)], color="#3b75af")
            ax.axvline(TARGETS["ws_p99_ms"], color="#c0392b", linestyle="--", linewidth=1, label="p99 target")
            ax.axhline(0.99, color="#999999", linestyle=":", linewidth=1)
            ax.set_xscale("log")
            ax.set_xlabel("REST send → frame received, ms (log scale)")
            ax.set_ylabel("fraction of frames")
            ax.set_title(
                f"WebSocket delivery, {ws['connections_open']:,} connections, "
                f"{ws['payments']['achieved_rate']:g} payments/s"
            )
            ax.legend()
            ax.grid(alpha=0.3, which="both")
            fig.tight_layout()
            fig.savefig(DOCS_BENCH / "ws_latency.png", dpi=110)
            plt.close(fig)
            written.append("ws_latency.png")
    return written


# -- markdown -------------------------------------------------------------------------------------
def markdown(results: dict, variants: dict | None, profile: dict | None, images: list[str]) -> str:
    m, s, base = results["machine"], results["settings"], results["baseline"]
    eps = results["endpoints"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (bench/, see bench/README.md); numbers from one run on the machine below.",
        "Rerun to refresh; `python -m bench.report` rewrites this page from `docs/bench/results.json`.",
        "",
        f"- **Date:** {results['date']} (UTC)",
        f"- **Machine:** {m['nproc']} CPUs (`nproc`), {m.get('mem_total_gib')} GiB memory, {m['cpu_model']}; "
        f"kernel {m.get('kernel')}, Python {m.get('python')}, wrk {m.get('wrk', '?')}",
        f"- **Code:** commit {m.get('commit', '?')}",
        f"- **Load:** wrk, {s['connections']} connections, {s['threads']} threads, {s['duration_s']} s per run, "
        f"on the same machine as the service, MariaDB, Redis, Kafka and FerretDB (all share the {m['nproc']} CPUs).",
        f"- **Method:** runs alternate: baseline, endpoint A, baseline, endpoint B, ... baseline. Each endpoint's "
        "ratio is to the mean of the two baseline runs next to it, so machine drift cancels. The baseline is a "
        "bare Tornado `RequestHandler` returning a small JSON dict (bench/baseline.py), in its own process. "
        f"The service runs with `SINGLETON_LOGGING__LEVEL=WARNING`, its own database, Redis db, Mongo db and "
        f"Kafka topic. Seed: {s['users']:,} users, {s['list_users'] * s['payments_per_list_user']:,} payments "
        f"({s['payments_per_list_user']} each for {s['list_users']} users), every user and payment read once "
        "so GETs hit the cache.",
        f"- **Whole run:** {results['elapsed_s']:.0f} s.",
        "- **Caveats:** one run per number, on a small machine that the service shares with its backing "
        "services and the load generator; repeated runs here moved req/s by about ±10% and p99 by more. "
        "Background work shows in the CPU table below (FerretDB serving the analytics consumer is the "
        "largest). Ratios to the adjacent baseline are steadier than absolute numbers.",
        "",
        "## Targets",
        "",
        "| target | goal | measured | verdict | margin |",
        "|---|---|---|---|---|",
    ]
    for t in targets(results):
        lines.append(f"| {t['what']} | {t['goal']} | {t['measured']} | {_verdict(t['met'])} | {t['margin']} |")
    lines += [
        "",
        "## HTTP endpoints",
        "",
        "| endpoint | req/s | p50 ms | p99 ms | adjacent baseline req/s | ratio | socket errors / non-2xx "
        "| events on Kafka after the run's end |",
        "|---|---:|---:|---:|---:|---:|---|---|",
        f"| bare Tornado handler (baseline, mean of {base['runs']} runs; min {base['rps_min']:,.0f}, "
        f"max {base['rps_max']:,.0f}) | {base['rps_mean']:,.0f} | {base['p50_ms']:.2f} | {base['p99_ms']:.2f} "
        f"| — | 100% | — | — |",
    ]
    for e in eps:
        d = e.get("drain")
        drained = "—"
        if d:
            drained = (
                f"gauge 0 after {_fmt(d.get('metrics_zero_after_s'), 2, ' s')}; last acked "
                f"{_fmt(d.get('last_published_after_s'), 2, ' s')} ({e.get('events') or 0:,} events)"
            )
        note = ""
        if e.get("passes") and e["passes"] > 1:
            note = f" (ran out of pending payments: {e['passes']} passes, later ones processing→completed→refunded)"
        lines.append(
            f"| {e['label']}{note} | {e['rps']:,.0f} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | "
            f"{e['baseline_rps']:,.0f} | {e['ratio']:.1%} | {e['errors']} / {e['non_2xx']} | {drained} |"
        )
    lines += [
        "",
        '"Gauge 0" is when `GET /metrics` first showed `singleton_outbox_pending_events 0` (polled every '
        '50 ms; the relay refreshes it each time it goes idle). "Last acked" is the newest `published_at` in the '
        "outbox (written once Kafka acknowledged the batch) minus the moment wrk exited; negative means the relay "
        "had already caught up when the last response arrived.",
        "",
    ]
    lines += [
        f"CPU during each run, in cores ({m['nproc']} available), from /proc: who competes with the service for "
        "the machine (java is Kafka, ferretdb serves MongoDB to the analytics consumer), and the service's Kafka "
        "consumer lag when the run ended (messages not yet read; `analytics` writes each event to MongoDB).",
        "",
        "| run | CPU by process (cores) | consumer lag at the end |",
        "|---|---|---|",
    ]
    for e in eps:
        if e.get("cpu_cores"):
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in e["cpu_cores"].items() if v >= 0.01)
            lag = ", ".join(f"{k} {v:,.0f}" for k, v in (e.get("consumer_lag") or {}).items())
            lines.append(f"| {e['label']} | {cpu} | {lag or 'n/a'} |")
    base_cpu = next((r.get("cpu_cores") for r in results["runs"] if r.get("kind") == "baseline"), None)
    if base_cpu:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in base_cpu.items() if v >= 0.01)
        lines.append(f"| bare handler (first baseline run) | {cpu} | — |")
    lines.append("")
    for img, alt in (("throughput.png", "Throughput per endpoint"), ("latency.png", "Latency p50/p99 per endpoint")):
        if img in images:
            lines += [f"![{alt}](bench/{img})", ""]
    ws = results.get("ws")
    if ws:
        lat = ws["latency_ms"]
        rss = ws["service_rss_mib"]
        pay = ws["payments"]
        lines += [
            "## WebSocket fan-out",
            "",
            f"{ws['connections_open']:,} connections ({ws['connections_failed']} failed to open, "
            f"{ws['closed_early']} closed early) spread over {ws['users']} users "
            f"({ws['connections_open'] // max(ws['users'], 1)} per user), opened in {ws['connect_seconds']} s by "
            f"{len(ws['client_rss_mib'])} asyncio client process(es) (`websockets`, bench/ws_fanout.py). Then "
            f"{pay['requested']:,} payments over REST at {ws['rate_requested']:g}/s requested "
            f"({pay['achieved_rate']:g}/s achieved, statuses {pay['statuses']}), each fanned out to every "
            "connection of its user: outbox → Kafka → the instance's consumer → hub → sockets.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| frames received / expected | {ws['frames_received']:,} / {ws['frames_expected']:,} "
            f"({_fmt((ws['delivered_ratio'] or 0) * 100, 2)}%) |",
            f"| delivery latency, REST send → frame received | p50 {_fmt(lat['p50'], 1)} ms, p90 "
            f"{_fmt(lat['p90'], 1)} ms, p99 {_fmt(lat['p99'], 1)} ms, max {_fmt(lat['max'], 1)} ms |",
            f"| frames/s (first send → last frame, {_fmt(ws['delivery_window_s'], 2)} s) | "
            f"{_fmt(ws['frames_per_s'], 0)} |",
            f"| service RSS (VmRSS) before connecting / connected, idle / after events / peak (VmHWM) | "
            f"{rss['before_connections']:,.0f} / {rss['connected_idle']:,.0f} / {rss['after_events']:,.0f} / "
            f"{rss['peak_hwm']:,.0f} MiB |",
            f"| per connection (connected, idle − before) | "
            f"{(rss['connected_idle'] - rss['before_connections']) * 1024 / max(ws['connections_open'], 1):,.1f} KiB |",
            "| CPU, first send → last frame (cores, of "
            f"{m['nproc']}) | " + ", ".join(f"{k} {v:.2f}" for k, v in (ws.get("cpu_cores") or {}).items()) + " |",
            f"| latency from the event's `occurred_at` (set in the POST handler) → frame | "
            f"p50 {_fmt(ws.get('since_occurred_ms', {}).get('p50'), 1)} ms, "
            f"p99 {_fmt(ws.get('since_occurred_ms', {}).get('p99'), 1)} ms |",
            f"| client process(es) peak RSS | {', '.join(f'{x:,.0f} MiB' for x in ws['client_rss_mib'])} |",
            "",
        ]
        if "ws_latency.png" in images:
            lines += ["![WebSocket delivery latency CDF](bench/ws_latency.png)", ""]
    history = _load("history.json")
    if history:
        lines += history_section(history)
    if variants:
        lines += variants_section(variants)
    if profile:
        lines += profile_section(profile)
    analytics = _load("analytics.json")
    if analytics:
        lines += analytics_section(analytics)
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    lines += [
        "## Files",
        "",
        "- `docs/bench/results.json`: everything above, every wrk run included (raw wrk output in "
        "`reports/bench/`, git-ignored).",
        "- `docs/bench/*.png`: the plots.",
    ]
    if variants:
        lines.append("- `docs/bench/variants.json`: the uvloop/orjson runs (`make bench-variants`).")
    if profile:
        lines.append("- `docs/bench/profile-*.svg`, `docs/bench/profile.json`: py-spy profiles (`make bench-profile`).")
    if analytics:
        lines.append(
            "- `docs/bench/analytics.json`: the analytics store per FerretDB backend (`make bench-analytics`)."
        )
    return "\n".join(lines) + "\n"


def history_section(h: dict) -> list[str]:
    """Before and after each profile-driven change: docs/bench/history.json, kept by hand
    (each row copied from the results.json of one `make bench` run)."""
    lines = [
        "## Before and after",
        "",
        h["note"],
        "",
        "| code | change | GET user ratio | GET user p99 ms | POST payments ratio | WS delivery p99 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in h["runs"]:
        lines.append(
            f"| {row['commit']} | {row['change']} | {row['get_user_ratio']:.1%} | {row['get_user_p99_ms']:,.1f} | "
            f"{row['post_payments_ratio']:.1%} | {row['ws_p99_ms']:,.0f} |"
        )
    return lines + [""]


def variants_section(v: dict) -> list[str]:
    lines = [
        "## Event loop, JSON, garbage collector: uvloop, orjson, gc thresholds (measured only; service unchanged)",
        "",
        f"{v['date']}, commit {v.get('commit', '?')}; {v['rounds']} rounds of {v['duration_s']} s "
        "per configuration, interleaved "
        "(bench/variants.py). The service variants run through bench/run_variant.py, which installs uvloop's "
        "event loop policy, swaps `domain.codec.dumps`/`loads` for orjson, or calls "
        "`gc.set_threshold(50000, 20, 100)` before importing `service.__main__`. Medians over rounds:",
        "",
        "| configuration | endpoint | req/s | p50 ms | p99 ms | vs. stock |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in v["summary"]:
        lines.append(
            f"| {row['config']} | {row['endpoint']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {row['vs_stock']:+.1%} |"
        )
    lines.append("")
    if v.get("ws"):
        ws_set = v.get("ws_settings", {})
        lines += [
            f"WebSocket fan-out per configuration ({ws_set.get('connections', 0):,} connections over "
            f"{ws_set.get('users')} users, {ws_set.get('rate', 0):g} payments/s for {ws_set.get('seconds', 0):g} s; "
            "one run each; GC pauses recorded with `gc.callbacks` over the process's life):",
            "",
            "| configuration | delivery p50 ms | p99 ms | frames/s | frames received | service CPU | "
            "full (gen2) collections | their total | longest pause |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for w in v["ws"]:
            g = (w.get("gc") or {}).get("gen2") or {}
            gen1 = (w.get("gc") or {}).get("gen1") or {}
            longest = max(g.get("max_ms", 0), gen1.get("max_ms", 0))
            lines.append(
                f"| {w['config']} | {_fmt(w['latency_ms']['p50'], 0)} | {_fmt(w['latency_ms']['p99'], 0)} | "
                f"{_fmt(w['frames_per_s'], 0)} | {w['frames_received']:,}/{w['frames_expected']:,} | "
                f"{w['service_cpu']:.2f} | {g.get('collections', 'n/a')} | {_fmt(g.get('total_s'), 1, ' s')} | "
                f"{_fmt(longest, 0, ' ms')} |"
            )
        lines.append("")
    return lines


ANALYTICS_TARGETS = {"events_per_s": 1000, "year_p99_ms": 100.0}


def analytics_section(a: dict) -> list[str]:
    """docs/bench/analytics.json (one `make bench-analytics` run per FerretDB backend), then
    docs/bench/analytics-notes.md, written by hand: the choice, and FerretDB's behaviour."""
    runs = {b: a[b] for b in ("postgresql", "sqlite") if b in a}
    first = next(iter(runs.values()))
    goal_rate, goal_p99 = ANALYTICS_TARGETS["events_per_s"], ANALYTICS_TARGETS["year_p99_ms"]

    def rate(r: dict, users: int) -> int:
        return next(x["events_per_s"] for x in r["apply"] if x["users"] == users)

    def ms(t: dict) -> str:
        return f"{t['p50_ms']:,.1f} / {t['p99_ms']:,.1f} ({t['runs']} runs)"

    def table(header: str, rows: list) -> list[str]:
        out = [f"| {header} | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
        return out + [f"| {label} | " + " | ".join(cell(r) for r in runs.values()) + " |" for label, cell in rows]

    years = [n for n in first["summary"] if "one day" not in n]
    measures = [
        ("apply, 5 active users (the load of issue 9): events/s", lambda r: f"{rate(r, 5):,}"),
        ("apply, 1,000 active users (every event another user's document): events/s", lambda r: f"{rate(r, 1000):,}"),
        ("seed 1,000,000 payments: seconds", lambda r: f"{r['seed']['seconds']:,}"),
        *[(f"summary, {n}: p50 / p99 ms", lambda r, n=n: ms(r["summary"][n])) for n in first["summary"]],
        ("find by `_id` among 1,000,000 markers: p50 / p99 ms", lambda r: ms(r["lookup"])),
    ]
    targets = [
        *[
            (f"apply ≥ {goal_rate:,} events/s, {u:,} active users", lambda r, u=u: _verdict(rate(r, u) >= goal_rate))
            for u in (5, 1000)
        ],
        *[
            (f"summary p99 ≤ {goal_p99:.0f} ms, {n}", lambda r, n=n: _verdict(r["summary"][n]["p99_ms"] <= goal_p99))
            for n in years
        ],
    ]
    when = ", ".join(
        f"{b}: {r['date']}, commit {r['machine'].get('commit', '?')}{_load_average(r)}" for b, r in runs.items()
    )
    notes = DOCS_BENCH / "analytics-notes.md"
    return [
        "## Analytics on FerretDB: PostgreSQL or SQLite",
        "",
        "`make bench-analytics` (bench/analytics.py) drives the analytics store (domain/analytics.py) directly, "
        "without HTTP, against the FerretDB devstack runs, once per backend (`FERRETDB_BACKEND=sqlite make "
        "bench-analytics` for SQLite): events/s applying consumer-sized batches (1,000 events: new payments, and "
        "30% completions of pending ones), then `AnalyticsStore.summary()`, the call behind "
        "`GET /api/v1/analytics/summary`, with 1,000,000 payments over a year seeded directly (a marker each and "
        "the counter documents their events imply, built with the store's own `changes()`). "
        f"{when}; {first['machine']['nproc']} CPUs shared with other work, so single numbers move by tens of "
        "percent.",
        "",
        *table("measure", measures),
        "",
        *table("target", targets),
        "",
        *(notes.read_text().splitlines() + [""] if notes.exists() else []),
    ]


def _load_average(r: dict) -> str:
    if "load_before" not in r:
        return ""
    return f" (load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after)"


def profile_section(p: dict) -> list[str]:
    lines = [
        "## Profiles under load (py-spy)",
        "",
        f"{p['date']}, commit {p.get('commit', '?')}: `py-spy record --pid <service> --rate {p['rate']} "
        f"--duration {p['duration_s']} --nonblocking "
        f"--idle --threads` while wrk ({p['connections']} connections) or the fan-out stage drove the service "
        "(`make bench-profile`, bench/profile.py); flame graphs `docs/bench/profile-<endpoint>.svg`. "
        "Percentages are of the event loop thread's samples, taken whatever it was doing, so they are shares of "
        'wall time; "waiting in epoll" is the loop with nothing ready. Python-level stacks: time in the '
        "cyclic garbage collector is charged to whichever frame's allocation triggered it, so it is measured "
        "separately and exactly with `gc.callbacks` (the service runs through bench/run_variant.py with only "
        "that timer on). CPU is the service process's user+system time over the recording (1.00 = one core, "
        "all one Python process can use). Findings and suggestions: docs/PROFILING.md.",
        "",
    ]
    for name, prof in p["profiles"].items():
        lines += [
            f"### {prof['label']}",
            "",
            (
                f"{_fmt(prof['rps'], 0)} payments/s, {_fmt(prof['frames_per_s'], 0)} frames/s"
                if prof.get("frames_per_s")
                else f"{_fmt(prof['rps'], 0)} req/s"
            )
            + f" while profiled; service CPU {prof.get('cpu', 0):.2f} cores; "
            f"garbage collector {prof.get('gc_share', 0):.1%} of wall time "
            f"(full collections {prof.get('gc_full_share', 0):.1%}).",
            "",
            "Self time by package: "
            + ", ".join(f"{row['package']} {row['pct']:.0f}%" for row in prof["packages"] if row["pct"] >= 1)
            + ".",
            "",
            "| inclusive | function |",
            "|---:|---|",
        ]
        for row in prof["inclusive"][:18]:
            lines.append(f"| {row['pct']:.1f}% | `{row['frame']}` |")
        lines += ["", "| self | function |", "|---:|---|"]
        for row in prof["self"][:12]:
            lines.append(f"| {row['pct']:.1f}% | `{row['frame']}` |")
        lines += ["", f"Flame graph: [profile-{name}.svg](bench/profile-{name}.svg)", ""]
    return lines


def write(replot: bool = True) -> Path:
    results = _load("results.json")
    if results is None:
        raise SystemExit(f"no {DOCS_BENCH / 'results.json'}: run `make bench` first")
    images = plots(results) if replot else sorted(p.name for p in DOCS_BENCH.glob("*.png"))
    text = markdown(results, _load("variants.json"), _load("profile.json"), images)
    out = DOCS / "BENCHMARKS.md"
    out.write_text(text)
    return out


if __name__ == "__main__":
    print(write(), file=sys.stderr)
