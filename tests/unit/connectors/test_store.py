from __future__ import annotations

import asyncio
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from connectors.history import HistoryQuery, format_rows, parse_duration, query_history
from connectors.influx import InfluxV1Sink, InfluxV2Sink, open_sink
from connectors.lineprotocol import Point, aggregate_point, alert_point
from connectors.store import SqliteStore
from streams.settings import Settings

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z, a multiple of one minute
MINUTE = 60_000


def make_aggregates(
    seed: int, sensors: tuple[str, ...] = ("env-1", "env-2"), windows: int = 180
) -> list[dict[str, Any]]:
    """Realistic one-minute aggregates: random floats, so sums really do round."""
    rng = random.Random(seed)
    out = []
    for sensor in sensors:
        for metric in ("pm25", "no2"):
            for i in range(windows):
                if rng.random() < 0.1:  # a silent minute leaves a gap
                    continue
                values = [rng.gauss(35, 12) for _ in range(rng.randint(1, 12))]
                mean = math.fsum(values) / len(values)
                std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
                out.append({
                    "v": 1, "sensor_id": sensor, "kind": "environment", "zone": "futian",
                    "metric": metric, "unit": "ug/m3", "window": "tumbling", "size_ms": MINUTE,
                    "start_ms": T0 + i * MINUTE, "end_ms": T0 + (i + 1) * MINUTE,
                    "count": len(values), "sum": math.fsum(values), "mean": mean,
                    "min": min(values), "max": max(values), "std": std,
                    "first": values[0], "last": values[-1],
                })  # fmt: skip
    return out


def sqlite_settings(path: Path) -> Settings:
    return Settings(store={"path": path}, influx={"url": ""})


def expected_raw(aggs: list[dict[str, Any]], sensor: str, metric: str) -> list[dict[str, Any]]:
    return sorted(
        (
            {"time_ms": a["start_ms"], "count": a["count"], "mean": a["mean"], "min": a["min"],
             "max": a["max"]}
            for a in aggs
            if a["sensor_id"] == sensor and a["metric"] == metric
        ),
        key=lambda r: r["time_ms"],
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "sub" / "urban.db")


def test_round_trip_raw_rows(store: SqliteStore) -> None:
    aggs = make_aggregates(1)
    asyncio.run(store.write([aggregate_point(a) for a in aggs]))
    settings = sqlite_settings(store.path)
    rows = query_history(settings, HistoryQuery("env-1", "pm25", T0, T0 + 180 * MINUTE))
    assert rows == expected_raw(aggs, "env-1", "pm25")
    assert all(type(r["count"]) is int and type(r["mean"]) is float for r in rows)
    # half-open range and the other filters
    rows = query_history(settings, HistoryQuery("env-2", "no2", T0 + MINUTE, T0 + 3 * MINUTE))
    assert [r["time_ms"] for r in rows] == [
        a["start_ms"]
        for a in aggs
        if a["sensor_id"] == "env-2" and a["metric"] == "no2"
        and T0 + MINUTE <= a["start_ms"] < T0 + 3 * MINUTE
    ]  # fmt: skip
    asyncio.run(store.close())


def test_wal_mode_and_columns(store: SqliteStore) -> None:
    agg = {**make_aggregates(2, windows=1)[0], "score": 0.25, "model_version": "iforest/3"}
    asyncio.run(store.write([aggregate_point(agg)]))
    with sqlite3.connect(store.path) as conn:
        conn.row_factory = sqlite3.Row
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = dict(conn.execute("SELECT * FROM window_agg").fetchone())
    assert row["window_size_ms"] == "60000" and row["score"] == 0.25
    assert row["model_version"] == "iforest/3" and row["start_ms"] == agg["start_ms"]
    assert {k: row[k] for k in ("count", "sum", "std", "first", "last")} == {
        k: agg[k] for k in ("count", "sum", "std", "first", "last")
    }
    store.close_sync()


def test_upsert_is_idempotent(store: SqliteStore) -> None:
    aggs = make_aggregates(3, sensors=("env-1",), windows=20)
    points = [aggregate_point(a) for a in aggs]
    asyncio.run(store.write(points))
    asyncio.run(store.write(points))
    changed = {**aggs[0], "mean": 99.5, "count": 7}
    asyncio.run(store.write([aggregate_point(changed)]))
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM window_agg").fetchone()[0] == len(aggs)
        got = conn.execute(
            "SELECT mean, count FROM window_agg WHERE start_ms = ? AND metric = ?",
            (changed["start_ms"], changed["metric"]),
        ).fetchone()
    assert got == (99.5, 7)
    store.close_sync()


def test_alerts_upsert_on_alert_id(store: SqliteStore) -> None:
    alert = {
        "v": 1, "alert_id": "a-1", "rule": "pm25_high", "severity": "warning",
        "state": "raised", "sensor_id": None, "kind": "environment", "zone": "futian",
        "metric": "pm25", "value": 80.5, "threshold": 75, "window_start_ms": T0,
        "window_end_ms": T0 + MINUTE, "ts_ms": T0 + MINUTE + 20, "latency_ms": 20,
        "message": "pm25 80.5 > 75",
    }  # fmt: skip
    cleared = {**alert, "state": "cleared", "ts_ms": T0 + 5 * MINUTE}
    asyncio.run(store.write([alert_point(alert), alert_point(cleared)]))
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute("SELECT alert_id, state, sensor_id, ts_ms FROM alert").fetchall()
    assert rows == [("a-1", "cleared", "", T0 + 5 * MINUTE)]
    store.close_sync()


