"""Alerting rules and dashboard in deploy/prometheus, checked offline with promtool.

`promtool check rules` parses the rule files and `promtool test rules` runs their unit tests
(deploy/prometheus/tests/*.test.yml: series in, alerts expected out). The tests below also make
sure that every alert has a test where it fires and one where it stays quiet, that the
Kubernetes PrometheusRule carries exactly the same groups, and that the rules and the Grafana
dashboard ask only for metrics of the contract (docs/operations/deployment.md, "Alerts").
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import (
    ALERT_RULES,
    FLOOR_RULES,
    RULE_FILES,
    RULES_DIR,
    alert_rules,
    floor_case,
    require_tool,
    run_floor_cases,
    run_tool,
)

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.test.yml"))
DASHBOARD = RULES_DIR / "lending-grpc-dashboard.json"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheus-rule.yaml"
DOCS = ROOT / "docs" / "operations" / "deployment.md"
PROMTOOL_HINT = "Debian/Ubuntu package `prometheus` (apt-get install prometheus); .ci/run installs it"

# The metrics the service and the relay export (names fixed by the metric contract).
CONTRACT = {
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds",
    "lending_loans",
    "lending_payments",
    "lending_delinquent_loans",
    "lending_active_loans",
    "lending_tkb90_percent",
    "lending_daily_close_last_run_timestamp_seconds",
    "lending_event_log_last_sequence",
    "lending_locked_accounts",
    "lending_login_lockouts_total",
    "lending_storage_errors_total",
    "lending_relay_last_published_sequence",
}
HISTOGRAMS = {"grpc_server_handling_seconds"}
_NAME = re.compile(r"\b(?:grpc_server_[a-z_]+|lending_[a-z0-9_]+|lending:[a-z0-9_:]+)|\bup(?=\s*\{)")
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d"}


def _promtool() -> str:
    return require_tool("promtool", PROMTOOL_HINT)


_run = run_tool
_rules = alert_rules


def _all_rules() -> list[dict]:
    return [rule for path in RULE_FILES for rule in _rules(path)]


def _metric_names(expr: str) -> set[str]:
    names = set()
    for name in _NAME.findall(expr):
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(dashboard["panels"])
    queries = []
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
        queries.extend(target["expr"] for target in panel.get("targets", []))
    return queries


def test_rule_files_pass_promtool_check():
    result = _run([_promtool(), "check", "rules", *RULE_FILES])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass():
    assert TEST_FILES, "no promtool tests found"
    result = _run([_promtool(), "test", "rules", *TEST_FILES], cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES), result.stdout


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_stays_quiet():
    """promtool passes an `exp_alerts: []` for an alert that does not exist, so check names too."""
    alerts = {rule["alert"] for rule in _all_rules() if "alert" in rule}
    records = {rule["record"] for rule in _all_rules() if "record" in rule}
    fires, quiet, exprs = set(), set(), set()
    for path in TEST_FILES:
        spec = yaml.safe_load(path.read_text())
        # Every test file loads every rule file: the alerts depend on the floor's recording rule.
        assert {(path.parent / f).resolve() for f in spec["rule_files"]} == set(RULE_FILES), path.name
        for test in spec["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case["exp_alerts"] else quiet).add(case["alertname"])
            exprs.update(case["expr"] for case in test.get("promql_expr_test", []))
    assert alerts - fires == set(), "alerts without a test where they fire"
    assert alerts - quiet == set(), "alerts without a test where they stay quiet"
    assert (fires | quiet) - alerts == set(), "tests of alerts that no rule defines"
    assert records - exprs == set(), "recording rules without a promql_expr_test"


def test_kubernetes_prometheus_rules_carry_the_same_groups():
    """The Operator's copy cannot drift from deploy/prometheus (`make prometheus-rule` regenerates it)."""
    objects = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all(PROMETHEUS_RULE.read_text())
        if doc["kind"] == "PrometheusRule"
    }
    expected = {
        "lending-grpc": yaml.safe_load(ALERT_RULES.read_text())["groups"],
        "lending-grpc-tkb90-floor": yaml.safe_load(FLOOR_RULES.read_text())["groups"],
    }
    assert set(objects) == set(expected)
    for name, groups in expected.items():
        assert objects[name]["apiVersion"] == "monitoring.coreos.com/v1"
        assert objects[name]["spec"]["groups"] == groups, (
            f"PrometheusRule {name} differs from deploy/prometheus: run `make prometheus-rule`"
        )
    monitoring = yaml.safe_load((PROMETHEUS_RULE.parent / "kustomization.yaml").read_text())
    assert PROMETHEUS_RULE.name in monitoring["resources"]


