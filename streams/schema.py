"""The reading contract (envelope v1): strict, cheap validation of raw bytes.

A reading on the wire is one JSON object::

    {"v": 1, "sensor_id": "trf-futian-0001", "kind": "traffic", "zone": "futian",
     "location": {"lat": 22.5431, "lon": 114.0579},
     "ts": "2026-11-29T08:00:00.000Z",
     "metrics": {"speed": {"value": 42.5, "unit": "km/h"}},
     "quality": ["calibrating"]}

``quality`` is optional; every other field is required and no other field is allowed.
:func:`parse_reading` turns bytes into a :class:`Reading` or raises
:class:`~streams.errors.InvalidReading` naming what was wrong and where. :func:`parse_batch` does the
same for a micro-batch and returns columns (:class:`ReadingRows`), the worker's path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import accumulate, chain
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


@dataclass(frozen=True, slots=True, eq=False)
class Shape:
    """The metric names and units of a reading, in envelope order; one shared object per distinct pair."""

    names: tuple[str, ...]
    units: tuple[str, ...]


@dataclass(slots=True)
class ReadingRows:
    """Valid readings of a micro-batch as columns (what :func:`parse_batch` returns).

    Row ``k`` is input message ``index[k]``; ``ident[k]`` is ``(sensor_id, kind, zone, lat, lon)``.
    ``values`` holds the metric values of all rows, one after the other, each row's in
    ``shape[k].names`` order (:meth:`row_values`). Tuples, shapes and strings are shared between the
    readings of a sensor, so a row costs a few list slots, not a :class:`Reading` (nor a list).
    """

    index: list[int] = field(default_factory=list)
    ident: list[tuple[str, str, str, float, float]] = field(default_factory=list)
    ts_ms: list[int] = field(default_factory=list)
    shape: list[Shape] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    quality: list[tuple[str, ...]] = field(default_factory=list)
    #: When built from :class:`Reading` objects, those objects (returned by :meth:`reading`).
    readings: list[Reading] | None = None
    _starts: list[int] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ts_ms)

    def append(self, i: int, r: Reading) -> None:
        """Add ``r`` as the reading of input message ``i``."""
        self.index.append(i)
        self.ident.append((r.sensor_id, r.kind, r.zone, r.lat, r.lon))
        self.ts_ms.append(r.ts_ms)
        names = tuple(r.metrics)
        self.shape.append(_shape_of(names, tuple([r.units.get(m, "") for m in names])))
        self.values.extend(r.metrics.values())
        self.quality.append(r.quality)

    @classmethod
    def of(cls, readings: Sequence[Reading]) -> ReadingRows:
        """Rows of already parsed readings (input message ``k`` is ``readings[k]``)."""
        rows = cls(readings=list(readings))
        for i, r in enumerate(readings):
            rows.append(i, r)
        return rows

    def row_values(self, k: int) -> list[float]:
        """The metric values of row ``k``."""
        starts = self._starts
        if starts is None or len(starts) != len(self.shape) + 1:
            starts = self._starts = [0, *accumulate(len(s.names) for s in self.shape)]
        return self.values[starts[k] : starts[k + 1]]

    def reading(self, k: int) -> Reading:
        """Row ``k`` as a :class:`Reading` (equal to what :func:`parse_reading` returns for its bytes)."""
        if self.readings is not None:
            return self.readings[self.index[k]]
        sid, kind, zone, lat, lon = self.ident[k]
        shape = self.shape[k]
        return Reading(
            sid, kind, zone, lat, lon, self.ts_ms[k], dict(zip(shape.names, self.row_values(k), strict=True)),
            dict(zip(shape.names, shape.units, strict=True)), self.quality[k],
        )

    def take(self, ks: list[int]) -> ReadingRows:
        """The rows ``ks``, in that order."""
        return ReadingRows(
            [self.index[k] for k in ks], list(map(self.ident.__getitem__, ks)), list(map(self.ts_ms.__getitem__, ks)),
            list(map(self.shape.__getitem__, ks)), list(chain.from_iterable(map(self.row_values, ks))),
            list(map(self.quality.__getitem__, ks)), self.readings,
        )


_SHAPES: dict[tuple[tuple[str, ...], tuple[str, ...]], Shape] = {}


def _shape_of(names: tuple[str, ...], units: tuple[str, ...]) -> Shape:
    """The shared :class:`Shape` of ``names`` and ``units``."""
    key = (names, units)
    shape = _SHAPES.get(key)
    if shape is None:
        if len(_SHAPES) >= _MEMO_LIMIT:
            _SHAPES.clear()
        shape = _SHAPES[key] = Shape(names, units)
    return shape


# -- the byte-level path of parse_batch ------------------------------------------------------------
# The canonical envelope (what encode_reading and the simulators write: no spaces, keys in order,
# plain decimals) is recognised from its bytes. Everything but the timestamp and the metric values is
# the same in every message of a sensor, so the parts are checked once and memoised by their exact
# bytes: the sensor prefix (v, sensor_id, kind, zone, location), the skeleton of the metrics object
# with its values cut out (the rest of a message is then matched with one regex per skeleton), the
# quality list, the timestamp second. Anything else, valid or not, takes parse_reading, so an
# accepted message always gives the Reading that parse_reading gives, and every error comes from one
# place.
#
# Numbers: at most 15 integer digits and 17 fraction digits, no exponent, no "-0" (a JSON integer
# -0 is 0, float("-0") is -0.0): |value| < 1e15, finite, and float() of the text is the value orjson
# reads (both round correctly; tests/unit/streams/test_fast_paths.py checks it).
_NUM: Final = rb"(?!-0[,}])-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,17})?"
_ID_B: Final = rb"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}"
_PREFIX_RE: Final = re.compile(
    rb'\{"v":1,"sensor_id":"(' + _ID_B + rb')","kind":"(' + b"|".join(k.encode() for k in sorted(KINDS))
    + rb')","zone":"(' + _ID_B + rb')","location":\{"lat":(' + _NUM + rb'),"lon":(' + _NUM + rb")\}"
)
_VALUE_SPLIT: Final = re.compile(rb'(?<=\{"value":)(' + _NUM + rb")(?=[,}])")
_NAME_B: Final = rb"[a-z][a-z0-9_]{0,63}"
_UNIT_B: Final = rb'[^"\\\x00-\x1f]*'
_ENTRY_RE: Final = re.compile(rb'"(' + _NAME_B + rb')":\{"value":0(?:,"unit":"(' + _UNIT_B + rb')")?\}')
_ENTRY: Final = rb'"' + _NAME_B + rb'":\{"value":0(?:,"unit":"' + _UNIT_B + rb'")?\}'
_SKELETON_RE: Final = re.compile(_ENTRY + rb"(?:," + _ENTRY + rb")*")
_TS_AT: Final = b',"ts":"'
_QUALITY_AT: Final = b'},"quality":['
_TAIL_HEAD: Final = rb',"ts":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})\.([0-9]{3})Z","metrics":\{'
_TAIL_END: Final = rb'\}(?:\}|,"quality":\[(.*)\]\})'
_SKELETON_LIMIT: Final = 1024  # compiled regexes
_NEVER: Final = re.compile(rb"(?!)")  # the regex of a sensor whose skeleton is not known yet
#: sensor prefix bytes -> [(sensor_id, kind, zone, lat, lon), last Shape, its regex]
_PREFIXES: dict[bytes, list[Any]] = {}
_SKELETONS: dict[tuple[bytes, ...], tuple[Shape, re.Pattern[bytes]]] = {}
_QUALITIES: dict[bytes, tuple[str, ...]] = {b"": ()}
_TS_SECONDS_B: dict[bytes, int] = {}
_SEEN: dict[int, None] = {}  # hashes of prefixes and skeletons seen once


def _remember(cache: dict[Any, Any], key: Any, value: Any, limit: int = _MEMO_LIMIT) -> Any:
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value


def _second_sighting(key: object) -> bool:
    """Whether ``key`` was seen before; parts are memoised from their second message only, so a flood
    of one-off sensor ids or metric names costs a hash each, not a memo entry."""
    h = hash(key)
    if h in _SEEN:
        return True
    _remember(_SEEN, h, None)
    return False


def _learn_prefix(prefix: bytes) -> list[Any] | None:
    if not _second_sighting(prefix):
        return None
    m = _PREFIX_RE.fullmatch(prefix)
    if m is None:
        return None
    lat, lon = float(m[4]), float(m[5])
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    kind = next(k for k in KINDS if k == m[2].decode())  # the shared string
    return _remember(_PREFIXES, prefix, [(m[1].decode(), kind, m[3].decode(), lat, lon), None, _NEVER])


def _learn_skeleton(sensor: list[Any], raw: bytes, j: int) -> re.Match[bytes] | None:
    """Match ``raw`` from ``j`` (its ``,"ts":"``) when its metrics skeleton is canonical; remember the
    skeleton's regex for ``sensor``."""
    end = raw.rfind(_QUALITY_AT, j) if raw[-2:] == b"]}" else len(raw) - 2
    parts = _VALUE_SPLIT.split(raw[j + 44 : end])
    pieces = tuple(parts[0::2])
    known = _SKELETONS.get(pieces)
    if known is None:
        if not _second_sighting(pieces):
            return None
        text = b"0".join(pieces)
        if _SKELETON_RE.fullmatch(text) is None:
            return None
        names, units = [], []
        for m in _ENTRY_RE.finditer(text):
            try:
                unit = (m[2] or b"").decode()
            except UnicodeDecodeError:
                return None
            if not _UNIT_RE.fullmatch(unit):
                return None
            names.append(m[1].decode())
            units.append(unit)
        if len(names) != len(pieces) - 1 or len(set(names)) != len(names) or len(names) > MAX_METRICS:
            return None
        rx = re.compile(_TAIL_HEAD + (b"(" + _NUM + b")").join(re.escape(x) for x in pieces) + _TAIL_END, re.DOTALL)
        known = _remember(_SKELETONS, pieces, (_shape_of(tuple(names), tuple(units)), rx), _SKELETON_LIMIT)
    sensor[1], sensor[2] = known
    return known[1].fullmatch(raw, j)


def _learn_quality(body: bytes) -> tuple[str, ...] | None:
    try:
        q = orjson.loads(b"[" + body + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(q) > MAX_QUALITY_FLAGS or not all(type(f) is str and _NAME_RE.fullmatch(f) for f in q):
        return None
    return _remember(_QUALITIES, body, tuple(q))


def _learn_seconds(text: bytes) -> int | None:
    if not text.isascii():
        return None
    ms = _ts_seconds_ms(text.decode())
    return None if ms is None else _remember(_TS_SECONDS_B, text, ms)


def parse_batch(  # noqa: C901, PLR0912 - one loop, kept flat: it runs once per message
    raws: Sequence[bytes], *, now_ms: int, max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[ReadingRows, list[tuple[int, InvalidReading]]]:
    """Validate a micro-batch: :func:`parse_reading` of each message, as columns.

    Returns the valid readings as :class:`ReadingRows` (``reading(k)`` equals what
    :func:`parse_reading` returns for message ``index[k]``) and ``(i, error)`` for every other message
    ``i``, in input order, with the error :func:`parse_reading` raises.

    >>> rows, errors = parse_batch([b"{", encode_reading(sensor_id="s1", kind="iot", zone="futian", lat=22.5,
    ...     lon=114.0, ts_ms=1_700_000_000_000, metrics={"power_kw": (3.5, "kW")})], now_ms=1_700_000_000_000)
    >>> (rows.index, rows.ident[0][0], rows.values, [(i, e.reason) for i, e in errors])
    ([1], 's1', [3.5], [(0, 'bad_json')])
    """
    rows = ReadingRows()
    values: list[Any] = rows.values  # the value texts (and the slow path's floats) until the end
    add_index, add_ident, add_ts, add_shape, add_values, add_quality = (
        rows.index.append, rows.ident.append, rows.ts_ms.append, rows.shape.append, values.extend,
        rows.quality.append,
    )
    errors: list[tuple[int, InvalidReading]] = []
    prefixes, qualities, seconds = _PREFIXES, _QUALITIES, _TS_SECONDS_B
    hi_ts = now_ms + MAX_FUTURE_MS
    for i, raw in enumerate(raws):
        # <prefix>,"ts":"YYYY-MM-DDTHH:MM:SS.fffZ","metrics":{<entries>}} or ...}},"quality":[<flags>]}
        j = raw.find(_TS_AT, 0, 512)
        if j > 0 and len(raw) <= max_bytes:
            sensor = prefixes.get(raw[:j])
            if sensor is None:
                sensor = _learn_prefix(raw[:j])
            if sensor is not None:
                # one regex per metrics skeleton: the timestamp, the values and the quality list
                m = sensor[2].fullmatch(raw, j)
                if m is None:
                    m = _learn_skeleton(sensor, raw, j)
                if m is not None:
                    g = m.groups()
                    secs = seconds.get(g[0])
                    if secs is None:
                        secs = _learn_seconds(g[0])
                    q = () if g[-1] is None else qualities.get(g[-1])
                    if q is None:
                        q = _learn_quality(g[-1])
                    if secs is not None and q is not None:
                        ts_ms = secs + int(g[1])
                        if MIN_TS_MS <= ts_ms <= hi_ts:
                            add_index(i)
                            add_ident(sensor[0])
                            add_ts(ts_ms)
                            add_shape(sensor[1])
                            add_values(g[2:-1])
                            add_quality(q)
                            continue
        try:
            reading = parse_reading(raw, now_ms=now_ms, max_bytes=max_bytes)
        except InvalidReading as err:
            errors.append((i, _detached(err)))
            continue
        rows.append(i, reading)
    rows.values = list(map(float, values))  # one pass (a float stays the same float)
    return rows, errors


def _detached(err: InvalidReading) -> InvalidReading:
    """``err`` without its traceback and suppressed context.

    A traceback holds the frames it passed (parse_batch's, whose ``errors`` list holds ``err``; and
    each frame its caller's): kept, every dead letter made its whole micro-batch (rows, the
    caller's output) cyclic garbage that only the cyclic GC frees, after promoting and traversing
    it. Callers use ``reason`` and ``detail`` only.
    """
    err.__traceback__ = None
    err.__context__ = None
    return err


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
