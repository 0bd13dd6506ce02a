"""The page bench/report.py writes: from the committed run (and with the retired analytics
stage's results in it) and the 50,000-socket row, extrapolated from the slope with 10,000 sockets open."""

from __future__ import annotations

import json

import pytest

from bench import report
from bench.env import DOCS_BENCH


def _ws(per_socket_kib: float) -> dict:
    shape = {"users": 10_000, "per_user": 1, "open": 10_000, "seconds": 5, "steps": []}
    return {"rss_before_kib": 64 * 1024, "single": shape | {"per_socket_kib": per_socket_kib}, "shared": shape}


def test_50000_sockets_are_extrapolated_from_the_slope_with_10000_open():
    ws = _ws(17.0) | {"most": {"sockets": 19_000, "per_socket_kib": 30.0, "rss_kib": 1, "limit": 20_000}}
    m = report.measures({"ws": ws})
    assert m["per_socket_kib"] == 17.0  # not the retired hold's 30.0
    assert m["rss_50k_mib"] == pytest.approx(64 + 50_000 * 17.0 / 1024)
    [row] = [t for t in report.targets({"ws": ws}, m) if t[0].startswith("50,000 sockets")]
    assert row[2] == "17.0 KiB a socket with 10,000 open; 894 MiB" and row[3] is True
    assert "extrapolated from that slope: 64 MiB + 50,000 × 17.0 KiB = 894 MiB." in report.ws_section(ws, m)[-2]


def test_a_run_writes_a_page_without_the_retired_analytics_stage_even_with_its_results():
    """The committed run, and the same run with the analytics stage's results in it, as runs had
    before the stage left (e53e190's): neither page shows the stage; both keep the drain's lag
    rows and link the analytics notes."""
    results = json.loads((DOCS_BENCH / "results.json").read_text())
    history = json.loads((DOCS_BENCH / "history.json").read_text())
    old = results | {
        "analytics": {"apply": [{"users": 5, "events_per_s": 7617}], "summary": {}, "seed": {"payments": 1}},
    }
    before, after = results["load_average"]
    for run in (results, old):
        page = report.markdown(run, history)
        assert "## Analytics store" not in page and "analytics store, 5 active users" not in page
        assert "summary over the year" not in page
        assert "| analytics lag 0 after POST payments |" in page  # the drain's, not the stage's
        assert f"Shared: load average {before:.2f} before the run and {after:.2f} after it" in page
        assert "[bench/analytics-notes.md](bench/analytics-notes.md)" in page
    assert (DOCS_BENCH / "analytics-notes.md").exists()


def test_each_endpoint_row_shows_its_floors_p99_beside_its_own():
    results = json.loads((DOCS_BENCH / "results.json").read_text())
    page = "\n".join(report.http_section(results))
    for x in (x for x in results["runs"] if x.get("variant") == "shipped"):
        assert f"| {x['p50_ms']:,.1f} / {x['p99_ms']:,.1f} / {x['floor_p99_ms']:,.1f} |" in page
