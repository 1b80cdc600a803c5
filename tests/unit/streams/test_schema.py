from __future__ import annotations

import gc

import orjson
import pytest

from streams.errors import InvalidReading
from streams.schema import encode_reading, format_ts, parse_batch, parse_reading, parse_ts

NOW = 1_800_000_000_000


def good(**over: object) -> dict:
    doc = orjson.loads(
        encode_reading(
            sensor_id="env-futian-0001",
            kind="environment",
            zone="futian",
            lat=22.54,
            lon=114.05,
            ts_ms=NOW - 5000,
            metrics={"pm25": (35.5, "ug/m3")},
        )
    )
    doc.update(over)
    return doc


def test_valid_reading_round_trips() -> None:
    r = parse_reading(orjson.dumps(good(quality=["calibrating"])), now_ms=NOW)
    assert (r.sensor_id, r.kind, r.zone, r.ts_ms) == ("env-futian-0001", "environment", "futian", NOW - 5000)
    assert r.metrics == {"pm25": 35.5} and r.units == {"pm25": "ug/m3"} and r.quality == ("calibrating",)
    assert parse_reading(r.to_json(), now_ms=NOW) == r


@pytest.mark.parametrize(
    ("payload", "reason", "needle"),
    [
        (b"{not json", "bad_json", "not valid UTF-8 JSON"),
        (b"\xff\xfe{}", "bad_json", "UTF-8"),
        (b"[1,2]", "wrong_type", "JSON object"),
        (orjson.dumps({k: v for k, v in good().items() if k != "zone"}), "missing_field", "'zone'"),
        (orjson.dumps(good(extra=1)), "unknown_field", "extra"),
        (orjson.dumps(good(v=2)), "bad_version", "'v'"),
        (orjson.dumps(good(kind="weather")), "bad_kind", "weather"),
        (orjson.dumps(good(sensor_id="<script>")), "bad_id", "sensor_id"),
        (orjson.dumps(good(ts="2026-01-01T00:00:00")), "bad_timestamp", "UTC"),
        (orjson.dumps(good(ts="1970-01-01T00:00:00Z")), "bad_timestamp", "outside"),
        (orjson.dumps(good(ts=format_ts(NOW + 2 * 86_400_000))), "bad_timestamp", "outside"),
        (orjson.dumps(good(ts=1234)), "wrong_type", "'ts'"),
        (orjson.dumps(good(metrics={})), "wrong_type", "non-empty"),
        (orjson.dumps(good(metrics={"pm25": {"value": "high", "unit": "x"}})), "wrong_type", "pm25"),
        (orjson.dumps(good(metrics={"pm25": {"value": True, "unit": "x"}})), "wrong_type", "pm25"),
        (orjson.dumps(good(metrics={"pm25": {"value": 1e300, "unit": "x"}})), "out_of_range", "pm25"),
        (orjson.dumps(good(metrics={"PM25": {"value": 1, "unit": "x"}})), "bad_metric", "PM25"),
        (orjson.dumps(good(location={"lat": 91, "lon": 0})), "out_of_range", "location"),
        (orjson.dumps(good()).replace(b"35.5", b"NaN"), "bad_json", ""),
        (orjson.dumps(good()).replace(b"35.5", b"Infinity"), "bad_json", ""),
        (orjson.dumps(good()).replace(b"35.5", b"1e999"), "bad_json", ""),
        (b" " * 70_000, "oversize", "70000 bytes"),
    ],
)
def test_invalid_readings_name_the_problem(payload: bytes, reason: str, needle: str) -> None:
    with pytest.raises(InvalidReading) as info:
        parse_reading(payload, now_ms=NOW)
    assert info.value.reason == reason
    assert needle in str(info.value)


def test_error_names_the_sensor() -> None:
    with pytest.raises(InvalidReading, match="sensor_id=env-futian-0001"):
        parse_reading(orjson.dumps(good(kind="weather")), now_ms=NOW)


@pytest.mark.parametrize("ts_ms", [0, 1, 999, 1_700_000_000_123, 253_402_300_799_999])
def test_timestamps_round_trip_exactly(ts_ms: int) -> None:
    assert parse_ts(format_ts(ts_ms), "x") == ts_ms


def test_sub_millisecond_digits_truncate() -> None:
    assert parse_ts("2026-11-29T08:00:00.1239Z", "x") % 1000 == 123
    assert parse_ts("2026-11-29T08:00:00+00:00", "x") % 1000 == 0


def test_dead_letters_leave_no_cyclic_garbage() -> None:
    """A rejected message's error keeps no traceback: the batch is freed by reference counting."""
    batch = [b"{", orjson.dumps(good(kind="weather")), b"[]", orjson.dumps(good(ts="2026-11-29T08:00:00.000")),
             orjson.dumps(good())]
    gc.collect()
    gc.disable()
    try:
        rows, errors = parse_batch(batch, now_ms=NOW)
        assert [(i, e.reason) for i, e in errors] == [(0, "bad_json"), (1, "bad_kind"), (2, "wrong_type"),
                                                      (3, "bad_timestamp")]
        assert len(rows) == 1
        del rows, errors
        assert gc.collect() == 0
    finally:
        gc.enable()