def test_tkb90_floor_is_one_setting(tmp_path):
    """93% is fine at the default floor of 90 and pages once the floor file says 95."""
    promtool = _promtool()
    for path in RULE_FILES:
        shutil.copy(path, tmp_path / path.name)
    default = run_floor_cases(promtool, tmp_path, [floor_case(93, fires=False), floor_case(89, fires=True)])
    assert default.returncode == 0, default.stdout + default.stderr
    floor_file = tmp_path / FLOOR_RULES.name
    floor_file.write_text(floor_file.read_text().replace("vector(90)", "vector(95)"))
    raised = run_floor_cases(promtool, tmp_path, [floor_case(93, fires=True), floor_case(96, fires=False)])
    assert raised.returncode == 0, raised.stdout + raised.stderr


def test_dashboard_queries_are_valid_promql(tmp_path):
    queries = _dashboard_queries()
    assert len(queries) >= 15
    rules = []
    for index, query in enumerate(queries):
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"unsubstituted Grafana variable in {query!r}"
        rules.append({"record": f"dashboard:query_{index}", "expr": query})
    rule_file = tmp_path / "dashboard.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run([_promtool(), "check", "rules", rule_file])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_importable_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "lending-grpc" and dashboard["title"]
    assert dashboard.get("id") is None  # an exported id would clash with another Grafana's
    datasource = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert datasource["query"] == "prometheus"
    ids = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        ids.append(panel["id"])
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_rules_and_dashboard_ask_only_for_contract_metrics():
    recorded = {rule["record"] for rule in _all_rules() if "record" in rule}
    in_rules = set().union(*(_metric_names(rule["expr"]) for rule in _all_rules()))
    in_dashboard = set().union(*(_metric_names(query) for query in _dashboard_queries()))
    assert in_rules - CONTRACT - recorded - {"up"} == set()
    assert in_dashboard - CONTRACT - recorded - {"up"} == set()
    # The dashboard shows every metric of the contract, and the floor beside TKB90.
    assert CONTRACT - in_dashboard == set()
    assert "lending:tkb90_floor_percent" in in_dashboard


def test_docs_page_names_every_metric_alert_and_check():
    """The operations page lists the metrics the rules need, explains every rule, shows the checks."""
    text = DOCS.read_text()
    names = CONTRACT | {rule.get("alert") or rule["record"] for rule in _all_rules()}
    assert {name for name in names if f"`{name}`" not in text} == set()
    for command in (
        "make lint",
        "make test",
        "make prometheus-rule",
        "check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml",
        "promtool test rules deploy/prometheus/tests/*.test.yml",
        "kubectl kustomize deploy/kubernetes/overlays/prod",
    ):
        assert command in text, command


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum(rate(grpc_server_handling_seconds_bucket{job="lending-grpc"}[5m]))',
            {"grpc_server_handling_seconds"},
        ),
        ('up{job="lending-relay"} == 0 or lending:relay_lag_events', {"up", "lending:relay_lag_events"}),
        (
            "lending_tkb90_percent < on () group_left () lending:tkb90_floor_percent",
            {
                "lending_tkb90_percent",
                "lending:tkb90_floor_percent",
            },
        ),
    ],
)
def test_metric_name_extraction(expr, names):
    """The contract check above is only as good as this extraction."""
    assert _metric_names(expr) == names
