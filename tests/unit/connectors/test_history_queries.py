"""History queries, roll-ups and retention on the embedded store, against plain-Python references."""

from __future__ import annotations

import io
import math
import random
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from connectors.history import (
    ZONE_ROLLUP_ANSWERS,
    AlertParams,
    AlertQuery,
    HistoryQuery,
    Limits,
    SeriesParams,
    TopParams,
    TopQuery,
    iter_alerts,
    iter_series,
    nearest_rank,
    parse_instant,
    parse_tz,
    query_history,
    run_history_cli,
    top_zones,
    write_rows,
    zone_rollup_plan,
)
from connectors.lineprotocol import aggregate_point, alert_point
from connectors.retention import (
    ZONE_ROLLUP_FIELDS,
    RetentionSettings,
    ensure_schema,
    open_raw_sink,
    reading_points,
    sqlite_maintenance,
)
from connectors.store import SqliteStore
from streams.schema import Reading
from streams.settings import Settings

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_700_006_400_000  # 2023-11-15T00:00:00Z (midnight UTC)
SENSORS = {"s-a1": ("a", "traffic"), "s-a2": ("a", "traffic"), "s-b1": ("b", "environment"), "s-c1": ("c", "iot")}


def make(seed: int = 1, minutes: int = 150, t0: int = T0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    aggs, alerts = [], []
    for sensor, (zone, kind) in SENSORS.items():
        for i in range(minutes):
            if rng.random() < 0.1:
                continue
            vals = [rng.gauss(40, 10) for _ in range(rng.randint(1, 6))]
            agg = {
                "sensor_id": sensor,
                "kind": kind,
                "zone": zone,
                "metric": "m",
                "unit": "u",
                "window": "tumbling",
                "size_ms": MINUTE,
                "start_ms": t0 + i * MINUTE,
                "count": len(vals),
                "sum": math.fsum(vals),
                "mean": math.fsum(vals) / len(vals),
                "min": min(vals),
                "max": max(vals),
                "std": 1.0,
                "first": vals[0],
                "last": vals[-1],
            }
            if i % 2:
                agg["score"] = rng.random()
            aggs.append(agg)
            if agg["max"] > 62:
                alerts.append(
                    {
                        "alert_id": f"a-{sensor}-{i}",
                        "rule": "hi",
                        "severity": "warning",
                        "state": "raised",
                        "sensor_id": sensor,
                        "kind": kind,
                        "zone": zone,
                        "metric": "m",
                        "value": agg["max"],
                        "threshold": 62.0,
                        "ts_ms": agg["start_ms"] + MINUTE,
                        "latency_ms": 7,
                        "message": "m high",
                    }
                )
    return aggs, alerts


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    aggs, alerts = make()
    store = SqliteStore(tmp_path_factory.mktemp("hist") / "u.db")
    store.write_sync([aggregate_point(a) for a in reversed(aggs)] + [alert_point(a) for a in alerts])
    store.close_sync()
    return {
        "aggs": aggs,
        "alerts": alerts,
        "settings": Settings(store={"path": store.path}, influx={"url": ""}),
        "path": store.path,
    }


def ref_reduce(agg: str, values: list[Any]) -> Any:
    if agg.startswith("p"):
        return nearest_rank(values, int(agg[1:]))
    total: Any = 0 if isinstance(values[0], int) and agg == "sum" else 0.0
    for v in values:
        total += v
    return {"count": len(values), "min": min(values), "max": max(values), "sum": total, "mean": total / len(values)}[
        agg
    ]


# --- time and parameters ------------------------------------------------------------------------

NOW = T0 + 10 * HOUR + 123  # 2023-11-15T10:00:00.123Z


@pytest.mark.parametrize(
    ("text", "tz", "want"),
    [
        ("now", "UTC", NOW),
        ("90m", "UTC", NOW - 90 * MINUTE),
        ("-2h", "UTC", NOW - 2 * HOUR),
        ("now-7d", "UTC", NOW - 7 * DAY),
        ("today", "UTC", T0),
        ("today", "Asia/Shanghai", T0 - 8 * HOUR),  # 18:00 in Shanghai: its midnight is 16:00Z before
        ("yesterday", "Europe/Berlin", T0 - DAY - HOUR),
        ("2023-11-15T08:00", "Asia/Shanghai", T0),
        ("2023-11-15", "UTC", T0),
        ("2023-11-15T00:00:00Z", "Asia/Shanghai", T0),
        ("2023-11-15T08:00:00+08:00", "UTC", T0),
    ],
)
def test_parse_instant(text: str, tz: str, want: int) -> None:
    assert parse_instant(text, NOW, parse_tz(tz)) == want


@pytest.mark.parametrize("text", ["", "soon", "1w", "2023-13-01", "1.5h", "now+1h"])
def test_parse_instant_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="time"):
        parse_instant(text, NOW)


