"""docs/BENCHMARKS.md, from docs/bench/results.json (one ``make bench`` run) and
docs/bench/history.json (what each change moved, kept by hand). ``python -m bench.report`` writes
it again without measuring."""

from __future__ import annotations

import json
import statistics
import sys

from bench.env import DOCS_BENCH
from bench.wrk import ORDER

NEVER = 1e9  # a catch-up not seen before the drain timeout
BUSY = 0.95  # cores: a service below this in a cost run was not bound by its CPU
# An endpoint's target: the least ratio to its floor, the most p99 ms (issues 8 and 17).
GOALS = {"get_user": (0.8, 25), "get_payment": (0.8, 25)}
GOALS |= {e: (0.7, 50) for e in ("list_payments", "post_payments", "put_status")}
# Each cost of GET user: its measure's name, the variant with the part and the one without, the limit (%).
COSTS = {
    "key check": ("key_cost", "key check", "no auth, no limiter", 10),
    "rate limiter": ("limiter_cost", "key check + limiter", "key check", 5),
    "access log at INFO": ("log_cost", "key check + limiter", "logging at WARNING", 5),
    "metrics": ("metrics_cost", "key check + limiter", "no metrics", 3),
}
VARIANTS = ("no auth, no limiter", "key check", "key check + limiter", "logging at WARNING", "no metrics")


def _runs(r: dict, variant: str, endpoint: str = "get_user") -> list[dict]:
    return [x for x in r.get("runs", []) if x.get("variant") == variant and x["endpoint"] == endpoint]


def _run(r: dict, variant: str, endpoint: str) -> dict | None:
    return next(iter(_runs(r, variant, endpoint)), None)


def costs(r: dict) -> dict[str, list[float]]:
    """Each cost of GET user, round by round: 1 − the cost of a request without the part / with it."""
    return {
        what: [1 - b["cpu_us"] / a["cpu_us"] for a, b in zip(_runs(r, part), _runs(r, without), strict=False)]
        for what, (_, part, without, _) in COSTS.items()
    }


def measures(r: dict) -> dict:
    """Every headline number of a run, by name: targets and before/after rows read these."""
    m: dict = {}
    for x in (x for x in r.get("runs", []) if x.get("variant") == "shipped"):
        key = x["endpoint"]
        m |= {f"{key}_ratio": x["ratio"], f"{key}_p99": x["p99_ms"], f"{key}_rps": x["rps"]}
        m[f"{key}_floor_ratio"] = x.get("floor_ratio")
        if "drain" in x:
            m[f"{key}_catch_up"] = x["drain"].get("analytics_caught_up_s", NEVER)
    for what, rounds in costs(r).items():  # the median over the rounds
        m[COSTS[what][0]] = statistics.median(rounds) if rounds else None
    if ws := r.get("ws"):
        for shape in ("shared", "single"):  # the last step that held
            knee = next((x for x in reversed(ws[shape]["steps"]) if not x["why_not"]), {})
            m |= {f"knee_{shape}_fps": knee.get("fps", 0), f"knee_{shape}_cpu": knee.get("frames_per_cpu_s")}
        m["per_socket_kib"] = ws["single"]["per_socket_kib"]  # the slope with 10,000 open, one a user
        m["rss_50k_mib"] = (ws["rss_before_kib"] + 50_000 * m["per_socket_kib"]) / 1024
    return m


def _verdict(value: float, limit: float, unit: str, at_least: bool) -> tuple[bool, str]:
    """Met or not, and by how much."""
    gap = f"{abs(value - limit):,.{0 if abs(value - limit) >= 100 else 1}f} {unit}"
    if at_least:
        return value >= limit, f"{gap} {'above' if value >= limit else 'short'}"
    return value <= limit, f"{gap} to spare" if value <= limit else f"{gap} over ({value / limit:.1f}× the limit)"


