"""The performance fast paths give exactly what the straightforward code gives.

* ``parse_reading`` (memoised checks for the canonical envelope) against ``_parse_full`` (every
  check, in order): equal readings, or the same reason and message.
* ``PartitionWindows.sensor_states`` (one numpy pass per store) against ``sensor_state`` per sensor.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulators import build_city, generate, malformed_corpus
from streams.engine import PartitionWindows, WindowDef, WindowSpec
from streams.errors import InvalidReading
from streams.schema import MAX_PAYLOAD_BYTES, _parse_full, encode_reading, parse_reading

NOW = 1_800_000_000_000


def outcome(fn: object, raw: bytes) -> object:
    try:
        r = fn(raw, now_ms=NOW, max_bytes=MAX_PAYLOAD_BYTES)  # type: ignore[operator]
    except InvalidReading as err:
        return ("error", err.reason, str(err))
    return ("ok", r, repr(r))


def assert_same(raw: bytes) -> None:
    assert outcome(parse_reading, raw) == outcome(_parse_full, raw), raw


def city_payloads(n_sensors: int = 48, steps: int = 3) -> list[bytes]:
    city = build_city(n_sensors, seed=4)
    out: list[bytes] = []
    for batch in generate(city, start_ms=NOW - 600_000, interval_ms=1000, steps=steps, seed=5):
        out.extend(p for _, p in batch.to_messages())
    return out


def test_generated_readings_equal() -> None:
    for raw in city_payloads():
        assert_same(raw)


def test_malformed_corpus_same_errors() -> None:
    for _, raw, _reason in malformed_corpus(400, seed=3, now_ms=NOW):
        assert_same(raw)


BASE = orjson.loads(
    encode_reading(
        sensor_id="env-futian-0001", kind="environment", zone="futian", lat=22.5, lon=114.0, ts_ms=NOW - 1000,
        metrics={"pm25": (12.5, "ug/m3"), "no2": (40, "ppb")}, quality=("calibrating",),
    )
)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("v",), 1.0), (("v",), True), (("v",), 2), (("sensor_id",), "bad id"), (("sensor_id",), 7),
        (("kind",), "bus"), (("zone",), ""), (("location", "lat"), 91), (("location", "lat"), True),
        (("location", "lon"), 10**15 + 1), (("location", "lon"), 1e16), (("ts",), "2027-01-15T08:00:00Z"),
        (("ts",), "2027-01-15T08:00:00.123+00:00"), (("ts",), "2027-01-15T08:00:00.12\u0663Z"),
        (("ts",), "2027-02-30T08:00:00.000Z"), (("ts",), "1999-12-31T23:59:59.999Z"),
        (("ts",), "2027-01-15 08:00:00.000Z"), (("ts",), "2099-01-15T08:00:00.000Z"),
        (("metrics", "pm25", "value"), -0.0), (("metrics", "pm25", "value"), 10**15),
        (("metrics", "pm25", "value"), "3"), (("metrics", "pm25", "unit"), "a,b"),
        (("metrics", "pm25", "unit"), 5), (("metrics", "pm25", "extra"), 1), (("metrics", "Bad"), {"value": 1}),
        (("metrics", "x"), {"value": 1}), (("metrics", "y"), {"unit": "m"}), (("quality",), ["ok", "Bad"]),
        (("quality",), []), (("quality",), "calibrating"), (("location", "alt"), 3), (("extra",), 1),
    ],
)
def test_mutations_same_outcome(path: tuple[str, ...], value: object) -> None:
    doc = orjson.loads(orjson.dumps(BASE))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert_same(orjson.dumps(doc))


INT64 = st.integers(-(2**63), 2**63 - 1)
SCALARS = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=30)
FIELDS = st.sampled_from(["v", "sensor_id", "kind", "zone", "location", "ts", "metrics", "quality"])


@given(st.dictionaries(FIELDS, SCALARS))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_overrides_same_outcome(overrides: dict[str, object]) -> None:
    assert_same(orjson.dumps({**BASE, **overrides}))


@pytest.mark.parametrize("extra", [(), (WindowDef.parse("hopping:5m/1m"),)])
def test_sensor_states_equal_per_sensor(extra: tuple[WindowDef, ...]) -> None:
    city = build_city(60, seed=2)
    readings = []
    for batch in generate(city, start_ms=NOW - 3_600_000, interval_ms=7_000, steps=60, seed=6):
        readings.extend(parse_reading(p, now_ms=NOW) for _, p in batch.to_messages())
    pw = PartitionWindows(WindowSpec(extra=extra), 3)
    for lo in range(0, len(readings), 97):
        chunk = readings[lo : lo + 97]
        pw.add_batch(chunk, list(range(lo, lo + len(chunk))), NOW)
        pw.close_ready()
        sids = sorted(pw.dirty)
        slow = {sid: pw.sensor_state(sid) for sid in sids}
        fast = pw.take_dirty()
        assert list(fast) == sids
        assert repr(fast) == repr(slow)
