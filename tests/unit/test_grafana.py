"""raykd's Grafana dashboard (``raykd/ray_layer/grafana/``, shipped as package data): Grafana's classic model
(top-level ``panels``, rows nesting theirs, each panel's ``targets[].expr``), every query parsed as PromQL
offline, and every metric a query names one that raykd's trials export — renaming a gauge fails here."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from raykd.ray_layer.monitoring import GAUGES

pytestmark = pytest.mark.unit


def _dashboards() -> list:
    folder = files("raykd") / "ray_layer" / "grafana"
    return [p for p in folder.iterdir() if p.name.endswith(".json")]


def _panels(panels: list):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # a row may nest its panels


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (parsed with promql-parser: a syntax error raises)."""
    import promql_parser

    names, stack = set(), [promql_parser.parse(expr)]
    while stack:
        node = stack.pop()
        if type(node).__name__ == "VectorSelector":
            names.add(node.name)
        for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (str, int, float)):
                stack.append(child)
        stack.extend(a for a in getattr(node, "args", None) or [] if not isinstance(a, (str, int, float)))
    return names


def test_the_query_walker_can_fail():
    assert metric_names('sum by (trial_id) (rate(ray_raykd_step{trial_id=~".+"}[2m])) * 60 + ray_raykd_x') == \
        {"ray_raykd_step", "ray_raykd_x"}
    with pytest.raises(ValueError):
        metric_names("ray_raykd_step{")


def test_the_dashboard_charts_the_gauges_raykd_exports():
    (path,) = _dashboards()  # the only JSON file of the folder
    dash = json.loads(path.read_text(encoding="utf-8"))
    assert dash["title"] and dash["uid"] and isinstance(dash["panels"], list)
    targets = [t for p in _panels(dash["panels"]) for t in p.get("targets", [])]
    assert len(targets) >= 4
    exported = {f"ray_{name}" for name in GAUGES}  # Ray prefixes every application metric with ray_
    charted = set()
    for t in targets:
        names = metric_names(t["expr"].replace("$trial", ".*"))
        assert names and names <= exported, (t["expr"], names - exported)
        charted |= names
    assert charted == exported  # every gauge has a chart
