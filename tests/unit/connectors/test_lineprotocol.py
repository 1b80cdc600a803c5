from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.lineprotocol import Point, aggregate_point, alert_point, encode_line, encode_lines

# --- a small reference parser (InfluxDB 1.x rules) -------------------------------------------


def _scan(text: str, i: int, stops: str) -> tuple[str, int]:
    """Read up to an unescaped stop character; drop the backslash of escaped specials."""
    out = []
    while i < len(text) and text[i] not in stops:
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ", =":
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out), i


def _value(text: str, i: int) -> tuple[Any, int]:
    if text[i] == '"':
        out, i = [], i + 1
        while text[i] != '"':
            if text[i] == "\\" and text[i + 1] in '\\"':
                i += 1
            out.append(text[i])
            i += 1
        return "".join(out), i + 1
    raw, i = _scan(text, i, ", \n")
    if raw in ("true", "false"):
        return raw == "true", i
    if raw.endswith("i"):
        return int(raw[:-1]), i
    return float(raw), i


def parse_lines(body: bytes) -> list[Point]:
    text, i, points = body.decode(), 0, []
    while i < len(text):
        measurement, i = _scan(text, i, ", ")
        tags: dict[str, str] = {}
        while text[i] == ",":
            key, i = _scan(text, i + 1, "=")
            tags[key], i = _scan(text, i + 1, ", ")
        fields: dict[str, Any] = {}
        i += 1  # the space before the fields
        while True:
            key, i = _scan(text, i, "=")
            fields[key], i = _value(text, i + 1)
            if text[i] == " ":
                break
            i += 1
        stamp, i = _scan(text, i + 1, "\n")
        points.append(Point(measurement, tags, fields, int(stamp)))
        i += 1
    return points


# --- table-driven cases ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "line"),
    [
        (Point("m", {}, {"v": 1.5}, 1), "m v=1.5 1"),
        (Point("my m", {}, {"v": 1.5}, 1), r"my\ m v=1.5 1"),
        (Point("a,b=c", {}, {"v": 1.5}, 1), r"a\,b=c v=1.5 1"),
        (Point("m", {"tag key": "x=y,z w"}, {"v": 1.5}, 1), r"m,tag\ key=x\=y\,z\ w v=1.5 1"),
        (Point("m", {"b": "2", "a": "1", "Z": "0"}, {"v": 1.5}, 1), "m,Z=0,a=1,b=2 v=1.5 1"),
        (Point("m", {}, {"f k=1,": 1.5}, 1), r"m f\ k\=1\,=1.5 1"),
        (Point("m", {}, {"s": 'say "hi" \\o/'}, 1), r'm s="say \"hi\" \\o/" 1'),
        (Point("m", {}, {"s": "two\nlines, a=b"}, 1), 'm s="two\nlines, a=b" 1'),
        (Point("m", {}, {"s": ""}, 1), 'm s="" 1'),
        (Point("m", {}, {"t": True, "f": False}, 1), "m t=true,f=false 1"),
        (Point("m", {}, {"n": 3, "neg": -(2**63)}, 1), "m n=3i,neg=-9223372036854775808i 1"),
        (Point("m", {}, {"x": 3.0}, 1), "m x=3.0 1"),
        (Point("m", {}, {"x": -0.0}, 1), "m x=-0.0 1"),
        (Point("m", {}, {"x": 0.1 + 0.2}, 1), "m x=0.30000000000000004 1"),
        (Point("m", {}, {"x": 1e-05}, 1), "m x=1e-05 1"),
        (Point("m", {}, {"x": 1.5e300}, 1), "m x=1.5e+300 1"),
        (Point("m", {}, {"x": 5e-324}, 1), "m x=5e-324 1"),
        (Point("m", {}, {"x": np.float64(2.0), "n": np.int64(7)}, 1), "m x=2.0,n=7i 1"),
        (Point("m", {}, {"x": np.float32(0.5)}, 1), "m x=0.5 1"),
        (Point("m", {"k": "ünï"}, {"x": 1.0}, -5), "m,k=ünï x=1.0 -5"),
    ],
)
def test_encode_line(point: Point, line: str) -> None:
    assert encode_line(point) == line
    assert parse_lines(line.encode()) == [point]


@pytest.mark.parametrize(
    ("point", "needle"),
    [
        (Point("m", {}, {"v": math.nan}, 1), "field 'v'"),
        (Point("m", {}, {"v": math.inf}, 1), "field 'v'"),
        (Point("m", {}, {"v": -math.inf}, 1), "field 'v'"),
        (Point("m", {}, {"v": 2**63}, 1), "int64"),
        (Point("m", {}, {"v": None}, 1), "NoneType"),  # type: ignore[dict-item]
        (Point("m", {}, {"v": [1]}, 1), "list"),  # type: ignore[dict-item]
        (Point("m", {}, {}, 1), "at least one field"),
        (Point("", {}, {"v": 1.0}, 1), "empty measurement"),
        (Point("#m", {}, {"v": 1.0}, 1), "comment"),
        (Point("m", {"t": ""}, {"v": 1.0}, 1), "empty value of tag 't'"),
        (Point("m", {"": "x"}, {"v": 1.0}, 1), "empty tag key"),
        (Point("m", {}, {"": 1.0}, 1), "empty field key"),
        (Point("m", {"t": "a\\"}, {"v": 1.0}, 1), "backslash"),
        (Point("m\\", {}, {"v": 1.0}, 1), "backslash"),
        (Point("m", {"t": "a\nb"}, {"v": 1.0}, 1), "line break"),
        (Point("m", {}, {"a\nb": 1.0}, 1), "line break"),
    ],
)
def test_encode_line_rejects(point: Point, needle: str) -> None:
    with pytest.raises(ValueError, match="measurement=") as info:
        encode_line(point)
    assert needle in str(info.value)
    assert repr(point.measurement) in str(info.value)


