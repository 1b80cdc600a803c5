"""History queries over stored window aggregates, the same answer from every store.

:func:`query_history` reads the ``window_agg`` measurement (layout in
:mod:`connectors.lineprotocol`) from the store the settings select: the embedded SQLite file,
InfluxDB 1.x (InfluxQL over ``GET /query``) or InfluxDB 2.x (Flux through influxdb-client).

* Without ``every_ms`` it returns the stored windows ``{time_ms, count, mean, min, max}``
  with ``since_ms <= time_ms < until_ms``, ordered by time.
* With ``every_ms`` it returns ``{time_ms, value}`` buckets aligned to the epoch
  (``time_ms = start_ms // every_ms * every_ms``) holding ``agg(field)`` over the windows that
  start in the bucket; empty buckets are left out.

All three stores give the same numbers for the same data: SQLite rows are reduced in time
order the way InfluxQL's reducers do it (``sum += v``; ``mean = sum / n``), and ``value`` is
an int for ``count`` and for ``sum``/``min``/``max`` of the integer field ``count``, else a float.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import logging
import re
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

import orjson
from influxdb_client.client.influxdb_client import InfluxDBClient

from connectors.lineprotocol import AGG_MEASUREMENT
from streams.errors import SinkError
from streams.schema import format_ts

if TYPE_CHECKING:
    from streams.settings import InfluxSettings, Settings

logger = logging.getLogger(__name__)

Agg = Literal["mean", "min", "max", "sum", "count"]
OutputFormat = Literal["table", "csv", "json"]
NUMERIC_FIELDS: Final = ("count", "sum", "mean", "min", "max", "std", "first", "last", "score")
RAW_COLUMNS: Final = ("time_ms", "count", "mean", "min", "max")

_DURATION_RE: Final = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)

Row = dict[str, Any]


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
        msg = (
            f"duration: expected <number><unit> with unit ms, s, m, h or d (e.g. 5m), got {text!r}"
        )
        raise ValueError(msg)
    value = int(match[1]) * _UNIT_MS[match[2]]
    if value <= 0:
        msg = f"duration: expected a positive duration, got {text!r}"
        raise ValueError(msg)
    return value


@dataclass
class HistoryQuery:
    """What to read: one sensor's metric over ``[since_ms, until_ms)``.

    Attributes:
        sensor_id: sensor to read.
        metric: metric of that sensor.
        since_ms: inclusive lower bound of the window start, epoch ms.
        until_ms: exclusive upper bound of the window start, epoch ms.
        every_ms: bucket size; None returns the stored windows.
        agg: how a bucket reduces ``field``.
        field: which aggregate field to reduce (one of :data:`NUMERIC_FIELDS`).
    """

    sensor_id: str
    metric: str
    since_ms: int
    until_ms: int
    every_ms: int | None = None
    agg: Agg = "mean"
    field: str = "mean"

    def __post_init__(self) -> None:
        if not self.sensor_id or not self.metric:
            msg = (
                "history query: expected sensor_id and metric, "
                f"got {self.sensor_id!r}, {self.metric!r}"
            )
            raise ValueError(msg)
        if not 0 <= self.since_ms < self.until_ms:
            msg = (
                "history query: expected 0 <= since_ms < until_ms, "
                f"got {self.since_ms}, {self.until_ms}"
            )
            raise ValueError(msg)
        if self.every_ms is not None and self.every_ms <= 0:
            msg = f"history query: expected every_ms > 0, got {self.every_ms}"
            raise ValueError(msg)
        if self.agg not in get_args(Agg):
            msg = f"history query: expected agg in {get_args(Agg)}, got {self.agg!r}"
            raise ValueError(msg)
        if self.field not in NUMERIC_FIELDS:
            msg = f"history query: expected field in {NUMERIC_FIELDS}, got {self.field!r}"
            raise ValueError(msg)

    @property
    def int_values(self) -> bool:
        """Whether bucket values are integers (as InfluxDB types them)."""
        return self.agg == "count" or (self.field == "count" and self.agg != "mean")


def _raw_row(time_ms: Any, count: Any, mean: Any, min_: Any, max_: Any) -> Row:
    return {
        "time_ms": int(time_ms),
        "count": int(count),
        "mean": float(mean),
        "min": float(min_),
        "max": float(max_),
    }


def _bucket_row(q: HistoryQuery, time_ms: Any, value: Any) -> Row:
    return {"time_ms": int(time_ms), "value": int(value) if q.int_values else float(value)}


def _finish(q: HistoryQuery, rows: list[Row]) -> list[Row]:
    rows.sort(key=lambda r: tuple(r.values()))
    logger.debug("history rows=%d sensor_id=%s metric=%s", len(rows), q.sensor_id, q.metric)
    return rows


# --- SQLite -------------------------------------------------------------------------------


def _reduce(agg: Agg, values: Sequence[Any]) -> Any:
    if agg == "count":
        return len(values)
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    total = 0 if agg == "sum" else 0.0
    for value in values:  # left to right, like InfluxQL's reducers: same rounding, same numbers
        total += value
    return total if agg == "sum" else total / len(values)


def query_sqlite(path: str | Path, q: HistoryQuery) -> list[Row]:
    """Run a history query on the embedded store (read-only; WAL lets the worker keep writing).

    Raises:
        SinkError: the file is not a readable UrbanSense store.
    """
    path = Path(path)
    if not path.exists():
        logger.warning("history store missing path=%s", path)
        return []
    where = '"sensor_id" = ? AND "metric" = ? AND "start_ms" >= ? AND "start_ms" < ?'
    args: list[Any] = [q.sensor_id, q.metric, q.since_ms, q.until_ms]
    try:
        uri = path.resolve().as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            if q.every_ms is None:
                cur = conn.execute(
                    f'SELECT "start_ms", "count", "mean", "min", "max" FROM "{AGG_MEASUREMENT}" '  # noqa: S608 - constants only
                    f'WHERE {where} ORDER BY "start_ms", rowid',
                    args,
                )
                return _finish(q, [_raw_row(*r) for r in cur])
            # q.field is checked against NUMERIC_FIELDS, so quoting it is safe.
            cur = conn.execute(
                f'SELECT ("start_ms" / ?) * ?, "{q.field}" FROM "{AGG_MEASUREMENT}" '  # noqa: S608
                f'WHERE {where} AND "{q.field}" IS NOT NULL ORDER BY "start_ms", rowid',
                [q.every_ms, q.every_ms, *args],
            )
            buckets: dict[int, list[Any]] = {}
            for bucket, value in cur:
                buckets.setdefault(bucket, []).append(value)
    except sqlite3.Error as exc:
        msg = f"history query on sqlite store path={path} failed: {exc}"
        raise SinkError(msg) from exc
    return _finish(q, [_bucket_row(q, t, _reduce(q.agg, vs)) for t, vs in buckets.items()])


# --- InfluxDB 1.x -------------------------------------------------------------------------


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


def build_influxql(q: HistoryQuery) -> str:
    """The InfluxQL statement of a history query.

    Example:
        >>> print(build_influxql(HistoryQuery("s1", "pm25", 0, 3600000, every_ms=300000)))
        SELECT mean("mean") FROM "window_agg" WHERE "sensor_id" = 's1' AND "metric" = 'pm25' \
