"""Embedded SQLite time-series store, used when no InfluxDB is configured.

It takes the same :class:`~connectors.lineprotocol.Point` batches as the Influx sinks and keeps
the Influx layout: one table per measurement, one column per tag and field, tags stored as text
(``''`` when omitted) and the point time in ``start_ms`` (``window_agg``) or ``ts_ms``
(``alert``). Writes upsert on a natural key, so writing a point again overwrites it the way
InfluxDB overwrites a (series, time) pair:

* ``window_agg``: ``(sensor_id, metric, window, window_size_ms, start_ms)``
* ``alert``: ``alert_id``
* ``reading`` (raw readings, written only when enabled): ``(sensor_id, metric, ts_ms)``
* ``window_agg_1h`` / ``window_agg_1d`` (roll-ups, filled by
  :func:`connectors.retention.sqlite_maintenance`): as ``window_agg``
* ``window_agg_zone_5m`` / ``window_agg_zone_1h`` (zone roll-ups, filled by the same job):
  ``(zone, metric, start_ms)``

The database runs in WAL mode, so the history CLI can read while the worker writes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from connectors.lineprotocol import (
    AGG_FLOAT_FIELDS,
    AGG_MEASUREMENT,
    AGG_OPTIONAL_FLOAT_FIELDS,
    AGG_TAGS,
    ALERT_MEASUREMENT,
    ALERT_TAGS,
    ZONE_MEASUREMENT,
    ZONE_TAGS,
    Point,
    encode_line,
)
from connectors.retention import (
    RAW_MEASUREMENT,
    RAW_TAGS,
    ROLLUP_FLOAT_FIELDS,
    ROLLUP_INT_FIELDS,
    ROLLUPS,
    ZONE_ROLLUP_FLOAT_FIELDS,
    ZONE_ROLLUP_TAGS,
    ZONE_ROLLUPS,
)
from streams.errors import SinkError

logger = logging.getLogger(__name__)

ColumnKind = Literal["tag", "int", "float", "str"]
_PY_TYPES: Final[dict[ColumnKind, tuple[type, ...]]] = {
    "tag": (str,),
    "int": (int,),
    "float": (float,),
    "str": (str,),
}
_SQL_TYPES: Final[dict[ColumnKind, str]] = {
    "tag": "TEXT NOT NULL DEFAULT ''",
    "int": "INTEGER",
    "float": "REAL",
    "str": "TEXT",
}


@dataclass(frozen=True, slots=True)
class Table:
    """How one measurement maps to a table."""

    name: str
    time_column: str
    columns: dict[str, ColumnKind]
    key: tuple[str, ...]

    def ddl(self) -> str:
        cols = [f'"{c}" {_SQL_TYPES[k]}' for c, k in self.columns.items()]
        cols.append(f'"{self.time_column}" INTEGER NOT NULL')
        key = ", ".join(f'"{c}"' for c in self.key)
        return f'CREATE TABLE IF NOT EXISTS "{self.name}" ({", ".join(cols)}, PRIMARY KEY ({key}))'


TABLES: Final[dict[str, Table]] = {
    AGG_MEASUREMENT: Table(
        AGG_MEASUREMENT,
        "start_ms",
        {
            **dict.fromkeys(AGG_TAGS, "tag"),
            "count": "int",
            **dict.fromkeys(AGG_FLOAT_FIELDS + AGG_OPTIONAL_FLOAT_FIELDS, "float"),
            "model_version": "str",
        },
        ("sensor_id", "metric", "window", "window_size_ms", "start_ms"),
    ),
    ZONE_MEASUREMENT: Table(
        ZONE_MEASUREMENT,
        "start_ms",
        {
            **dict.fromkeys(ZONE_TAGS, "tag"),
            "count": "int",
            "sensors": "int",
            **dict.fromkeys(AGG_FLOAT_FIELDS + AGG_OPTIONAL_FLOAT_FIELDS, "float"),
        },
        ("zone", "kind", "metric", "window", "window_size_ms", "start_ms"),
    ),
    ALERT_MEASUREMENT: Table(
        ALERT_MEASUREMENT,
        "ts_ms",
        {
            **dict.fromkeys(ALERT_TAGS, "tag"),
            "alert_id": "str",
            "value": "float",
            "threshold": "float",
            "latency_ms": "int",
            "message": "str",
        },
        ("alert_id",),
    ),
}
TABLES[RAW_MEASUREMENT] = Table(
    RAW_MEASUREMENT,
    "ts_ms",
    {**dict.fromkeys(RAW_TAGS, "tag"), "value": "float"},
    ("sensor_id", "metric", "ts_ms"),
)
for _measurement, _ in ROLLUPS.values():
    TABLES[_measurement] = Table(
        _measurement,
        "start_ms",
        {
            **dict.fromkeys(AGG_TAGS, "tag"),
            **dict.fromkeys(ROLLUP_INT_FIELDS, "int"),
            **dict.fromkeys(ROLLUP_FLOAT_FIELDS, "float"),
        },
        ("sensor_id", "metric", "window", "window_size_ms", "start_ms"),
    )
for _measurement, _ in ZONE_ROLLUPS.values():
    TABLES[_measurement] = Table(
        _measurement,
        "start_ms",
        {
            **dict.fromkeys(ZONE_ROLLUP_TAGS, "tag"),
            **dict.fromkeys(ROLLUP_INT_FIELDS, "int"),
            **dict.fromkeys(ZONE_ROLLUP_FLOAT_FIELDS, "float"),
        },
        (*ZONE_ROLLUP_TAGS, "start_ms"),
    )
# History queries read one sensor or one zone over a time range; ``mean`` is in the index so
# the most common downsampled queries never touch the table. Roll-ups and retention scan by time.
_INDEXES: Final = (
    'CREATE INDEX IF NOT EXISTS "alert_ts" ON "alert" ("ts_ms")',
    f'CREATE INDEX IF NOT EXISTS "{AGG_MEASUREMENT}_sensor" ON "{AGG_MEASUREMENT}" '
    '("sensor_id", "metric", "start_ms", "mean")',
    f'CREATE INDEX IF NOT EXISTS "{AGG_MEASUREMENT}_zone" ON "{AGG_MEASUREMENT}" '
    '("zone", "metric", "start_ms", "mean")',
    f'CREATE INDEX IF NOT EXISTS "{AGG_MEASUREMENT}_start" ON "{AGG_MEASUREMENT}" ("start_ms")',
    f'CREATE INDEX IF NOT EXISTS "{RAW_MEASUREMENT}_ts" ON "{RAW_MEASUREMENT}" ("ts_ms")',
)


def _row(table: Table, point: Point) -> dict[str, object]:
    encode_line(point)  # accept exactly what InfluxDB accepts (finite floats, no empty tags, ...)
    row: dict[str, object] = {c: "" for c, k in table.columns.items() if k == "tag"}
    for source, values in (("tag", point.tags), ("field", point.fields)):
        for name, value in values.items():
            kind = table.columns.get(name)
            if kind is None or (kind == "tag") != (source == "tag"):
                msg = f"point measurement={table.name!r}: unknown {source} {name!r}"
                raise ValueError(msg)
            if isinstance(value, bool) or not isinstance(value, _PY_TYPES[kind]):
                msg = (
                    f"point measurement={table.name!r} {source} {name!r}: "
                    f"expected {kind}, got {type(value).__name__} {value!r}"
                )
                raise ValueError(msg)
            row[name] = value
    row[table.time_column] = int(point.time_ms)
    return row


def _upsert_sql(table: Table, columns: tuple[str, ...]) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in table.key)
    key = ", ".join(f'"{c}"' for c in table.key)
    return (
        f'INSERT INTO "{table.name}" ({names}) VALUES ({marks}) '  # noqa: S608 - known columns
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


class SqliteStore:
    """A :class:`~connectors.influx.TimeSeriesSink` backed by one SQLite file.

    Args:
        path: database file; parent directories are created on first write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            for table in TABLES.values():
                conn.execute(table.ddl())
            for ddl in _INDEXES:
                conn.execute(ddl)
            self._conn = conn
            logger.info("sqlite store open path=%s", self.path)
        return self._conn

    @property
    def lock(self) -> threading.Lock:
        """Held around every use of the connection (the writer runs in worker threads)."""
        return self._lock

    def open_sync(self) -> sqlite3.Connection:
        """Open the file, creating tables and indexes (blocking); returns the connection."""
        with self._lock:
            try:
                return self._connect()
            except sqlite3.Error as exc:
                msg = f"sqlite store path={self.path}: open failed: {exc}"
                raise SinkError(msg) from exc

    def write_sync(self, points: Sequence[Point]) -> None:
        """Upsert points in one transaction (blocking; :meth:`write` runs it in a thread).

        Raises:
            ValueError: a point's measurement, tag or field is not in the layout, has the
                wrong type, or would be rejected by InfluxDB. Nothing of the batch is stored.
            SinkError: SQLite failed (disk full, file locked too long, ...).
        """
        batches: dict[tuple[str, tuple[str, ...]], list[tuple[object, ...]]] = {}
        for point in points:
            table = TABLES.get(point.measurement)
            if table is None:
                msg = f"point measurement={point.measurement!r}: expected one of {sorted(TABLES)}"
                raise ValueError(msg)
            row = _row(table, point)
            batches.setdefault((table.name, tuple(row)), []).append(tuple(row.values()))
        with self._lock:
            try:
                conn = self._connect()
                conn.execute("BEGIN")
                try:
                    for (name, columns), rows in batches.items():
                        conn.executemany(_upsert_sql(TABLES[name], columns), rows)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                msg = f"sqlite store path={self.path}: write of {len(points)} points failed: {exc}"
                raise SinkError(msg) from exc
        logger.debug("sqlite wrote points=%d", len(points))

    async def write(self, points: Sequence[Point]) -> None:
        """Upsert points without blocking the event loop (see :meth:`write_sync`)."""
        if points:
            await asyncio.to_thread(self.write_sync, points)

    def close_sync(self) -> None:
        """Close the connection (blocking)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def close(self) -> None:
        """Close the connection."""
        await asyncio.to_thread(self.close_sync)
