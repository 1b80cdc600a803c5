"""Retention and roll-ups: the analysis schema, created on start-up where the store allows it.

Layout (the same in every store; measurement names as in :mod:`connectors.lineprotocol`):

============  ================================  ==================  =============================
data          measurement                       retention (default)  InfluxDB 1.x / 2.x / SQLite
============  ================================  ==================  =============================
raw readings  ``reading`` (optional, off)        ``raw`` = 7 days    RP ``urban_raw`` / bucket
                                                                     ``<bucket>_raw`` / table
window aggs   ``window_agg``                     ``aggregates`` = 90 RP ``urban_agg`` (DEFAULT) /
                                                 days                bucket ``<bucket>`` / table
alerts        ``alert`` (events)                 as aggregates       same place as window aggs
hourly        ``window_agg_1h``                  ``rollups`` = 730   RP ``urban_rollup`` / bucket
daily         ``window_agg_1d``                  days                ``<bucket>_rollup`` / table
============  ================================  ==================  =============================

A roll-up point holds, per series (all ``window_agg`` tags) and period (time = period start):
``count`` (sum of window counts, int), ``sum`` (sum of sums), ``mean`` (mean of window means),
``min`` (min of mins), ``max`` (max of maxes) and ``windows`` (number of windows, int). Both
roll-ups are computed from ``window_agg`` (never the daily from the hourly), so their ``mean``
is the same number a downsampled query (``--every 1h --agg mean``) gives.

Zone roll-ups (``window_agg_zone_5m``, ``window_agg_zone_1h``; same place as the roll-ups) hold
the same fields per (``zone``, ``metric``) and period, over *every* window of that zone and
metric (all sensors, kinds and window sizes: exactly the windows a zone query reads), plus
``p50, p90, p95, p99``: InfluxQL's nearest-rank percentiles of the window means. They are the
numbers a zone query over ``window_agg`` with ``every`` = the period gives (``agg=p95``: the p95
of the sensors' window means, *not* the p95 of readings that ``zone_agg`` carries), which is
how :mod:`connectors.history` answers such queries from them. Zone roll-ups recompute at least
the last hour (:func:`resample_ms`), so windows up to an hour late still count.

* **InfluxDB 1.x**: retention policies and continuous queries (``RESAMPLE FOR 2h`` / ``2d``, so
  windows closed after the period ended still count). The writer writes to the default RP,
  which :func:`ensure_schema` makes ``urban_agg``; data written earlier into ``autogen`` stays
  there.
* **InfluxDB 2.x**: buckets with retention rules and two Flux tasks (``urbansense-rollup-1h``,
  ``-1d``), created or updated through influxdb-client.
* **SQLite**: roll-up tables filled by :func:`sqlite_maintenance` (a periodic job; the first
  run backfills), which also deletes rows past their retention.

Continuous queries and tasks only see windows that arrive within the resample span; after a
replay or a long outage, :func:`backfill` (1.x) or a maintenance run from an earlier mark
recomputes older periods.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict

from connectors.lineprotocol import AGG_MEASUREMENT, AGG_TAGS, ALERT_MEASUREMENT, Point
from streams.errors import SinkError

if TYPE_CHECKING:
    from connectors.influx import TimeSeriesSink
    from streams.schema import Reading
    from streams.settings import InfluxSettings, Settings

logger = logging.getLogger(__name__)

RAW_MEASUREMENT: Final = "reading"
RAW_TAGS: Final = ("kind", "zone", "sensor_id", "metric", "unit")
#: Roll-up name -> (measurement, period in ms).
ROLLUPS: Final[dict[str, tuple[str, int]]] = {
    "1h": (f"{AGG_MEASUREMENT}_1h", 3_600_000),
    "1d": (f"{AGG_MEASUREMENT}_1d", 86_400_000),
}
ROLLUP_INT_FIELDS: Final = ("count", "windows")
ROLLUP_FLOAT_FIELDS: Final = ("sum", "mean", "min", "max")
ROLLUP_FIELDS: Final = ("count", "sum", "mean", "min", "max", "windows")
#: InfluxDB 1.x retention policy names.
RP_RAW: Final = "urban_raw"
RP_AGG: Final = "urban_agg"
RP_ROLLUP: Final = "urban_rollup"
#: How far back each roll-up run recomputes (late windows are still counted).
RESAMPLE_PERIODS: Final = 2
#: Zone roll-up name -> (measurement, period in ms). One point per (zone, metric) and period.
ZONE_ROLLUPS: Final[dict[str, tuple[str, int]]] = {
    "zone_5m": (f"{AGG_MEASUREMENT}_zone_5m", 300_000),
    "zone_1h": (f"{AGG_MEASUREMENT}_zone_1h", 3_600_000),
}
ZONE_ROLLUP_TAGS: Final = ("zone", "metric")
ZONE_PERCENTILES: Final = (50, 90, 95, 99)
ZONE_ROLLUP_FLOAT_FIELDS: Final = (*ROLLUP_FLOAT_FIELDS, *(f"p{p}" for p in ZONE_PERCENTILES))
ZONE_ROLLUP_FIELDS: Final = (*ROLLUP_FIELDS, *(f"p{p}" for p in ZONE_PERCENTILES))
#: Zone roll-ups recompute at least this far back on every run.
ZONE_RESAMPLE_MS: Final = 3_600_000


def rollup_period_ms(name: str) -> int:
    """The period of roll-up ``name`` (``1h``, ``1d``, ``zone_5m``, ``zone_1h``)."""
    return (ROLLUPS | ZONE_ROLLUPS)[name][1]


def resample_ms(name: str) -> int:
    """How far back each run of roll-up ``name`` recomputes; older periods are final.

    Example:
        >>> resample_ms("1h"), resample_ms("zone_5m"), resample_ms("zone_1h")
        (7200000, 3600000, 7200000)
    """
    span = RESAMPLE_PERIODS * rollup_period_ms(name)
    return max(span, ZONE_RESAMPLE_MS) if name in ZONE_ROLLUPS else span



def _duration(value: object) -> object:
    # Accept "7d", "12h" besides what pydantic takes for timedelta (seconds, ISO 8601 "P7D").
    if isinstance(value, str) and value.strip()[-1:] in {"s", "m", "h", "d"} and value.strip()[:1].isdigit():
        from connectors.history import parse_duration

        return timedelta(milliseconds=parse_duration(value))
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class RetentionSettings(BaseModel):
    """Retention of each data class (``URBAN_RETENTION__*`` once wired into ``Settings``).

    Attributes:
        write_raw: also store every raw reading (measurement ``reading``); off by default.
        raw: how long raw readings are kept.
        aggregates: how long window aggregates and alerts are kept.
        rollups: how long hourly and daily roll-ups are kept.
        ensure_on_start: create or update the schema when the worker starts.
        maintenance_interval: how often the SQLite roll-up/retention job runs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    write_raw: bool = False
    raw: Duration = timedelta(days=7)
    aggregates: Duration = timedelta(days=90)
    rollups: Duration = timedelta(days=730)
    ensure_on_start: bool = True
    maintenance_interval: Duration = timedelta(minutes=5)


