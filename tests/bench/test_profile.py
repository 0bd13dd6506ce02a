"""The bench's profile table: py-spy frames grouped by module, and µs per request shown
as service / floor, an endpoint a column."""

from __future__ import annotations

from bench import report, wrk

SITE = f"{wrk.REPO}/.venv/lib/python3.11/site-packages"


def test_a_frame_counts_for_its_package_not_its_subpackage():
    assert wrk.group(f"get ({wrk.REPO}/handlers/base.py:10)") == "handlers/"
    assert wrk.group(f"serve ({wrk.REPO}/bench/floors.py:3)") == "bench/"
    assert wrk.group(f"execute ({SITE}/redis/asyncio/client.py:600)") == "redis"  # not asyncio
    assert wrk.group("select (/usr/lib/python3.11/selectors.py:468)") == "asyncio/uvloop"
    assert wrk.group("dumps (/usr/lib/python3.11/json/encoder.py:2)") == "json"
    assert wrk.group("<module> (<string>:1)") == "other"


def test_the_profile_table_shows_service_and_floor_per_endpoint():
    r = {"runs": [{"variant": "shipped", "endpoint": "get_user", "label": "GET user"}]}
    r["profile"] = {"get_user": {"shipped": {"handlers/": 30.0, "tornado": 200.0}, "floor": {"tornado": 120.0}}}
    rows = [line for line in report.profile_section(r) if line.startswith("| ")]
    assert rows[0] == "| module group | GET user |"
    assert "| handlers/ | 30 / · |" in rows
    assert "| tornado | 200 / 120 |" in rows
    assert rows[-1] == "| **all** | 230 / 120 |"
