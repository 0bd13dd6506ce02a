"""The health report's verdict (pure logic): what ``down``, ``degraded`` and ``ready``
mean for each part. Against the real servers, going away and back: tests/handlers/test_health.py."""

from __future__ import annotations

import pytest

from managers.dependencies import BACKING_SERVICES
from managers.health import assess

OK, DOWN = {"status": "ok"}, {"status": "down", "error": "refused"}
CONSUMERS_OK = {"consumers": {"broadcast": {"status": "ok", "lag": 0}, "analytics": {"status": "ok", "lag": 3}}}


def deps(**down: bool) -> dict[str, dict]:
    return {dep: DOWN if down.get(dep) else OK for dep in (cls.dependency for cls in BACKING_SERVICES)}


def test_everything_answering_is_ok_and_ready():
    report = assess(deps(), {**CONSUMERS_OK, "rate_limiter": {"status": "ok"}}, essential="mysql")
    assert report == {
        "status": "ok",
        "ready": True,
        "dependencies": deps(),
        **CONSUMERS_OK,
        "rate_limiter": {"status": "ok"},
    }


@pytest.mark.parametrize("dependency", ["redis", "kafka", "mongodb"])
def test_anything_but_the_essential_dependency_down_is_degraded_and_still_ready(dependency):
    report = assess(deps(**{dependency: True}), CONSUMERS_OK, essential="mysql")
    assert (report["status"], report["ready"], report["down"]) == ("degraded", True, [dependency])


def test_the_essential_dependency_down_is_down_and_not_ready_whatever_else():
    report = assess(deps(mysql=True, redis=True), CONSUMERS_OK, essential="mysql")
    assert (report["status"], report["ready"], report["down"]) == ("down", False, ["mysql", "redis"])
    # An analytics process needs MongoDB, not MariaDB (which it does not check at all).
    analytics = {"mongodb": OK, "kafka": OK}
    assert assess(analytics, {}, essential="mongodb")["status"] == "ok"
    assert assess({**analytics, "mongodb": DOWN}, {}, essential="mongodb")["ready"] is False
    assert assess(analytics, {}, essential="mysql")["status"] == "down", "an essential never checked"


def test_a_watched_part_that_is_not_ok_degrades_by_its_name_and_disabled_is_not_down():
    failing = {"consumers": {"broadcast": {"status": "ok", "lag": 0}, "analytics": {"status": "down", "lag": 9}}}
    report = assess(deps(), {**failing, "rate_limiter": {"status": "local"}}, essential="mysql")
    assert (report["status"], report["ready"]) == ("degraded", True)
    assert report["down"] == ["analytics", "rate_limiter"]
    assert report["consumers"] == failing["consumers"], "each part's own report is kept as it is"
    disabled = assess(deps(), {"rate_limiter": {"status": "disabled"}}, essential="mysql")
    assert disabled["status"] == "ok" and "down" not in disabled