def policy_of(settings: Settings) -> RetentionSettings:
    """The retention settings (``settings.retention`` when the section exists, else defaults)."""
    found = getattr(settings, "retention", None)
    if found is None or isinstance(found, RetentionSettings):
        return found or RetentionSettings()
    return RetentionSettings.model_validate(found.model_dump() if isinstance(found, BaseModel) else found)


def _ms(d: timedelta) -> int:
    return int(d / timedelta(milliseconds=1))


def _influx_duration(d: timedelta) -> str:
    """InfluxQL/Flux duration literal, in whole hours when possible (1.x needs >= 1h)."""
    ms = _ms(d)
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    return f"{ms}ms"


def rollup_target(settings: Settings, name: str) -> tuple[str, str]:
    """Where roll-up ``name`` (a series or zone roll-up) lives: (1.x RP or 2.x bucket, measurement)."""
    measurement = (ROLLUPS | ZONE_ROLLUPS)[name][0]
    if settings.influx.version == 1:
        return RP_ROLLUP, measurement
    return f"{settings.influx.bucket}_rollup", measurement


def reading_points(reading: Reading) -> list[Point]:
    """The ``reading`` points of one raw reading (one per metric, time = event time).

    Example:
        >>> from streams.schema import Reading
        >>> r = Reading("s1", "iot", "z", 0.0, 0.0, 5, {"t": 21.5}, {"t": "C"})
        >>> reading_points(r)[0]
        Point(measurement='reading', tags={'kind': 'iot', 'zone': 'z', 'sensor_id': 's1', \
'metric': 't', 'unit': 'C'}, fields={'value': 21.5}, time_ms=5)
    """
    out = []
    for metric, value in reading.metrics.items():
        tags = {"kind": reading.kind, "zone": reading.zone, "sensor_id": reading.sensor_id, "metric": metric}
        unit = reading.units.get(metric)
        if unit:
            tags["unit"] = unit
        out.append(Point(RAW_MEASUREMENT, tags, {"value": float(value)}, reading.ts_ms))
    return out


