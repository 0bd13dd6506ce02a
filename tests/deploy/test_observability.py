"""The alerting rules and the Grafana dashboard in deploy/, checked without Prometheus,
Grafana or any backing service.

Passing proves that:

- deploy/prometheus/alerts.yml is valid (``promtool check rules``) and behaves as
  alerts_test.yml says (``promtool test rules``); every alert has a ``for:``, a page or
  ticket severity, a summary and a description, and is tested both firing and quiet;
- deploy/grafana/singleton.json has what Grafana needs to import it: a title, a uid, a
  current schemaVersion, panels with unique ids and grid positions, and every query on
  the ``datasource`` template variable;
- every PromQL expression in the dashboard parses (each becomes a recording rule that
  ``promtool check rules`` validates);
- every ``singleton_*`` name the alerts and the dashboard use is a series that
  managers.metrics declares, so renaming a metric fails here instead of leaving an
  alert that can never fire and a panel that shows "No data".
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from managers import metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "singleton.json"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's variables in the dashboard's queries, and what promtool sees in their place.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}
METRIC_NAME = re.compile(r"\bsingleton_[a-zA-Z0-9_]+")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*\w+\)$")
# The series a metric of each type exposes, by suffix (counters are declared without _total).
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not on PATH: `make tools` installs it (Debian package prometheus)")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout}{result.stderr}"


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def dashboard_queries(dashboard: dict) -> dict[str, str]:
    """Every PromQL expression in the dashboard, by where it is, Grafana variables replaced."""
    queries = {}
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            queries[f"panel_{panel['id']}_{target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"])
            assert match, f"variable {variable['name']}: expected label_values(selector, label)"
            queries[f"variable_{variable['name']}"] = match["selector"]
    for where, expr in queries.items():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: a Grafana variable this test does not know: {expr}"
        queries[where] = expr
    return queries


def declared_series() -> set[str]:
    """Every series name managers.metrics exposes, suffixes included."""
    names = set()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                names.update(family.name + suffix for suffix in SERIES_SUFFIXES[family.type])
    return names


@pytest.mark.tools
def test_alert_rules_pass_promtool_check():
    assert_ok(promtool("check", "rules", ALERTS))


@pytest.mark.tools
def test_alert_rules_pass_their_promtool_unit_tests():
    assert_ok(promtool("test", "rules", ALERTS_TEST))


def test_every_alert_says_how_urgent_it_is_and_what_to_check():
    rules = alert_rules()
    assert rules
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Singleton[A-Z][A-Za-z0-9]+", name), name
        assert rule.get("for"), f"{name}: no `for:`, so one bad scrape would fire it"
        assert rule.get("labels", {}).get("severity") in ("page", "ticket"), name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        assert "Check first" in annotations["description"], f"{name}: the description should say what to check"


def test_every_alert_is_tested_firing_and_quiet():
    outcomes: dict[str, set[bool]] = {}
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            outcomes.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    for name in {rule["alert"] for rule in alert_rules()}:
        assert outcomes.get(name) == {True, False}, f"{name}: needs a case where it fires and one where it does not"


def test_dashboard_has_what_grafana_needs_to_import_it():
    dashboard = load_dashboard()
    assert dashboard["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 39

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query" and variables["instance"]["datasource"] == DATASOURCE

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        where = f"panel {panel['id']} ({panel.get('title')})"
        assert panel["type"] in ("row", "timeseries", "stat"), where
        assert panel.get("title"), where
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y")), where
        assert grid["w"] > 0 and grid["h"] > 0 and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, where

    panels = query_panels(dashboard)
    assert panels
    for panel in panels:
        where = f"panel {panel['id']} ({panel['title']})"
        assert panel["datasource"] == DATASOURCE, where
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert panel["targets"], f"{where}: no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target.get("expr"), where
            assert target["datasource"] == DATASOURCE, f"{where}: a query not on the datasource variable"


@pytest.mark.tools
def test_every_dashboard_query_is_valid_promql(tmp_path):
    queries = dashboard_queries(load_dashboard())
    rules = [{"record": f"dashboard:{where}", "expr": expr} for where, expr in queries.items()]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    assert_ok(promtool("check", "rules", rules_file))


def test_every_metric_used_by_the_alerts_and_the_dashboard_is_declared():
    known = declared_series()
    assert {"singleton_http_requests_total", "singleton_http_request_duration_seconds_bucket"} <= known
    uses = {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()}
    uses.update(dashboard_queries(load_dashboard()))
    used = set()
    for where, expr in uses.items():
        names = set(METRIC_NAME.findall(expr))
        assert not names - known, f"{where} uses metrics that managers.metrics does not declare: {names - known}"
        used |= names
    assert len(used) > 20, "the name pattern found suspiciously few metrics"
