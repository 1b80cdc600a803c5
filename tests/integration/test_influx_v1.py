"""InfluxV1Sink and the history queries against a real InfluxDB 1.x, cross-checked with SQLite."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.history import HistoryQuery, influxql_get, influxql_ident, query_history
from connectors.influx import InfluxV1Sink
from connectors.lineprotocol import Point, aggregate_point
from connectors.store import SqliteStore
from streams.errors import SinkError
from streams.settings import Settings
from tests.services import Service
from tests.unit.connectors.test_store import MINUTE, T0, expected_raw, make_aggregates

pytestmark = pytest.mark.integration


def influx_settings(influxd: Service, database: str) -> Settings:
    url = f"http://127.0.0.1:{influxd.port}"
    return Settings(influx={"url": url, "version": 1, "database": database})


def write_v1(influxd: Service, database: str, points: list[Point], **kwargs: Any) -> None:
    async def run() -> None:
        sink = InfluxV1Sink(f"http://127.0.0.1:{influxd.port}", database, **kwargs)
        try:
            await sink.write(points)
        finally:
            await sink.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def dataset(influxd: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One data set in a fresh database and in a fresh SQLite file."""
    aggs = make_aggregates(11, sensors=("env-1", "env-2", 'o\'brien "x"'))
    points = [aggregate_point(a) for a in aggs]
    database = f"it_{uuid.uuid4().hex[:12]}"
    write_v1(influxd, database, points, batch_size=97)  # several requests per write
    path = tmp_path_factory.mktemp("store") / "urban.db"
    store = SqliteStore(path)
    store.write_sync(points)
    store.close_sync()
    return {
        "aggs": aggs, "points": points, "database": database,
        "influx": influx_settings(influxd, database),
        "sqlite": Settings(store={"path": path}, influx={"url": ""}),
    }  # fmt: skip


SENSORS = ["env-1", "env-2", 'o\'brien "x"']


@pytest.mark.parametrize("sensor", SENSORS)
def test_raw_rows_are_exact(dataset: dict[str, Any], sensor: str) -> None:
    q = HistoryQuery(sensor, "pm25", T0, T0 + 180 * MINUTE)
    want = expected_raw(dataset["aggs"], sensor, "pm25")
    assert query_history(dataset["influx"], q) == want
    assert query_history(dataset["sqlite"], q) == want


def test_raw_influxql_round_trips_every_field(dataset: dict[str, Any]) -> None:
    cfg = dataset["influx"].influx
    [series] = influxql_get(
        cfg, "SELECT * FROM window_agg WHERE sensor_id = 'env-2' AND metric = 'no2'"
    )
    got = [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]
    want = [a for a in dataset["aggs"] if a["sensor_id"] == "env-2" and a["metric"] == "no2"]
    assert len(got) == len(want)
    for row, agg in zip(got, want, strict=True):
        assert row["time"] == agg["start_ms"] and row["window_size_ms"] == "60000"
        assert row["count"] == agg["count"] and type(row["count"]) is int
        for name in ("sum", "mean", "min", "max", "std", "first", "last"):
            assert float(row[name]) == agg[name], name  # exact: repr round trip


@pytest.mark.parametrize("every", [5 * MINUTE, 7 * MINUTE, 60 * MINUTE])
@pytest.mark.parametrize("agg", ["mean", "min", "max", "sum", "count"])
@pytest.mark.parametrize("field", ["mean", "count", "std"])
def test_buckets_match_sqlite(dataset: dict[str, Any], every: int, agg: str, field: str) -> None:
    since, until = T0 + 3 * MINUTE + 1, T0 + 171 * MINUTE  # neither aligned to the buckets
    for sensor in SENSORS:
        q = HistoryQuery(sensor, "pm25", since, until, every_ms=every, agg=agg, field=field)  # type: ignore[arg-type]
        from_influx = query_history(dataset["influx"], q)
        assert from_influx, q
        assert from_influx == query_history(dataset["sqlite"], q)


def test_rewrite_is_idempotent(influxd: Service, dataset: dict[str, Any]) -> None:
    write_v1(influxd, dataset["database"], dataset["points"][:50])
    [series] = influxql_get(dataset["influx"].influx, 'SELECT count("mean") FROM window_agg')
    assert series["values"][0][1] == len(dataset["points"])