def open_raw_sink(settings: Settings) -> TimeSeriesSink | None:
    """The sink for raw readings, or None when ``write_raw`` is off.

    InfluxDB 1.x writes go to RP ``urban_raw``, 2.x to bucket ``<bucket>_raw``, SQLite to the
    ``reading`` table of the same file.
    """
    if not policy_of(settings).write_raw:
        return None
    from connectors.influx import InfluxV1Sink, InfluxV2Sink
    from connectors.store import SqliteStore

    cfg = settings.influx
    if not cfg.url:
        return SqliteStore(settings.store.path)
    if cfg.version == 1:

        class _RawV1Sink(InfluxV1Sink):
            async def _post(
                self,
                path: str,
                data: bytes | dict[str, str],
                params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None,
            ) -> None:
                if path == "/write" and params is not None:
                    params = {**params, "rp": RP_RAW}
                await super()._post(path, data, params, headers)

        return _RawV1Sink(cfg.url, cfg.database, cfg.username, cfg.password, timeout_ms=cfg.timeout_ms,
                          max_retries=cfg.max_retries, batch_size=cfg.batch_size)  # fmt: skip
    if cfg.token is None:
        msg = "URBAN_INFLUX__TOKEN is required for InfluxDB 2.x"
        raise SinkError(msg)
    return InfluxV2Sink(cfg.url, cfg.token, cfg.org, f"{cfg.bucket}_raw", timeout_ms=cfg.timeout_ms,
                        max_retries=cfg.max_retries, batch_size=cfg.batch_size)  # fmt: skip


@dataclass(frozen=True)
class SchemaReport:
    """What :func:`ensure_schema` found and did (for logs and tests)."""

    store: str
    actions: tuple[str, ...]


def ensure_schema(settings: Settings, *, now_ms: int | None = None) -> SchemaReport:
    """Create or update retention and roll-ups on the configured store (idempotent).

    Args:
        settings: the store selection (``influx``/``store``) and ``retention``.
        now_ms: SQLite only: run the roll-up/retention job once at this time.

    Raises:
        SinkError: the server refused a statement or was unreachable.
    """
    policy = policy_of(settings)
    cfg = settings.influx
    if not cfg.url:
        actions = ensure_sqlite_schema(settings.store.path)
        if now_ms is not None:
            done = sqlite_maintenance(settings.store.path, policy, now_ms)
            actions += tuple(f"{k}={v}" for k, v in done.items())
        return SchemaReport("sqlite", actions)
    if cfg.version == 1:
        return SchemaReport("influxdb-v1", tuple(ensure_influxql_schema(cfg, policy)))
    return SchemaReport("influxdb-v2", tuple(ensure_flux_schema(cfg, policy)))


# --- InfluxDB 1.x -------------------------------------------------------------------------------


def _rollup_select(name: str, source_rp: str, into_rp: str) -> str:
    from connectors.history import influxql_ident as ident

    measurement, _ = (ROLLUPS | ZONE_ROLLUPS)[name]
    calls = (
        'sum("count") AS "count", sum("sum") AS "sum", mean("mean") AS "mean", '
        'min("min") AS "min", max("max") AS "max", count("mean") AS "windows"'
    )
    if name in ZONE_ROLLUPS:
        calls += "".join(f', percentile("mean", {p}) AS "p{p}"' for p in ZONE_PERCENTILES)
    return (
        f"SELECT {calls} INTO {ident(into_rp)}.{ident(measurement)} "  # noqa: S608 - constants, quoted
        f"FROM {ident(source_rp)}.{ident(AGG_MEASUREMENT)}"
    )