def test_parse_tz() -> None:
    assert parse_tz("Asia/Shanghai") == ZoneInfo("Asia/Shanghai")
    with pytest.raises(ValueError, match="IANA"):
        parse_tz("Mars/Olympus")


@pytest.mark.parametrize("n", range(1, 40))
@pytest.mark.parametrize("pct", [50, 90, 95, 99])
def test_nearest_rank_matches_influxql_formula(n: int, pct: int) -> None:
    values = list(range(n, 0, -1))
    i = int(math.floor(n * pct / 100 + 0.5)) - 1
    assert nearest_rank(values, pct) == (sorted(values)[i] if i >= 0 else None)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"metric": "m", "colour": "red"}, "colour: unknown parameter"),
        ({"metric": "M"}, "metric"),
        ({"metric": "m", "sensor": "a b"}, "sensor"),
        ({"metric": "m", "kind": "weather"}, "kind"),
        ({"metric": "m", "agg": "median"}, "agg"),
        ({"metric": "m", "since": "40d"}, "at most 31 days"),
        ({"metric": "m", "since": "500d", "every": "1d"}, "at most 400 days"),
        ({"metric": "m", "since": "30d", "every": "1m"}, "at most 10000 buckets"),
        ({"metric": "m", "limit": "20000"}, "limit: at most 10000"),
        ({"metric": "m", "since": "now", "until": "1h"}, "since < until"),
        ({"metric": "m", "tz": "Nowhere/Land"}, "time zone"),
        ({"metric": "m", "field": "zone"}, "field"),
        ({"metric": "m", "group_by": "zone"}, "group_by needs every_ms"),
    ],
)
def test_series_params_reject(params: dict[str, Any], needle: str) -> None:
    from pydantic import ValidationError

    from connectors.history import validation_message

    with pytest.raises((ValueError, ValidationError)) as info:
        SeriesParams(**params).to_query(NOW, Limits())
    text = validation_message(info.value) if isinstance(info.value, ValidationError) else str(info.value)
    assert needle in text


def test_params_build_queries() -> None:
    q = SeriesParams(metric="m", zone="a", since="2h", every="5m", agg="p95", group_by="sensor_id").to_query(NOW)
    assert (q.since_ms, q.until_ms, q.every_ms, q.agg, q.zone, q.limit) == (
        NOW - 2 * HOUR,
        NOW,
        300_000,
        "p95",
        "a",
        None,
    )
    assert SeriesParams(metric="m").to_query(NOW, Limits()).limit == 10_000
    t = TopParams(metric="m", n=3, since="today").to_query(NOW)
    assert (t.n, t.since_ms) == (3, T0)
    a = AlertParams(zone="a", evidence="0s").to_query(NOW)
    assert a.evidence_ms == 0 and a.zone == "a"


# --- series -------------------------------------------------------------------------------------


def test_zone_rows_are_per_sensor_then_time(data: dict[str, Any]) -> None:
    rows = query_history(
        data["settings"], HistoryQuery(None, "m", T0, T0 + DAY, zone="a", columns=("count", "mean", "score"))
    )
    want = sorted((a for a in data["aggs"] if a["zone"] == "a"), key=lambda a: (a["sensor_id"], a["start_ms"]))
    assert [(r["sensor_id"], r["time_ms"], r["count"], r["mean"], r["score"]) for r in rows] == [
        (a["sensor_id"], a["start_ms"], a["count"], a["mean"], a.get("score")) for a in want
    ]