def test_injection_in_sensor_id_is_inert(dataset: dict[str, Any]) -> None:
    q = HistoryQuery("x' OR sensor_id =~ /.*/ OR sensor_id = 'y", "pm25", T0, T0 + 10**9)
    assert query_history(dataset["influx"], q) == []


def test_type_conflict_is_a_4xx_sink_error(influxd: Service, dataset: dict[str, Any]) -> None:
    bad = Point("window_agg", {"sensor_id": "env-1", "metric": "pm25"}, {"count": 1.5}, T0)
    with pytest.raises(SinkError) as info:
        write_v1(influxd, dataset["database"], [bad])
    text = str(info.value)
    assert "HTTP 400" in text and "field type conflict" in text
    assert "window_agg,metric=pm25,sensor_id=env-1 count=1.5" in text


def test_unreachable_server_retries_then_fails() -> None:
    slept: list[float] = []

    async def sleep(delay_s: float) -> None:
        slept.append(delay_s)

    async def run() -> None:
        sink = InfluxV1Sink("http://127.0.0.1:9", "db", max_retries=3, sleep=sleep, timeout_ms=500)
        try:
            await sink.write([aggregate_point(make_aggregates(1, windows=1)[0])])
        finally:
            await sink.close()

    with pytest.raises(SinkError, match="after 4 attempt"):
        asyncio.run(run())
    assert len(slept) == 3


# --- the encoder's output parses the same in the real server ------------------------------------

_NAME = st.text(st.sampled_from(list("abcXYZ09_-.:/ ,=\"'#üé€")), min_size=1, max_size=8)
_VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63) + 1, 2**63 - 1),  # 1.x reserves -2**63
    st.booleans(),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    measurement=_NAME,
    tags=st.dictionaries(_NAME, _NAME, max_size=3),
    fields=st.dictionaries(_NAME, _VALUES, min_size=1, max_size=3),
    time_ms=st.integers(0, 4_000_000_000_000),
)
def test_real_server_reads_back_what_was_encoded(
    influxd: Service, measurement: str, tags: dict[str, str], fields: dict[str, Any], time_ms: int
) -> None:
    database = "it_roundtrip"
    name = f"m{measurement}#{uuid.uuid4().hex[:8]}"  # fresh series: no field type conflicts
    point = Point(name, {f"t{k}": v for k, v in tags.items()},
                  {f"f{k}": v for k, v in fields.items()}, time_ms)  # fmt: skip
    write_v1(influxd, database, [point], gzip=bool(time_ms % 2))
    cfg = influx_settings(influxd, database).influx
    [series] = influxql_get(cfg, "SELECT * FROM " + influxql_ident(name))  # noqa: S608
    assert series["name"] == name
    [values] = series["values"]
    row = dict(zip(series["columns"], values, strict=True))
    assert row.pop("time") == time_ms
    assert {k: row.pop(k) for k in point.tags} == point.tags
    for key, want in point.fields.items():
        got = row.pop(key)
        if isinstance(want, float):
            assert float(got) == want, key  # JSON may show 3.0 as 3; the value is exact
        else:
            assert got == want and type(got) is type(want), key
    assert all(v is None for v in row.values())  # nothing else came back


def test_float_extremes_round_trip(influxd: Service, tmp_path: Path) -> None:
    extremes = [5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 1 / 3, -1e-300,
                123456789.12345679, 2.0**53 + 2]  # fmt: skip
    base = make_aggregates(3, sensors=("edge",), windows=1)[0]
    aggs = [
        {**base, "metric": "x", "start_ms": T0 + i * MINUTE, "mean": v, "min": v, "max": v}
        for i, v in enumerate(extremes)
    ]
    database = f"it_{uuid.uuid4().hex[:12]}"
    write_v1(influxd, database, [aggregate_point(a) for a in aggs])
    rows = query_history(influx_settings(influxd, database), HistoryQuery("edge", "x", T0, 2 * T0))
    assert [r["mean"] for r in rows] == extremes
    assert [r["max"] for r in rows] == extremes