def test_encode_lines_joins_and_handles_empty() -> None:
    points = [Point("m", {}, {"v": 1}, 1), Point("n", {"t": "x"}, {"v": 2.5}, 2)]
    assert encode_lines(points) == b"m v=1i 1\nn,t=x v=2.5 2"
    assert encode_lines([]) == b""


# --- record mapping ------------------------------------------------------------------------------

AGG = {
    "v": 1, "sensor_id": "env-1", "kind": "environment", "zone": "futian", "metric": "pm25",
    "unit": "µg/m³", "window": "tumbling", "size_ms": 60000, "start_ms": 1_700_000_000_000,
    "end_ms": 1_700_000_060_000, "count": 3, "sum": 6, "mean": 2, "min": 1, "max": 3.0,
    "std": 0.816496580927726, "first": 1, "last": 3,
}  # fmt: skip


def test_aggregate_point_layout_and_stable_float_types() -> None:
    point = aggregate_point(AGG)
    assert point.measurement == "window_agg"
    assert point.time_ms == AGG["start_ms"]
    assert point.tags == {
        "kind": "environment", "zone": "futian", "sensor_id": "env-1", "metric": "pm25",
        "unit": "µg/m³", "window": "tumbling", "window_size_ms": "60000",
    }  # fmt: skip
    assert point.fields["count"] == 3 and type(point.fields["count"]) is int
    for name in ("sum", "mean", "min", "max", "std", "first", "last"):
        assert type(point.fields[name]) is float, name
    assert "score" not in point.fields and "model_version" not in point.fields
    line = encode_line(point)
    assert " count=3i,sum=6.0,mean=2.0,min=1.0,max=3.0," in line


def test_aggregate_point_omits_empty_tags_and_keeps_score() -> None:
    point = aggregate_point({**AGG, "zone": "", "unit": "", "score": 1, "model_version": "v3"})
    assert "zone" not in point.tags and "unit" not in point.tags
    assert point.fields["score"] == 1.0 and type(point.fields["score"]) is float
    assert point.fields["model_version"] == "v3"
    without = aggregate_point({**AGG, "score": None})
    assert without.fields.keys() == aggregate_point(AGG).fields.keys()


def test_alert_point_layout() -> None:
    alert = {
        "v": 1, "alert_id": "a-1", "rule": "pm25_high", "severity": "critical",
        "state": "raised", "sensor_id": None, "kind": "environment", "zone": "futian",
        "metric": "pm25", "value": 80, "threshold": 75, "window_start_ms": 0,
        "window_end_ms": 60000, "ts_ms": 60500, "latency_ms": 500, "message": 'pm25 "high"',
    }  # fmt: skip
    point = alert_point(alert)
    assert point.measurement == "alert" and point.time_ms == 60500
    assert point.tags == {
        "rule": "pm25_high", "severity": "critical", "state": "raised", "kind": "environment",
        "zone": "futian", "metric": "pm25",
    }  # fmt: skip
    assert point.fields == {
        "alert_id": "a-1", "value": 80.0, "threshold": 75.0, "latency_ms": 500,
        "message": 'pm25 "high"',
    }  # fmt: skip
    assert type(point.fields["value"]) is float
    assert alert_point({**alert, "sensor_id": "s-9"}).tags["sensor_id"] == "s-9"


# --- property: what the encoder accepts, a parser reads back unchanged -----------------------

_NAME_CHARS = st.sampled_from(list("abcXYZ09_-.:/ ,=\"'#ü€\\\n"))
names = st.text(_NAME_CHARS, min_size=0, max_size=8)
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.text(max_size=12),
)
points = st.builds(
    Point,
    measurement=names,
    tags=st.dictionaries(names, names, max_size=4),
    fields=st.dictionaries(names, field_values, max_size=4),
    time_ms=st.integers(-(2**40), 2**40),
)


def _representable(point: Point) -> bool:
    names_ = [point.measurement, *point.tags, *point.tags.values(), *point.fields]
    return (
        bool(point.fields)
        and all(n and "\\" not in n and "\n" not in n for n in names_)
        and not point.measurement.startswith("#")
    )


@settings(suppress_health_check=[HealthCheck.too_slow])  # the first run builds Unicode tables
@given(st.lists(points, max_size=4))
def test_encoding_round_trips_through_a_parser(batch: list[Point]) -> None:
    if not all(_representable(p) for p in batch):
        with pytest.raises(ValueError, match="measurement="):
            encode_lines(batch)
        return
    body = encode_lines(batch)
    parsed = parse_lines(body)
    assert parsed == batch
    for got, want in zip(parsed, batch, strict=True):
        for key, value in want.fields.items():
            assert type(got.fields[key]) is type(value)
            if isinstance(value, float):
                assert math.copysign(1, got.fields[key]) == math.copysign(1, value)