@pytest.mark.parametrize(
    ("point", "needle"),
    [
        (Point("weather", {}, {"v": 1.0}, 1), "expected one of"),
        (Point("window_agg", {"colour": "red"}, {"mean": 1.0}, 1), "unknown tag 'colour'"),
        (Point("window_agg", {}, {"kind": "x"}, 1), "unknown field 'kind'"),
        (Point("window_agg", {}, {"mean": 1}, 1), "expected float, got int"),
        (Point("window_agg", {}, {"count": 1.0}, 1), "expected int, got float"),
        (Point("window_agg", {}, {"count": True}, 1), "expected int, got bool"),
        (Point("window_agg", {}, {"mean": math.nan}, 1), "finite"),
        (Point("window_agg", {"zone": ""}, {"mean": 1.0}, 1), "empty value"),
    ],
)
def test_rejects_what_influx_would(store: SqliteStore, point: Point, needle: str) -> None:
    good = aggregate_point(make_aggregates(4, windows=1)[0])
    with pytest.raises(ValueError, match="measurement=") as info:
        store.write_sync([good, point])
    assert needle in str(info.value)
    assert not store.path.exists() or query_history(
        sqlite_settings(store.path), HistoryQuery("env-1", "pm25", 0, 2 * T0)
    ) == []  # fmt: skip


def _naive(agg: str, values: list[Any]) -> Any:
    total = 0.0
    for v in values:
        total += v
    return {"count": len(values), "min": min(values), "max": max(values),
            "sum": sum(values) if isinstance(values[0], int) else total,
            "mean": total / len(values)}[agg]  # fmt: skip


@pytest.mark.parametrize("agg", ["mean", "min", "max", "sum", "count"])
@pytest.mark.parametrize("field", ["mean", "count", "max"])
@pytest.mark.parametrize("every", ["5m", "7m", "1h"])
def test_downsampling(store: SqliteStore, agg: str, field: str, every: str) -> None:
    aggs = make_aggregates(5)
    asyncio.run(store.write([aggregate_point(a) for a in reversed(aggs)]))  # order must not matter
    every_ms = parse_duration(every)
    since, until = T0 + 3 * MINUTE, T0 + 170 * MINUTE  # not aligned to the buckets
    q = HistoryQuery("env-2", "pm25", since, until, every_ms=every_ms, agg=agg, field=field)  # type: ignore[arg-type]
    rows = query_history(sqlite_settings(store.path), q)
    buckets: dict[int, list[Any]] = {}
    for a in sorted(aggs, key=lambda a: a["start_ms"]):
        if a["sensor_id"] == "env-2" and a["metric"] == "pm25" and since <= a["start_ms"] < until:
            buckets.setdefault(a["start_ms"] // every_ms * every_ms, []).append(a[field])
    assert rows == [{"time_ms": t, "value": _naive(agg, vs)} for t, vs in sorted(buckets.items())]
    int_values = agg == "count" or (field == "count" and agg != "mean")
    assert all(type(r["value"]) is (int if int_values else float) for r in rows)
    store.close_sync()


def test_missing_store_reads_empty(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path / "nothing.db")
    assert query_history(settings, HistoryQuery("s", "m", 0, 1)) == []
    assert not (tmp_path / "nothing.db").exists()


@pytest.mark.parametrize(
    ("text", "ms"), [("1h", 3_600_000), ("5m", 300_000), ("30s", 30_000), ("7d", 604_800_000),
                     ("250ms", 250), (" 2m ", 120_000)],
)  # fmt: skip
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "5", "m", "1.5h", "-5m", "5 m", "5M", "1w", "0s", "1h30m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"since_ms": 5, "until_ms": 5},
        {"every_ms": 0},
        {"agg": "median"},
        {"field": "sensor_id"},
        {"field": 'mean") FROM x; --'},
        {"sensor_id": ""},
    ],
)
def test_history_query_validation(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {"sensor_id": "s", "metric": "m", "since_ms": 0, "until_ms": 10}
    with pytest.raises(ValueError, match="history query"):
        HistoryQuery(**{**base, **kwargs})


def test_format_rows() -> None:
    rows = [{"time_ms": 0, "value": 1.5}, {"time_ms": 60000, "value": 0.1 + 0.2}]
    assert format_rows(rows, "csv") == (
        "time,time_ms,value\n1970-01-01T00:00:00.000Z,0,1.5\n1970-01-01T00:01:00.000Z,60000,0.30000000000000004\n"
    )
    assert format_rows(rows, "json").startswith('[\n  {\n    "time": "1970-01-01T00:00:00.000Z",\n    "time_ms": 0,')
    table = format_rows(rows, "table").splitlines()
    assert table[0].split() == ["time", "time_ms", "value"] and len(table) == 4
    assert table[3].split() == ["1970-01-01T00:01:00.000Z", "60000", "0.30000000000000004"]
    assert format_rows([], "table") == "(no rows)"
    assert format_rows([], "csv") == ""
    assert format_rows([], "json") == "[]"
    with pytest.raises(ValueError, match="output format"):
        format_rows(rows, "xml")  # type: ignore[arg-type]


def test_open_sink_selects_by_settings(tmp_path: Path) -> None:
    assert isinstance(open_sink(sqlite_settings(tmp_path / "x.db")), SqliteStore)
    v1 = Settings(influx={"url": "http://127.0.0.1:1", "version": 1, "database": "d"})
    assert isinstance(open_sink(v1), InfluxV1Sink)
    v2 = Settings(influx={"url": "http://127.0.0.1:1", "version": 2, "token": "t0k"})
    sink = open_sink(v2)
    assert isinstance(sink, InfluxV2Sink) and "t0k" not in repr(vars(sink))
