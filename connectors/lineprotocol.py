"""InfluxDB line protocol: points and their exact encoding (pure, no I/O).

Every time-series writer (InfluxDB 1.x, 2.x and the embedded SQLite store) takes
:class:`Point` objects, so the layout below is defined once, here.

Measurement ``window_agg`` (one point per closed window, time = ``start_ms``):

==========  ==================================================================================
tags        ``kind, zone, sensor_id, metric, unit, window, window_size_ms`` (size as a decimal
            string, e.g. ``"60000"``); a tag whose value is empty is omitted
fields      ``count`` (integer), ``sum, mean, min, max, std, first, last`` (float),
            when present ``rate_per_s, p50, p95, p99, score`` (float) and ``model_version`` (string)
==========  ==================================================================================

Measurement ``zone_agg`` (one point per zone roll-up window, time = ``start_ms``): tags
``kind, zone, metric, unit, window, window_size_ms``; fields ``count, sensors`` (integer) and the
float fields of ``window_agg``.

Measurement ``alert`` (time = ``ts_ms``):

==========  ==================================================================================
tags        ``rule, severity, state, kind, zone, sensor_id`` (omitted when None), ``metric``
fields      ``alert_id`` (string), ``value, threshold`` (float), ``latency_ms`` (integer),
            ``message`` (string)
==========  ==================================================================================

Timestamps are epoch milliseconds (write precision ``ms``). Float fields are always written as
floats (``3.0``, never ``3``) so a field's type never flips between integer and float.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

AGG_MEASUREMENT: Final = "window_agg"
ALERT_MEASUREMENT: Final = "alert"
AGG_TAGS: Final = ("kind", "zone", "sensor_id", "metric", "unit", "window", "window_size_ms")
AGG_FLOAT_FIELDS: Final = ("sum", "mean", "min", "max", "std", "first", "last")
#: Written when the aggregate carries them (rate of change, sketch quantiles, anomaly score).
AGG_OPTIONAL_FLOAT_FIELDS: Final = ("rate_per_s", "p50", "p95", "p99", "score")
ALERT_TAGS: Final = ("rule", "severity", "state", "kind", "zone", "sensor_id", "metric")
ZONE_MEASUREMENT: Final = "zone_agg"
ZONE_TAGS: Final = ("kind", "zone", "metric", "unit", "window", "window_size_ms")

# the record keys of the tags; window_size_ms (always last) comes from the record's size_ms
_AGG_RECORD_TAGS: Final = AGG_TAGS[:-1]
_ZONE_RECORD_TAGS: Final = ZONE_TAGS[:-1]
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
# Influx 1.x has no escape for a backslash in names and tag values, and none for line breaks.
_FORBIDDEN_IN_KEYS: Final = ("\\", "\n", "\r")
_MEASUREMENT_ESCAPES: Final = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESCAPES: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STRING_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"'})
#: Bounded caches of the encoder: (measurement, *tag items) -> escaped series head, field key -> "key=".
#: Cleared when full, so memory stays bounded whatever the series cardinality (about 20 MB at most).
_CACHE_MAX: Final = 65_536
_SERIES: dict[tuple[str, ...], str] = {}
_FIELD_KEYS: dict[str, str] = {}

FieldValue = float | int | str | bool


@dataclass(frozen=True, slots=True)
class Point:
    """One InfluxDB point.

    Attributes:
        measurement: measurement name.
        tags: tag key to non-empty value.
        fields: field key to value; ``int`` is written as an integer field, ``float`` as float.
        time_ms: timestamp in epoch milliseconds.
    """

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ms: int


def _check_name(point: Point, what: str, name: str) -> None:
    if not name:
        msg = f"point measurement={point.measurement!r}: empty {what}"
        raise ValueError(msg)
    if any(ch in name for ch in _FORBIDDEN_IN_KEYS):
        msg = (
            f"point measurement={point.measurement!r}: {what} {name!r} contains a backslash or "
            "line break, which line protocol cannot carry"
        )
        raise ValueError(msg)


def _field(point: Point, key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        as_int = int(value)
        if not _INT64_MIN <= as_int <= _INT64_MAX:
            msg = (
                f"point measurement={point.measurement!r} field {key!r}: "
                f"expected int64, got {as_int}"
            )
            raise ValueError(msg)
        return f"{as_int}i"
    if isinstance(value, numbers.Real):
        as_float = float(value)
        if not math.isfinite(as_float):
            msg = (
                f"point measurement={point.measurement!r} field {key!r}: "
                f"expected a finite float, got {as_float}"
            )
            raise ValueError(msg)
        return repr(as_float)  # shortest text that reads back as the same double
    if isinstance(value, str):
        return '"' + value.translate(_STRING_ESCAPES) + '"'
    msg = (
        f"point measurement={point.measurement!r} field {key!r}: "
        f"expected float, int, str or bool, got {type(value).__name__}"
    )
    raise ValueError(msg)


def _check_measurement(point: Point) -> None:
    _check_name(point, "measurement", point.measurement)
    if point.measurement.startswith("#"):
        msg = f"point measurement={point.measurement!r}: a leading '#' makes the line a comment"
        raise ValueError(msg)


def _series(point: Point) -> str:
    """The checked, escaped ``measurement,tag=value,...`` head of a line (tags sorted by key)."""
    _check_measurement(point)
    parts = [point.measurement.translate(_MEASUREMENT_ESCAPES)]
    for key in sorted(point.tags):
        tag = point.tags[key]
        _check_name(point, "tag key", key)
        _check_name(point, f"value of tag {key!r}", tag)
        parts.append(f",{key.translate(_KEY_ESCAPES)}={tag.translate(_KEY_ESCAPES)}")
    return "".join(parts)


def _field_key(point: Point, key: str) -> str:
    """The checked, escaped ``key=`` of a field."""
    _check_name(point, "field key", key)
    text = f"{key.translate(_KEY_ESCAPES)}="
    if len(_FIELD_KEYS) >= _CACHE_MAX:
        _FIELD_KEYS.clear()
    _FIELD_KEYS[key] = text
    return text


def encode_line(point: Point) -> str:
    """Encode one point as a line of line protocol (no trailing newline).

    The checked and escaped series head (measurement and sorted tags) and field keys are cached
    (bounded), so a series seen before costs a dict lookup; values of the common exact types
    (``float``, ``int``, ``str``) are formatted inline, anything else goes through the general
    checks. The output is the same either way.

    Raises:
        ValueError: empty measurement, key or tag value; a name with a backslash or line break;
            no fields; a non-finite float or an int outside int64. The message names the
            measurement and the field.

    Example:
        >>> encode_line(Point("m", {"b": "x y", "a": "1"}, {"v": 3.0, "n": 2, "s": 'say "hi"'}, 5))
        'm,a=1,b=x\\\\ y v=3.0,n=2i,s="say \\\\"hi\\\\"" 5'
    """
    fields = point.fields
    if not fields:
        _check_measurement(point)  # a bad measurement is reported first
        msg = f"point measurement={point.measurement!r}: expected at least one field, got none"
        raise ValueError(msg)
    try:
        cache_key: tuple[Any, ...] | None = (point.measurement, *point.tags.items())
        series = _SERIES.get(cache_key)  # type: ignore[arg-type] # a tuple of str pairs
    except TypeError:  # an unhashable tag value: the checks below name it
        cache_key, series = None, None
    if series is None:
        series = _series(point)
        if cache_key is not None:
            if len(_SERIES) >= _CACHE_MAX:
                _SERIES.clear()
            _SERIES[cache_key] = series
    out = []
    append = out.append
    keys = _FIELD_KEYS
    for key, value in fields.items():
        head = keys.get(key) or _field_key(point, key)
        kind = type(value)
        if kind is float:
            if value - value == 0.0:  # finite: inf - inf and nan - nan are nan
                append(head + repr(value))
                continue
        elif kind is int:
            if _INT64_MIN <= value <= _INT64_MAX:
                append(f"{head}{value}i")
                continue
        elif kind is str:
            if '"' in value or "\\" in value:
                value = value.translate(_STRING_ESCAPES)
            append(f'{head}"{value}"')
            continue
        append(head + _field(point, key, value))
    stamp = point.time_ms
    return f"{series} {','.join(out)} {stamp if type(stamp) is int else int(stamp)}"


def series_key(point: Point) -> str:
    """The escaped ``measurement,tag=value,...`` head of the point's line, equal for one series.

    Raises:
        ValueError: as :func:`encode_line`, for the measurement and tags.
    """
    try:
        series = _SERIES.get((point.measurement, *point.tags.items()))
    except TypeError:
        series = None
    return series if series is not None else _series(point)


def encode_lines(points: Iterable[Point]) -> bytes:
    """Encode points as a UTF-8 line protocol body, one line per point.

    Example:
        >>> encode_lines([Point("m", {}, {"v": 1}, 1), Point("m", {}, {"v": 0.5}, 2)])
        b'm v=1i 1\\nm v=0.5 2'
    """
    return "\n".join([encode_line(p) for p in points]).encode()


def _tags(record: Mapping[str, Any], keys: Iterable[str]) -> dict[str, str]:
    get = record.get
    return {k: str(v) for k in keys if (v := get(k)) not in (None, "")}


def _window_tags(agg: Mapping[str, Any], keys: Iterable[str]) -> dict[str, str]:
    """``keys`` of the record (``window_size_ms`` last, from ``size_ms``), empty ones omitted."""
    tags = _tags(agg, keys)
    size = agg["size_ms"]
    if size not in (None, ""):
        tags["window_size_ms"] = str(size)
    return tags


def _window_fields(agg: Mapping[str, Any], fields: dict[str, FieldValue]) -> dict[str, FieldValue]:
    """Add the float fields (``AGG_FLOAT_FIELDS``, then the optional ones present) to ``fields``."""
    for k in AGG_FLOAT_FIELDS:
        fields[k] = float(agg[k])
    get = agg.get
    for k in AGG_OPTIONAL_FLOAT_FIELDS:
        if (v := get(k)) is not None:
            fields[k] = float(v)
    return fields


def aggregate_point(agg: Mapping[str, Any]) -> Point:
    """Build the ``window_agg`` point of one aggregate record.

    Example:
        >>> p = aggregate_point({"sensor_id": "s1", "kind": "iot", "zone": "", "metric": "t",
        ...     "unit": "C", "window": "tumbling", "size_ms": 60000, "start_ms": 0, "count": 2,
        ...     "sum": 3, "mean": 1.5, "min": 1, "max": 2, "std": 0.5, "first": 1, "last": 2})
        >>> encode_line(p)
        'window_agg,kind=iot,metric=t,sensor_id=s1,unit=C,window=tumbling,window_size_ms=60000 \
count=2i,sum=3.0,mean=1.5,min=1.0,max=2.0,std=0.5,first=1.0,last=2.0 0'
    """
    tags = _window_tags(agg, _AGG_RECORD_TAGS)
    fields = _window_fields(agg, {"count": int(agg["count"])})
    if (version := agg.get("model_version")) is not None:
        fields["model_version"] = str(version)
    return Point(AGG_MEASUREMENT, tags, fields, int(agg["start_ms"]))


def zone_point(agg: Mapping[str, Any]) -> Point:
    """Build the ``zone_agg`` point of one zone roll-up (all sensors of a zone, one window)."""
    tags = _window_tags(agg, _ZONE_RECORD_TAGS)
    fields = _window_fields(agg, {"count": int(agg["count"]), "sensors": int(agg["sensors"])})
    return Point(ZONE_MEASUREMENT, tags, fields, int(agg["start_ms"]))


def alert_point(alert: Mapping[str, Any]) -> Point:
    """Build the ``alert`` point of one alert record.

    Example:
        >>> p = alert_point({"alert_id": "a1", "rule": "hi", "severity": "warning",
        ...     "state": "raised", "sensor_id": None, "kind": "iot", "zone": "z", "metric": "t",
        ...     "value": 9, "threshold": 8, "ts_ms": 7, "latency_ms": 3, "message": "t > 8"})
        >>> encode_line(p)
        'alert,kind=iot,metric=t,rule=hi,severity=warning,state=raised,zone=z \
alert_id="a1",value=9.0,threshold=8.0,latency_ms=3i,message="t > 8" 7'
    """
    fields: dict[str, FieldValue] = {
        "alert_id": str(alert["alert_id"]),
        "value": float(alert["value"]),
        "threshold": float(alert["threshold"]),
        "latency_ms": int(alert["latency_ms"]),
        "message": str(alert["message"]),
    }
    return Point(ALERT_MEASUREMENT, _tags(alert, ALERT_TAGS), fields, int(alert["ts_ms"]))
