"""deploy/grafana/preheat-gateway.json: parses, and graphs only the gateway's own metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tests.deploy.dockerfile import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "preheat-gateway.json"
COUNTERS = {
    "preheat_gateway_jobs_created_total",
    "preheat_gateway_jobs_finished_total",
    "preheat_gateway_bytes_warmed_total",
    "preheat_gateway_blobs_total",
    "preheat_gateway_blob_fetches_total",
    "preheat_gateway_blob_checks_total",
    "preheat_gateway_retries_total",
    "preheat_gateway_auth_failures_total",
}
GAUGES = {"preheat_gateway_jobs", "preheat_gateway_cluster_up"}
HISTOGRAMS = {
    "preheat_gateway_task_duration_seconds",
    "preheat_gateway_http_request_duration_seconds",
    "preheat_gateway_store_duration_seconds",
    "preheat_gateway_event_loop_lag_seconds",
    "preheat_gateway_gc_pause_seconds",
}
SERIES = COUNTERS | GAUGES | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "count", "sum")}
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "le",
}


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def metric_names(expr: str) -> set[str]:
    """The series a PromQL expression selects: identifiers left once strings, matchers, ranges,
    grouping clauses and function calls are set aside."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        if match[2] is None and match[1] not in KEYWORDS:
            names.add(match[1])
    return names


def exprs() -> list[str]:
    return [t["expr"] for p in all_panels(load()["panels"]) for t in p.get("targets", [])]


def test_the_scanner_finds_series_and_skips_functions_labels_and_grouping() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{x="y{z}"}[5m]))) / on (route) group_left b'
    assert metric_names(expr) == {"a_bucket", "b"}


def test_every_expression_uses_only_the_gateway_metrics_and_every_metric_is_graphed() -> None:
    found: set[str] = set()
    for expr in exprs():
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= SERIES, f"{sorted(names - SERIES)} in {expr!r} are not metrics of the gateway"
        if names & {f"{h}_bucket" for h in HISTOGRAMS}:
            assert "histogram_quantile(" in expr and " le" in expr.replace("(", " ").replace(",", " "), expr
        for name in names & COUNTERS:
            assert re.search(rf"(rate|increase)\({name}\b", expr), f"counter {name} graphed raw in {expr!r}"
        found |= names
    used = {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for n in found}
    assert used == COUNTERS | GAUGES | HISTOGRAMS, f"not graphed: {sorted((COUNTERS | GAUGES | HISTOGRAMS) - used)}"


def test_template_variables_query_gateway_metrics_and_every_panel_uses_the_datasource_variable() -> None:
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for _name, variable in variables.items():
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
            assert match and match[1] in SERIES, variable["definition"]
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for used in re.findall(r"\$(\w+)", target["expr"]):
                assert used in variables or used.startswith("__"), f"{panel['title']}: unknown variable ${used}"


def test_layout_ids_and_grid() -> None:
    panels = list(all_panels(load()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for dx in range(grid["w"]):
            for dy in range(grid["h"]):
                cell = (grid["x"] + dx, grid["y"] + dy)
                assert cell not in cells, f"{panel['title']} overlaps another panel at {cell}"
                cells.add(cell)
