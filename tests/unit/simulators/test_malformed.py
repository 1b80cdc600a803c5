from __future__ import annotations

import re
from collections import Counter

import orjson
import pytest

from simulators.malformed import CASES, malformed_corpus
from streams.errors import InvalidReading
from streams.schema import MAX_PAYLOAD_BYTES, parse_reading

NOW_MS = 1_780_243_200_000  # 2026-05-31T16:00:00Z
TOPIC_RE = re.compile(
    r"city/(traffic|environment|crowd|iot)/(futian|luohu|nanshan|baoan|longgang|longhua)"
    r"/[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}"
)
REQUIRED_CASES = {
    "bad_json",
    "invalid_utf8",
    "truncated_json",
    "missing_field",
    "wrong_type",
    "non_finite_literal",
    "timestamp_1970",
    "timestamp_2100",
    "oversize",
    "unknown_kind",
    "unknown_field",
    "bad_sensor_id",
    "non_object",
}


def reason_of(payload: bytes, now_ms: int = NOW_MS) -> str:
    try:
        parse_reading(payload, now_ms=now_ms)
    except InvalidReading as exc:
        return exc.reason
    return "<valid>"


def by_case(n_per_case: int, seed: int = 1) -> dict[str, list[tuple[str, bytes, str]]]:
    out: dict[str, list[tuple[str, bytes, str]]] = {c: [] for c in CASES}
    for i, item in enumerate(malformed_corpus(n_per_case * len(CASES), seed=seed, now_ms=NOW_MS)):
        out[CASES[i % len(CASES)]].append(item)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 99])
def test_every_expected_reason_is_what_parse_reading_raises(seed: int) -> None:
    corpus = malformed_corpus(20 * len(CASES), seed=seed, now_ms=NOW_MS)
    mismatches = [
        (i, CASES[i % len(CASES)], r, reason_of(p))
        for i, (_, p, r) in enumerate(corpus)
        if reason_of(p) != r
    ]
    assert mismatches == []


def test_covers_the_required_cases_and_reasons() -> None:
    assert REQUIRED_CASES <= set(CASES)
    reasons = Counter(r for _, _, r in malformed_corpus(len(CASES), seed=1, now_ms=NOW_MS))
    assert {
        "bad_json",
        "missing_field",
        "wrong_type",
        "bad_timestamp",
        "oversize",
        "bad_kind",
        "unknown_field",
        "bad_id",
    } <= set(reasons)


def test_topics_are_well_formed() -> None:
    for topic, _, _ in malformed_corpus(10 * len(CASES), seed=3, now_ms=NOW_MS):
        assert TOPIC_RE.fullmatch(topic), topic


def test_seeded() -> None:
    a = malformed_corpus(3 * len(CASES), seed=5, now_ms=NOW_MS)
    assert a == malformed_corpus(3 * len(CASES), seed=5, now_ms=NOW_MS)
    assert a != malformed_corpus(3 * len(CASES), seed=6, now_ms=NOW_MS)


def test_case_specifics() -> None:
    cases = by_case(30)
    for _, p, _ in cases["invalid_utf8"]:
        with pytest.raises(UnicodeDecodeError):
            p.decode("utf-8")
    for _, p, _ in cases["oversize"]:
        assert len(p) > MAX_PAYLOAD_BYTES
    literals = {
        lit
        for _, p, _ in cases["non_finite_literal"]
        for lit in (b"NaN", b"Infinity", b"1e999")
        if lit in p
    }
    assert literals == {b"NaN", b"Infinity", b"1e999"}
    for _, p, _ in cases["timestamp_1970"]:
        assert orjson.loads(p)["ts"].startswith("1970-")
    for _, p, _ in cases["timestamp_2100"]:
        assert orjson.loads(p)["ts"].startswith("2100-")
    for _, p, _ in cases["non_object"]:
        assert not isinstance(orjson.loads(p), dict)
    for _, p, _ in cases["truncated_json"]:
        assert p.startswith(b"{")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(p)


def test_hostile_ids_are_in_payloads_not_topics() -> None:
    items = by_case(200)["bad_sensor_id"]
    payloads = b"".join(p for _, p, _ in items)
    assert b"../../etc" in payloads
    assert b"<script>" in payloads
    for topic, _, _ in items:
        assert TOPIC_RE.fullmatch(topic)
        assert "<" not in topic and ".." not in topic


def test_sizes_and_arguments() -> None:
    assert malformed_corpus(0, seed=1, now_ms=NOW_MS) == []
    assert len(malformed_corpus(7, seed=1, now_ms=NOW_MS)) == 7
    with pytest.raises(ValueError, match="n >= 0"):
        malformed_corpus(-1, seed=1, now_ms=NOW_MS)
    with pytest.raises(ValueError, match="now_ms"):
        malformed_corpus(1, seed=1, now_ms=0)
