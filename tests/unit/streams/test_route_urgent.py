"""The router takes a close's urgent frames first, without letting a sensor's windows overtake each other."""

from __future__ import annotations

import orjson

from streams.alert_agents import URGENT_HEADER, URGENT_HEADERS, decode_routed, is_urgent
from streams.frames import encode_frame

URGENT = URGENT_HEADERS


def frame(*aggs: dict[str, object]) -> bytes:
    return encode_frame([orjson.dumps(a) for a in aggs])


def test_urgent_frames_come_first_with_their_source_and_ends() -> None:
    records = [
        (0, None, frame({"sensor_id": "a", "end_ms": 60}, {"sensor_id": "b", "end_ms": 60})),
        (1, URGENT, frame({"sensor_id": "c", "end_ms": 120})),
        (1, [("other", b"x")], frame({"sensor_id": "d", "end_ms": 120})),
        (2, URGENT, orjson.dumps({"sensor_id": "e", "end_ms": 120})),  # one aggregate, not a frame
    ]
    first, rest, ends = decode_routed(records)
    assert [(s, a["sensor_id"]) for s, a in first] == [(1, "c"), (2, "e")]
    assert [(s, a["sensor_id"]) for s, a in rest] == [(0, "a"), (0, "b"), (1, "d")]
    assert ends == {0: 60, 1: 120, 2: 120}


def test_an_urgent_frame_behind_another_of_its_partition_keeps_its_place() -> None:
    # partition 0 still delivers the previous close's rest (window 60) when the next close's
    # urgent frame (window 120) comes: hoisted, sensor a's window 120 would reach the engine
    # before its window 60, which the engine would then drop as a duplicate
    records = [
        (0, None, frame({"sensor_id": "a", "end_ms": 60})),
        (0, URGENT, frame({"sensor_id": "a", "end_ms": 120})),
        (1, URGENT, frame({"sensor_id": "z", "end_ms": 120})),
    ]
    first, rest, _ = decode_routed(records)
    assert [(s, a["end_ms"]) for s, a in first] == [(1, 120)]
    assert [(s, a["end_ms"]) for s, a in rest] == [(0, 60), (0, 120)]


def test_headers_in_either_shape() -> None:
    assert is_urgent([(URGENT_HEADER, b"1")]) and is_urgent({URGENT_HEADER: b"1"})
    assert not is_urgent(None) and not is_urgent([]) and not is_urgent([("urban.late.by_ms", b"5")])
