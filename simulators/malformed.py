"""A seeded corpus of malformed messages, each with the reason the reading contract rejects it.

Every item is ``(mqtt_topic, payload, expected_reason)``: ``expected_reason`` is exactly the
:attr:`~streams.errors.InvalidReading.reason` that
``streams.schema.parse_reading(payload, now_ms=now_ms)`` raises. Topics are always well-formed
``city/<kind>/<zone>/<sensor_id>`` strings naming a real-looking sensor, even when the payload's
own id is hostile, so the corpus exercises payload validation rather than topic routing.

Item ``i`` belongs to case ``CASES[i % len(CASES)]``; any ``n >= len(CASES)`` covers every case.

>>> corpus = malformed_corpus(len(CASES), seed=1, now_ms=1_780_000_000_000)
>>> [reason for _, _, reason in corpus][:4]
['bad_json', 'bad_json', 'bad_json', 'missing_field']
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final

import orjson

from simulators.city import KIND_ORDER, KIND_PREFIX, METRICS, ZONES
from streams.schema import MAX_METRICS, MAX_PAYLOAD_BYTES, format_ts

__all__ = ["CASES", "malformed_corpus"]

_YEAR_2100_MS: Final = 4_102_444_800_000

#: Hostile or invalid sensor ids; the topic keeps a valid placeholder id instead.
HOSTILE_IDS: Final[tuple[Any, ...]] = (
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "'; DROP TABLE readings;--",
    "trf futian 1",
    "",
    "-leading-dash",
    "caf\u00e9-01",
    "x" * 129,
    "a/b/#",
    "$(reboot)",
    "id\u0000nul",
    123,
    None,
)


def _base(rng: random.Random, now_ms: int) -> tuple[str, dict[str, Any]]:
    """A valid reading (as a dict) and its topic."""
    kind = rng.choice(KIND_ORDER)
    zone = rng.choice(ZONES)
    sensor_id = f"{KIND_PREFIX[kind]}-{zone.zone_id}-{rng.randrange(10_000):04d}"
    doc: dict[str, Any] = {
        "v": 1,
        "sensor_id": sensor_id,
        "kind": kind,
        "zone": zone.zone_id,
        "location": {
            "lat": round(zone.lat + rng.uniform(-0.02, 0.02), 6),
            "lon": round(zone.lon + rng.uniform(-0.02, 0.02), 6),
        },
        "ts": format_ts(now_ms - rng.randrange(60_000)),
        "metrics": {
            m.name: {
                "value": round(rng.uniform(m.lo, min(m.hi, m.lo + 100.0)), m.decimals) + 0.0,
                "unit": m.unit,
            }
            for m in METRICS[kind]
        },
    }
    return f"city/{kind}/{zone.zone_id}/{sensor_id}", doc


def _dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def _first_metric(doc: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(iter(doc["metrics"].values()))
    return entry


def _bad_json(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    return rng.choice(
        [
            b"{not json",
            b"",
            b"   ",
            b'{"v":1,,"kind":"iot"}',
            b"{'v': 1}",
            b'{"v":1}}',
            _dumps(doc).replace(b'":', b'"=', 1),
            b"\x00\x01\x02\x03",
        ]
    )


def _invalid_utf8(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    raw = _dumps(doc)
    target = rng.choice([doc["sensor_id"].encode(), doc["zone"].encode(), b'"unit":"'])
    bad = rng.choice([b"\xff", b"\xfe\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])
    return raw.replace(target, target + bad, 1)


def _truncated(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    raw = _dumps(doc)
    # No proper prefix of a JSON object is itself valid JSON.
    return raw[: rng.randrange(1, len(raw))]


def _missing_field(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    del doc[rng.choice(["v", "sensor_id", "kind", "zone", "location", "ts", "metrics"])]
    return _dumps(doc)


def _wrong_type(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    variant = rng.randrange(7)
    if variant == 0:
        doc["location"] = "22.54,114.05"
    elif variant == 1:
        _first_metric(doc)["value"] = str(_first_metric(doc)["value"])
    elif variant == 2:
        doc["ts"] = now_ms
    elif variant == 3:
        doc["metrics"] = [1.0, 2.0]
    elif variant == 4:
        doc["metrics"] = {}
    elif variant == 5:
        doc["quality"] = "calibrating"
    else:
        _first_metric(doc)["value"] = rng.choice([True, None, [1.0], {"v": 1.0}])
    return _dumps(doc)


def _non_finite(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    # orjson refuses these literals (and numbers that overflow a double) as invalid JSON.
    literal = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"nan"])
    _first_metric(doc)["value"] = 0.123456789
    return _dumps(doc).replace(b"0.123456789", literal, 1)


def _ts_1970(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    doc["ts"] = format_ts(rng.randrange(0, 365 * 86_400_000))
    return _dumps(doc)


def _ts_2100(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    doc["ts"] = format_ts(_YEAR_2100_MS + rng.randrange(365 * 86_400_000))
    return _dumps(doc)


def _ts_garbled(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    doc["ts"] = rng.choice(
        [
            doc["ts"].replace("Z", "+08:00"),
            doc["ts"][:-1],
            "yesterday at noon Z",
            "2026-13-45T99:99:99.000Z",
        ]
    )
    return _dumps(doc)


def _oversize(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    size = MAX_PAYLOAD_BYTES + 1 + rng.randrange(4096)
    raw = _dumps(doc)
    if rng.random() < 0.5:
        return raw + b" " * (size - len(raw))  # valid JSON, just too big
    _first_metric(doc)["unit"] = "u" * size
    return _dumps(doc)


def _bad_kind(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    doc["kind"] = rng.choice(["weather", "Traffic", "", "traffic ", "iot;drop", 7, None])
    return _dumps(doc)


def _unknown_field(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    doc[rng.choice(["extra", "__proto__", "debug", "Sensor_id", "vv"])] = rng.choice(
        [1, "x", None, {}]
    )
    return _dumps(doc)


def _bad_id(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    field = rng.choice(["sensor_id", "sensor_id", "sensor_id", "zone"])
    doc[field] = rng.choice(HOSTILE_IDS)
    return _dumps(doc)


def _non_object(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    return _dumps(rng.choice([[doc], [1, 2, 3], "reading", 42, 3.5, None, True, []]))


def _bad_version(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    doc["v"] = rng.choice([0, 2, "1", True, 1.5])
    return _dumps(doc)


def _bad_metric(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    name = rng.choice(["PM2.5", "2fast", "speed-kmh", "", "a" * 65, "temp\u00e9"])
    doc["metrics"][name] = {"value": 1.0, "unit": ""}
    return _dumps(doc)


def _out_of_range(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    variant = rng.randrange(3)
    if variant == 0:
        doc["location"]["lat"] = rng.choice([90.5, -123.0])
    elif variant == 1:
        doc["location"]["lon"] = rng.choice([180.01, -400.0])
    else:
        _first_metric(doc)["value"] = rng.choice([1e16, -3.2e20])
    return _dumps(doc)


def _too_many_metrics(rng: random.Random, doc: dict[str, Any], now_ms: int) -> bytes:
    doc["metrics"] = {f"m{i}": {"value": float(i), "unit": ""} for i in range(MAX_METRICS + 1)}
    return _dumps(doc)


_Builder = Callable[[random.Random, dict[str, Any], int], bytes]

_CASES: Final[tuple[tuple[str, str, _Builder], ...]] = (
    ("bad_json", "bad_json", _bad_json),
    ("invalid_utf8", "bad_json", _invalid_utf8),
    ("truncated_json", "bad_json", _truncated),
    ("missing_field", "missing_field", _missing_field),
    ("wrong_type", "wrong_type", _wrong_type),
    ("non_finite_literal", "bad_json", _non_finite),
    ("timestamp_1970", "bad_timestamp", _ts_1970),
    ("timestamp_2100", "bad_timestamp", _ts_2100),
    ("timestamp_garbled", "bad_timestamp", _ts_garbled),
    ("oversize", "oversize", _oversize),
    ("unknown_kind", "bad_kind", _bad_kind),
    ("unknown_field", "unknown_field", _unknown_field),
    ("bad_sensor_id", "bad_id", _bad_id),
    ("non_object", "wrong_type", _non_object),
    ("bad_version", "bad_version", _bad_version),
    ("bad_metric_name", "bad_metric", _bad_metric),
    ("out_of_range", "out_of_range", _out_of_range),
    ("too_many_metrics", "too_many_metrics", _too_many_metrics),
)

#: Case names in corpus order; item ``i`` is case ``CASES[i % len(CASES)]``.
CASES: Final[tuple[str, ...]] = tuple(name for name, _, _ in _CASES)


def malformed_corpus(n: int, seed: int, now_ms: int) -> list[tuple[str, bytes, str]]:
    """Build ``n`` malformed messages.

    Args:
        n: number of items (>= 0); ``n >= len(CASES)`` covers every case.
        seed: the same seed (and ``now_ms``) gives identical items.
        now_ms: the ``now_ms`` the consumer will validate with (after 2000-01-01 and well
            before 2100); the valid parts of each item, including ``ts``, are built around it.

    Returns:
        ``(mqtt_topic, payload, expected_reason)`` per item.

    Raises:
        ValueError: ``n`` < 0 or ``now_ms`` outside the supported range.
    """
    if n < 0:
        msg = f"malformed_corpus: expected n >= 0, got {n}"
        raise ValueError(msg)
    if not (946_684_800_000 + 86_400_000 <= now_ms <= _YEAR_2100_MS - 86_400_000 * 2):
        msg = f"malformed_corpus: expected now_ms between 2000-01-02 and 2099-12-30, got {now_ms}"
        raise ValueError(msg)
    rng = random.Random(seed)
    items: list[tuple[str, bytes, str]] = []
    for i in range(n):
        _, reason, build = _CASES[i % len(_CASES)]
        topic, doc = _base(rng, now_ms)
        items.append((topic, build(rng, doc, now_ms), reason))
    return items