@pytest.mark.parametrize("agg", ["mean", "min", "max", "sum", "count", "p50", "p95", "p99"])
@pytest.mark.parametrize("group_by", [None, "sensor_id", "zone", "kind"])
def test_buckets_match_reference(data: dict[str, Any], agg: str, group_by: str | None) -> None:
    every, since, until = 7 * MINUTE, T0 + 5 * MINUTE, T0 + 140 * MINUTE
    field = "count" if agg == "sum" else "mean"
    q = HistoryQuery(None, "m", since, until, every_ms=every, agg=agg, field=field, group_by=group_by)  # type: ignore[arg-type]
    ref: dict[tuple[str, int], list[Any]] = {}
    for a in sorted(data["aggs"], key=lambda a: (a["start_ms"], a["sensor_id"])):
        if since <= a["start_ms"] < until:
            key = (a[group_by] if group_by else "", a["start_ms"] // every * every)
            ref.setdefault(key, []).append(a[field])
    want = []
    for (g, t), vs in sorted(ref.items()):
        value = ref_reduce(agg, vs)
        if value is not None:
            want.append({"time_ms": t, **({group_by: g} if group_by else {}), "value": value})
    got = query_history(data["settings"], q)
    assert len(got) == len(want)
    for r, w in zip(got, want, strict=True):
        assert r.keys() == w.keys() and r["time_ms"] == w["time_ms"]
        assert r["value"] == pytest.approx(w["value"], rel=1e-12)
        assert type(r["value"]) is (int if agg == "count" or field == "count" else float)


def test_filters_limit_and_streaming(data: dict[str, Any]) -> None:
    s = data["settings"]
    kinds = {r["sensor_id"] for r in iter_series(s, HistoryQuery(None, "m", T0, T0 + DAY, kind="environment"))}
    assert kinds == {"s-b1"}
    assert query_history(s, HistoryQuery(None, "m", T0, T0 + DAY, window_size_ms=300_000)) == []
    assert len(query_history(s, HistoryQuery(None, "m", T0, T0 + DAY, window_size_ms=MINUTE))) == len(data["aggs"])
    it = iter_series(s, HistoryQuery(None, "m", T0, T0 + DAY, limit=5))
    assert len(list(it)) == 5
    assert query_history(s, HistoryQuery("nobody", "m", T0, T0 + DAY)) == []


def test_top_zones(data: dict[str, Any]) -> None:
    for agg in ("mean", "max", "count", "p95"):
        got = top_zones(data["settings"], TopQuery("m", T0, T0 + DAY, n=2, agg=agg))  # type: ignore[arg-type]
        per_zone: dict[str, list[float]] = {}
        for a in sorted(data["aggs"], key=lambda a: (a["zone"], a["start_ms"])):
            per_zone.setdefault(a["zone"], []).append(a["mean"])
        ranked = sorted(((ref_reduce(agg, v), z) for z, v in per_zone.items()), key=lambda x: (-x[0], x[1]))[:2]
        assert [(r["rank"], r["zone"]) for r in got] == [(1, ranked[0][1]), (2, ranked[1][1])]
        assert [r["value"] for r in got] == pytest.approx([v for v, _ in ranked], rel=1e-12)


def test_alerts_with_evidence(data: dict[str, Any]) -> None:
    got = list(iter_alerts(data["settings"], AlertQuery(T0, T0 + DAY, zone="a", evidence_ms=3 * MINUTE)))
    want = sorted((a for a in data["alerts"] if a["zone"] == "a"), key=lambda a: (a["ts_ms"], a["alert_id"]))
    assert [(r["alert_id"], r["time_ms"], r["value"]) for r in got] == [
        (a["alert_id"], a["ts_ms"], a["value"]) for a in want
    ]
    for r in got:
        ev = r["evidence"]
        assert 1 <= len(ev) <= 3 and ev[-1]["time_ms"] == r["time_ms"] - MINUTE and ev[-1]["max"] == r["value"]
        assert all(r["time_ms"] - 3 * MINUTE <= w["time_ms"] < r["time_ms"] for w in ev)
    assert list(iter_alerts(data["settings"], AlertQuery(T0, T0 + DAY, severity="critical"))) == []
    assert len(list(iter_alerts(data["settings"], AlertQuery(T0, T0 + DAY, limit=2)))) == 2


# --- output and CLI -----------------------------------------------------------------------------


def test_write_rows_formats_and_streams() -> None:
    rows = [{"time_ms": 0, "value": 1.5}, {"time_ms": 60_000, "value": None}]
    out = io.StringIO()
    assert write_rows(iter(rows), "ndjson", out, ZoneInfo("Asia/Shanghai")) == 2
    first = orjson.loads(out.getvalue().splitlines()[0])
    assert first == {"time": "1970-01-01T08:00:00.000+08:00", "time_ms": 0, "value": 1.5}
    out = io.StringIO()
    write_rows(iter(rows), "json", out)
    assert [r["time"] for r in orjson.loads(out.getvalue())] == ["1970-01-01T00:00:00.000Z", "1970-01-01T00:01:00.000Z"]
    out = io.StringIO()
    write_rows(iter(rows), "csv", out)
    assert out.getvalue().splitlines() == [
        "time,time_ms,value",
        "1970-01-01T00:00:00.000Z,0,1.5",
        "1970-01-01T00:01:00.000Z,60000,",
    ]
    out = io.StringIO()
    assert write_rows(iter(rows * 3), "table", out, table_sample=1) == 6  # rows past the sample still print
    assert len(out.getvalue().splitlines()) == 8
    out = io.StringIO()
    alert = {"time_ms": 0, "alert_id": "x", "evidence": [{"min": 1.0, "max": 3.0}, {"min": 0.5, "max": 2.0}]}
    write_rows([alert], "csv", out)
    assert out.getvalue().splitlines()[1] == "1970-01-01T00:00:00.000Z,0,x,2,0.5,3.0"
    assert write_rows([], "json", io.StringIO()) == 0
    with pytest.raises(ValueError, match="output format"):
        write_rows([], "xml", io.StringIO())  # type: ignore[arg-type]


def test_cli_series_top_alerts_and_errors(data: dict[str, Any]) -> None:
    s, now = data["settings"], T0 + 3 * HOUR

    def run(**kw: Any) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run_history_cli(s, out=out, err=err, now_ms=now, **kw)
        return code, out.getvalue(), err.getvalue()

    code, out, _ = run(zone="a", metric="m", since="3h", every="1h", agg="max", group_by="sensor_id", fmt="csv")
    assert code == 0 and out.splitlines()[0] == "time,time_ms,sensor_id,value" and len(out.splitlines()) == 7
    code, out, _ = run(top=2, metric="m", since="3h", fmt="json")
    assert code == 0 and [r["rank"] for r in orjson.loads(out)] == [1, 2]
    code, out, _ = run(alerts=True, zone="b", since="3h", fmt="ndjson", sensor=None)
    assert code == 0 and all(orjson.loads(line)["zone"] == "b" for line in out.splitlines())
    code, _, err = run(metric="m", colour="red")
    assert code == 2 and "colour: unknown parameter" in err
    code, _, err = run(metric="m", since="yesterday-ish")
    assert code == 2 and "time: expected" in err
    code, _, err = run(alerts=True, top=3)
    assert code == 2 and "one of --alerts and --top" in err


# --- schema, roll-ups and retention -------------------------------------------------------------


def test_sqlite_schema_rollups_and_retention(tmp_path: Path) -> None:
    aggs, alerts = make(seed=4, minutes=3 * 60)  # three hours
    path = tmp_path / "r.db"
    settings = Settings(store={"path": path}, influx={"url": ""})
    report = ensure_schema(settings)
    assert report.store == "sqlite"
    store = SqliteStore(path)
    store.write_sync([aggregate_point(a) for a in aggs] + [alert_point(a) for a in alerts])
    policy = RetentionSettings()
    done = sqlite_maintenance(path, policy, T0 + 2 * HOUR + 30 * MINUTE)  # hours 0 and 1 are complete
    assert done["rollup_1h_rows"] == 2 * len(SENSORS) and "rollup_1d_rows" not in done
    got = query_history(
        settings,
        HistoryQuery("s-b1", "m", T0, T0 + DAY, source="1h", columns=("count", "sum", "mean", "min", "max", "windows")),
    )
    for r in got:
        ws = [a for a in aggs if a["sensor_id"] == "s-b1" and r["time_ms"] <= a["start_ms"] < r["time_ms"] + HOUR]
        assert r["windows"] == len(ws) and r["count"] == sum(a["count"] for a in ws)
        assert r["min"] == min(a["min"] for a in ws) and r["max"] == max(a["max"] for a in ws)
        assert r["mean"] == ref_reduce("mean", [a["mean"] for a in ws])  # bit-identical to downsampling
        assert r["sum"] == ref_reduce("sum", [a["sum"] for a in ws])
    # a late window in hour 1 and the rest of the day: the next run re-covers the last two periods
    late = {**aggs[0], "start_ms": T0 + HOUR + 59 * MINUTE + 1, "count": 100, "max": 1000.0}
    store.write_sync([aggregate_point(late)])
    sqlite_maintenance(path, policy, T0 + DAY + 1)
    hour1 = query_history(settings, HistoryQuery(late["sensor_id"], "m", T0 + HOUR, T0 + 2 * HOUR, source="1h"))
    assert hour1[0]["max"] == 1000.0
    daily = query_history(settings, HistoryQuery(None, "m", T0, T0 + DAY, source="1d"))
    assert {r["sensor_id"] for r in daily} == set(SENSORS) and len(daily) == len(SENSORS)
    # retention: everything is older than 90 days at T0 + 100d, roll-ups stay
    done = sqlite_maintenance(path, policy, T0 + 100 * DAY)
    assert done["expired_window_agg"] == len(aggs) + 1 and done["expired_alert"] == len(alerts)
    assert done["expired_window_agg_1h"] == 0
    assert query_history(settings, HistoryQuery(None, "m", T0, T0 + DAY)) == []
    assert len(query_history(settings, HistoryQuery(None, "m", T0, T0 + DAY, source="1d"))) == len(SENSORS)
    done = sqlite_maintenance(path, RetentionSettings(rollups="30d"), T0 + 100 * DAY)
    assert done["expired_window_agg_1d"] == len(SENSORS)
    store.close_sync()


def test_raw_readings_are_optional_and_stored(tmp_path: Path) -> None:
    settings = Settings(store={"path": tmp_path / "raw.db"}, influx={"url": ""})
    assert open_raw_sink(settings) is None
    assert RetentionSettings(raw="12h").raw == timedelta(hours=12)
    object.__setattr__(settings, "retention", RetentionSettings(write_raw=True))
    sink = open_raw_sink(settings)
    assert isinstance(sink, SqliteStore)
    reading = Reading("s-1", "iot", "z", 1.0, 2.0, T0, {"t": 21.5, "rh": 40.0}, {"t": "C"})
    sink.write_sync(reading_points(reading))
    sink.write_sync(reading_points(reading))  # idempotent
    with sqlite3.connect(settings.store.path) as conn:
        rows = conn.execute("SELECT sensor_id, metric, unit, value, ts_ms FROM reading ORDER BY metric").fetchall()
    assert rows == [("s-1", "rh", "", 40.0, T0), ("s-1", "t", "C", 21.5, T0)]
    done = sqlite_maintenance(settings.store.path, RetentionSettings(), T0 + 8 * DAY)
    assert done["expired_reading"] == 2
    sink.close_sync()


def test_zone_queries_are_answered_from_the_zone_rollups(tmp_path: Path) -> None:
    aggs, _ = make(seed=5, minutes=4 * 60)
    path = tmp_path / "z.db"
    settings = Settings(store={"path": path}, influx={"url": ""})
    store = SqliteStore(path)
    store.write_sync([aggregate_point(a) for a in reversed(aggs)])
    done = sqlite_maintenance(path, RetentionSettings(), T0 + 4 * HOUR + 1)
    assert done["rollup_zone_5m_rows"] == 3 * 48 and done["rollup_zone_1h_rows"] == 3 * 4  # zones a, b, c
    stored = query_history(settings, HistoryQuery(None, "m", T0, T0 + DAY, zone="a", source="zone_1h",
                                                  columns=ZONE_ROLLUP_FIELDS))  # fmt: skip
    for r in stored:
        ws = [a for a in aggs if a["zone"] == "a" and r["time_ms"] <= a["start_ms"] < r["time_ms"] + HOUR]
        ws.sort(key=lambda a: (a["start_ms"], a["sensor_id"]))
        assert r["windows"] == len(ws) and r["count"] == sum(a["count"] for a in ws)
        assert r["p95"] == nearest_rank([a["mean"] for a in ws], 95) and r["mean"] == ref_reduce("mean", [
            a["mean"] for a in ws])  # fmt: skip
    for every in (5 * MINUTE, HOUR):
        for agg, field in ZONE_ROLLUP_ANSWERS:
            q = HistoryQuery(None, "m", T0 + 3 * MINUTE, T0 + 4 * HOUR - MINUTE, every_ms=every, agg=agg, field=field,
                             zone="a")  # type: ignore[arg-type]  # fmt: skip
            plan = zone_rollup_plan(q)
            assert plan is not None and plan.since_ms == T0 + every and plan.until_ms == T0 + 4 * HOUR - every
            got = query_history(settings, q)
            assert len(got) == 4 * HOUR // every
            assert got == query_history(settings, HistoryQuery(**{**q.__dict__, "rollups": False}))  # to the bit
    # other filters, buckets and aggregates read the windows
    for extra in ({"kind": "traffic"}, {"group_by": "sensor_id"}, {"every_ms": 10 * MINUTE}, {"agg": "min"}):
        q = HistoryQuery(**{"sensor_id": None, "metric": "m", "since_ms": T0, "until_ms": T0 + HOUR, "zone": "a",
                            "every_ms": 5 * MINUTE, "agg": "p95", **extra})  # fmt: skip
        assert zone_rollup_plan(q) is None
    # whole, final periods come from the roll-up; the last hour before its newest period, from the windows
    q = HistoryQuery(None, "m", T0, T0 + 4 * HOUR, every_ms=5 * MINUTE, agg="p95", zone="a")
    before = query_history(settings, q)
    with sqlite3.connect(path) as conn:
        conn.execute('UPDATE "window_agg_zone_5m" SET "p95" = -1.0 WHERE "zone" = ? AND "start_ms" IN (?, ?)',
                     ("a", T0 + HOUR, T0 + 3 * HOUR))  # fmt: skip
    late = {**aggs[0], "zone": "a", "sensor_id": "s-late", "start_ms": T0 + 3 * HOUR + 30 * MINUTE, "mean": 999.0}
    store.write_sync([aggregate_point(late)])  # after the roll-up ran, inside its resample span
    got = {r["time_ms"]: r["value"] for r in query_history(settings, q)}
    assert got[T0 + HOUR] == -1.0  # read from the roll-up
    assert got[T0 + 3 * HOUR] == before[36]["value"]  # read from the windows
    assert got[T0 + 3 * HOUR + 30 * MINUTE] == 999.0
    windows = {r["time_ms"]: r["value"] for r in query_history(settings, HistoryQuery(**{**q.__dict__,
                                                                                       "rollups": False}))}
    assert windows[T0 + HOUR] == before[12]["value"] and {**windows, T0 + HOUR: -1.0} == got
    # the direct source needs a zone and nothing finer
    with pytest.raises(ValueError, match="per zone and metric"):
        HistoryQuery(None, "m", T0, T0 + HOUR, source="zone_5m")
    with pytest.raises(ValueError, match="per zone and metric"):
        HistoryQuery("s-a1", "m", T0, T0 + HOUR, zone="a", source="zone_5m")
    store.close_sync()
