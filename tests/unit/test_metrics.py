"""Prometheus exposition of the worker's metrics (format 0.0.4), without a server."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from streams.engine import WindowSpec
from streams.metrics import Histogram, Metric, WorkerMetrics, register_metrics, render
from streams.pipeline import Pipeline, Record
from streams.schema import encode_reading

NOW = 1_800_000_000_000


class TP(NamedTuple):  # the shape of faust.types.TP
    topic: str
    partition: int

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? (\S+)$')


def check_format(text: str) -> dict[str, str]:
    """Every line is a HELP, a TYPE or a sample of the family declared just before; returns types."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split(" ")[2]
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and kind in {"counter", "gauge", "histogram", "untyped", "summary"}
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        assert current is not None and m.group(1).startswith(current)
        float(m.group(5).replace("Inf", "inf"))
    return types


def reading(sid: str, ts_ms: int, value: float) -> bytes:
    return encode_reading(sensor_id=sid, kind="iot", zone="futian", lat=22.5, lon=114.0, ts_ms=ts_ms,
                          metrics={"power_kw": (value, "kW")})


def test_render_escapes_and_formats() -> None:
    fam = Metric("x_total", "counter", 'Help with \\ and\nnewline "quotes"').add(3, {"a": 'q"\\\n'})
    fam.add(0.25, {"a": "b"})
    text = render([fam, Metric("y", "gauge", "Y.").add(float("inf")).add(float("nan"))])
    assert text == (
        '# HELP x_total Help with \\\\ and\\nnewline "quotes"\n'
        "# TYPE x_total counter\n"
        'x_total{a="q\\"\\\\\\n"} 3\n'
        'x_total{a="b"} 0.25\n'
        "# HELP y Y.\n# TYPE y gauge\ny +Inf\ny NaN\n"
    )
    check_format(text)


@pytest.mark.parametrize("bad", ["1x", "a-b", ""])
def test_render_rejects_bad_names(bad: str) -> None:
    with pytest.raises(ValueError, match="metric name"):
        render([Metric(bad, "gauge", "h").add(1)])
    with pytest.raises(ValueError, match="label name"):
        render([Metric("ok", "gauge", "h").add(1, {bad or "__x": "v"})])


def test_histogram_is_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    text = render([h.family("lat_seconds", "Latency.")])
    assert 'lat_seconds_bucket{le="0.1"} 2\n' in text
    assert 'lat_seconds_bucket{le="1"} 3\n' in text
    assert 'lat_seconds_bucket{le="+Inf"} 4\n' in text
    assert "lat_seconds_sum 3.65\n" in text and "lat_seconds_count 4\n" in text
    assert check_format(text) == {"lat_seconds": "histogram"}


def test_worker_metrics_from_pipeline_monitor_and_extras() -> None:
    pipeline = Pipeline(WindowSpec(), ())
    recs = [Record(0, i, reading("s1", NOW - 300_000 + i * 10_000, float(i))) for i in range(20)]
    recs.append(Record(1, 0, b"{not json"))
    pipeline.process(recs, NOW)
    tp = TP("t.readings", 0)
    monitor = SimpleNamespace(tp_end_offsets={tp: 120}, tp_read_offsets={tp: 99})
    m = WorkerMetrics(pipeline, lambda: {"writer_queue_depth": 7, "points_written_total": 40,
                                         "model_version": "traffic:1", "sinks": {"mqtt": 2}}, monitor)
    m.observe_alert({"latency_ms": 800})
    m.observe_alert({"latency_ms": "x"})
    text = m.text()
    types = check_format(text)
    assert "urbansense_readings_in_total 21\n" in text
    assert "urbansense_dead_letters_total 1\n" in text
    assert f"urbansense_aggregates_total {pipeline.counters.aggregates}\n" in text
    assert 'urbansense_consumer_lag{topic="t.readings",partition="0"} 20\n' in text
    assert 'urbansense_partition_watermark_ms{partition="0"}' in text
    assert "urbansense_writer_queue_depth 7\n" in text
    assert 'urbansense_model_version_info{value="traffic:1"} 1\n' in text
    assert 'urbansense_sinks{key="mqtt"} 2\n' in text
    assert "urbansense_alert_latency_seconds_count 1\n" in text
    assert types["urbansense_points_written_total"] == "counter"
    assert types["urbansense_open_windows"] == "gauge"
    assert types["urbansense_alert_latency_seconds"] == "histogram"


def test_register_metrics_mounts_a_text_page() -> None:
    pages: dict[str, Any] = {}

    class App:
        monitor = SimpleNamespace(tp_end_offsets={}, tp_read_offsets={})

        def page(self, path: str) -> Any:
            def deco(fn: Any) -> Any:
                pages[path] = fn
                return fn
            return deco

    class Web:
        def text(self, value: str, *, content_type: str) -> tuple[str, str]:
            return value, content_type

    metrics = register_metrics(App(), Pipeline(WindowSpec(), ()), {"model_version": "iot:1"})
    body, ctype = asyncio.run(pages["/metrics"](Web(), None))
    assert ctype.startswith("text/plain; version=0.0.4")
    assert body == metrics.text()
    check_format(body)
