"""The results as Markdown tables, written between two markers in docs/RELIABILITY.md
(the prose around them is kept): one pair for the everyday stack's scenarios, one for the
cluster stack's (chaos/cluster_report.py adds what those measure). Raw in each stack's
``results.json`` (reports/chaos/, reports/chaos/cluster/)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from chaos.stack import REPO

DOC = REPO / "docs" / "RELIABILITY.md"
MARKERS = {
    "everyday": ("<!-- chaos:results -->", "<!-- /chaos:results -->"),
    "cluster": ("<!-- chaos-cluster:results -->", "<!-- /chaos-cluster:results -->"),
}


def _s(value) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _said(value) -> str:
    """A note's value as prose: a list of log messages quoted, each once with its count."""
    if not isinstance(value, list):
        return str(value)
    counted = {m: value.count(m) for m in value}
    return ", ".join(f'"{m}"' + (f" ({n} times)" if n > 1 else "") for m, n in counted.items())


def _n(value) -> str:
    return "—" if value is None else str(value)


def verdict(r: dict) -> str:
    if "error" in r:
        return "ERROR"
    return "ok" if passed(r) else "FAIL"


def passed(r: dict) -> bool:
    """No payment lost or doubled, analytics exact, no write failed for good, no 500, nothing else wrong."""
    if "error" in r:
        return False
    books = r["lost"] == 0 and r["doubled"] == 0 and r["analytics"]["exact"]
    return books and r["failed"] == 0 and r["http_500"] == 0 and not r["problems"]


def table(columns: list[str], rows: list[list]) -> list[str]:
    """A Markdown table: the first column to the left, numbers (and "—") to the right."""

    def line(cells) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    def align(i: int) -> str:
        numeric = i and all(str(r[i])[:1].isdigit() or str(r[i]) in ("—", "") for r in rows)
        return "---:" if numeric else "---"

    return [line(columns), line(align(i) for i in range(len(columns))), *(line(r) for r in rows)]


def books_table(results: list[dict]) -> list[str]:
    columns = ["scenario", "writes sent", "accepted (201)", "rows", "events (distinct)", "duplicate events"]
    columns += ["analytics = rows", "lost", "doubled", "verdict"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["title"], *[""] * 8, f"ERROR: {r['error']}"])
            continue
        a = r["analytics"]
        exact = "exact" if a["exact"] else f"{a['counted']} of {a['expected']}"
        rows.append([r["title"], r["writes"], r["accepted"], r["rows"], r["events"], r["event_duplicates"]])
        rows[-1] += [exact, r["lost"], r["doubled"], verdict(r)]
    return table(columns, rows)


def analytics_table(results: list[dict]) -> list[str]:
    columns = ["scenario", "exact after the last write", "backlog peak"]
    columns += ["backlog at the fault's end (/health said)", "backlog cleared after"]
    rows = [
        [
            r["title"],
            _s(r["analytics"]["catch_up_s"]),
            r["analytics_backlog_peak"],
            f"{_n(r['backlog_at_fault_end'])} ({_n(r['health_lag_at_fault_end'])})",
            _s(r["analytics_backlog_cleared_s"]),
        ]
        for r in results
        if "error" not in r
    ]
    return table(columns, rows)


NOTES = {
    "restart_s": "`services.sh up` took {} s",
    "in_flight": "{} writes on the wire at SIGTERM",
    "exit_code": "the old process exited {}",
    "stopped_in_s": "it stopped {} s after SIGTERM",
    "workers_replaced": "{} workers replaced",
    "instances_ready": "{} instances reported ready",
    "event_loop": "the event loop logged {}",
}


def notes(results: list[dict]) -> list[str]:
    """What each scenario noted beside the tables, and any problem that failed it."""
    out = []
    for r in results:
        if r.get("failed"):
            last = ", ".join(r["failed_outcomes"])
            out.append(f"- {r['title']}: **{r['failed']} writes failed after their retries** (last answer: {last})")
        for problem in r.get("problems", []):
            out.append(f"- {r['title']}: **{problem}**")
        said = [NOTES.get(k, k + ": {}").format(_said(v)) for k, v in r.get("notes", {}).items()]
        if said:
            out.append(f"- {r['title']}: " + "; ".join(said))
    return out


def client_table(results: list[dict]) -> list[str]:
    columns = ["scenario", "fault lasted", "5xx seen (of them 500)", "no answer", "failed after retries"]
    columns += ["median answer before the fault", "slowest attempt", "slowest write, retries included"]
    columns += ["/health meanwhile"]
    columns += ["health ok after", "writes back after"]
    rows = [
        [
            r["title"],
            _s(r["outage_s"]),
            f"{r['http_5xx']} ({r['http_500']})",
            r["connection_errors"],
            r["failed"],
            "—" if r.get("median_before_s") is None else f"{r['median_before_s']:.3f} s",
            f"{r['slowest_attempt_s']:.2f} s",
            f"{r['slowest_write_s']:.2f} s",
            ", ".join(r["health_during"]),
            _s(r["recovery_health_s"]),
            _s(r["recovery_writes_s"]) if r["writes_interrupted"] else "never stopped",
        ]
        for r in results
        if "error" not in r
    ]
    return table(columns, rows)


def header(meta: dict) -> str:
    warm = meta.get("warm_up")
    warmed = ""
    if warm:
        until = "none answered" if warm["median_s"] is None else f"a median answer of {warm['median_s']:.3f} s"
        warmed = f", then {warm['s']:.0f} s of writes warming it up, until {until}"
    return (
        f"Run of {meta['date']} on commit `{meta['commit']}`: {meta['runtime_s'] / 60:.1f} minutes "
        f"for {meta['what']} ({meta['stack_s']:.0f} s of it starting the stack{warmed}), "
        f"{meta['rate_per_s']} payments/s offered{meta.get('rate_note', '')}, "
        f"{meta['cores']} cores shared with the backing services "
        f"(and whatever else ran: load average {meta['load_average'][0]} at the start, "
        f"{meta['load_average'][1]} at the end)."
    )


def section(results: list[dict], meta: dict, extra: list[str] = ()) -> str:
    begin, end = MARKERS[meta["stack"]]
    lines = [
        begin,
        header(meta),
        "",
        "Every payment accounted for:",
        "",
        *books_table(results),
        "",
        "Analytics catching up:",
        "",
        *analytics_table(results),
        "",
        "What the client saw:",
        "",
        *client_table(results),
        "",
        *extra,
        "Noted by the run:",
        "",
        *notes(results),
        end,
    ]
    return "\n".join(lines)


def write(results: list[dict], meta: dict, work: Path, doc: Path = DOC, extra: list[str] = ()) -> None:
    """The stack's section of ``doc`` (its markers added at the end if missing), and its raw results."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    begin, end = MARKERS[meta["stack"]]
    text = doc.read_text() if doc.exists() else "# Reliability\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    doc.write_text(pattern.sub(lambda _: section(results, meta, extra), text))
