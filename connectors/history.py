"""History queries over the stored series, the same answer from every store.

Three query types read the layout of :mod:`connectors.lineprotocol` (and the roll-ups of
:mod:`connectors.retention`) from the store the settings select: the embedded SQLite file,
InfluxDB 1.x (InfluxQL over ``GET /query``, chunked) or InfluxDB 2.x (Flux, streamed records).

* **series** (:class:`HistoryQuery`, :func:`iter_series`): filter by sensor, zone, kind, metric
  and window size over ``[since_ms, until_ms)``.

  - Without ``every_ms``: the stored windows ``{time_ms, [sensor_id], count, mean, min, max}``
    (``sensor_id`` when the query does not pin one sensor), ordered by (sensor, time).
  - With ``every_ms``: buckets ``{time_ms, [group], value}`` aligned to the epoch
    (``time_ms = start_ms // every_ms * every_ms``) holding ``agg(field)`` over the windows that
    start in the bucket, optionally one series per ``group_by`` tag; empty buckets are left out.
* **top zones** (:class:`TopQuery`, :func:`top_zones`): ``agg(field)`` per zone over the
  period, the ``n`` largest first (ties by zone name).
* **alerts** (:class:`AlertQuery`, :func:`iter_alerts`): alert events in the period, ordered by
  (time, alert id), each with its evidence: the windows of its sensor and metric in the
  ``evidence_ms`` before the alert.

Aggregates: ``mean, min, max, sum, count`` and the percentiles ``p50, p90, p95, p99``. A
percentile is InfluxQL's nearest rank: the value at index ``floor(n * p / 100 + 0.5) - 1`` of
the sorted values (no value when that index is negative). Flux has no such function; the Flux
script computes that exact rank (see :func:`build_flux`).

All stores give the same numbers for the same data. SQLite rows are reduced in time order
the way InfluxQL's reducers do it (``sum += v``; ``mean = sum / n``), so per-series results are
bit-identical; when a bucket spans many series InfluxDB may add partial sums in another order,
so sums and means over several series agree to about 1e-12 (selectors, counts and percentiles
are exact). ``value`` is an int for ``count`` and for ``sum``/``min``/``max``/percentiles of
the integer fields ``count`` and ``windows``, else a float.

Every query function returns a generator: large results are streamed from the server
(InfluxQL ``chunked=true``, Flux ``query_stream``, SQLite cursors), never loaded at once.

**Zone roll-ups.** A downsampled zone query (``zone`` set; no sensor, kind, window size or
``group_by``) whose ``every`` equals the period of a zone roll-up (``zone_5m``, ``zone_1h``, see
:mod:`connectors.retention`) is answered from that roll-up, in every store, when the aggregate
is one the roll-up holds (:data:`ZONE_ROLLUP_ANSWERS`: ``mean, count, p50, p90, p95, p99`` of
``mean``; ``min`` of ``min``, ``max`` of ``max``, ``sum`` of ``count`` or ``sum``). The roll-up
holds the same reduction over the same windows, so the numbers are the ones the windows give
(percentiles, min, max and counts exactly; means and sums to about 1e-12 in InfluxDB, which
may add the series in another order). Buckets the roll-up cannot answer come from the windows:
a partial first or last bucket, and every bucket from the newest roll-up period minus the
resample span on (the periods a late window may still change). A period the roll-up job never
computed (the job was down and no backfill ran) is missing from the answer; pass
``rollups=False`` to read the windows only. ``agg=p95`` is always the p95 of the sensors'
window means; the p95 of the readings of a zone window is the ``p95`` field of ``zone_agg``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import logging
import math
import re
import sqlite3
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from influxdb_client.client.influxdb_client import InfluxDBClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.lineprotocol import AGG_MEASUREMENT, ALERT_MEASUREMENT
from connectors.retention import (
    ROLLUP_FIELDS,
    ROLLUPS,
    ZONE_PERCENTILES,
    ZONE_ROLLUP_FIELDS,
    ZONE_ROLLUPS,
    resample_ms,
    rollup_period_ms,
    rollup_target,
)
from streams.errors import SinkError, UrbanSensingError
from streams.schema import format_ts

if TYPE_CHECKING:
    from streams.settings import InfluxSettings, Settings

logger = logging.getLogger(__name__)

Agg = Literal["mean", "min", "max", "sum", "count", "p50", "p90", "p95", "p99"]
Source = Literal["window", "1h", "1d", "zone_5m", "zone_1h"]
GroupBy = Literal["sensor_id", "zone", "kind"]
Kind = Literal["traffic", "environment", "crowd", "iot"]
OutputFormat = Literal["table", "csv", "json", "ndjson"]
NUMERIC_FIELDS: Final = ("count", "sum", "mean", "min", "max", "std", "first", "last", "score",
                         "rate_per_s", "p50", "p95", "p99")  # fmt: skip
INT_FIELDS: Final = ("count", "windows")
RAW_COLUMNS: Final = ("time_ms", "count", "mean", "min", "max")
ALERT_COLUMNS: Final = ("alert_id", "rule", "severity", "state", "kind", "zone", "sensor_id", "metric",
                        "value", "threshold", "latency_ms", "message")  # fmt: skip
_ALERT_TAGS: Final = ("rule", "severity", "state", "kind", "zone", "sensor_id", "metric")
_ALERT_FIELDS: Final = ("alert_id", "value", "threshold", "latency_ms", "message")

_DURATION_RE: Final = re.compile(r"(\d+)(ms|s|m|h|d)")
_AGO_RE: Final = re.compile(r"(?:now)?\s*-?\s*(\d+(?:ms|s|m|h|d))")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
DAY_MS: Final = 86_400_000
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
METRIC_PATTERN: Final = r"^[a-z][a-z0-9_]{0,63}$"

Row = dict[str, Any]


# --- time ---------------------------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """Parse a positive duration such as ``"1h"``, ``"5m"``, ``"30s"``, ``"7d"``, ``"250ms"``.

    Returns:
        The duration in milliseconds.

    Raises:
        ValueError: the text is not ``<digits><unit>`` with unit ms, s, m, h or d, or is zero.

    Example:
        >>> parse_duration("5m"), parse_duration("250ms")
        (300000, 250)
    """
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        msg = f"duration: expected <number><unit> with unit ms, s, m, h or d (e.g. 5m), got {text!r}"
        raise ValueError(msg)
    value = int(match[1]) * _UNIT_MS[match[2]]
    if value <= 0:
        msg = f"duration: expected a positive duration, got {text!r}"
        raise ValueError(msg)
    return value


def parse_tz(name: str) -> tzinfo:
    """A time zone by IANA name (``UTC``, ``Asia/Shanghai``, ``Europe/Berlin``).

    Raises:
        ValueError: unknown name.
    """
    if name.strip().upper() in {"UTC", "Z"}:
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        msg = f"time zone: expected an IANA name such as UTC or Asia/Shanghai, got {name!r}"
        raise ValueError(msg) from exc


def _to_ms(dt: datetime) -> int:
    return (dt - _EPOCH) // _ONE_MS


def parse_instant(text: str, now_ms: int, tz: tzinfo = UTC) -> int:
    """Parse a point in time as epoch ms.

    Accepted: ``now``; a duration back from now (``30m``, ``-2h``, ``now-7d``); ``today`` or
    ``yesterday`` (midnight in ``tz``); an ISO 8601 date or date-time, with an offset (``Z``,
    ``+08:00``) or without one (then it is a wall time in ``tz``).

    Raises:
        ValueError: none of the above.

    Example:
        >>> parse_instant("1h", now_ms=7_200_000)
        3600000
        >>> parse_instant("2024-01-01T08:00", 0, ZoneInfo("Asia/Shanghai"))
        1704067200000
    """
    t = text.strip()
    if t == "now":
        return now_ms
    if t in {"today", "yesterday"}:
        local = (_EPOCH + timedelta(milliseconds=now_ms)).astimezone(tz)
        midnight = datetime(local.year, local.month, local.day, tzinfo=tz)
        if t == "yesterday":
            midnight = datetime.combine(midnight.date() - timedelta(days=1), midnight.timetz())
        return _to_ms(midnight)
    ago = _AGO_RE.fullmatch(t)
    if ago is not None:
        return now_ms - parse_duration(ago[1])
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        msg = (
            "time: expected now, a duration back from now (30m, 7d), today, yesterday or an ISO 8601 "
            f"time (2026-11-29T08:00, optionally with Z or +08:00), got {text!r}"
        )
        raise ValueError(msg) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return _to_ms(dt)


def format_time(ms: int, tz: tzinfo = UTC) -> str:
    """ISO 8601 with milliseconds: ``...Z`` in UTC, else with the zone's offset.

    Example:
        >>> format_time(0), format_time(0, ZoneInfo("Asia/Shanghai"))
        ('1970-01-01T00:00:00.000Z', '1970-01-01T08:00:00.000+08:00')
    """
    if tz is UTC:
        return format_ts(ms)
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz).isoformat(timespec="milliseconds")


# --- queries ------------------------------------------------------------------------------------


def percentile_of(agg: str) -> int | None:
    """The percentile of ``pNN`` aggregates, None for the others."""
    return int(agg[1:]) if agg.startswith("p") else None


def nearest_rank(values: Sequence[Any], pct: int) -> Any:
    """InfluxQL's ``percentile``: sorted value at ``floor(n * pct / 100 + 0.5) - 1``, or None.

    Example:
        >>> nearest_rank([5, 1, 4, 2, 3], 95), nearest_rank([1.0], 10)
        (5, None)
    """
    i = int(math.floor(len(values) * pct / 100.0 + 0.5)) - 1
    if i < 0 or i >= len(values):
        return None
    return sorted(values)[i]


def _check_name(what: str, value: str | None, pattern: str = NAME_PATTERN) -> None:
    if value is not None and not re.fullmatch(pattern, value):
        msg = f"history query: expected {what} matching {pattern}, got {value!r}"
        raise ValueError(msg)


def _check_range(since_ms: int, until_ms: int) -> None:
    if not 0 <= since_ms < until_ms:
        msg = f"history query: expected 0 <= since_ms < until_ms, got {since_ms}, {until_ms}"
        raise ValueError(msg)


def _check_agg(agg: str) -> None:
    if agg not in get_args(Agg):
        msg = f"history query: expected agg in {get_args(Agg)}, got {agg!r}"
        raise ValueError(msg)


@dataclass
class HistoryQuery:
    """A series query over ``[since_ms, until_ms)`` (times are window starts).

    Attributes:
        sensor_id: one sensor, or None for every sensor the other filters match.
        metric: metric name (required: numbers of different metrics do not mix).
        since_ms: inclusive lower bound, epoch ms.
        until_ms: exclusive upper bound, epoch ms.
        every_ms: bucket size; None returns the stored rows.
        agg: how a bucket reduces ``field``.
        field: which field to reduce (:data:`NUMERIC_FIELDS`; roll-ups: ``ROLLUP_FIELDS``).
        zone: filter by zone.
        kind: filter by feed kind.
        window_size_ms: filter by window size (when extra windows are configured).
        group_by: with ``every_ms``: one series per value of this tag.
        source: ``window`` (the window aggregates), a roll-up (``1h``, ``1d``) or a zone
            roll-up (``zone_5m``, ``zone_1h``: needs ``zone``; rows of that zone and metric).
        columns: fields of the stored rows returned without ``every_ms``.
        limit: stop after this many rows (None: all).
        rollups: with ``source="window"``: answer from a zone roll-up where it gives the same
            numbers (see the module docs); False reads the windows only.
    """

    sensor_id: str | None
    metric: str
    since_ms: int
    until_ms: int
    every_ms: int | None = None
    agg: Agg = "mean"
    field: str = "mean"
    zone: str | None = None
    kind: str | None = None
    window_size_ms: int | None = None
    group_by: GroupBy | None = None
    source: Source = "window"
    columns: tuple[str, ...] = RAW_COLUMNS[1:]
    limit: int | None = None
    rollups: bool = True

    def __post_init__(self) -> None:
        if self.sensor_id == "" or not self.metric:
            msg = f"history query: expected sensor_id and metric, got {self.sensor_id!r}, {self.metric!r}"
            raise ValueError(msg)
        _check_name("sensor_id", self.sensor_id, r"^[^\n\r\\]{1,256}$")
        _check_name("zone", self.zone, r"^[^\n\r\\]{1,256}$")
        _check_name("kind", self.kind, r"^[^\n\r\\]{1,64}$")
        _check_range(self.since_ms, self.until_ms)
        if self.every_ms is not None and self.every_ms <= 0:
            msg = f"history query: expected every_ms > 0, got {self.every_ms}"
            raise ValueError(msg)
        _check_agg(self.agg)
        if self.source not in get_args(Source):
            msg = f"history query: expected source in {get_args(Source)}, got {self.source!r}"
            raise ValueError(msg)
        allowed = {"window": NUMERIC_FIELDS, **dict.fromkeys(ZONE_ROLLUPS, ZONE_ROLLUP_FIELDS)}.get(
            self.source, ROLLUP_FIELDS
        )
        if self.source in ZONE_ROLLUPS and (self.zone is None or self.sensor_id or self.kind or self.window_size_ms):
            msg = f"history query: source {self.source} is per zone and metric: expected a zone and no sensor, kind or "
            msg += f"window size, got zone={self.zone!r} sensor_id={self.sensor_id!r} kind={self.kind!r}"
            raise ValueError(msg)
        if self.field not in allowed:
            msg = f"history query: expected field in {allowed}, got {self.field!r}"
            raise ValueError(msg)
        bad = [c for c in self.columns if c not in allowed]
        if bad or not self.columns:
            msg = f"history query: expected columns from {allowed}, got {self.columns!r}"
            raise ValueError(msg)
        if self.group_by is not None and (self.every_ms is None or self.group_by not in get_args(GroupBy)):
            msg = f"history query: group_by needs every_ms and one of {get_args(GroupBy)}, got {self.group_by!r}"
            raise ValueError(msg)
        if self.limit is not None and self.limit < 1:
            msg = f"history query: expected limit >= 1, got {self.limit}"
            raise ValueError(msg)

    @property
    def int_values(self) -> bool:
        """Whether bucket values are integers (as InfluxDB types them)."""
        return self.agg == "count" or (self.field in INT_FIELDS and self.agg != "mean")

    @property
    def per_sensor(self) -> bool:
        """Stored rows carry ``sensor_id`` (the query does not pin one sensor)."""
        return self.sensor_id is None and self.every_ms is None and self.source not in ZONE_ROLLUPS

    def tag_filters(self) -> list[tuple[str, str]]:
        """(tag, value) pairs every row must match, in a fixed order."""
        pairs = [("sensor_id", self.sensor_id), ("metric", self.metric), ("zone", self.zone), ("kind", self.kind)]
        if self.window_size_ms is not None:
            pairs.append(("window_size_ms", str(self.window_size_ms)))
        return [(k, v) for k, v in pairs if v is not None]


@dataclass
class TopQuery:
    """The ``n`` zones with the largest ``agg(field)`` of ``metric`` over the period."""

    metric: str
    since_ms: int
    until_ms: int
    n: int = 10
    agg: Agg = "mean"
    field: str = "mean"
    kind: str | None = None
    window_size_ms: int | None = None

    def __post_init__(self) -> None:
        if not self.metric:
            msg = "history query: expected a metric for top zones"
            raise ValueError(msg)
        _check_range(self.since_ms, self.until_ms)
        _check_agg(self.agg)
        if self.field not in NUMERIC_FIELDS:
            msg = f"history query: expected field in {NUMERIC_FIELDS}, got {self.field!r}"
            raise ValueError(msg)
        if self.n < 1:
            msg = f"history query: expected n >= 1, got {self.n}"
            raise ValueError(msg)

    def as_series(self) -> HistoryQuery:
        """The series query whose filters this query uses."""
        return HistoryQuery(None, self.metric, self.since_ms, self.until_ms, agg=self.agg, field=self.field,
                            kind=self.kind, window_size_ms=self.window_size_ms)  # fmt: skip


@dataclass
class AlertQuery:
    """Alert events in ``[since_ms, until_ms)`` (alert time), with evidence."""

    since_ms: int
    until_ms: int
    sensor_id: str | None = None
    zone: str | None = None
    kind: str | None = None
    metric: str | None = None
    severity: str | None = None
    rule: str | None = None
    state: str | None = None
    evidence_ms: int = 600_000
    limit: int | None = None

    def __post_init__(self) -> None:
        _check_range(self.since_ms, self.until_ms)
        for name in ("sensor_id", "zone", "kind", "metric", "severity", "rule", "state"):
            value = getattr(self, name)
            if value is not None and (value == "" or any(c in value for c in "\n\r\\")):
                msg = f"history query: expected a non-empty {name} without line breaks, got {value!r}"
                raise ValueError(msg)
        if self.evidence_ms < 0 or (self.limit is not None and self.limit < 1):
            msg = f"history query: expected evidence_ms >= 0 and limit >= 1, got {self.evidence_ms}, {self.limit}"
            raise ValueError(msg)

    def tag_filters(self) -> list[tuple[str, str]]:
        """(tag, value) pairs every alert must match."""
        pairs = [(t, getattr(self, "sensor_id" if t == "sensor_id" else t)) for t in _ALERT_TAGS]
        return [(k, v) for k, v in pairs if v is not None]


def _raw_row(q: HistoryQuery, time_ms: Any, sensor: Any, values: Sequence[Any]) -> Row:
    row: Row = {"time_ms": int(time_ms)}
    if q.per_sensor:
        row["sensor_id"] = sensor or ""
    for name, value in zip(q.columns, values, strict=True):
        row[name] = None if value is None else int(value) if name in INT_FIELDS else float(value)
    return row


def _bucket_row(q: HistoryQuery, time_ms: Any, group: Any, value: Any) -> Row:
    row: Row = {"time_ms": int(time_ms)}
    if q.group_by is not None:
        row[q.group_by] = group or ""
    row["value"] = int(value) if q.int_values else float(value)
    return row


def _reduce(agg: str, values: Sequence[Any]) -> Any:
    if agg == "count":
        return len(values)
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    pct = percentile_of(agg)
    if pct is not None:
        return nearest_rank(values, pct)
    total = 0 if agg == "sum" and isinstance(values[0], int) else 0.0
    for value in values:  # left to right, like InfluxQL's reducers: same rounding, same numbers
        total += value
    return total if agg == "sum" else total / len(values)


# --- SQLite -------------------------------------------------------------------------------------


def _measurement(q: HistoryQuery) -> str:
    return AGG_MEASUREMENT if q.source == "window" else (ROLLUPS | ZONE_ROLLUPS)[q.source][0]


def _sql_where(
    filters: Iterable[tuple[str, str]], time_column: str, since_ms: int, until_ms: int
) -> tuple[str, list[Any]]:
    # Tag names are constants of this module; values are bound parameters.
    parts = [f'"{tag}" = ?' for tag, _ in filters]
    args: list[Any] = [value for _, value in filters]
    parts += [f'"{time_column}" >= ?', f'"{time_column}" < ?']
    return " AND ".join(parts), [*args, since_ms, until_ms]


@contextlib.contextmanager
def _sqlite_ro(path: Path) -> Iterator[sqlite3.Connection | None]:
    if not path.exists():
        logger.warning("history store missing path=%s", path)
        yield None
        return
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            yield conn
    except sqlite3.Error as exc:
        msg = f"history query on sqlite store path={path} failed: {exc}"
        raise SinkError(msg) from exc


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _grouped(rows: Iterable[Sequence[Any]], key: Callable[[Sequence[Any]], Any]) -> Iterator[tuple[Any, list[Any]]]:
    """Consecutive rows with the same key, as (key, [last column of each row])."""
    current: Any = None
    values: list[Any] = []
    for row in rows:
        k = key(row)
        if values and k != current:
            yield current, values
            values = []
        current = k
        values.append(row[-1])
    if values:
        yield current, values


def _cursor_rows(cur: sqlite3.Cursor) -> Iterator[Sequence[Any]]:
    while chunk := cur.fetchmany(20_000):
        yield from chunk


def sqlite_series(path: str | Path, q: HistoryQuery) -> Iterator[Row]:
    """Stream a series query from the embedded store (read-only; the worker keeps writing)."""
    with _sqlite_ro(Path(path)) as conn:
        table = _measurement(q)
        if conn is None or not _has_table(conn, table):
            return
        where, args = _sql_where(q.tag_filters(), "start_ms", q.since_ms, q.until_ms)
        if q.every_ms is None:
            key = ['"sensor_id"'] if q.per_sensor else ["''"]
            cols = ", ".join(f'"{c}"' for c in q.columns)  # checked against the layout
            order = '"sensor_id", ' if q.per_sensor else ""
            cur = conn.execute(
                f'SELECT "start_ms", {key[0]}, {cols} FROM "{table}" WHERE {where} '  # noqa: S608
                f'ORDER BY {order}"start_ms", rowid',
                args,
            )
            for r in _cursor_rows(cur):
                yield _raw_row(q, r[0], r[1], r[2:])
            return
        every = q.every_ms
        group = f'"{q.group_by}"' if q.group_by else "''"
        order = f"{group}, " if q.group_by else ""
        if q.agg in ("min", "max", "count") or percentile_of(q.agg) is not None:
            yield from _sqlite_selector_buckets(conn, q, table, where, args)
            return
        cur = conn.execute(
            f'SELECT {group}, ("start_ms" / ?) * ?, "{q.field}" FROM "{table}" '  # noqa: S608 - checked names
            f'WHERE {where} AND "{q.field}" IS NOT NULL ORDER BY {order}"start_ms", rowid',
            [every, every, *args],
        )
        for (g, bucket), values in _grouped(_cursor_rows(cur), lambda r: (r[0], r[1])):
            value = _reduce(q.agg, values)
            if value is not None:
                yield _bucket_row(q, bucket, g, value)


def _sqlite_selector_buckets(
    conn: sqlite3.Connection, q: HistoryQuery, table: str, where: str, args: list[Any]
) -> Iterator[Row]:
    """min, max, count and percentiles are exact in any order: let SQLite reduce them."""
    every = q.every_ms
    group = f'"{q.group_by}"' if q.group_by else "''"
    inner = (
        f'SELECT {group} AS g, ("start_ms" / ?) * ? AS b, "{q.field}" AS v FROM "{table}" '  # noqa: S608 - checked
        f'WHERE {where} AND "{q.field}" IS NOT NULL'
    )
    pct = percentile_of(q.agg)
    if pct is not None:
        order = "g, b" if q.group_by else '"start_ms"'  # the index order when there is no group
        cur = conn.execute(f"{inner} ORDER BY {order}", [every, every, *args])  # noqa: S608
        yield from _percentile_buckets(q, cur, pct)
        return
    call = {"min": "MIN(v)", "max": "MAX(v)", "count": "COUNT(v)"}[q.agg]
    sql = f"SELECT g, b, {call} FROM ({inner}) GROUP BY g, b ORDER BY g, b"  # noqa: S608
    for g, bucket, value in _cursor_rows(conn.execute(sql, [every, every, *args])):
        if value is not None:
            yield _bucket_row(q, bucket, g, value)


def _percentile_buckets(q: HistoryQuery, cur: sqlite3.Cursor, pct: int) -> Iterator[Row]:
    """Nearest-rank percentiles of rows ordered by (group, bucket), a chunk at a time with numpy."""
    import numpy as np

    pending: list[Any] = []

    def reduce(rows: list[Any]) -> Iterator[Row]:
        if not rows:
            return
        n = len(rows)
        groups, buckets, values = zip(*rows, strict=True)
        b = np.fromiter(buckets, dtype=np.int64, count=n)
        v = np.fromiter(values, dtype=np.float64, count=n)
        change = b[1:] != b[:-1]
        if q.group_by is not None:
            change |= np.fromiter((x != y for x, y in zip(groups[1:], groups[:-1], strict=True)), bool, n - 1)
        bounds = [0, *(np.flatnonzero(change) + 1).tolist(), n]
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            i = int(math.floor((e - s) * pct / 100.0 + 0.5)) - 1
            if 0 <= i < e - s:
                yield _bucket_row(q, int(b[s]), groups[s], float(np.partition(v[s:e], i)[i]))

    while chunk := cur.fetchmany(200_000):
        pending.extend(chunk)
        last = (pending[-1][0], pending[-1][1])
        cut = len(pending)
        while cut > 0 and (pending[cut - 1][0], pending[cut - 1][1]) == last:
            cut -= 1
        yield from reduce(pending[:cut])
        pending = pending[cut:]
    yield from reduce(pending)


def sqlite_top(path: str | Path, q: TopQuery) -> list[Row]:
    """Per-zone ``agg(field)`` from the embedded store (unsorted)."""
    out: list[Row] = []
    with _sqlite_ro(Path(path)) as conn:
        if conn is None or not _has_table(conn, AGG_MEASUREMENT):
            return out
        where, args = _sql_where(q.as_series().tag_filters(), "start_ms", q.since_ms, q.until_ms)
        cur = conn.execute(
            f'SELECT "zone", "{q.field}" FROM "{AGG_MEASUREMENT}" WHERE {where} '  # noqa: S608 - checked names
            f'AND "{q.field}" IS NOT NULL ORDER BY "zone", "start_ms", rowid',
            args,
        )
        for zone, values in _grouped(_cursor_rows(cur), lambda r: r[0]):
            value = _reduce(q.agg, values)
            if value is not None:
                out.append({"zone": zone, "value": value})
    return out


def sqlite_alerts(path: str | Path, q: AlertQuery) -> Iterator[Row]:
    """Stream alert events from the embedded store, by (time, alert id)."""
    with _sqlite_ro(Path(path)) as conn:
        if conn is None or not _has_table(conn, ALERT_MEASUREMENT):
            return
        where, args = _sql_where(q.tag_filters(), "ts_ms", q.since_ms, q.until_ms)
        cols = ", ".join(f'"{c}"' for c in ALERT_COLUMNS)
        cur = conn.execute(
            f'SELECT "ts_ms", {cols} FROM "{ALERT_MEASUREMENT}" WHERE {where} ORDER BY "ts_ms", "alert_id"',  # noqa: S608
            args,
        )
        for r in _cursor_rows(cur):
            yield _alert_row(dict(zip(("time_ms", *ALERT_COLUMNS), r, strict=True)))


def _alert_row(raw: dict[str, Any]) -> Row:
    row: Row = {"time_ms": int(raw["time_ms"])}
    for name in ALERT_COLUMNS:
        value = raw.get(name)
        if name in ("value", "threshold"):
            row[name] = None if value is None else float(value)
        elif name == "latency_ms":
            row[name] = None if value is None else int(value)
        else:
            row[name] = "" if value is None else str(value)
    return row


# --- InfluxDB 1.x -------------------------------------------------------------------------------


def influxql_ident(name: str) -> str:
    """Quote an InfluxQL identifier.

    Example:
        >>> influxql_ident('we"ird')
        '"we\\\\"ird"'
    """
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influxql_string(value: str) -> str:
    """Quote an InfluxQL string literal.

    Example:
        >>> print(influxql_string("o'clock"))
        'o\\'clock'
    """
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return "'" + escaped + "'"


def _influxql_where(filters: Iterable[tuple[str, str]], since_ms: int, until_ms: int) -> str:
    parts = [f"{influxql_ident(tag)} = {influxql_string(value)}" for tag, value in filters]
    parts += [f"time >= {int(since_ms)}ms", f"time < {int(until_ms)}ms"]
    return "WHERE " + " AND ".join(parts)


def _influxql_call(agg: str, field_name: str) -> str:
    pct = percentile_of(agg)
    if pct is not None:
        return f"percentile({influxql_ident(field_name)}, {pct})"
    return f"{agg}({influxql_ident(field_name)})"


def _influxql_source(q: HistoryQuery) -> str:
    if q.source == "window":
        return influxql_ident(AGG_MEASUREMENT)
    from connectors.retention import RP_ROLLUP

    return f"{influxql_ident(RP_ROLLUP)}.{influxql_ident(_measurement(q))}"


def build_influxql(q: HistoryQuery) -> str:
    """The InfluxQL statement of a series query.

    Example:
        >>> print(build_influxql(HistoryQuery("s1", "pm25", 0, 3600000, every_ms=300000)))
        SELECT mean("mean") FROM "window_agg" WHERE "sensor_id" = 's1' AND "metric" = 'pm25' \
