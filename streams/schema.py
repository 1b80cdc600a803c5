"""The reading contract (envelope v1): strict, cheap validation of raw bytes.

A reading on the wire is one JSON object::

    {"v": 1, "sensor_id": "trf-futian-0001", "kind": "traffic", "zone": "futian",
     "location": {"lat": 22.5431, "lon": 114.0579},
     "ts": "2026-11-29T08:00:00.000Z",
     "metrics": {"speed": {"value": 42.5, "unit": "km/h"}},
     "quality": ["calibrating"]}

``quality`` is optional; every other field is required and no other field is allowed.
:func:`parse_reading` turns bytes into a :class:`Reading` or raises
:class:`~streams.errors.InvalidReading` naming what was wrong and where.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal, get_args

import orjson

from streams.errors import InvalidReading

SCHEMA_VERSION: Final = 1
Kind = Literal["traffic", "environment", "crowd", "iot"]
KINDS: Final[frozenset[str]] = frozenset(get_args(Kind))

MAX_PAYLOAD_BYTES: Final = 64 * 1024
MAX_METRICS: Final = 64
MAX_QUALITY_FLAGS: Final = 16
MAX_ABS_VALUE: Final = 1e15
#: Readings stamped before this instant are absurd (2000-01-01T00:00:00Z).
MIN_TS_MS: Final = 946_684_800_000
#: Readings stamped further than this into the future (relative to ``now_ms``) are absurd.
MAX_FUTURE_MS: Final = 24 * 3600 * 1000

_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_UNIT_RE: Final = re.compile(r"[^\x00-\x1f\",=\\]{0,32}")
_ALLOWED: Final = frozenset({"v", "sensor_id", "kind", "zone", "location", "ts", "metrics", "quality"})
_EPOCH: Final = datetime(1970, 1, 1)  # noqa: DTZ001 - naive on purpose, compared to naive UTC
_ZERO: Final = timedelta(0)
_REQUIRED: Final = ("v", "sensor_id", "kind", "zone", "location", "ts", "metrics")


@dataclass(frozen=True, slots=True)
class Reading:
    """One validated sensor reading. ``ts_ms`` is UTC epoch milliseconds."""

    sensor_id: str
    kind: str
    zone: str
    lat: float
    lon: float
    ts_ms: int
    metrics: dict[str, float]
    units: dict[str, str]
    quality: tuple[str, ...] = field(default=())

    def to_json(self) -> bytes:
        """Encode back to the v1 envelope (canonical key order, millisecond timestamp)."""
        return encode_reading(
            sensor_id=self.sensor_id,
            kind=self.kind,
            zone=self.zone,
            lat=self.lat,
            lon=self.lon,
            ts_ms=self.ts_ms,
            metrics={m: (v, self.units.get(m, "")) for m, v in self.metrics.items()},
            quality=self.quality,
        )


def format_ts(ts_ms: int) -> str:
    """Format epoch milliseconds as the envelope's RFC 3339 UTC string.

    >>> format_ts(0)
    '1970-01-01T00:00:00.000Z'
    """
    secs, ms = divmod(ts_ms, 1000)
    return f"{_utc_seconds(secs)}.{ms:03d}Z"


def _utc_seconds(secs: int) -> str:
    days, rem = divmod(secs, 86400)
    y, m, d = _civil_from_days(days)
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    # Howard Hinnant's algorithm: days since 1970-01-01 -> (year, month, day), no tz objects.
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + (m <= 2), m, d)


def encode_reading(
    *,
    sensor_id: str,
    kind: str,
    zone: str,
    lat: float,
    lon: float,
    ts_ms: int,
    metrics: dict[str, tuple[float, str]],
    quality: tuple[str, ...] | list[str] = (),
) -> bytes:
    """Build a v1 envelope. ``metrics`` maps name to ``(value, unit)``."""
    doc: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "sensor_id": sensor_id,
        "kind": kind,
        "zone": zone,
        "location": {"lat": lat, "lon": lon},
        "ts": format_ts(ts_ms),
        "metrics": {m: {"value": v, "unit": u} for m, (v, u) in metrics.items()},
    }
    if quality:
        doc["quality"] = list(quality)
    return orjson.dumps(doc)


def parse_ts(value: object, where: str) -> int:
    """Parse an RFC 3339 timestamp with an explicit UTC offset into epoch milliseconds."""
    if not isinstance(value, str):
        raise InvalidReading("wrong_type", f"{where} field 'ts': expected RFC 3339 string, got {_show(value)}")
    if not (value.endswith("Z") or value.endswith("+00:00")) or len(value) > 40:
        raise InvalidReading("bad_timestamp", f"{where} field 'ts': expected RFC 3339 UTC ('...Z'), got {_show(value)}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidReading(
            "bad_timestamp", f"{where} field 'ts': not an RFC 3339 timestamp: {_show(value)}"
        ) from None
    if dt.utcoffset() != _ZERO:
        raise InvalidReading("bad_timestamp", f"{where} field 'ts': offset must be UTC, got {_show(value)}")
    delta = dt.replace(tzinfo=None) - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(doc: dict[str, Any]) -> str:
    sid = doc.get("sensor_id")
    if isinstance(sid, str) and _ID_RE.fullmatch(sid):
        return f"reading sensor_id={sid}"
    return "reading"


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReading("wrong_type", f"{what}: expected a number, got {_show(value)}")
    f = float(value)
    if not math.isfinite(f):
        raise InvalidReading("non_finite", f"{what}: expected a finite number, got {_show(value)}")
    if abs(f) > MAX_ABS_VALUE:
        raise InvalidReading("out_of_range", f"{what}: |value| must be <= {MAX_ABS_VALUE:g}, got {f!r}")
    return f


#: Strings already checked against their pattern (ids, metric and flag names, units, timestamp
#: seconds). Memoising the checks is what makes the canonical envelope cheap: a city has a few
#: thousand sensors, a few dozen metric names and units, and one timestamp second per second.
_MEMO_LIMIT: Final = 200_000
_OK_IDS: set[str] = set()
_OK_NAMES: set[str] = set()
_OK_UNITS: set[str] = set()
_TS_SECONDS: dict[str, int] = {}
_TS_PREFIX_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
_KEYS: Final = frozenset(_REQUIRED)
_KEYS_Q: Final = frozenset((*_REQUIRED, "quality"))
_VALUE_UNIT: Final = frozenset({"value", "unit"})


def _memo(cache: set[str], text: str, pattern: re.Pattern[str]) -> bool:
    if text in cache:
        return True
    if pattern.fullmatch(text) is None:
        return False
    if len(cache) >= _MEMO_LIMIT:
        cache.clear()
    cache.add(text)
    return True


def _ts_seconds_ms(prefix: str) -> int | None:
    """Epoch ms of a validated ``YYYY-MM-DDTHH:MM:SS`` prefix (memoised), else None."""
    ms = _TS_SECONDS.get(prefix)
    if ms is None:
        if _TS_PREFIX_RE.fullmatch(prefix) is None:
            return None
        try:
            ms = parse_ts(prefix + ".000Z", "reading")
        except InvalidReading:
            return None
        if len(_TS_SECONDS) >= _MEMO_LIMIT:
            _TS_SECONDS.clear()
        _TS_SECONDS[prefix] = ms
    return ms


def _fast_number(x: object) -> float | None:
    t = type(x)
    if t is float:
        f: float = x  # type: ignore[assignment]
    elif t is int and -MAX_ABS_VALUE <= x <= MAX_ABS_VALUE:  # type: ignore[operator]
        f = float(x)  # type: ignore[arg-type]
    else:
        return None
    # also rejects NaN (every comparison is False) and infinities
    return f if -MAX_ABS_VALUE <= f <= MAX_ABS_VALUE else None


def _parse_canonical(doc: dict[str, Any], now_ms: int) -> Reading | None:  # noqa: C901, PLR0911, PLR0912
    """The common case of :func:`parse_reading`, or None to take the full path.

    Accepts a subset of what the full checks accept and builds an equal :class:`Reading`;
    anything unusual (including every invalid message) returns None, so error reasons and
    messages come from one place.
    """
    keys = doc.keys()
    if keys == _KEYS:
        quality: tuple[str, ...] = ()
    elif keys == _KEYS_Q:
        q = doc["quality"]
        if type(q) is not list or len(q) > MAX_QUALITY_FLAGS:
            return None
        for flag in q:
            if type(flag) is not str or not _memo(_OK_NAMES, flag, _NAME_RE):
                return None
        quality = tuple(q)
    else:
        return None
    v = doc["v"]
    if type(v) is not int or v != SCHEMA_VERSION:
        return None
    sensor_id = doc["sensor_id"]
    kind = doc["kind"]
    zone = doc["zone"]
    if (
        type(sensor_id) is not str
        or type(kind) is not str
        or type(zone) is not str
        or kind not in KINDS
        or not _memo(_OK_IDS, sensor_id, _ID_RE)
        or not _memo(_OK_IDS, zone, _ID_RE)
    ):
        return None
    loc = doc["location"]
    if type(loc) is not dict or len(loc) != 2:
        return None
    lat = _fast_number(loc.get("lat"))
    lon = _fast_number(loc.get("lon"))
    if lat is None or lon is None or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    ts = doc["ts"]
    if type(ts) is not str or len(ts) != 24 or ts[19] != "." or ts[23] != "Z":
        return None
    frac = ts[20:23]
    if not (frac.isascii() and frac.isdigit()):
        return None
    secs_ms = _ts_seconds_ms(ts[:19])
    if secs_ms is None:
        return None
    ts_ms = secs_ms + int(frac)
    if ts_ms < MIN_TS_MS or ts_ms > now_ms + MAX_FUTURE_MS:
        return None
    raw_metrics = doc["metrics"]
    if type(raw_metrics) is not dict or not raw_metrics or len(raw_metrics) > MAX_METRICS:
        return None
    metrics: dict[str, float] = {}
    units: dict[str, str] = {}
    for name, entry in raw_metrics.items():
        if type(entry) is not dict or not _memo(_OK_NAMES, name, _NAME_RE):
            return None
        n = len(entry)
        if n == 2:
            if entry.keys() != _VALUE_UNIT:
                return None
            unit = entry["unit"]
            if type(unit) is not str or not _memo(_OK_UNITS, unit, _UNIT_RE):
                return None
        elif n == 1 and "value" in entry:
            unit = ""
        else:
            return None
        value = _fast_number(entry["value"])
        if value is None:
            return None
        metrics[name] = value
        units[name] = unit
    r = _new(Reading)
    _s_sensor_id(r, sensor_id)
    _s_kind(r, kind)
    _s_zone(r, zone)
    _s_lat(r, lat)
    _s_lon(r, lon)
    _s_ts_ms(r, ts_ms)
    _s_metrics(r, metrics)
    _s_units(r, units)
    _s_quality(r, quality)
    return r


# Building a frozen dataclass through __init__ goes through object.__setattr__ per field; the fast
# path sets the slots directly (same object, about half the cost).
_new = object.__new__
(_s_sensor_id, _s_kind, _s_zone, _s_lat, _s_lon, _s_ts_ms, _s_metrics, _s_units, _s_quality) = (
    Reading.__dict__[f].__set__
    for f in ("sensor_id", "kind", "zone", "lat", "lon", "ts_ms", "metrics", "units", "quality")
)


def parse_reading(raw: bytes, *, now_ms: int, max_bytes: int = MAX_PAYLOAD_BYTES) -> Reading:
    """Validate raw bytes against the v1 contract.

    Args:
        raw: the message payload exactly as received.
        now_ms: the current time (injected) for the "absurdly far in the future" check.
        max_bytes: payload size limit.

    Raises:
        InvalidReading: naming the field, what was expected and what was received.

    >>> r = parse_reading(encode_reading(sensor_id="s1", kind="iot", zone="futian", lat=22.5,
    ...     lon=114.0, ts_ms=1_700_000_000_000, metrics={"power_kw": (3.5, "kW")}), now_ms=1_700_000_000_000)
    >>> (r.sensor_id, r.ts_ms, r.metrics)
    ('s1', 1700000000000, {'power_kw': 3.5})
    """
    if len(raw) <= max_bytes:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if type(doc) is dict:
            reading = _parse_canonical(doc, now_ms)
            if reading is not None:
                return reading
    return _parse_full(raw, now_ms=now_ms, max_bytes=max_bytes)


def _parse_full(raw: bytes, *, now_ms: int, max_bytes: int) -> Reading:
    """Every check of :func:`parse_reading`, in order; raises the precise error."""
    if len(raw) > max_bytes:
        raise InvalidReading("oversize", f"payload of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidReading("bad_json", f"payload is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidReading("wrong_type", f"payload: expected a JSON object, got {type(doc).__name__}")
    where = _where(doc)
    for name in _REQUIRED:
        if name not in doc:
            raise InvalidReading("missing_field", f"{where}: required field '{name}' is missing")
    if len(doc) > len(_REQUIRED):
        extra = sorted(set(doc) - _ALLOWED)
        if extra:
            raise InvalidReading("unknown_field", f"{where}: unknown field(s) {_show(extra)}")
    v = doc["v"]
    if v != SCHEMA_VERSION or isinstance(v, bool):
        raise InvalidReading("bad_version", f"{where} field 'v': expected {SCHEMA_VERSION}, got {_show(v)}")
    sensor_id = doc["sensor_id"]
    if not isinstance(sensor_id, str) or not _ID_RE.fullmatch(sensor_id):
        raise InvalidReading(
            "bad_id", f"{where} field 'sensor_id': expected [A-Za-z0-9][A-Za-z0-9_.:-]{{0,127}}, got {_show(sensor_id)}"
        )
    kind = doc["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidReading("bad_kind", f"{where} field 'kind': expected one of {sorted(KINDS)}, got {_show(kind)}")
    zone = doc["zone"]
    if not isinstance(zone, str) or not _ID_RE.fullmatch(zone):
        raise InvalidReading("bad_id", f"{where} field 'zone': expected an identifier, got {_show(zone)}")
    loc = doc["location"]
    if not isinstance(loc, dict) or set(loc) != {"lat", "lon"}:
        raise InvalidReading("wrong_type", f"{where} field 'location': expected {{lat, lon}}, got {_show(loc)}")
    lat = _number(loc["lat"], f"{where} field 'location.lat'")
    lon = _number(loc["lon"], f"{where} field 'location.lon'")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise InvalidReading("out_of_range", f"{where} field 'location': lat/lon out of range: {lat}, {lon}")
    ts_ms = parse_ts(doc["ts"], where)
    if ts_ms < MIN_TS_MS or ts_ms > now_ms + MAX_FUTURE_MS:
        raise InvalidReading(
            "bad_timestamp",
            f"{where} field 'ts': {doc['ts']} is outside [2000-01-01, now + 24 h] (now_ms={now_ms})",
        )
    raw_metrics = doc["metrics"]
    if not isinstance(raw_metrics, dict) or not raw_metrics:
        raise InvalidReading(
            "wrong_type", f"{where} field 'metrics': expected a non-empty object, got {_show(raw_metrics)}"
        )
    if len(raw_metrics) > MAX_METRICS:
        raise InvalidReading("too_many_metrics", f"{where} field 'metrics': {len(raw_metrics)} > {MAX_METRICS}")
    metrics: dict[str, float] = {}
    units: dict[str, str] = {}
    for name, entry in raw_metrics.items():
        if not _NAME_RE.fullmatch(name):
            raise InvalidReading("bad_metric", f"{where}: metric name {_show(name)} must match [a-z][a-z0-9_]{{0,63}}")
        if not isinstance(entry, dict) or "value" not in entry or not set(entry) <= {"value", "unit"}:
            raise InvalidReading("wrong_type", f"{where} metric '{name}': expected {{value, unit}}, got {_show(entry)}")
        metrics[name] = _number(entry["value"], f"{where} metric '{name}'")
        unit = entry.get("unit", "")
        if not isinstance(unit, str) or not _UNIT_RE.fullmatch(unit):
            raise InvalidReading(
                "wrong_type", f"{where} metric '{name}' unit: expected a short string, got {_show(unit)}"
            )
        units[name] = unit
    quality: tuple[str, ...] = ()
    if "quality" in doc:
        q = doc["quality"]
        if (
            not isinstance(q, list)
            or len(q) > MAX_QUALITY_FLAGS
            or not all(isinstance(f, str) and _NAME_RE.fullmatch(f) for f in q)
        ):
            raise InvalidReading(
                "wrong_type", f"{where} field 'quality': expected a list of flag names, got {_show(q)}"
            )
        quality = tuple(q)
    return Reading(sensor_id, kind, zone, lat, lon, ts_ms, metrics, units, quality)
