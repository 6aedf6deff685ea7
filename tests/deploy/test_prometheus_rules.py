"""deploy/: the Prometheus alert rules pass promtool's checks and fire as their unit tests say; the Grafana dashboard
parses and queries through its data-source variable. (That every metric they read exists on a real server's page is
tests/service/test_metrics_page.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..metrics_page import DASHBOARD, RULES, RULES_TEST, dashboard_queries, promtool, queried_metrics, rule_queries


def test_alert_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rule_queries())} rules found" in checked.stdout


def test_alert_rules_fire_as_their_unit_tests_say() -> None:
    tested = promtool("test", "rules", str(RULES_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_rule_has_a_unit_test() -> None:
    names = {line.split(":", 1)[1].strip() for line in RULES.read_text().splitlines() if "- alert:" in line}
    tested = {line.split(":", 1)[1].strip() for line in RULES_TEST.read_text().splitlines() if "alertname:" in line}
    assert names and names == tested


def test_the_dashboard_parses_and_every_panel_queries_steering_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "steering-server"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance"}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
    queries = dashboard_queries()
    assert all(queried_metrics(q) for q in queries)
    read = set().union(*map(queried_metrics, queries))
    # What the brief asks a safety team to see: scores, alerts, TTFT/ITL, throughput, running/waiting, errors.
    for needed in (
        "steering_monitor_score_bucket",
        "steering_monitor_alerts_total",
        "steering_time_to_first_token_seconds_bucket",
        "steering_inter_token_latency_seconds_bucket",
        "steering_generated_tokens_total",
        "steering_running_requests",
        "steering_waiting_requests",
        "steering_requests_total",
    ):
        assert needed in read, needed


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule, with Grafana's variables filled in as Grafana would."""
    queries = [q.replace("$__rate_interval", "5m").replace("$instance", ".*") for q in dashboard_queries()]
    rules = {
        "groups": [{"name": "dashboard", "rules": [{"record": f"q{i}", "expr": q} for i, q in enumerate(queries)]}]
    }
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(queries)} rules found" in checked.stdout