def targets(r: dict, m: dict) -> list[tuple]:
    """(target, goal, measured, met, margin) for each target this run measured."""
    out: list[tuple] = []

    def add(what: str, goal: str, seen: str, value: float, limit: float, unit: str, at_least: bool = False) -> None:
        out.append((what, goal, seen, *_verdict(value, limit, unit, at_least)))

    for e, (goal, p99) in GOALS.items():
        if x := _run(r, "shipped", e):
            seen = f"{x['floor_ratio']:.1%} ({x['rps']:,.0f} vs {x['floor_rps']:,.0f} req/s)"
            add(x["label"], f"≥ {goal:.0%} of its floor", seen, x["floor_ratio"] * 100, goal * 100, "points", True)
            add(f"{x['label']}: p99", f"≤ {p99} ms", f"{x['p99_ms']:.1f} ms", x["p99_ms"], p99, "ms")
    if x := _run(r, "shipped", "list_filtered"):  # issue 18: status and a month of 100,000 payments
        add(f"{x['label']}: p99", "≤ 50 ms", f"{x['p99_ms']:.1f} ms", x["p99_ms"], 50, "ms")
    for what, (key, *_, goal) in COSTS.items():
        if (cost := m.get(key)) is not None:
            seen = f"{cost:.1%} of CPU per request"
            add(f"GET user: cost of the {what}", f"≤ {goal}%", seen, cost * 100, goal, "points")
    for e in ("post_payments", "put_status"):
        if (value := m.get(f"{e}_catch_up")) is not None:
            seen = "not within the drain timeout" if value >= NEVER else f"{value:.1f} s"
            add(f"analytics lag 0 after {_run(r, 'shipped', e)['label']}", "≤ 5 s after the run", seen, value, 5, "s")
    if ws := r.get("ws"):
        for shape in ("shared", "single"):
            what = f"WebSocket knee, {ws[shape]['users']:,} users × {ws[shape]['per_user']}"
            fps = m[f"knee_{shape}_fps"]
            add(what, "≥ 20,000 frames/s, p99 ≤ 100 ms", f"{fps:,} frames/s", fps, 20_000, "frames/s", True)
        if target := ws["single"].get("target"):  # issue 17: 1,000 payments/s, or the POST ceiling if lower
            what = f"event path, one socket per user, at {target['rate']:,.0f} payments/s (1,000 or the POST ceiling)"
            seen = f"p99 {target['p99_ms']:,.1f} ms ({target['fps']:,} frames/s delivered)"
            add(what, "p99 ≤ 100 ms", seen, target["p99_ms"], 100, "ms")
        seen = f"{m['per_socket_kib']:.1f} KiB a socket with {ws['single']['open']:,} open; {m['rss_50k_mib']:,.0f} MiB"
        add("50,000 sockets, one process (extrapolated)", "≤ 1 GiB RSS", seen, m["rss_50k_mib"], 1024, "MiB")
    return out


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [f"| {' | '.join(map(str, x))} |" for x in (header, ["---"] * len(header), *rows)] + [""]


def _section(title: str, intro: str, *tables: list[str]) -> list[str]:
    return [f"## {title}", "", intro, "", *(line for table in tables for line in table)]


def _cpu(split: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in split.items() if v >= 0.02)


def _ms(*values: float | None) -> str:
    return " / ".join("—" if v is None else f"{v:,.1f}" for v in values)


def header(r: dict) -> list[str]:
    mc, s, load = r["machine"], r["settings"], r["load_average"]
    return [
        "# Benchmarks",
        "",
        f"Written by `make bench` from one run, on {r['date']} at {mc['commit']} ({r['elapsed_s'] / 60:.0f} minutes); "
        "`make bench-report` writes it again. How it measures: [bench/README.md](../bench/README.md). The analytics "
        "store (its last measures, FerretDB's behaviour): [bench/analytics-notes.md](bench/analytics-notes.md).",
        "",
        f"- **Machine:** {mc['nproc']} CPUs ({mc['cpu_model']}), {mc['mem_total_gib']} GiB, kernel {mc['kernel']}, "
        f"Python {mc['python']}, wrk {mc['wrk']}, {mc['nofile_hard']:,} open files at most a process; event loop "
        f"{mc.get('event_loop', 'asyncio')}. Shared: load average {load[0]:.2f} before the run and {load[1]:.2f} after "
        "it; the CPU columns name other work (the bench's own backing services capitalised).",
        f"- **Load:** wrk, {s['connections']} connections, 2 threads, {s['duration_s']} s a run; {s['users']:,} users "
        f"and {s['list_users'] * s['payments_per_user']:,} payments seeded, each read once.",
        "- **Caveat:** one run per number on a small shared machine; ratios are steadier than absolute numbers. With "
        "wrk's 50 connections always busy, mean latency is 50 / throughput (Little's law): a p99 target needs the "
        "throughput that goes with it.",
        "",
    ]


def left(x: dict, cores: int) -> str:
    """The service's CPU µs a request at the target rate (goal × floor req/s): the cores every other process leaves
    if it keeps this run's CPU a request, one at most (bench/README.md); then what the service and the floor used."""
    if (goal := GOALS.get(x["endpoint"])) is None or "floor_cpu_us" not in x:
        return "—"
    rate, others = goal[0] * x["floor_rps"], sum(v for k, v in x["cpu_cores"].items() if k != "service") / x["rps"]
    return f"{min(1, cores - others * rate) / rate * 1e6:,.0f} / {x['cpu_us']:,.0f} / {x['floor_cpu_us']:,.0f}"