def _rollup_group(name: str) -> str:
    """``GROUP BY`` of roll-up ``name``: per period and series (``*``), or per zone and metric."""
    every = _influx_duration(timedelta(milliseconds=rollup_period_ms(name)))
    tags = ", ".join(f'"{t}"' for t in ZONE_ROLLUP_TAGS) if name in ZONE_ROLLUPS else "*"
    return f"GROUP BY time({every}), {tags}"


def continuous_queries(database: str) -> dict[str, str]:
    """The ``CREATE CONTINUOUS QUERY`` statements, by CQ name.

    Example:
        >>> print(continuous_queries("db")["urban_rollup_1h"])
        CREATE CONTINUOUS QUERY "urban_rollup_1h" ON "db" RESAMPLE FOR 2h BEGIN SELECT \
sum("count") AS "count", sum("sum") AS "sum", mean("mean") AS "mean", min("min") AS "min", \
max("max") AS "max", count("mean") AS "windows" INTO "urban_rollup"."window_agg_1h" FROM \
"urban_agg"."window_agg" GROUP BY time(1h), * END
        >>> print(continuous_queries("db")["urban_rollup_zone_5m"].split(" AS ")[-1])
        "p99" INTO "urban_rollup"."window_agg_zone_5m" FROM "urban_agg"."window_agg" \
GROUP BY time(5m), "zone", "metric" END
    """
    from connectors.history import influxql_ident as ident

    out = {}
    for name in (*ROLLUPS, *ZONE_ROLLUPS):
        span = _influx_duration(timedelta(milliseconds=resample_ms(name)))
        cq = f"urban_rollup_{name}"
        out[cq] = (
            f"CREATE CONTINUOUS QUERY {ident(cq)} ON {ident(database)} RESAMPLE FOR {span} BEGIN "
            f"{_rollup_select(name, RP_AGG, RP_ROLLUP)} {_rollup_group(name)} END"
        )
    return out


def backfill_statement(name: str, since_ms: int, until_ms: int) -> str:
    """``SELECT ... INTO`` computing roll-up ``name`` over ``[since_ms, until_ms)`` now.

    Continuous queries only cover recent periods; this fills older ones (e.g. after a replay).
    """
    return (
        f"{_rollup_select(name, RP_AGG, RP_ROLLUP)} WHERE time >= {int(since_ms)}ms AND time < {int(until_ms)}ms "
        f"{_rollup_group(name)}"
    )


