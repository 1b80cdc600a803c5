"""Grafana dashboards (grafana/dashboards/*.json) are valid and query only what really exists.

Queries are told apart by their datasource type:

* ``influxdb``: Flux. Its ``r._measurement``, ``r._field`` and ``r.<tag>`` references, the columns it
  groups/keeps/pivots by, and its bucket must exist in the layout of :mod:`connectors.lineprotocol`
  (and the roll-ups of :mod:`connectors.retention`);
* ``prometheus``: PromQL (``expr``). Every ``urbansense_*`` metric name it uses must be one a worker
  exposes on ``/metrics``: the names are read from the text :mod:`streams.metrics` renders for a real
  :class:`~streams.pipeline.Pipeline` that has seen readings, with the worker's extra stats (writer,
  zone stage, shipped model versions) and a consumer-lag monitor.
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
_PROM_NAME = re.compile(r"\burbansense_[a-zA-Z0-9_:]*")
#: Keys of streams.agents' ``metric_stats`` besides the writer's ``_BUFFER_STATS`` (local to the wiring).
_AGENT_EXTRA_KEYS = ("buffer_full", "zone_windows_open")


def datasource_uid(name: str = "influxdb") -> str:
    doc = yaml.safe_load((ROOT / f"grafana/provisioning/datasources/{name}.yml").read_text())
    uid: str = doc["datasources"][0]["uid"]
    return uid


def exposed_metric_names() -> set[str]:
    """Every series name a worker's ``/metrics`` page has (histograms with ``_bucket/_sum/_count``)."""
    from types import SimpleNamespace

    from faust.types import TP

    import models as models_pkg
    from models.stream import latest_versions
    from simulators import build_city, generate
    from streams.agents import _BUFFER_STATS
    from streams.engine import WindowSpec
    from streams.metrics import WorkerMetrics
    from streams.pipeline import Pipeline, Record

    pipeline = Pipeline(WindowSpec(), (), zones=True)
    city = build_city(20, seed=1)
    start_ms = 1_700_000_000_000
    batches = generate(city, start_ms=start_ms, interval_ms=1000, steps=3, seed=2)
    messages = [msg for b in batches for msg in b.to_messages()]
    records = [Record(0, i, payload, topic.rsplit("/", 1)[-1].encode(), "readings")
               for i, (topic, payload) in enumerate(messages)]  # fmt: skip
    pipeline.process(records, start_ms + 3000)
    shipped = latest_versions(Path(models_pkg.__file__).parent / "artifacts")
    extra = {
        **dict.fromkeys((*_BUFFER_STATS, *_AGENT_EXTRA_KEYS), 0),
        **{f"model_version_{kind}": path.name for kind, path in shipped.items()},
    }
    tp = TP("readings", 0)
    monitor = SimpleNamespace(tp_end_offsets={tp: 10}, tp_read_offsets={tp: 4})
    text = WorkerMetrics(pipeline, extra, monitor).text()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def queries(doc: dict[str, Any], ds_type: str = "influxdb") -> list[tuple[str, str, dict[str, Any]]]:
    """(where, query, datasource) for every panel target and query variable of one datasource type:
    the Flux ``query`` of ``influxdb`` targets, the PromQL ``expr`` of ``prometheus`` ones."""
    field = {"influxdb": "query", "prometheus": "expr"}[ds_type]
    out = []
    for panel in doc["panels"]:
        for t in panel["targets"]:
            if t["datasource"]["type"] == ds_type:
                out.append((f"panel {panel['title']!r} target {t['refId']}", t[field], t["datasource"]))
    for var in doc["templating"]["list"]:
        if var["type"] == "query" and var["datasource"]["type"] == ds_type:
            out.append((f"variable {var['name']}", var["query"], var["datasource"]))
    return out


def test_the_expected_dashboards_exist() -> None:
    names = {p.stem for p in DASHBOARDS}
    assert names == {"city-overview", "alerts", "pipeline", *KINDS}
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
        for t in panel["targets"]:
            assert t["datasource"]["type"] in {"influxdb", "prometheus"}, (panel["title"], t["datasource"])
            assert t["datasource"] == panel["datasource"], panel["title"]


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


def test_datasource_uids_are_the_provisioned_ones() -> None:
    docs = {name: yaml.safe_load((ROOT / f"grafana/provisioning/datasources/{name}.yml").read_text())["datasources"]
            for name in ("influxdb", "prometheus")}  # fmt: skip
    assert [d["type"] for d in docs["influxdb"]] == ["influxdb"]
    assert [d["type"] for d in docs["prometheus"]] == ["prometheus"]
    assert docs["prometheus"][0]["url"] == "http://prometheus:9090"
    assert sum(bool(d.get("isDefault")) for ds in docs.values() for d in ds) == 1


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    names = exposed_metric_names()
    # the walk itself works: counters, the lag monitor, the histogram and the extra stats are there
    assert {"urbansense_readings_in_total", "urbansense_consumer_lag", "urbansense_alert_latency_seconds_bucket",
            "urbansense_buffered_memory_points", "urbansense_model_version_iot_info"} <= names  # fmt: skip
    return names


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_prometheus_queries_use_exposed_metrics(path: Path, exposed: set[str]) -> None:
    doc = load(path)
    uid = datasource_uid("prometheus")
    for where, expr, ds in queries(doc, "prometheus"):
        assert ds == {"type": "prometheus", "uid": uid}, where
        used = set(_PROM_NAME.findall(expr))
        assert used, f"{where}: no urbansense_ metric in {expr!r}"
        assert used <= exposed, f"{where}: not exposed by a worker: {sorted(used - exposed)}"
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), where
        for var in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", expr):
            name = var[0] or var[1]
            assert name in {v["name"] for v in doc["templating"]["list"]}, f"{where}: ${name}"


def test_pipeline_dashboard_charts_the_live_metrics() -> None:
    exprs = " ".join(expr for _, expr, _ in queries(load(ROOT / "grafana/dashboards/pipeline.json"), "prometheus"))
    for needle in ("urbansense_readings_in_total", "urbansense_consumer_lag", "urbansense_late_readings_total",
                   "urbansense_dead_letters_total", "urbansense_open_windows", "urbansense_buffered_memory_points",
                   "histogram_quantile(0.99", "urbansense_alert_latency_seconds_bucket",
                   "urbansense_model_version_"):  # fmt: skip
        assert needle in exprs, needle


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_dashboard_is_about_its_kind(kind: str) -> None:
    doc = load(ROOT / f"grafana/dashboards/{kind}.json")
    for where, flux, _ in queries(doc):
        assert f'r.kind == "{kind}"' in flux, where


def test_alerts_dashboard_links_rows_to_plots() -> None:
    text = (ROOT / "grafana/dashboards/alerts.json").read_text()
    assert "/api/v1/plot.png?sensor=" in text