AND time >= 0ms AND time < 3600000ms GROUP BY time(300000ms) fill(none)
    """
    where = _influxql_where(q.tag_filters(), q.since_ms, q.until_ms)
    source = _influxql_source(q)
    if q.every_ms is None:
        columns = ", ".join(influxql_ident(c) for c in q.columns)
        group = ' GROUP BY "sensor_id"' if q.per_sensor else ""
        return f"SELECT {columns} FROM {source} {where}{group}"  # noqa: S608 - every part is quoted
    by = f", {influxql_ident(q.group_by)}" if q.group_by else ""
    group = f"GROUP BY time({int(q.every_ms)}ms){by} fill(none)"
    return f"SELECT {_influxql_call(q.agg, q.field)} FROM {source} {where} {group}"  # noqa: S608 - quoted


def build_influxql_top(q: TopQuery) -> str:
    """The InfluxQL statement of a top-zones query (one value per zone; sorted by the caller)."""
    where = _influxql_where(q.as_series().tag_filters(), q.since_ms, q.until_ms)
    return f'SELECT {_influxql_call(q.agg, q.field)} FROM {influxql_ident(AGG_MEASUREMENT)} {where} GROUP BY "zone"'  # noqa: S608


def build_influxql_alerts(q: AlertQuery) -> str:
    """The InfluxQL statement of an alerts query."""
    where = _influxql_where(q.tag_filters(), q.since_ms, q.until_ms)
    columns = ", ".join(influxql_ident(c) for c in ALERT_COLUMNS)
    return f"SELECT {columns} FROM {influxql_ident(ALERT_MEASUREMENT)} {where}"  # noqa: S608 - quoted


def _influx_request(cfg: InfluxSettings, params: dict[str, str]) -> urllib.request.Request:
    if not cfg.url.startswith(("http://", "https://")):
        msg = f"URBAN_INFLUX__URL: expected http:// or https://, got {cfg.url!r}"
        raise SinkError(msg)
    query = urllib.parse.urlencode({"db": cfg.database, "epoch": "ms", **params})
    request = urllib.request.Request(f"{cfg.url.rstrip('/')}/query?{query}")  # noqa: S310
    if cfg.username:
        password = cfg.password.get_secret_value() if cfg.password else ""
        token = base64.b64encode(f"{cfg.username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def _check_result(where: str, result: dict[str, Any]) -> None:
    if "error" in result:
        msg = f"{where} failed: {result['error']}"
        raise SinkError(msg)


def influxql_get(cfg: InfluxSettings, statement: str) -> list[dict[str, Any]]:
    """Run one InfluxQL statement with ``GET /query?epoch=ms`` and return its series.

    Raises:
        SinkError: the server is unreachable, refuses the query or truncates the answer.
    """
    request = _influx_request(cfg, {"q": statement})
    where = f"history query to influxdb-v1 {cfg.url} db={cfg.database}"
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_ms / 1000) as resp:  # noqa: S310
            doc = orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        msg = f"{where} failed: HTTP {exc.code}: {body[:300]}"
        raise SinkError(msg) from exc
    except (OSError, orjson.JSONDecodeError) as exc:
        msg = f"{where} failed: {type(exc).__name__}: {exc}"
        raise SinkError(msg) from exc
    result = (doc.get("results") or [{}])[0]
    _check_result(where, result)
    if result.get("partial"):
        msg = f"{where} failed: partial result (raise max-row-limit)"
        raise SinkError(msg)
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def influxql_stream(cfg: InfluxSettings, statement: str, chunk_size: int = 10_000) -> Iterator[dict[str, Any]]:
    """Run one InfluxQL statement with ``chunked=true`` and yield its series pieces in order.

    A long series arrives as several pieces with the same name and tags.

    Raises:
        SinkError: the server is unreachable or refuses the query (also mid-stream).
    """
    request = _influx_request(cfg, {"q": statement, "chunked": "true", "chunk_size": str(chunk_size)})
    where = f"history query to influxdb-v1 {cfg.url} db={cfg.database}"
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_ms / 1000) as resp:  # noqa: S310
            for line in resp:
                if not line.strip():
                    continue
                for result in orjson.loads(line).get("results", []):
                    _check_result(where, result)
                    yield from result.get("series", [])
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        msg = f"{where} failed: HTTP {exc.code}: {body[:300]}"
        raise SinkError(msg) from exc
    except (OSError, orjson.JSONDecodeError) as exc:
        msg = f"{where} failed: {type(exc).__name__}: {exc}"
        raise SinkError(msg) from exc


def influxql_series(cfg: InfluxSettings, q: HistoryQuery) -> Iterator[Row]:
    """Stream a series query from InfluxDB 1.x."""
    for series in influxql_stream(cfg, build_influxql(q)):
        tags = series.get("tags") or {}
        for values in series.get("values", []):
            if q.every_ms is None:
                yield _raw_row(q, values[0], tags.get("sensor_id"), values[1:])
            elif values[1] is not None:
                yield _bucket_row(q, values[0], tags.get(q.group_by) if q.group_by else None, values[1])


def influxql_top(cfg: InfluxSettings, q: TopQuery) -> list[Row]:
    """Per-zone ``agg(field)`` from InfluxDB 1.x (unsorted)."""
    out = []
    for series in influxql_get(cfg, build_influxql_top(q)):
        zone = (series.get("tags") or {}).get("zone") or ""
        for values in series.get("values", []):
            if values[1] is not None:
                out.append({"zone": zone, "value": values[1]})
    return out


def influxql_alerts(cfg: InfluxSettings, q: AlertQuery) -> Iterator[Row]:
    """Stream alert events from InfluxDB 1.x."""
    for series in influxql_stream(cfg, build_influxql_alerts(q)):
        columns = ["time_ms", *series["columns"][1:]]
        for values in series.get("values", []):
            yield _alert_row(dict(zip(columns, values, strict=True)))


# --- InfluxDB 2.x -------------------------------------------------------------------------------


def flux_string(value: str) -> str:
    """Quote a Flux string literal (``${`` is escaped: Flux would interpolate it).

    Example:
        >>> print(flux_string('a"${b}'))
        "a\\"\\${b}"
    """
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("${", "\\${")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return '"' + escaped + '"'


def _flux_time(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _flux_head(bucket: str, measurement: str, filters: Iterable[tuple[str, str]], since_ms: int, until_ms: int) -> str:
    preds = [f'r._measurement == "{measurement}"'] + [f"r.{tag} == {flux_string(v)}" for tag, v in filters]
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: {_flux_time(since_ms)}, stop: {_flux_time(until_ms)})\n"
        f"  |> filter(fn: (r) => {' and '.join(preds)})\n"
    )


def _flux_reduce(agg: str) -> str:
    """Reduce each table to one row: a Flux call, or InfluxQL's nearest rank for ``pNN``.

    The rank trick: number the rows 1..n ascending by value (``lo``), then descending by that
    number (``hi``); ``lo + hi - 1 = n`` on every row, so the row with
    ``lo = floor(n * p / 100 + 0.5)`` is InfluxQL's percentile, ties included.
    """
    pct = percentile_of(agg)
    if pct is None:
        return f"  |> {agg}()\n"
    return (
        '  |> sort(columns: ["_value"])\n'
        "  |> map(fn: (r) => ({r with lo: 1, hi: 1}))\n"
        '  |> cumulativeSum(columns: ["lo"])\n'
        '  |> sort(columns: ["lo"], desc: true)\n'
        '  |> cumulativeSum(columns: ["hi"])\n'
        f"  |> filter(fn: (r) => r.lo == int(v: math.floor(x: float(v: r.lo + r.hi - 1) * {pct / 100!r} + 0.5)))\n"
    )


def build_flux(bucket: str, q: HistoryQuery) -> str:
    """The Flux script of a series query.

    Bucket times come from window starts; :func:`flux_series` re-aligns the first bucket to the
    epoch grid because Flux truncates it at ``range(start:)``.
    """
    head = _flux_head(bucket, _measurement(q), q.tag_filters(), q.since_ms, q.until_ms)
    if q.every_ms is None:
        fields = " or ".join(f'r._field == "{c}"' for c in q.columns)
        key = ["sensor_id"] if q.per_sensor else []
        keep = ", ".join(f'"{c}"' for c in ["_time", *key, *q.columns])
        order = ", ".join(f'"{c}"' for c in [*key, "_time"])
        return head + (
            f"  |> filter(fn: (r) => {fields})\n"
            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
            "  |> group()\n"
            f"  |> keep(columns: [{keep}])\n"
            f"  |> sort(columns: [{order}])"
        )
    group = f'group(columns: ["{q.group_by}"])' if q.group_by else "group()"
    body = head + f'  |> filter(fn: (r) => r._field == "{q.field}")\n  |> {group}\n  |> sort(columns: ["_time"])\n'
    if percentile_of(q.agg) is None:
        body += (
            f"  |> aggregateWindow(every: {int(q.every_ms)}ms, fn: {q.agg}, createEmpty: false,"
            ' timeSrc: "_start")'
        )
    else:
        keep = ", ".join(f'"{c}"' for c in ["_time", *([q.group_by] if q.group_by else []), "_value"])
        body = 'import "math"\n\n' + body + (
            f"  |> window(every: {int(q.every_ms)}ms, createEmpty: false)\n"
            + _flux_reduce(q.agg)
            + "  |> map(fn: (r) => ({r with _time: r._start}))\n"
            + "  |> group()\n"
            + f"  |> keep(columns: [{keep}])"
        )
        if not q.group_by:
            body += '\n  |> sort(columns: ["_time"])'
    if q.group_by:
        body += f'\n  |> group()\n  |> sort(columns: ["{q.group_by}", "_time"])'
    return body


def build_flux_top(bucket: str, q: TopQuery) -> str:
    """The Flux script of a top-zones query (one row per zone; sorted by the caller)."""
    head = _flux_head(bucket, AGG_MEASUREMENT, q.as_series().tag_filters(), q.since_ms, q.until_ms)
    prefix = 'import "math"\n\n' if percentile_of(q.agg) is not None else ""
    return prefix + head + (
        f'  |> filter(fn: (r) => r._field == "{q.field}")\n'
        '  |> group(columns: ["zone"])\n'
        '  |> sort(columns: ["_time"])\n'
        + _flux_reduce(q.agg)
        + "  |> group()\n"
        '  |> keep(columns: ["zone", "_value"])'
    )


def build_flux_alerts(bucket: str, q: AlertQuery) -> str:
    """The Flux script of an alerts query."""
    head = _flux_head(bucket, ALERT_MEASUREMENT, q.tag_filters(), q.since_ms, q.until_ms)
    return head + (
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        "  |> group()\n"
        '  |> sort(columns: ["_time", "alert_id"])'
    )


def _ms(value: datetime) -> int:
    return (value - _EPOCH) // _ONE_MS


def flux_records(cfg: InfluxSettings, script: str) -> Iterator[Any]:
    """Stream the records of one Flux script (influxdb-client ``query_stream``).

    Raises:
        SinkError: the server is unreachable or refuses the query (the token is never shown).
    """
    if cfg.token is None:
        msg = "URBAN_INFLUX__TOKEN is required for InfluxDB 2.x"
        raise SinkError(msg)
    token = cfg.token.get_secret_value()
    try:
        with InfluxDBClient(url=cfg.url, token=token, org=cfg.org, timeout=cfg.timeout_ms) as client:
            yield from client.query_api().query_stream(script, org=cfg.org)
    except Exception as exc:  # the client raises ApiException, urllib3 and socket errors
        text = str(getattr(exc, "message", None) or exc).replace(token, "***")[:300]
        msg = f"history query to influxdb-v2 {cfg.url} bucket={cfg.bucket} failed: {text}"
        raise SinkError(msg) from exc


def _flux_bucket(settings: Settings, q: HistoryQuery) -> str:
    return settings.influx.bucket if q.source == "window" else rollup_target(settings, q.source)[0]


def flux_series(settings: Settings, q: HistoryQuery) -> Iterator[Row]:
    """Stream a series query from InfluxDB 2.x."""
    for rec in flux_records(settings.influx, build_flux(_flux_bucket(settings, q), q)):
        v = rec.values
        if q.every_ms is None:
            yield _raw_row(q, _ms(rec.get_time()), v.get("sensor_id"), [v.get(c) for c in q.columns])
        elif rec.get_value() is not None:
            time_ms = _ms(rec.get_time()) // q.every_ms * q.every_ms
            yield _bucket_row(q, time_ms, v.get(q.group_by) if q.group_by else None, rec.get_value())


def flux_top(settings: Settings, q: TopQuery) -> list[Row]:
    """Per-zone ``agg(field)`` from InfluxDB 2.x (unsorted)."""
    records = flux_records(settings.influx, build_flux_top(settings.influx.bucket, q))
    return [{"zone": rec.values.get("zone") or "", "value": rec.get_value()} for rec in records
            if rec.get_value() is not None]  # fmt: skip


def flux_alerts(settings: Settings, q: AlertQuery) -> Iterator[Row]:
    """Stream alert events from InfluxDB 2.x."""
    for rec in flux_records(settings.influx, build_flux_alerts(settings.influx.bucket, q)):
        yield _alert_row({**rec.values, "time_ms": _ms(rec.get_time())})


# --- entry points -------------------------------------------------------------------------------


def _limited(rows: Iterator[Row], limit: int | None) -> Iterator[Row]:
    if limit is None:
        yield from rows
        return
    it = islice(rows, limit)
    try:
        yield from it
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()  # stop reading from the server


#: (agg, field) of a zone query -> the zone roll-up field that holds the bucket's value.
ZONE_ROLLUP_ANSWERS: Final[dict[tuple[str, str], str]] = {
    ("mean", "mean"): "mean",
    ("count", "mean"): "windows",
    **{(f"p{p}", "mean"): f"p{p}" for p in ZONE_PERCENTILES},
    ("min", "min"): "min",
    ("max", "max"): "max",
    ("sum", "count"): "count",
    ("sum", "sum"): "sum",
}


@dataclass(frozen=True)
class RollupPlan:
    """A zone roll-up that answers the whole periods ``[since_ms, until_ms)`` of a query."""

    name: str
    column: str
    since_ms: int
    until_ms: int


def zone_rollup_plan(q: HistoryQuery) -> RollupPlan | None:
    """The zone roll-up that can answer ``q``'s whole buckets, or None (read the windows).

    Example:
        >>> zone_rollup_plan(HistoryQuery(None, "pm25", 60_000, 3_700_000, every_ms=300_000, agg="p95", zone="z"))
        RollupPlan(name='zone_5m', column='p95', since_ms=300000, until_ms=3600000)
        >>> zone_rollup_plan(HistoryQuery(None, "pm25", 0, 3_600_000, every_ms=600_000, agg="p95", zone="z")) is None
        True
    """
    if not q.rollups or q.source != "window" or q.every_ms is None or q.zone is None:
        return None
    if q.sensor_id is not None or q.kind is not None or q.window_size_ms is not None or q.group_by is not None:
        return None
    column = ZONE_ROLLUP_ANSWERS.get((q.agg, q.field))
    name = next((n for n, (_, period_ms) in ZONE_ROLLUPS.items() if period_ms == q.every_ms), None)
    if column is None or name is None:
        return None
    since = -(-q.since_ms // q.every_ms) * q.every_ms
    until = q.until_ms // q.every_ms * q.every_ms
    return RollupPlan(name, column, since, until) if since < until else None


def _store_series(settings: Settings, q: HistoryQuery) -> Iterator[Row]:
    cfg = settings.influx
    if not cfg.url:
        return sqlite_series(settings.store.path, q)
    if cfg.version == 1:
        return influxql_series(cfg, q)
    return flux_series(settings, q)


def _zone_rollup_series(settings: Settings, q: HistoryQuery, plan: RollupPlan) -> Iterator[Row]:
    """Buckets of a zone query: whole, final periods from the roll-up, the rest from the windows."""
    stored = HistoryQuery(None, q.metric, plan.since_ms, plan.until_ms, zone=q.zone, source=plan.name,  # type: ignore[arg-type]
                          columns=(plan.column,))  # fmt: skip
    rows = list(_store_series(settings, stored))
    # The newest periods may still change (a late window, a roll-up run to come): read them from the windows.
    newest_end = rows[-1]["time_ms"] + rollup_period_ms(plan.name) if rows else 0
    final = min(plan.until_ms, newest_end - resample_ms(plan.name))
    windows = replace(q, rollups=False, limit=None)
    if final <= plan.since_ms:
        yield from _store_series(settings, windows)
        return
    logger.debug("history zone=%s metric=%s from %s until_ms=%d", q.zone, q.metric, plan.name, final)
    if q.since_ms < plan.since_ms:
        yield from _store_series(settings, replace(windows, until_ms=plan.since_ms))
    for r in rows:
        if r["time_ms"] >= final:
            break
        if r[plan.column] is not None:
            yield _bucket_row(q, r["time_ms"], None, r[plan.column])
    if final < q.until_ms:
        yield from _store_series(settings, replace(windows, since_ms=final))


def iter_series(settings: Settings, q: HistoryQuery) -> Iterator[Row]:
    """Stream a series query from the store the settings select (zone roll-ups where they answer it).

    Raises:
        SinkError: the store could not be read.
    """
    plan = zone_rollup_plan(q)
    rows = _store_series(settings, q) if plan is None else _zone_rollup_series(settings, q, plan)
    return _limited(rows, q.limit)


def query_history(settings: Settings, q: HistoryQuery) -> list[Row]:
    """Run a series query and return all rows (see :func:`iter_series` to stream them)."""
    rows = list(iter_series(settings, q))
    logger.debug("history rows=%d sensor_id=%s metric=%s", len(rows), q.sensor_id, q.metric)
    return rows


def top_zones(settings: Settings, q: TopQuery) -> list[Row]:
    """The ``n`` zones with the largest ``agg(field)``: ``{rank, zone, value}`` rows."""
    cfg = settings.influx
    if not cfg.url:
        per_zone = sqlite_top(settings.store.path, q)
    elif cfg.version == 1:
        per_zone = influxql_top(cfg, q)
    else:
        per_zone = flux_top(settings, q)
    int_values = q.agg == "count" or (q.field in INT_FIELDS and q.agg != "mean")
    ranked = sorted(per_zone, key=lambda r: (-r["value"], r["zone"]))[: q.n]
    return [{"rank": i + 1, "zone": r["zone"], "value": int(r["value"]) if int_values else float(r["value"])}
            for i, r in enumerate(ranked)]  # fmt: skip


def _time_then_id(rows: Iterator[Row]) -> Iterator[Row]:
    """Order rows that share a timestamp by alert id (servers return them in series order)."""
    run: list[Row] = []
    for row in rows:
        if run and row["time_ms"] != run[0]["time_ms"]:
            yield from sorted(run, key=lambda r: r["alert_id"])
            run = []
        run.append(row)
    yield from sorted(run, key=lambda r: r["alert_id"])


def iter_alerts(settings: Settings, q: AlertQuery) -> Iterator[Row]:
    """Stream alert events with their evidence (``evidence``: the windows before each alert).

    Raises:
        SinkError: the store could not be read.
    """
    cfg = settings.influx
    if not cfg.url:
        rows = sqlite_alerts(settings.store.path, q)
    elif cfg.version == 1:
        rows = influxql_alerts(cfg, q)
    else:
        rows = flux_alerts(settings, q)
    for alert in _limited(_time_then_id(rows), q.limit):
        alert["evidence"] = list(_evidence(settings, alert, q.evidence_ms))
        yield alert


def _evidence(settings: Settings, alert: Row, evidence_ms: int) -> Iterator[Row]:
    sensor, zone, metric = alert["sensor_id"] or None, alert["zone"] or None, alert["metric"]
    since = max(0, alert["time_ms"] - evidence_ms)
    if evidence_ms <= 0 or not metric or (sensor is None and zone is None) or since >= alert["time_ms"]:
        return iter(())
    q = HistoryQuery(sensor, metric, since, alert["time_ms"], zone=None if sensor else zone)
    return iter_series(settings, q)


# --- output -------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def format_rows(rows: Iterable[Row], fmt: OutputFormat = "table") -> str:
    """Render rows as an aligned text table, CSV or JSON (all at once; see :func:`write_rows`).

    Example:
        >>> print(format_rows([{"time_ms": 0, "value": 1.5}, {"time_ms": 60000, "value": 2.0}]))
        time                      time_ms  value
        ------------------------  -------  -----
        1970-01-01T00:00:00.000Z        0    1.5
        1970-01-01T00:01:00.000Z    60000    2.0
    """
    rows = [{"time": format_ts(r["time_ms"]), **r} if "time_ms" in r else r for r in rows]
    if fmt == "json":
        return orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode()
    if fmt not in get_args(OutputFormat):
        msg = f"output format: expected one of {get_args(OutputFormat)}, got {fmt!r}"
        raise ValueError(msg)
    if not rows:
        return "" if fmt == "csv" else "(no rows)"
    columns = list(rows[0])
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(r.get(c, "")) for c in columns] for r in rows)
        return out.getvalue()
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _flat(row: Row) -> Row:
    """Flat formats summarise an alert's evidence: window count, lowest min, highest max."""
    if "evidence" not in row:
        return row
    flat = {k: v for k, v in row.items() if k != "evidence"}
    ev = row["evidence"]
    flat["evidence_windows"] = len(ev)
    flat["evidence_min"] = min((w["min"] for w in ev if w.get("min") is not None), default=None)
    flat["evidence_max"] = max((w["max"] for w in ev if w.get("max") is not None), default=None)
    return flat


def write_rows(rows: Iterable[Row], fmt: OutputFormat, out: TextIO, tz: tzinfo = UTC, table_sample: int = 500) -> int:
    """Stream rows to ``out`` as a table, CSV, JSON (one array) or NDJSON; returns the row count.

    A ``time`` column (ISO 8601 in ``tz``) is put before ``time_ms``. The table's column widths
    come from the first ``table_sample`` rows, so a table also streams.
    """
    if fmt not in get_args(OutputFormat):
        msg = f"output format: expected one of {get_args(OutputFormat)}, got {fmt!r}"
        raise ValueError(msg)

    def timed(r: Row) -> Row:
        return {"time": format_time(r["time_ms"], tz), **r} if "time_ms" in r else r

    n = 0
    it = iter(rows)
    if fmt in ("json", "ndjson"):
        if fmt == "json":
            out.write("[")
        for r in it:
            text = orjson.dumps(timed(r)).decode()
            if fmt == "json":
                out.write(("\n" if n == 0 else ",\n") + text)
            else:
                out.write(text + "\n")
            n += 1
        if fmt == "json":
            out.write("\n]\n" if n else "]\n")
        return n
    head = [_flat(timed(r)) for r in islice(it, table_sample)]
    if not head:
        out.write("" if fmt == "csv" else "(no rows)\n")
        return 0
    columns = list(head[0])
    rest = (_flat(timed(r)) for r in it)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in head:
            writer.writerow([_cell(r.get(c)) for c in columns])
        n = len(head)
        for r in rest:
            writer.writerow([_cell(r.get(c)) for c in columns])
            n += 1
        return n
    widths = [max(len(c), *(len(_cell(r.get(c))) for r in head)) for c in columns]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in head:
        out.write("  ".join(_cell(r.get(c)).rjust(w) for c, w in zip(columns, widths, strict=True)) + "\n")
    n = len(head)
    for r in rest:
        out.write("  ".join(_cell(r.get(c)).rjust(w) for c, w in zip(columns, widths, strict=True)) + "\n")
        n += 1
    return n


# --- request parameters (CLI and HTTP API) ------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Bounds of one request (the HTTP API sets them; the CLI streams without a row bound).

    Attributes:
        max_rows: most rows (series rows, alerts) one answer may hold.
        max_range_ms: longest time range of a downsampled, top-zones or alerts query.
        max_raw_range_ms: longest time range of a query returning stored rows.
        max_buckets: most buckets per series (range / every).
    """

    max_rows: int | None = 10_000
    max_range_ms: int | None = 400 * DAY_MS
    max_raw_range_ms: int | None = 31 * DAY_MS
    max_buckets: int | None = 10_000


CLI_LIMITS: Final = Limits(max_rows=None, max_range_ms=None, max_raw_range_ms=None, max_buckets=None)


class TimeParams(BaseModel):
    """Time range parameters shared by every query (strict: unknown parameters are rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    since: str = Field("1h", description="Start: now, 30m/7d back from now, today, yesterday or ISO 8601.")
    until: str = Field("now", description="End (exclusive), same forms as since.")
    tz: str = Field("UTC", description="IANA zone for times without an offset, today/yesterday, and output.")

    def zone_info(self) -> tzinfo:
        return parse_tz(self.tz)

    def range_ms(self, now_ms: int, max_ms: int | None) -> tuple[int, int]:
        tz = self.zone_info()
        since, until = parse_instant(self.since, now_ms, tz), parse_instant(self.until, now_ms, tz)
        if not 0 <= since < until:
            msg = f"time range: expected since < until (after 1970), got since={self.since!r}, until={self.until!r}"
            raise ValueError(msg)
        if max_ms is not None and until - since > max_ms:
            msg = (
                f"time range: at most {max_ms // DAY_MS} days for this query, got "
                f"{(until - since) / DAY_MS:.1f} days (narrow since/until, or downsample with every)"
            )
            raise ValueError(msg)
        return since, until


def _window_size(text: str | None) -> int | None:
    return parse_duration(text) if text else None


def _check_rows(limit: int | None, limits: Limits) -> None:
    if limit is not None and limits.max_rows is not None and limit > limits.max_rows:
        msg = f"limit: at most {limits.max_rows}, got {limit}"
        raise ValueError(msg)


class SeriesParams(TimeParams):
    """Series of one sensor, a zone, a kind or the city (``GET /api/v1/series``)."""

    metric: str = Field(pattern=METRIC_PATTERN, description="Metric name, e.g. pm25.")
    sensor: str | None = Field(None, pattern=NAME_PATTERN, description="Sensor id.")
    zone: str | None = Field(None, pattern=NAME_PATTERN, description="Zone.")
    kind: Kind | None = Field(None, description="Feed kind.")
    window_size: str | None = Field(None, description="Only windows of this size, e.g. 1m.")
    every: str | None = Field(None, description="Downsample into buckets of this size, e.g. 5m, 1h.")
    agg: Agg = Field("mean", description="How a bucket reduces field.")
    field: str = Field("mean", description="Field to reduce: " + ", ".join(NUMERIC_FIELDS) + ".")
    group_by: GroupBy | None = Field(None, description="With every: one series per sensor_id, zone or kind.")
    source: Source = Field("window", description="window aggregates, the 1h / 1d roll-ups or the zone roll-ups.")
    limit: int | None = Field(None, ge=1, description="Most rows returned.")
    rollups: bool = Field(True, description="Answer zone queries from the zone roll-ups where they hold the answer.")

    def to_query(self, now_ms: int, limits: Limits = CLI_LIMITS) -> HistoryQuery:
        """The validated query; ValueError names the offending parameter."""
        every_ms = parse_duration(self.every) if self.every else None
        since, until = self.range_ms(now_ms, limits.max_range_ms if every_ms else limits.max_raw_range_ms)
        if every_ms and limits.max_buckets is not None and (until - since) // every_ms > limits.max_buckets:
            msg = (
                f"every: at most {limits.max_buckets} buckets per series, got {(until - since) // every_ms} "
                f"({self.since}..{self.until} by {self.every}); use a larger every"
            )
            raise ValueError(msg)
        _check_rows(self.limit, limits)
        limit = self.limit if self.limit is not None else limits.max_rows
        return HistoryQuery(self.sensor, self.metric, since, until, every_ms=every_ms, agg=self.agg, field=self.field,
                            zone=self.zone, kind=self.kind, window_size_ms=_window_size(self.window_size),
                            group_by=self.group_by, source=self.source, limit=limit, rollups=self.rollups)  # fmt: skip


class TopParams(TimeParams):
    """Top-N zones by a metric (``GET /api/v1/top-zones``)."""

    metric: str = Field(pattern=METRIC_PATTERN)
    n: int = Field(10, ge=1, le=1000, description="How many zones.")
    kind: Kind | None = None
    window_size: str | None = None
    agg: Agg = "mean"
    field: str = "mean"

    def to_query(self, now_ms: int, limits: Limits = CLI_LIMITS) -> TopQuery:
        """The validated query."""
        since, until = self.range_ms(now_ms, limits.max_range_ms)
        return TopQuery(self.metric, since, until, n=self.n, agg=self.agg, field=self.field, kind=self.kind,
                        window_size_ms=_window_size(self.window_size))  # fmt: skip


class AlertParams(TimeParams):
    """Alerts in a period with their evidence (``GET /api/v1/alerts``)."""

    sensor: str | None = Field(None, pattern=NAME_PATTERN)
    zone: str | None = Field(None, pattern=NAME_PATTERN)
    kind: Kind | None = None
    metric: str | None = Field(None, pattern=METRIC_PATTERN)
    severity: str | None = Field(None, pattern=r"^[a-z]{1,32}$")
    rule: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    state: str | None = Field(None, pattern=r"^[a-z]{1,32}$")
    evidence: str = Field("10m", description="Windows of the alert's sensor this long before it (0s: none).")
    limit: int | None = Field(None, ge=1)

    def to_query(self, now_ms: int, limits: Limits = CLI_LIMITS) -> AlertQuery:
        """The validated query."""
        since, until = self.range_ms(now_ms, limits.max_range_ms)
        evidence_ms = 0 if self.evidence.strip() in {"0", "0s", "0m"} else parse_duration(self.evidence)
        if evidence_ms > DAY_MS:
            msg = f"evidence: at most 1d, got {self.evidence!r}"
            raise ValueError(msg)
        _check_rows(self.limit, limits)
        limit = self.limit if self.limit is not None else limits.max_rows
        return AlertQuery(since, until, sensor_id=self.sensor, zone=self.zone, kind=self.kind, metric=self.metric,
                          severity=self.severity, rule=self.rule, state=self.state, evidence_ms=evidence_ms,
                          limit=limit)  # fmt: skip


def validation_message(exc: ValidationError) -> str:
    """One line per problem: ``parameter: what was wrong``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "request"
        text = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {text}")
    return "; ".join(parts)


# --- CLI ----------------------------------------------------------------------------------------


def run_history_cli(
    settings: Settings,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    now_ms: int | None = None,
    top: int | None = None,
    alerts: bool = False,
    fmt: OutputFormat = "table",
    **options: Any,
) -> int:
    """The body of ``urbansense history``: validate, query, stream the output; returns the exit code.

    Args:
        settings: selects the store.
        out: where rows go (stdout).
        err: where errors go (stderr).
        now_ms: the clock (wall clock when None).
        top: answer the top-N zones query with this N.
        alerts: answer the alerts query.
        fmt: table, csv, json or ndjson.
        **options: the parameters of :class:`SeriesParams`, :class:`TopParams` or
            :class:`AlertParams` (None values are dropped).
    """
    import time

    out = out or sys.stdout
    err = err or sys.stderr
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    given = {k: v for k, v in options.items() if v is not None}
    try:
        if alerts and top is not None:
            msg = "choose one of --alerts and --top"
            raise ValueError(msg)
        params: TimeParams
        rows: Iterable[Row]
        if alerts:
            params = AlertParams(**given)
            rows = iter_alerts(settings, params.to_query(now))
        elif top is not None:
            params = TopParams(n=top, **given)
            rows = top_zones(settings, params.to_query(now))
        else:
            params = SeriesParams(**given)
            rows = iter_series(settings, params.to_query(now))
        write_rows(rows, fmt, out, params.zone_info())
    except ValidationError as exc:
        err.write(f"urbansense history: {validation_message(exc)}\n")
        return 2
    except (UrbanSensingError, ValueError) as exc:
        err.write(f"urbansense history: {exc}\n")
        return 2
    return 0


__all__ = [
    "AlertParams",
    "AlertQuery",
    "HistoryQuery",
    "Limits",
    "SeriesParams",
    "TimeParams",
    "TopParams",
    "TopQuery",
    "format_rows",
    "iter_alerts",
    "iter_series",
    "parse_duration",
    "parse_instant",
    "query_history",
    "run_history_cli",
    "zone_rollup_plan",
    "top_zones",
    "write_rows",
]