def http_section(r: dict) -> list[str]:
    base, rows = [x["rps"] for x in r["runs"] if x["kind"] == "baseline"], []
    for x in (x for x in r["runs"] if x["kind"] == "endpoint" and x["variant"] not in VARIANTS):
        d = x.get("drain")
        floor = [f"{x['floor_rps']:,.0f}", f"{x['floor_ratio']:.1%}"] if "floor_ratio" in x else ["—", "—"]
        rows.append(
            [x["label"], x["variant"], f"{x['rps']:,.0f}", _ms(x["p50_ms"], x["p99_ms"], x.get("floor_p99_ms"))]
            + [f"{x['baseline_rps']:,.0f}", f"{x['ratio']:.1%}", *floor, f"{x['errors']} / {x['non_2xx']}"]
            + [_ms(d.get("outbox_drained_s"), d.get("analytics_caught_up_s")) if d else "—", _cpu(x["cpu_cores"])]
            + [left(x, r["machine"]["nproc"])]
        )
    header = ["endpoint", "service", "req/s", "p50 / p99 / floor's p99, ms", "baseline req/s", "ratio", "floor req/s"]
    header += ["ratio to floor", "errors / non-2xx", "outbox drained / analytics lag 0, s after", "CPU (cores)"]
    header += ["service CPU µs a request: left at the target / used / the floor's"]
    intro = (
        f"Baseline: {len(base)} runs, {min(base, default=0):,.0f}–{max(base, default=0):,.0f} req/s. Floors, ratios, "
        "the drain, what a target leaves: bench/README.md. What bounds each missed target: below, docs/PROFILING.md."
    )
    return _section("HTTP endpoints", intro, _table(header, rows))


def costs_section(r: dict) -> list[str]:
    """GET user on each variant, round by round, and each cost."""
    if not (runs := [x for x in r.get("runs", []) if x.get("variant") in VARIANTS]):
        return []
    rounds, show = costs(r), lambda xs: " · ".join(xs) or "—"  # noqa: E731
    core = {id(x): x["cpu_cores"].get("service", 0.0) for x in runs}
    rows = [
        [v, show([f"{x['cpu_us']:,.0f}" for x in _runs(r, v)])]
        + [show([f"{x['rps']:,.0f}" for x in _runs(r, v)]), f"{min(core[id(x)] for x in _runs(r, v)):.2f}"]
        for v in VARIANTS
    ]
    idle = [f"round {x.get('round', '?')}, {x['variant']} ({core[id(x)]:.2f})" for x in runs if core[id(x)] < BUSY]
    cost_rows = [
        [what, f"{part} against {without}", show([f"{c:.1%}" for c in rounds[what]])]
        + [f"{statistics.median(rounds[what]):.1%}" if rounds[what] else "—", f"{goal}%"]
        for what, (_, part, without, goal) in COSTS.items()
    ]
    flag = f"**Under {BUSY} core** (not bound by its CPU, so req/s is not 1 / CPU): {', '.join(idle)}."
    return _section(
        "GET user: what each part costs",
        f"{len(_runs(r, VARIANTS[0]))} rounds; a cost is 1 − CPU µs per request without the part / with it, the "
        "median of the rounds (bench/README.md).",
        _table(["variant", "CPU µs per request, by round", "req/s, by round", "service cores, least"], rows),
        _table(["cost", "compares", "by round", "median", "limit"], cost_rows),
        [flag, ""] if idle else [],
    )


def profile_section(r: dict) -> list[str]:
    """µs per request by module group, service / floor, an endpoint a column."""
    if not (prof := r.get("profile")):
        return []
    labels = {x["endpoint"]: x["label"] for x in r["runs"] if x.get("variant") == "shipped"}
    groups = [g for g in ORDER if any(g in p.get(who, {}) for p in prof.values() for who in ("shipped", "floor"))]

    def cell(p: dict, g: str | None) -> str:
        us = [sum(p[w].values()) if g is None else p[w].get(g, 0) for w in ("shipped", "floor") if w in p]
        return " / ".join(f"{u:,.0f}" if u >= 0.5 else "·" for u in us)

    rows = [[g, *(cell(p, g) for p in prof.values())] for g in [*groups, None]]
    rows[-1][0] = "**all**"
    intro = (
        "CPU µs per request, service / floor, by the module group of the innermost Python frame (py-spy: "
        "bench/README.md, bench/wrk.py)."
    )
    table = _table(["module group", *(labels.get(e, e) for e in prof)], rows)
    return _section("Where a request's time goes", intro, table)