AND time >= 0ms AND time < 3600000ms GROUP BY time(300000ms) fill(none)
    """
    where = (
        f'WHERE "sensor_id" = {influxql_string(q.sensor_id)} '
        f'AND "metric" = {influxql_string(q.metric)} '
        f"AND time >= {int(q.since_ms)}ms AND time < {int(q.until_ms)}ms"
    )
    source = influxql_ident(AGG_MEASUREMENT)
    if q.every_ms is None:
        columns = ", ".join(influxql_ident(c) for c in RAW_COLUMNS[1:])
        return f"SELECT {columns} FROM {source} {where}"  # noqa: S608 - every part is quoted
    call = f"{q.agg}({influxql_ident(q.field)})"
    group = f"GROUP BY time({int(q.every_ms)}ms) fill(none)"
    return f"SELECT {call} FROM {source} {where} {group}"  # noqa: S608 - every part is quoted


def influxql_get(cfg: InfluxSettings, statement: str) -> list[dict[str, Any]]:
    """Run one InfluxQL statement with ``GET /query?epoch=ms`` and return its series.

    Raises:
        SinkError: the server is unreachable, refuses the query or truncates the answer.
    """
    if not cfg.url.startswith(("http://", "https://")):
        msg = f"URBAN_INFLUX__URL: expected http:// or https://, got {cfg.url!r}"
        raise SinkError(msg)
    params = urllib.parse.urlencode({"db": cfg.database, "epoch": "ms", "q": statement})
    request = urllib.request.Request(f"{cfg.url.rstrip('/')}/query?{params}")  # noqa: S310
    if cfg.username:
        password = cfg.password.get_secret_value() if cfg.password else ""
        token = base64.b64encode(f"{cfg.username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
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
    if "error" in result or result.get("partial"):
        msg = f"{where} failed: {result.get('error', 'partial result (raise max-row-limit)')}"
        raise SinkError(msg)
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def query_influxql(cfg: InfluxSettings, q: HistoryQuery) -> list[Row]:
    """Run a history query on InfluxDB 1.x."""
    rows: list[Row] = []
    for series in influxql_get(cfg, build_influxql(q)):
        for values in series.get("values", []):
            if q.every_ms is None:
                rows.append(_raw_row(*values))
            elif values[1] is not None:
                rows.append(_bucket_row(q, *values))
    return _finish(q, rows)


# --- InfluxDB 2.x -------------------------------------------------------------------------


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
    return (
        (_EPOCH + timedelta(milliseconds=ms))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def build_flux(bucket: str, q: HistoryQuery) -> str:
    """The Flux script of a history query.

    Bucket times come from ``aggregateWindow`` window starts; :func:`query_flux` re-aligns the
    first bucket to the epoch grid because Flux truncates it at ``range(start:)``.
    """
    head = (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: {_flux_time(q.since_ms)}, stop: {_flux_time(q.until_ms)})\n"
        f'  |> filter(fn: (r) => r._measurement == "{AGG_MEASUREMENT}"'
        f" and r.sensor_id == {flux_string(q.sensor_id)} and r.metric == {flux_string(q.metric)})\n"
    )
    if q.every_ms is None:
        fields = " or ".join(f'r._field == "{c}"' for c in RAW_COLUMNS[1:])
        return head + (
            f"  |> filter(fn: (r) => {fields})\n"
            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
            "  |> group()\n"
            '  |> keep(columns: ["_time", "count", "mean", "min", "max"])\n'
            '  |> sort(columns: ["_time"])'
        )
    return head + (
        f'  |> filter(fn: (r) => r._field == "{q.field}")\n'
        "  |> group()\n"
        '  |> sort(columns: ["_time"])\n'
        f"  |> aggregateWindow(every: {int(q.every_ms)}ms, fn: {q.agg}, createEmpty: false,"
        ' timeSrc: "_start")'
    )


def _ms(value: datetime) -> int:
    return (value - _EPOCH) // _ONE_MS


def query_flux(cfg: InfluxSettings, q: HistoryQuery) -> list[Row]:
    """Run a history query on InfluxDB 2.x.

    Raises:
        SinkError: the server is unreachable or refuses the query (the token is never shown).
    """
    if cfg.token is None:
        msg = "URBAN_INFLUX__TOKEN is required for InfluxDB 2.x"
        raise SinkError(msg)
    token = cfg.token.get_secret_value()
    try:
        with InfluxDBClient(
            url=cfg.url, token=token, org=cfg.org, timeout=cfg.timeout_ms
        ) as client:
            tables = client.query_api().query(build_flux(cfg.bucket, q), org=cfg.org)
    except Exception as exc:  # the client raises ApiException, urllib3 and socket errors
        text = str(getattr(exc, "message", None) or exc).replace(token, "***")[:300]
        msg = f"history query to influxdb-v2 {cfg.url} bucket={cfg.bucket} failed: {text}"
        raise SinkError(msg) from exc
    rows: list[Row] = []
    for table in tables:
        for rec in table.records:
            if q.every_ms is None:
                v = rec.values
                rows.append(
                    _raw_row(_ms(rec.get_time()), v["count"], v["mean"], v["min"], v["max"])
                )
            elif rec.get_value() is not None:
                time_ms = _ms(rec.get_time()) // q.every_ms * q.every_ms
                rows.append(_bucket_row(q, time_ms, rec.get_value()))
    return _finish(q, rows)


# --- entry point and output ---------------------------------------------------------------


def query_history(settings: Settings, q: HistoryQuery) -> list[Row]:
    """Run a history query on the store the settings select.

    Returns:
        Raw window rows ``{time_ms, count, mean, min, max}`` or, with ``q.every_ms``,
        buckets ``{time_ms, value}``; ordered by time.

    Raises:
        SinkError: the store could not be read.
    """
    cfg = settings.influx
    if not cfg.url:
        return query_sqlite(settings.store.path, q)
    if cfg.version == 1:
        return query_influxql(cfg, q)
    return query_flux(cfg, q)


def _cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def format_rows(rows: Iterable[Row], fmt: OutputFormat = "table") -> str:
    """Render rows as an aligned text table, CSV or JSON.

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