def backfill(cfg: InfluxSettings, names: Sequence[str], since_ms: int, until_ms: int, step_ms: int = 86_400_000) -> int:
    """Run :func:`backfill_statement` for each roll-up, a day at a time, over the whole periods in the range.

    Returns the points written.

    Raises:
        SinkError: a statement failed.
    """
    written = 0
    for name in names:
        period = rollup_period_ms(name)
        step = max(step_ms // period, 1) * period
        start, stop = -(-since_ms // period) * period, until_ms // period * period
        while start < stop:
            for series in _series(influxql_post(cfg, backfill_statement(name, start, min(start + step, stop)))):
                written += sum(int(v[1]) for v in series.get("values", []))
            start += step
    return written


def influxql_post(cfg: InfluxSettings, statement: str) -> list[dict[str, Any]]:
    """Run one InfluxQL statement with ``POST /query`` (needed for CREATE/ALTER/DROP/INTO).

    Raises:
        SinkError: unreachable, HTTP error or a statement error (the message names it).
    """
    params = urllib.parse.urlencode({"db": cfg.database, "epoch": "ms"})
    body = urllib.parse.urlencode({"q": statement}).encode()
    request = urllib.request.Request(f"{cfg.url.rstrip('/')}/query?{params}", data=body, method="POST")  # noqa: S310
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    if cfg.username:
        password = cfg.password.get_secret_value() if cfg.password else ""
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{cfg.username}:{password}".encode()).decode())
    where = f"schema statement to influxdb-v1 {cfg.url} db={cfg.database}"
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_ms / 1000) as resp:  # noqa: S310
            doc = orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace").strip()[:300]
        msg = f"{where} failed: HTTP {exc.code}: {text}; statement: {statement[:200]}"
        raise SinkError(msg) from exc
    except (OSError, orjson.JSONDecodeError) as exc:
        msg = f"{where} failed: {type(exc).__name__}: {exc}"
        raise SinkError(msg) from exc
    results: list[dict[str, Any]] = doc.get("results", [])
    for result in results:
        if "error" in result:
            msg = f"{where} failed: {result['error']}; statement: {statement[:200]}"
            raise SinkError(msg)
    return results


def _series(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for r in results for s in r.get("series", [])]


def ensure_influxql_schema(cfg: InfluxSettings, policy: RetentionSettings) -> list[str]:
    """Database, retention policies (``urban_agg`` DEFAULT) and continuous queries on 1.x."""
    from connectors.history import influxql_ident as ident

    db = ident(cfg.database)
    actions = []
    influxql_post(cfg, f"CREATE DATABASE {db}")
    existing = {}
    for series in _series(influxql_post(cfg, f"SHOW RETENTION POLICIES ON {db}")):
        cols = series["columns"]
        for values in series.get("values", []):
            row = dict(zip(cols, values, strict=False))
            existing[row["name"]] = row
    wanted = ((RP_RAW, policy.raw, False), (RP_AGG, policy.aggregates, True), (RP_ROLLUP, policy.rollups, False))
    for name, keep, default in wanted:
        duration = _influx_duration(keep)
        suffix = " DEFAULT" if default else ""
        if name in existing:
            statement = f"ALTER RETENTION POLICY {ident(name)} ON {db} DURATION {duration}{suffix}"
        else:
            statement = f"CREATE RETENTION POLICY {ident(name)} ON {db} DURATION {duration} REPLICATION 1{suffix}"
        influxql_post(cfg, statement)
        actions.append(statement)
    present = set()
    for series in _series(influxql_post(cfg, "SHOW CONTINUOUS QUERIES")):
        if series.get("name") == cfg.database:
            present |= {values[0] for values in series.get("values", [])}
    for name, statement in continuous_queries(cfg.database).items():
        if name in present:  # a CQ cannot be altered: replace it so definition changes apply
            influxql_post(cfg, f"DROP CONTINUOUS QUERY {ident(name)} ON {db}")
        influxql_post(cfg, statement)
        actions.append(statement)
    logger.info("influx schema ready url=%s database=%s statements=%d", cfg.url, cfg.database, len(actions))
    return actions


# --- InfluxDB 2.x -------------------------------------------------------------------------------


def rollup_task_flux(name: str, bucket: str, org: str) -> str:
    """The Flux of roll-up task ``name`` (``option task`` included).

    It recomputes the periods of the last :func:`resample_ms`, aligned to the epoch, so late
    windows count. Zone roll-ups group by ``zone`` and ``metric`` and add the nearest-rank
    percentiles of the window means (the rank trick of :func:`connectors.history.build_flux`).
    """
    from connectors.history import _flux_reduce, flux_string

    measurement, period_ms = (ROLLUPS | ZONE_ROLLUPS)[name]
    zone = name in ZONE_ROLLUPS
    every = _influx_duration(timedelta(milliseconds=period_ms))
    span = _influx_duration(timedelta(milliseconds=resample_ms(name)))
    parts = [
        ("count", "sum", "count"),
        ("sum", "sum", "sum"),
        ("mean", "mean", "mean"),
        ("min", "min", "min"),
        ("max", "max", "max"),
        ("mean", "count", "windows"),
    ]
    group = f"  |> group(columns: [{', '.join(f'{t!r}' for t in ZONE_ROLLUP_TAGS)}])".replace("'", '"')
    lines = [
        'import "date"',
        *(['import "math"'] if zone else []),
        "",
        f'option task = {{name: "urbansense-rollup-{name}", every: {every}, offset: {"1m" if zone else "5m"}}}',
        "",
        f"stop = date.truncate(t: now(), unit: {every})",
        f"start = date.sub(d: {span}, from: stop)",
        f"base = from(bucket: {flux_string(bucket)})",
        "  |> range(start: start, stop: stop)",
        f'  |> filter(fn: (r) => r._measurement == "{AGG_MEASUREMENT}")',
    ]
    names = []
    for i, (field, fn, out) in enumerate(parts):
        names.append(f"t{i}")
        lines += [
            f't{i} = base |> filter(fn: (r) => r._field == "{field}")',
            *([group, '  |> sort(columns: ["_time"])'] if zone else []),
            f'  |> aggregateWindow(every: {every}, fn: {fn}, createEmpty: false, timeSrc: "_start")',
            f'  |> set(key: "_field", value: "{out}")',
        ]
    for pct in ZONE_PERCENTILES if zone else ():
        names.append(f"p{pct}")
        lines += [
            f'p{pct} = base |> filter(fn: (r) => r._field == "mean")',
            group,
            f"  |> window(every: {every}, createEmpty: false)",
            *_flux_reduce(f"p{pct}").rstrip("\n").split("\n"),
            "  |> map(fn: (r) => ({r with _time: r._start}))",
            '  |> drop(columns: ["lo", "hi"])',
            group,
            f'  |> set(key: "_field", value: "p{pct}")',
        ]
    lines += [
        f"union(tables: [{', '.join(names)}])",
        f'  |> set(key: "_measurement", value: "{measurement}")',
        f"  |> to(bucket: {flux_string(bucket + '_rollup')}, org: {flux_string(org)})",
    ]
    return "\n".join(lines)


def ensure_flux_schema(cfg: InfluxSettings, policy: RetentionSettings) -> list[str]:
    """Buckets (with retention rules) and roll-up tasks on InfluxDB 2.x, through influxdb-client."""
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.domain.bucket_retention_rules import BucketRetentionRules
    from influxdb_client.domain.task_create_request import TaskCreateRequest

    if cfg.token is None:
        msg = "URBAN_INFLUX__TOKEN is required for InfluxDB 2.x"
        raise SinkError(msg)
    token = cfg.token.get_secret_value()
    actions: list[str] = []
    wanted = (
        (f"{cfg.bucket}_raw", policy.raw),
        (cfg.bucket, policy.aggregates),
        (f"{cfg.bucket}_rollup", policy.rollups),
    )
    try:
        with InfluxDBClient(url=cfg.url, token=token, org=cfg.org, timeout=cfg.timeout_ms) as client:
            orgs = client.organizations_api().find_organizations(org=cfg.org)
            if not orgs:
                msg = f"schema on influxdb-v2 {cfg.url}: organization {cfg.org!r} not found"
                raise SinkError(msg)
            org = orgs[0]
            buckets = client.buckets_api()
            for name, keep in wanted:
                seconds = int(keep.total_seconds())
                rules = [BucketRetentionRules(type="expire", every_seconds=seconds)]
                found = buckets.find_bucket_by_name(name)
                if found is None:
                    buckets.create_bucket(bucket_name=name, retention_rules=rules, org=org, description="urbansense")
                    actions.append(f"create bucket {name} retention={seconds}s")
                elif [r.every_seconds for r in found.retention_rules or []] != [seconds]:
                    found.retention_rules = rules
                    buckets.update_bucket(bucket=found)
                    actions.append(f"update bucket {name} retention={seconds}s")
            tasks = client.tasks_api()
            for name in (*ROLLUPS, *ZONE_ROLLUPS):
                flux = rollup_task_flux(name, cfg.bucket, cfg.org)
                task_name = f"urbansense-rollup-{name}"
                existing = tasks.find_tasks(name=task_name)
                if not existing:
                    request = TaskCreateRequest(flux=flux, org_id=org.id, status="active", description="urbansense")
                    tasks.create_task(task_create_request=request)
                    actions.append(f"create task {task_name}")
                elif existing[0].flux != flux:
                    task = existing[0]
                    task.flux = flux
                    tasks.update_task(task)
                    actions.append(f"update task {task_name}")
    except SinkError:
        raise
    except Exception as exc:  # ApiException, urllib3 and socket errors
        text = str(getattr(exc, "message", None) or exc).replace(token, "***")[:300]
        msg = f"schema on influxdb-v2 {cfg.url} org={cfg.org} failed: {text}"
        raise SinkError(msg) from exc
    logger.info("influx schema ready url=%s bucket=%s actions=%d", cfg.url, cfg.bucket, len(actions))
    return actions


# --- SQLite -------------------------------------------------------------------------------------

_META_DDL: Final = 'CREATE TABLE IF NOT EXISTS "urban_meta" ("key" TEXT PRIMARY KEY, "value" INTEGER NOT NULL)'


def ensure_sqlite_schema(path: str | Path) -> tuple[str, ...]:
    """Create the store's tables (the writer's, roll-ups, raw readings) and indexes."""
    from connectors.store import SqliteStore

    store = SqliteStore(path)
    try:
        store.open_sync()
    finally:
        store.close_sync()
    return (f"sqlite tables ready path={path}",)


def _period_rows(
    rows: Iterator[Sequence[Any]], period_ms: int, n_tags: int, keep_means: bool = False
) -> Iterator[tuple[tuple[Any, ...], int, dict[str, Any]]]:
    """Reduce windows ordered by (series, start) into one roll-up row per (series, period).

    With ``keep_means`` the row also holds the window means (``_means``) for percentiles.
    """
    key: tuple[Any, ...] | None = None
    acc: dict[str, Any] = {}
    for row in rows:
        tags, start, count, total, mean, lo, hi = tuple(row[:n_tags]), row[n_tags], *row[n_tags + 1 :]
        k = (*tags, start // period_ms * period_ms)
        if k != key:
            if key is not None:
                yield key[:-1], key[-1], acc
            key = k
            acc = {"count": 0, "sum": 0.0, "mean": 0.0, "min": None, "max": None, "windows": 0, "_means": []}
        # left to right, like InfluxQL's reducers, so the numbers match the continuous queries
        if count is not None:
            acc["count"] += count
        if total is not None:
            acc["sum"] += total
        if mean is not None:
            acc["mean"] += mean
            acc["windows"] += 1
            if keep_means:
                acc["_means"].append(mean)
        if lo is not None:
            acc["min"] = lo if acc["min"] is None else min(acc["min"], lo)
        if hi is not None:
            acc["max"] = hi if acc["max"] is None else max(acc["max"], hi)
    if key is not None:
        yield key[:-1], key[-1], acc


def sqlite_rollup(conn: sqlite3.Connection, name: str, since_ms: int, until_ms: int) -> int:
    """(Re)compute roll-up ``name`` for the periods in ``[since_ms, until_ms)`` (aligned down/up).

    Windows are reduced in (series, start, rowid) order, the order the history queries use, so a
    roll-up holds the numbers a downsampled query over ``window_agg`` gives in this store.
    """
    from connectors.history import nearest_rank

    zone = name in ZONE_ROLLUPS
    measurement, period_ms = (ROLLUPS | ZONE_ROLLUPS)[name]
    group = ZONE_ROLLUP_TAGS if zone else AGG_TAGS
    start = since_ms // period_ms * period_ms
    stop = -(-until_ms // period_ms) * period_ms
    tags = ", ".join(f'"{t}"' for t in group)
    cur = conn.execute(
        f'SELECT {tags}, "start_ms", "count", "sum", "mean", "min", "max" FROM "{AGG_MEASUREMENT}" '  # noqa: S608
        f'WHERE "start_ms" >= ? AND "start_ms" < ? ORDER BY {tags}, "start_ms", rowid',
        (start, stop),
    )
    columns = (*group, "start_ms", *(ZONE_ROLLUP_FIELDS if zone else ROLLUP_FIELDS))
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    sql = f'INSERT OR REPLACE INTO "{measurement}" ({names}) VALUES ({marks})'  # noqa: S608 - constants
    batch: list[tuple[Any, ...]] = []
    n = 0
    conn.execute(f'DELETE FROM "{measurement}" WHERE "start_ms" >= ? AND "start_ms" < ?', (start, stop))  # noqa: S608
    for key, t, acc in _period_rows(_rows(cur), period_ms, len(group), keep_means=zone):
        mean = acc["mean"] / acc["windows"] if acc["windows"] else None
        row = (*key, t, acc["count"], acc["sum"], mean, acc["min"], acc["max"], acc["windows"])
        if zone:
            means = sorted(acc["_means"])
            row += tuple(nearest_rank(means, p) for p in ZONE_PERCENTILES)
        batch.append(row)
        if len(batch) >= 5000:
            conn.executemany(sql, batch)
            n += len(batch)
            batch.clear()
    conn.executemany(sql, batch)
    return n + len(batch)


def _rows(cur: sqlite3.Cursor) -> Iterator[Sequence[Any]]:
    while chunk := cur.fetchmany(10_000):
        yield from chunk


def sqlite_maintenance(path: str | Path, policy: RetentionSettings, now_ms: int) -> dict[str, int]:
    """The embedded store's periodic job: roll up new periods, then delete expired rows.

    Roll-ups are recomputed from the last run's mark minus :func:`resample_ms` (late windows
    count); the first run backfills from the oldest window. Returns counts of what it did.
    """
    from connectors.store import SqliteStore

    path = Path(path)
    if not path.exists():
        return {}
    store = SqliteStore(path)
    done: dict[str, int] = {}
    try:
        conn = store.open_sync()
        with store.lock:
            conn.execute(_META_DDL)
            conn.execute("BEGIN")
            try:
                for name, (_, period_ms) in (ROLLUPS | ZONE_ROLLUPS).items():
                    mark_key = f"rollup_{name}_until_ms"
                    row = conn.execute('SELECT "value" FROM "urban_meta" WHERE "key" = ?', (mark_key,)).fetchone()
                    if row is None:
                        first = conn.execute(f'SELECT min("start_ms") FROM "{AGG_MEASUREMENT}"').fetchone()[0]  # noqa: S608
                        since = now_ms if first is None else int(first)
                    else:
                        since = int(row[0]) - resample_ms(name)
                    until = now_ms // period_ms * period_ms  # whole periods only
                    if since < until:
                        done[f"rollup_{name}_rows"] = sqlite_rollup(conn, name, since, until)
                    conn.execute('INSERT OR REPLACE INTO "urban_meta" VALUES (?, ?)', (mark_key, max(until, 0)))
                cutoffs = {
                    RAW_MEASUREMENT: ("ts_ms", policy.raw),
                    AGG_MEASUREMENT: ("start_ms", policy.aggregates),
                    ALERT_MEASUREMENT: ("ts_ms", policy.aggregates),
                    **{m: ("start_ms", policy.rollups) for m, _ in (ROLLUPS | ZONE_ROLLUPS).values()},
                }
                for table, (column, keep) in cutoffs.items():
                    cur = conn.execute(f'DELETE FROM "{table}" WHERE "{column}" < ?', (now_ms - _ms(keep),))  # noqa: S608
                    done[f"expired_{table}"] = cur.rowcount
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        msg = f"sqlite store path={path}: maintenance failed: {exc}"
        raise SinkError(msg) from exc
    finally:
        store.close_sync()
    logger.info("sqlite maintenance path=%s %s", path, " ".join(f"{k}={v}" for k, v in done.items()))
    return done


def describe(settings: Settings) -> Mapping[str, Any]:
    """The effective layout, for docs, ``/api/v1/schema`` and logs."""
    policy = policy_of(settings)
    return {
        "write_raw": policy.write_raw,
        "retention_days": {
            "raw": policy.raw / timedelta(days=1),
            "aggregates": policy.aggregates / timedelta(days=1),
            "alerts": policy.aggregates / timedelta(days=1),
            "rollups": policy.rollups / timedelta(days=1),
        },
        "measurements": {
            RAW_MEASUREMENT: list(RAW_TAGS) + ["value"],
            AGG_MEASUREMENT: "window aggregates (see connectors.lineprotocol)",
            ALERT_MEASUREMENT: "alert events (see connectors.lineprotocol)",
            **{m: list(ROLLUP_FIELDS) for m, _ in ROLLUPS.values()},
            **{m: [*ZONE_ROLLUP_TAGS, *ZONE_ROLLUP_FIELDS] for m, _ in ZONE_ROLLUPS.values()},
        },
    }

