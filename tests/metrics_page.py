"""Reading a Prometheus page and the deploy/ files in tests: sample values, metric names, what a query reads, and
promtool (installed by scripts/test.sh: Debian's `prometheus` package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "DASHBOARD",
    "RULES",
    "RULES_TEST",
    "dashboard_queries",
    "metric_names",
    "promtool",
    "queried_metrics",
    "rule_queries",
    "sample",
]

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "steering-dashboard.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULES_TEST = DEPLOY / "prometheus" / "alerts_test.yml"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool (never skipped: scripts/test.sh installs it)."""
    path = shutil.which("promtool")
    assert path is not None, "promtool is missing: scripts/test.sh installs it (apt-get install prometheus)"
    return subprocess.run([path, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False)


def sample(page: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels`, summed over the others; 0.0 when absent."""
    total = 0.0
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def metric_names(page: str) -> set[str]:
    """Every metric family and sample name on the page (a histogram `x` gives x, x_bucket, x_count, x_sum...)."""
    names = set()
    for family in text_string_to_metric_families(page):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        names.update(s.name for s in family.samples)
    return names


def queried_metrics(expr: str) -> set[str]:
    """The steering_ metrics a PromQL expression reads."""
    return set(re.findall(r"\bsteering_[a-z0-9_]+", expr))


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    return [t["expr"] for p in panels for t in p["targets"]]


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for group in rules["groups"] for r in group["rules"]]
