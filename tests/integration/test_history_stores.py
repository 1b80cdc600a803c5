"""One data set in the real InfluxDB 1.6.7 and in the embedded store: every query type agrees.

The analysis schema (retention policies, continuous queries) is created on the real server
first, so the data lands in the ``urban_agg`` default RP the way a worker writes it.
"""

from __future__ import annotations

import asyncio
import io
import math
import random
import time
import uuid
from typing import Any

import pytest

from connectors.history import (
    ZONE_ROLLUP_ANSWERS,
    AlertQuery,
    HistoryQuery,
    TopQuery,
    iter_alerts,
    query_history,
    run_history_cli,
    top_zones,
    zone_rollup_plan,
)
from connectors.influx import InfluxV1Sink
from connectors.lineprotocol import Point, aggregate_point, alert_point
from connectors.retention import (
    RP_AGG,
    RP_ROLLUP,
    ZONE_ROLLUP_FIELDS,
    RetentionSettings,
    backfill,
    backfill_statement,
    ensure_schema,
    influxql_post,
    sqlite_maintenance,
)
from connectors.store import SqliteStore
from streams.settings import Settings
from tests.services import Service

pytestmark = pytest.mark.integration

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
NOW = time.time_ns() // 1_000_000
T0 = (NOW // DAY - 2) * DAY  # midnight two days ago: inside every retention policy
SPAN = 26 * 60  # windows per series: two calendar days are touched
ZONES = {"futian": ("env-f1", "env-f2", "trf-f1"), "nanshan": ("env-n1", "trf-n1"), "luohu": ("env-l1",)}


def dataset(seed: int = 3) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Window aggregates (some with a score, some silent minutes) and alerts."""
    rng = random.Random(seed)
    aggs, alerts = [], []
    for zone, sensors in ZONES.items():
        for sensor in sensors:
            kind = "traffic" if sensor.startswith("trf") else "environment"
            for metric in ("pm25", "speed"):
                base = rng.uniform(10, 90)
                for i in range(SPAN):
                    if rng.random() < 0.05:
                        continue
                    values = [rng.gauss(base, 9) for _ in range(rng.randint(1, 8))]
                    mean = math.fsum(values) / len(values)
                    agg = {
                        "sensor_id": sensor,
                        "kind": kind,
                        "zone": zone,
                        "metric": metric,
                        "unit": "u",
                        "window": "tumbling",
                        "size_ms": MINUTE,
                        "start_ms": T0 + i * MINUTE,
                        "count": len(values),
                        "sum": math.fsum(values),
                        "mean": mean,
                        "min": min(values),
                        "max": max(values),
                        "std": 0.0,
                        "first": values[0],
                        "last": values[-1],
                    }
                    if i % 3 == 0:
                        agg["score"] = rng.random()
                    aggs.append(agg)
                    if agg["max"] > base + 25 and metric == "pm25":
                        alerts.append(
                            {
                                "alert_id": f"a-{uuid.uuid4().hex[:12]}",
                                "rule": "pm25_high",
                                "severity": "warning",
                                "state": "raised",
                                "sensor_id": sensor,
                                "kind": kind,
                                "zone": zone,
                                "metric": metric,
                                "value": agg["max"],
                                "threshold": base + 25,
                                "ts_ms": agg["start_ms"] + MINUTE,
                                "latency_ms": rng.randint(100, 5000),
                                "message": f"{sensor} pm25 high",
                            }
                        )
    # two alerts at the same instant, one without a sensor (a zone rule): ties order by id
    alerts.append({**alerts[0], "alert_id": "a-0000zone", "sensor_id": None, "rule": "zone_high"})
    return aggs, alerts


@pytest.fixture(scope="module")
def stores(influxd: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    aggs, alerts = dataset()
    points: list[Point] = [aggregate_point(a) for a in aggs] + [alert_point(a) for a in alerts]
    database = f"hist_{uuid.uuid4().hex[:10]}"
    influx = Settings(influx={"url": f"http://127.0.0.1:{influxd.port}", "version": 1, "database": database})
    first = ensure_schema(influx)
    second = ensure_schema(influx)  # idempotent: alters, re-creates the CQs

    async def write() -> None:
        sink = InfluxV1Sink(influx.influx.url, database, batch_size=2000)
        try:
            await sink.write(points)
        finally:
            await sink.close()

    asyncio.run(write())
    for name in ("1h", "1d"):
        influxql_post(influx.influx, backfill_statement(name, T0, NOW))
    backfilled = backfill(influx.influx, ("zone_5m", "zone_1h"), T0, NOW)
    path = tmp_path_factory.mktemp("hist") / "urban.db"
    store = SqliteStore(path)
    store.write_sync(points)
    store.close_sync()
    sqlite = Settings(store={"path": path}, influx={"url": ""})
    done = sqlite_maintenance(path, RetentionSettings(), NOW)
    return {
        "aggs": aggs,
        "alerts": alerts,
        "influx": influx,
        "sqlite": sqlite,
        "schema": (first, second),
        "maintenance": done,
        "backfilled": backfilled,
    }


def same(a: list[dict[str, Any]], b: list[dict[str, Any]], exact: bool) -> None:
    assert [list(r) for r in a] == [list(r) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key, va in ra.items():
            vb = rb[key]
            if exact or not isinstance(va, float):
                assert va == vb and type(va) is type(vb), (key, ra, rb)
            else:
                assert va == pytest.approx(vb, rel=1e-12, abs=1e-12), (key, ra, rb)


def test_schema_on_the_real_server(stores: dict[str, Any]) -> None:
    cfg = stores["influx"].influx
    first, second = stores["schema"]
    assert first.store == "influxdb-v1" and len(first.actions) == 7 and len(second.actions) == 7
    assert any("CREATE RETENTION POLICY" in a for a in first.actions)
    assert all("CREATE RETENTION POLICY" not in a for a in second.actions)  # altered, not re-created
    [series] = influxql_post(cfg, "SHOW RETENTION POLICIES")[0]["series"]
    rps = {v[0]: dict(zip(series["columns"], v, strict=True)) for v in series["values"]}
    assert rps["urban_raw"]["duration"] == "168h0m0s"
    assert rps["urban_agg"]["duration"] == "2160h0m0s" and rps["urban_agg"]["default"] is True
    assert rps["urban_rollup"]["duration"] == "17520h0m0s"
    cqs = {
        v[0]: v[1]
        for s in influxql_post(cfg, "SHOW CONTINUOUS QUERIES")[0]["series"]
        if s["name"] == cfg.database
        for v in s.get("values", [])
    }
    assert set(cqs) == {"urban_rollup_1h", "urban_rollup_1d", "urban_rollup_zone_5m", "urban_rollup_zone_1h"}
    assert "RESAMPLE FOR 1h" in cqs["urban_rollup_zone_5m"] and "GROUP BY time(5m), zone, metric" in cqs[
        "urban_rollup_zone_5m"
    ].replace('"', "")
    assert "RESAMPLE FOR 2h" in cqs["urban_rollup_1h"] and f"INTO {cfg.database}.{RP_ROLLUP}.window_agg_1h" in cqs[
        "urban_rollup_1h"
    ].replace('"', "")
    assert f"FROM {cfg.database}.{RP_AGG}.window_agg" in cqs["urban_rollup_1d"].replace('"', "")


SERIES_FILTERS = [
    {"sensor_id": "env-f1"},
    {"sensor_id": None, "zone": "futian"},
    {"sensor_id": None, "zone": "futian", "group_by": "sensor_id"},
    {"sensor_id": None, "kind": "environment", "group_by": "zone"},
    {"sensor_id": None},
]


@pytest.mark.parametrize("filters", SERIES_FILTERS[:2] + SERIES_FILTERS[3:4])
def test_stored_rows_agree(stores: dict[str, Any], filters: dict[str, Any]) -> None:
    filters = {k: v for k, v in filters.items() if k != "group_by"}
    q = HistoryQuery(
        metric="pm25",
        since_ms=T0 + 7 * MINUTE,
        until_ms=T0 + 20 * HOUR,
        columns=("count", "mean", "min", "max", "score"),
        **filters,
    )
    got = query_history(stores["influx"], q)
    assert len(got) > 1000
    same(got, query_history(stores["sqlite"], q), exact=True)
    assert any(r["score"] is None for r in got) and any(r["score"] is not None for r in got)


@pytest.mark.parametrize("agg", ["mean", "min", "max", "sum", "count", "p50", "p95", "p99"])
@pytest.mark.parametrize("every", [5 * MINUTE, HOUR])
@pytest.mark.parametrize("filters", SERIES_FILTERS, ids=["sensor", "zone", "zone-by-sensor", "kind-by-zone", "city"])
def test_buckets_agree(stores: dict[str, Any], agg: str, every: int, filters: dict[str, Any]) -> None:
    field = "count" if agg == "sum" and every == HOUR else "mean"
    q = HistoryQuery(
        metric="pm25",
        since_ms=T0 + 3 * MINUTE + 1,
        until_ms=T0 + 25 * HOUR,
        every_ms=every,
        agg=agg,
        field=field,
        **filters,
    )  # type: ignore[arg-type]
    got = query_history(stores["influx"], q)
    assert got, q
    per_series = filters.get("sensor_id") is not None or filters.get("group_by") == "sensor_id"
    same(got, query_history(stores["sqlite"], q), exact=per_series or agg not in ("mean", "sum"))


@pytest.mark.parametrize("agg", ["mean", "max", "count", "p95"])
def test_top_zones_agree(stores: dict[str, Any], agg: str) -> None:
    q = TopQuery("pm25", T0, T0 + 2 * DAY, n=2, agg=agg)  # type: ignore[arg-type]
    got = top_zones(stores["influx"], q)
    assert [r["rank"] for r in got] == [1, 2]
    same(got, top_zones(stores["sqlite"], q), exact=agg != "mean")


def test_alerts_with_evidence_agree(stores: dict[str, Any]) -> None:
    q = AlertQuery(T0, T0 + 2 * DAY, zone="futian", evidence_ms=5 * MINUTE)
    got = list(iter_alerts(stores["influx"], q))
    want = sorted((a for a in stores["alerts"] if a["zone"] == "futian"), key=lambda a: (a["ts_ms"], a["alert_id"]))
    assert [r["alert_id"] for r in got] == [a["alert_id"] for a in want]
    assert got == list(iter_alerts(stores["sqlite"], q))
    zone_alert = next(r for r in got if r["alert_id"] == "a-0000zone")
    assert zone_alert["sensor_id"] == "" and {w["sensor_id"] for w in zone_alert["evidence"]} == set(ZONES["futian"])
    first = next(r for r in got if r["sensor_id"])
    assert 1 <= len(first["evidence"]) <= 5
    assert first["evidence"][-1]["max"] == first["value"]  # the window that raised it
    assert [r["alert_id"] for r in iter_alerts(stores["influx"], AlertQuery(T0, T0 + 2 * DAY, limit=3))] == [
        a["alert_id"] for a in sorted(stores["alerts"], key=lambda a: (a["ts_ms"], a["alert_id"]))[:3]
    ]


@pytest.mark.parametrize("source", ["1h", "1d"])
def test_rollups_agree_with_each_other_and_with_downsampling(stores: dict[str, Any], source: str) -> None:
    period = HOUR if source == "1h" else DAY
    rows = HistoryQuery(
        "env-n1",
        "pm25",
        T0,
        T0 + 2 * DAY,
        source=source,  # type: ignore[arg-type]
        columns=("count", "sum", "mean", "min", "max", "windows"),
    )
    got = query_history(stores["influx"], rows)
    assert len(got) == (26 if source == "1h" else 2)
    same(got, query_history(stores["sqlite"], rows), exact=True)
    # the roll-up's mean is the downsampled mean of the window means, to the bit
    live = query_history(stores["sqlite"], HistoryQuery("env-n1", "pm25", T0, T0 + 2 * DAY, every_ms=period))
    assert [(r["time_ms"], r["mean"]) for r in got] == [(r["time_ms"], r["value"]) for r in live]
    assert stores["maintenance"][f"rollup_{source}_rows"] > 0


def test_cli_prints_the_same_csv_from_both_stores(stores: dict[str, Any]) -> None:
    outputs = []
    for name in ("influx", "sqlite"):
        out, err = io.StringIO(), io.StringIO()
        code = run_history_cli(
            stores[name],
            out=out,
            err=err,
            now_ms=T0 + DAY,
            sensor="env-l1",
            metric="speed",
            since="1d",
            until="now",
            every="1h",
            agg="max",
            tz="Asia/Shanghai",
            fmt="csv",
        )
        assert code == 0, err.getvalue()
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1]
    lines = outputs[0].splitlines()
    assert lines[0] == "time,time_ms,value" and len(lines) == 25 and "+08:00," in lines[1]


def test_raw_readings_go_to_their_retention_policy(stores: dict[str, Any]) -> None:
    from connectors.retention import open_raw_sink, reading_points
    from streams.schema import Reading

    cfg = stores["influx"].influx
    settings = Settings(influx=cfg.model_dump() | {"password": None})
    assert open_raw_sink(settings) is None  # off by default
    object.__setattr__(settings, "retention", RetentionSettings(write_raw=True))
    sink = open_raw_sink(settings)
    assert sink is not None
    reading = Reading("env-f1", "environment", "futian", 22.5, 114.0, NOW - MINUTE, {"pm25": 41.5}, {"pm25": "ug/m3"})

    async def write() -> None:
        try:
            await sink.write(reading_points(reading))
        finally:
            await sink.close()

    asyncio.run(write())
    [series] = influxql_post(cfg, 'SELECT "value", "unit" FROM "urban_raw"."reading"')[0]["series"]
    assert series["values"] == [[NOW - MINUTE, 41.5, "ug/m3"]]


@pytest.mark.parametrize("every", [5 * MINUTE, HOUR])
def test_zone_rollups_agree_with_each_other_and_with_the_windows(stores: dict[str, Any], every: int) -> None:
    source = "zone_5m" if every == 5 * MINUTE else "zone_1h"
    assert stores["backfilled"] > 0 and stores["maintenance"][f"rollup_{source}_rows"] > 0
    rows = HistoryQuery(None, "pm25", T0, T0 + 2 * DAY, zone="futian", source=source, columns=ZONE_ROLLUP_FIELDS)  # type: ignore[arg-type]
    got = query_history(stores["influx"], rows)
    assert len(got) == 26 * HOUR // every
    want = query_history(stores["sqlite"], rows)
    same([{k: v for k, v in r.items() if k not in ("mean", "sum")} for r in got],
         [{k: v for k, v in r.items() if k not in ("mean", "sum")} for r in want], exact=True)  # fmt: skip
    same(got, want, exact=False)
    for agg, field in ZONE_ROLLUP_ANSWERS:
        q = HistoryQuery(None, "pm25", T0 + 3 * MINUTE, T0 + 2 * DAY, every_ms=every, agg=agg, field=field,
                         zone="futian")  # type: ignore[arg-type]  # fmt: skip
        assert zone_rollup_plan(q) is not None
        windows = HistoryQuery(**{**q.__dict__, "rollups": False})
        exact = (agg, field) not in (("mean", "mean"), ("sum", "sum"))
        for name in ("influx", "sqlite"):
            same(query_history(stores[name], q), query_history(stores[name], windows), exact=exact or name == "sqlite")
        same(query_history(stores["influx"], q), query_history(stores["sqlite"], q), exact=exact)
