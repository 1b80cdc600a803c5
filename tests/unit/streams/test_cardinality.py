"""Pipeline cardinality guard: new sensor ids beyond the per-partition limit are dead-lettered, one alert."""

from __future__ import annotations

import logging
import tracemalloc

import pytest

from streams.engine import WindowSpec
from streams.pipeline import Pipeline, Record
from streams.schema import encode_reading

NOW = 1_800_000_000_000


def reading(sid: str, ts_ms: int = NOW - 60_000) -> bytes:
    return encode_reading(sensor_id=sid, kind="iot", zone="futian", lat=22.5, lon=114.0, ts_ms=ts_ms,
                          metrics={"power_kw": (1.0, "kW")})


def test_limit_dead_letters_new_ids_and_alerts_once() -> None:
    p = Pipeline(WindowSpec(60_000, 5_000), (), max_sensors_per_partition=10)
    recs = [Record(0, i, reading(f"s{i}")) for i in range(25)]
    out = p.process(recs, NOW)
    reasons = [dl.reason for dl in out.dead_letters]
    assert reasons == ["cardinality_limit"] * 15
    assert len(out.alerts) == 1
    alert = out.alerts[0]
    assert alert["rule"] == "cardinality_limit" and alert["category"] == "maintenance"
    assert alert["threshold"] == 10.0 and alert["alert_id"].startswith("a-")
    assert p.counters.cardinality_limited == 15 and p.counters.dead_letters == 15
    assert len(p.partitions[0].sensors) == 10
    # Known ids keep flowing; further new ids are refused without a second alert.
    out2 = p.process([Record(0, 100, reading("s3", NOW - 50_000)), Record(0, 101, reading("new-1"))], NOW)
    assert [dl.reason for dl in out2.dead_letters] == ["cardinality_limit"] and not out2.alerts
    assert p.counters.readings_counted == 11
    # The limit is per partition.
    out3 = p.process([Record(1, 0, reading("s20"))], NOW)
    assert not out3.dead_letters


def test_no_limit_by_default() -> None:
    p = Pipeline(WindowSpec(60_000, 5_000), ())
    out = p.process([Record(0, i, reading(f"s{i}")) for i in range(50)], NOW)
    assert not out.dead_letters and p.counters.readings_counted == 50


def test_flood_of_new_ids_keeps_memory_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="streams.pipeline")  # captured WARNING records would be the growth
    p = Pipeline(WindowSpec(60_000, 5_000), (), max_sensors_per_partition=100)
    p.process([Record(0, i, reading(f"warm{i}")) for i in range(100)], NOW)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    off = 1000
    for _ in range(5):
        p.process([Record(0, off + i, reading(f"flood{off + i}")) for i in range(1000)], NOW)
        off += 1000
    cur, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(p.partitions[0].sensors) == 100
    assert p.counters.cardinality_limited == 5_000
    assert cur - base < 2_000_000, f"memory grew by {cur - base} bytes for 5k rejected ids"
