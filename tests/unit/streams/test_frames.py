"""Framed readings (streams.frames): many readings in one Kafka record, each handled on its own."""

from __future__ import annotations

import pytest

from streams.engine import WindowSpec
from streams.frames import MAX_FRAME_READINGS, Framer, encode_frame, split_frame
from streams.pipeline import Pipeline, Record
from tests.unit.streams.test_pipeline import NOW, payload

SPEC = WindowSpec(60_000, 0, 0, 5_000)
BASE = NOW - 600_000


def readings(n: int, sensors: int = 3) -> list[bytes]:
    return [payload(f"s{i % sensors}", BASE + (i // sensors) * 5_000, float(i)) for i in range(n)]


def closed(p: Pipeline, *outs: object) -> dict[tuple[str, int], tuple[int, float, float]]:
    p.partitions[0].max_ts_ms += 10**9
    aggs = [a for o in (*outs, p.tick(NOW + 10**9)) for a in o.aggregates]  # type: ignore[attr-defined]
    return {(a["sensor_id"], a["start_ms"]): (a["count"], a["sum"], a["max"]) for a in aggs}


def test_a_framed_feed_windows_exactly_as_the_same_readings_one_per_record() -> None:
    feed = readings(120)
    single = Pipeline(SPEC, ())
    a = single.process([Record(0, i, r) for i, r in enumerate(feed)], NOW)
    framed = Pipeline(SPEC, ())
    frames = [encode_frame(feed[i:i + 25]) for i in range(0, len(feed), 25)]
    b = framed.process([Record(0, i, f) for i, f in enumerate(frames)], NOW)
    assert framed.counters.readings_in == single.counters.readings_in == 120
    assert framed.counters.readings_counted == 120 and framed.counters.duplicates == 0
    assert closed(framed, b) == closed(single, a)


def test_a_redelivered_frame_is_recognised_reading_by_reading() -> None:
    feed = readings(40, sensors=2)  # each frame holds several readings of the same sensor
    frames = [encode_frame(feed[i:i + 10]) for i in range(0, 40, 10)]
    a = Pipeline(SPEC, ())
    out = a.process([Record(0, i, f) for i, f in enumerate(frames[:3])], NOW)
    table = {k: v for _, k, v in [*out.state, *a.take_state()]}  # what the offset commit wrote
    b = Pipeline(SPEC, ())  # restarted from offset 1: frames 1 and 2 come again
    out2 = b.process([Record(0, i, f) for i, f in enumerate(frames) if i >= 1], NOW, table.items())
    assert b.counters.duplicates == 20 and b.counters.readings_counted == 10
    got = closed(b, out, out2)
    assert sum(c for c, _, _ in got.values()) == 40


def test_a_bad_reading_in_a_frame_is_dead_lettered_alone_with_its_bytes_and_index() -> None:
    feed = readings(5)
    frame = encode_frame([*feed[:2], b'{"sensor_id": "x"', *feed[2:]])
    p = Pipeline(SPEC, ())
    out = p.process([Record(0, 7, frame, None, "urban.readings.v1")], NOW)
    assert [d.reason for d in out.dead_letters] == ["bad_json"]
    assert out.dead_letters[0].value == b'{"sensor_id": "x"'
    assert dict(out.dead_letters[0].headers)["urban.dlq.source"] == b"kafka:urban.readings.v1/0@7#2"
    assert p.counters.readings_in == 6 and p.counters.readings_counted == 5


def test_a_frame_too_long_to_index_is_dead_lettered_whole() -> None:
    frame = encode_frame([b"{}"] * (MAX_FRAME_READINGS + 1))
    p = Pipeline(SPEC, ())
    out = p.process([Record(0, 3, frame, None, "t"), Record(0, 4, readings(1)[0], None, "t")], NOW)
    assert [d.reason for d in out.dead_letters] == ["frame_too_long"]
    assert out.dead_letters[0].value == frame
    assert p.counters.readings_counted == 1 and p.counters.dead_letters == 1


def test_split_keeps_bytes_and_tells_a_single_reading_apart() -> None:
    parts = [b'{"a":"x\\n"}', b"", b"\n"]
    assert split_frame(encode_frame(parts)) == parts
    assert split_frame(b'\n{"a":1}') == [b'\n{"a":1}']


def test_the_framer_keeps_each_partitions_order_and_bounds_frames() -> None:
    f = Framer(lambda key: int(key) % 3, 4)
    full = [g for i in range(20) if (g := f.add(str(i).encode(), str(i).encode())) is not None]
    rest = f.drain()
    groups = full + rest
    assert all(len(g) <= 4 for _, g in groups)
    for p in range(3):
        got = [int(x) for q, g in groups if q == p for x in g]
        assert got == [i for i in range(20) if i % 3 == p]
    with pytest.raises(ValueError, match="max_readings"):
        Framer(lambda key: 0, 0)


def test_bytes_that_only_start_like_a_frame_are_dead_lettered_whole() -> None:
    hostile = b"\x1e\x00garbage\x1eno line feeds"
    p = Pipeline(SPEC, ())
    out = p.process([Record(0, 5, hostile, None, "t")], NOW)
    assert [d.value for d in out.dead_letters] == [hostile]
    assert p.counters.readings_in == 1 and p.counters.dead_letters == 1
