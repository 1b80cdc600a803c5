"""Grafana dashboards (grafana/dashboards/*.json) are valid and query only what the writers write.

Every panel and template variable query is Flux. Its ``r._measurement``, ``r._field`` and
``r.<tag>`` references, the columns it groups/keeps/pivots by, and its bucket must exist in the
layout of :mod:`connectors.lineprotocol` (and the roll-ups of :mod:`connectors.retention`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.lineprotocol import (
    AGG_FLOAT_FIELDS,
    AGG_MEASUREMENT,
    AGG_OPTIONAL_FLOAT_FIELDS,
    AGG_TAGS,
    ALERT_MEASUREMENT,
    ALERT_TAGS,
)
from connectors.retention import ROLLUP_FIELDS, ROLLUPS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana/dashboards").glob("*.json"))
KINDS = ("traffic", "environment", "crowd", "iot")

FIELDS = {
    AGG_MEASUREMENT: {"count", *AGG_FLOAT_FIELDS, *AGG_OPTIONAL_FLOAT_FIELDS, "model_version"},
    ALERT_MEASUREMENT: {"alert_id", "value", "threshold", "latency_ms", "message"},
    **{m: set(ROLLUP_FIELDS) for m, _ in ROLLUPS.values()},
}
TAGS = {
    AGG_MEASUREMENT: set(AGG_TAGS),
    ALERT_MEASUREMENT: set(ALERT_TAGS),
    **{m: set(AGG_TAGS) for m, _ in ROLLUPS.values()},
}
BUCKETS = {
    AGG_MEASUREMENT: "urbansense",
    ALERT_MEASUREMENT: "urbansense",
    **{m: "urbansense_rollup" for m, _ in ROLLUPS.values()},
}
FLUX_COLUMNS = {"_time", "_value", "_field", "_measurement", "_start", "_stop"}


def datasource_uid() -> str:
    doc = yaml.safe_load((ROOT / "grafana/provisioning/datasources/influxdb.yml").read_text())
    uid: str = doc["datasources"][0]["uid"]
    return uid


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def queries(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, flux, datasource) for every panel target and query variable."""
    out = []
    for panel in doc["panels"]:
        for t in panel["targets"]:
            out.append((f"panel {panel['title']!r} target {t['refId']}", t["query"], t["datasource"]))
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["query"], var["datasource"]))
    return out


def test_the_expected_dashboards_exist() -> None:
    names = {p.stem for p in DASHBOARDS}
    assert names == {"city-overview", "alerts", *KINDS}
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    doc = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/urbansense.yml").read_text())
    assert doc["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert doc["providers"][0]["type"] == "file"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_valid(path: Path) -> None:
    doc = load(path)
    assert {"uid", "title", "panels", "templating", "schemaVersion", "time"} <= set(doc)
    ids = [p["id"] for p in doc["panels"]]
    assert len(set(ids)) == len(ids) and doc["panels"]
    for panel in doc["panels"]:
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_queries_reference_the_real_layout(path: Path) -> None:
    doc = load(path)
    uid = datasource_uid()
    variables = {v["name"] for v in doc["templating"]["list"]}
    for where, flux, ds in queries(doc):
        assert ds == {"type": "influxdb", "uid": uid}, where
        measurements = set(re.findall(r'r\._measurement == "([^"]+)"', flux))
        assert len(measurements) == 1 and measurements <= set(FIELDS), (where, measurements)
        [m] = measurements
        buckets = set(re.findall(r'bucket: "([^"]+)"', flux))
        assert buckets == {BUCKETS[m]}, (where, buckets)
        for f in re.findall(r'r\._field == "([^"]+)"', flux):
            assert f in FIELDS[m], f"{where}: field {f!r} is not written to {m}"
        for tag in re.findall(r"\br\.([a-z_]+)\b", flux):
            if tag not in {"_measurement", "_field", "_value", "_time"}:
                assert tag in TAGS[m], f"{where}: tag {tag!r} is not a tag of {m}"
        for tag in re.findall(r'tag: "([^"]+)"', flux):
            assert tag in TAGS[m], f"{where}: tag {tag!r}"
        for cols in re.findall(r"(?:group|keep)\(columns: \[([^\]]*)\]", flux):
            for col in re.findall(r'"([^"]+)"', cols):
                assert col in TAGS[m] | FIELDS[m] | FLUX_COLUMNS, f"{where}: column {col!r}"
        for var in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", flux):
            name = var[0] or var[1]
            assert name in variables, f"{where}: ${name} is not a dashboard variable"
        assert flux.count("(") == flux.count(")") and flux.count("[") == flux.count("]"), where


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_dashboard_is_about_its_kind(kind: str) -> None:
    doc = load(ROOT / f"grafana/dashboards/{kind}.json")
    for where, flux, _ in queries(doc):
        assert f'r.kind == "{kind}"' in flux, where


def test_alerts_dashboard_links_rows_to_plots() -> None:
    text = (ROOT / "grafana/dashboards/alerts.json").read_text()
    assert "/api/v1/plot.png?sensor=" in text