def ws_section(ws: dict, m: dict) -> list[str]:
    out = _section(
        "WebSocket fan-out",
        "Latency from the REST call to the frame received, the rate stepped up until p99 passes 100 ms "
        "(bench/README.md). Legs: REST call → committed, committed → on Kafka (the outbox rows), Kafka → the hub "
        "(the service's histogram, a bucket's bound). The loop's stalls: the share of the step its event loop "
        "was runnable but waiting for a core (/proc schedstat), and in collector passes (its histogram).",
    )
    header = ["payments/s (achieved)", "frames/s offered", "delivered", "frames", "p50 / p99 / max ms"]
    header += ["legs p50, p99 ms: REST / relay / hub", "loop: waiting for a core / GC", "frames per service CPU-s"]
    header += ["CPU (cores)", "held"]
    for s in (ws["single"], ws["shared"]):
        out += [f"**{s['users']:,} users × {s['per_user']} sockets** ({s['open']:,} open in {s['seconds']} s).", ""]
        rows = [
            [f"{x['rate']:g} ({x['achieved_rate']:g})", f"{x['offered_fps']:,.0f}", f"{x['fps']:,}"]
            + [f"{x['frames']:,} / {x['expected']:,}", _ms(x["p50_ms"], x["p99_ms"], x["max_ms"])]
            + [" / ".join(f"{_ms(*leg).replace(' / ', ', ')}" for leg in x["legs_ms"].values())]
            + [" / ".join(f"{share:.0%}" for share in x["loop_stalls"]) if "loop_stalls" in x else "—"]
            + [f"{x['frames_per_cpu_s']:,}", _cpu(x["cpu_cores"]), "; ".join(x["why_not"]) or "yes"]
            for x in s["steps"]
        ]
        out += _table(header, rows)
    before, per_socket, held = ws["rss_before_kib"] / 1024, m["per_socket_kib"], ws["single"]["open"]
    memory = (
        f"**Memory.** The service's RSS: {before:.0f} MiB before any socket, {per_socket:.1f} KiB more a socket with "
        f"{held:,} open; 50,000 sockets are not held here but extrapolated from that slope: {before:.0f} MiB + "
        f"50,000 × {per_socket:.1f} KiB = {m['rss_50k_mib']:,.0f} MiB."
    )
    return [*out, memory, ""]


def _after(row: dict, m: dict) -> str:
    """A before/after row's "after": this run's measure, unless the row records its own."""
    if "after" in row or (value := m.get(row["measure_key"])) is None:
        return row.get("after", "not measured in this run")
    unit, key = row.get("unit", ""), row["measure_key"]
    rps = m.get(key.removesuffix("_ratio").removesuffix("_floor") + "_rps") if key.endswith("_ratio") else None
    shown = {"pct": f"{value:.1%}" + (f" ({rps:,.0f} req/s)" if rps else ""), "ms": f"{value:,.1f} ms"}
    shown |= {"kib": f"{value:.1f} KiB", "s": f"0 after {value:.1f} s"}
    return shown.get(unit, f"{value:,.0f} {unit}".strip())


def history_section(title: str, history: dict, m: dict) -> list[str]:
    rows = [[h["change"], h["commit"], h["measure"], h["before"], _after(h, m)] for h in history.get("rows", [])]
    return _section(title, history.get("note", ""), _table(["change", "code", "measure", "before", "after"], rows))


def markdown(r: dict, history: dict) -> str:
    m, out = measures(r), header(r)
    rows = [[*t[:3], "**met**" if t[3] else "**missed**", t[4]] for t in targets(r, m)]
    out += ["## Targets", "", *_table(["target", "goal", "measured", "verdict", "margin"], rows)]
    out += http_section(r) + costs_section(r) + profile_section(r) if r.get("runs") else []
    out += ws_section(r["ws"], m) if r.get("ws") else []
    out += history_section("Issue 17: before and after each lever", history.get("levers", {}), m)
    out += history_section("Before and after", history, m)
    return "\n".join(out)


def write() -> str:
    if not (path := DOCS_BENCH / "results.json").exists():
        raise SystemExit(f"no {path}: run `make bench` first")
    results, history = json.loads(path.read_text()), json.loads((DOCS_BENCH / "history.json").read_text())
    (DOCS_BENCH.parent / "BENCHMARKS.md").write_text(markdown(results, history))
    return "docs/BENCHMARKS.md"


if __name__ == "__main__":
    print(write(), file=sys.stderr)
