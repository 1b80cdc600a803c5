"""History query speed: ``python -m benchmarks history [--json] [options]``.

The target is a 30-day history of 1,000 sensors at 1-minute resolution (43.2 M windows). That
many points cannot be loaded into InfluxDB 1.6.7 on a 2-core machine in reasonable time, so the
benchmark loads what the two queries read at full resolution and the rest at reduced size:

* the queried sensor: every minute of the 30 days;
* every sensor of the queried zone (``--zone-sensors``): every minute of the last 7 days;
* all other windows (the other sensors for 30 days, the zone's sensors before the last 7
  days): one window every ``--reduced-every`` minutes.

The report states exactly how many points were loaded. The same points go to a fresh
database on InfluxDB 1.x (a local ``influxd`` started on a free port, or ``--influx-url``;
schema from :func:`connectors.retention.ensure_schema`, so into RP ``urban_agg``) and to a
fresh SQLite store (tables and indexes of :class:`connectors.store.SqliteStore`).

A running deployment keeps its roll-ups current (continuous queries on 1.x, the maintenance
job on SQLite); data loaded in bulk has none, so the benchmark then computes them the way an
operator backfills: :func:`connectors.retention.backfill` of the zone roll-ups on InfluxDB (the
per-series 1h/1d roll-ups are not used by these queries and are left out there) and one
:func:`connectors.retention.sqlite_maintenance` run on SQLite (all roll-ups). ``rollup_s`` is that
time, reported apart from ``load_s``. Queries, as :func:`connectors.history.query_history` answers
them (the zone query from the ``zone_5m`` roll-up plus the windows of its last hour):

* ``sensor_30d_hourly_mean``: one sensor, 30 days, 1 h buckets, mean of the window means;
* ``zone_7d_5m_p95``: one zone (all its sensors), 7 days, 5 min buckets, p95 of the window means.

Each query runs ``--repeat`` times per store; the report gives the cold (first) and median
times. ``max_query_s`` is the slowest median of all (query, store) pairs, ``max_query_cold_s``
the slowest first run. Both stores' answers are compared (``results_match``). For comparison,
``window_scan`` times the same queries with ``rollups=False`` (every window read; not part of
``max_query_s``), and ``results_match`` also requires those answers to be the same numbers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gzip
import json
import math
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from connectors.history import HistoryQuery, query_history
from connectors.lineprotocol import AGG_MEASUREMENT
from connectors.retention import ZONE_ROLLUPS, RetentionSettings, backfill, ensure_schema, sqlite_maintenance
from connectors.store import SqliteStore
from streams.settings import Settings

MINUTE = 60_000
DAY = 86_400_000
FIELDS = ("count", "sum", "mean", "min", "max", "std", "first", "last")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalInfluxd:
    """An ``influxd`` 1.x on free loopback ports with a temporary data directory."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("influxd")
        if binary is None:
            msg = "influxd 1.x not found (apt-get install -y influxdb) and no --influx-url given"
            raise SystemExit(msg)
        self.port, bind = _free_port(), _free_port()
        root = workdir / "influxd"
        root.mkdir()
        (root / "influxdb.conf").write_text(
            f'reporting-disabled = true\nbind-address = "127.0.0.1:{bind}"\n[meta]\n  dir = "{root}/meta"\n'
            f'[data]\n  dir = "{root}/data"\n  wal-dir = "{root}/wal"\n  query-log-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n  max-body-size = 0\n'
            "[monitor]\n  store-enabled = false\n"
        )
        self.log = open(root / "influxd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([binary, "-config", str(root / "influxdb.conf")], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=root)  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:  # noqa: S310
                    if resp.status == 204:
                        return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    msg = "influxd did not start"
                    raise SystemExit(msg) from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def version(self) -> str:
        with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as resp:  # noqa: S310
            return str(resp.headers.get("X-Influxdb-Version", "?"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def plan(args: argparse.Namespace, end_ms: int) -> list[tuple[int, str, int, int, int]]:
    """(sensor index, zone, first start_ms, step_ms, windows) blocks to generate."""
    start = end_ms - args.days * DAY
    week = end_ms - 7 * DAY
    reduced = args.reduced_every * MINUTE
    blocks = []
    for i in range(args.sensors):
        zone = f"z{i % args.zones:02d}" if i >= args.zone_sensors else "z00"
        if i == 0:  # the queried sensor: full resolution, all days
            blocks.append((i, zone, start, MINUTE, args.days * 1440))
        elif i < args.zone_sensors:  # the queried zone: full resolution for the last 7 days
            blocks.append((i, zone, start, reduced, (week - start) // reduced))
            blocks.append((i, zone, week, MINUTE, 7 * 1440))
        else:
            blocks.append((i, zone, start, reduced, (end_ms - start) // reduced))
    return blocks


def rows(blocks: list[tuple[int, str, int, int, int]], seed: int) -> Iterator[tuple[Any, ...]]:
    """Window rows (sensor, zone, start_ms, count, sum, mean, min, max, std, first, last)."""
    rng = np.random.default_rng(seed)
    for i, zone, first, step, n in blocks:
        base = 20 + (i % 37) * 2.0
        mean = base + 10 * np.sin(np.arange(n) * step / DAY * 2 * np.pi) + rng.normal(0, 3, n)
        spread = rng.uniform(0.5, 4, n)
        count = rng.integers(1, 13, n)
        lo, hi = mean - spread, mean + spread
        total = mean * count
        sensor = f"s{i:04d}"
        for k in range(n):
            m = float(mean[k])
            yield (sensor, zone, first + k * step, int(count[k]), float(total[k]), m, float(lo[k]), float(hi[k]),
                   float(spread[k] / 2), float(lo[k]), float(hi[k]))  # fmt: skip


def line(r: tuple[Any, ...]) -> str:
    sensor, zone, t, count, *floats = r
    values = ",".join(f"{k}={v!r}" for k, v in zip(FIELDS[1:], floats, strict=True))
    return (
        f"{AGG_MEASUREMENT},kind=environment,metric=pm25,sensor_id={sensor},unit=ug/m3,window=tumbling,"
        f"window_size_ms=60000,zone={zone} count={count}i,{values} {t}"
    )


def load_influx(url: str, database: str, batches: Iterator[list[tuple[Any, ...]]]) -> None:
    def post(batch: list[tuple[Any, ...]]) -> None:
        body = gzip.compress("\n".join(line(r) for r in batch).encode(), compresslevel=1)
        req = urllib.request.Request(f"{url}/write?db={database}&precision=ms", data=body, method="POST")  # noqa: S310
        req.add_header("Content-Encoding", "gzip")
        with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310
            if resp.status != 204:
                msg = f"write failed: HTTP {resp.status}"
                raise RuntimeError(msg)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pending: list[concurrent.futures.Future[None]] = []
        for batch in batches:
            pending.append(pool.submit(post, batch))
            if len(pending) >= 4:
                pending.pop(0).result()
        for f in pending:
            f.result()


def load_sqlite(path: Path, batches: Iterator[list[tuple[Any, ...]]]) -> None:
    store = SqliteStore(path)
    store.open_sync()  # the writer's tables and indexes
    store.close_sync()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    cols = ("sensor_id", "zone", "start_ms", *FIELDS)
    sql = (
        f'INSERT INTO "{AGG_MEASUREMENT}" (kind, metric, unit, "window", window_size_ms, {", ".join(cols)}) '  # noqa: S608
        f"VALUES ('environment', 'pm25', 'ug/m3', 'tumbling', '60000', {', '.join('?' for _ in cols)})"
    )
    for batch in batches:
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def chunked(it: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for r in it:
        batch.append(r)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def timed(
    queries: dict[str, HistoryQuery], stores: tuple[tuple[str, Settings], ...], repeat: int
) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    """Run each query ``repeat`` times on each store: (timings by ``query.store``, answers)."""
    results: dict[str, Any] = {}
    answers: dict[tuple[str, str], Any] = {}
    for qname, q in queries.items():
        for sname, s in stores:
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                out = query_history(s, q)
                times.append(time.perf_counter() - t0)
            answers[(qname, sname)] = out
            results[f"{qname}.{sname}"] = {
                "cold_s": round(times[0], 4),
                "median_s": round(statistics.median(times), 4),
                "rows": len(out),
            }
    return results, answers


def same_numbers(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Same rows; floats equal to 1e-12 (InfluxDB may add a zone's series in another order)."""
    return len(a) == len(b) and all(
        ra.keys() == rb.keys() and all(math.isclose(ra[k], rb[k], rel_tol=1e-12) for k in ra)
        for ra, rb in zip(a, b, strict=True)
    )


def main(argv: list[str]) -> int:
    """Entry point used by ``python -m benchmarks history``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks history")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--zones", type=int, default=10)
    parser.add_argument("--zone-sensors", type=int, default=100, help="sensors in the queried zone")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--reduced-every", type=int, default=60, help="minutes between windows at reduced size")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scan-repeat", type=int, default=3, help="repeats of the window_scan comparison (0: skip)")
    parser.add_argument("--influx-url", default=None, help="use this InfluxDB 1.x instead of starting influxd")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    end_ms = time.time_ns() // 1_000_000 // MINUTE * MINUTE
    blocks = plan(args, end_ms)
    points = sum(b[4] for b in blocks)
    with tempfile.TemporaryDirectory(prefix="urban-bench-") as tmp:
        server = None if args.influx_url else LocalInfluxd(Path(tmp))
        url = args.influx_url or (server.url if server else "")
        try:
            database = f"bench_{end_ms}"
            influx = Settings(influx={"url": url, "version": 1, "database": database, "timeout_ms": 600_000})
            ensure_schema(influx)
            t0 = time.perf_counter()
            load_influx(url, database, chunked(rows(blocks, args.seed), 20_000))
            influx_load_s = time.perf_counter() - t0
            path = Path(tmp) / "bench.db"
            t0 = time.perf_counter()
            load_sqlite(path, chunked(rows(blocks, args.seed), 50_000))
            sqlite_load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rolled = backfill(influx.influx, tuple(ZONE_ROLLUPS), end_ms - args.days * DAY, end_ms)
            influx_rollup_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            done = sqlite_maintenance(path, RetentionSettings(), end_ms)
            sqlite_rollup_s = time.perf_counter() - t0
            sqlite = Settings(store={"path": path}, influx={"url": ""})
            queries = {
                "sensor_30d_hourly_mean": HistoryQuery("s0000", "pm25", end_ms - 30 * DAY, end_ms,
                                                       every_ms=3_600_000, agg="mean"),
                "zone_7d_5m_p95": HistoryQuery(None, "pm25", end_ms - 7 * DAY, end_ms, every_ms=300_000, agg="p95",
                                               zone="z00"),
            }  # fmt: skip
            stores = (("influxdb_v1", influx), ("sqlite", sqlite))
            results, answers = timed(queries, stores, args.repeat)
            match = all(answers[(q, "influxdb_v1")] == answers[(q, "sqlite")] for q in queries)
            scan: dict[str, Any] = {}
            if args.scan_repeat > 0:
                windows = {name: dataclasses.replace(q, rollups=False) for name, q in queries.items()}
                scan, scanned = timed(windows, stores, args.scan_repeat)
                match = match and all(same_numbers(answers[k], scanned[k]) for k in answers)
            version = server.version() if server else "external"
        finally:
            if server is not None:
                server.stop()
    report = {
        "max_query_s": max(r["median_s"] for r in results.values()),
        "max_query_cold_s": max(r["cold_s"] for r in results.values()),
        "queries": results,
        "results_match": match,
        "window_scan": scan,
        "loaded": {
            "points": points,
            "sensors": args.sensors,
            "days": args.days,
            "full_resolution": f"sensor s0000 for {args.days} days; the {args.zone_sensors} sensors of zone z00 "
            "for the last 7 days",
            "reduced": f"everything else at one window per {args.reduced_every} minutes",
            "target_points": args.sensors * args.days * 1440,
        },
        "load_s": {"influxdb_v1": round(influx_load_s, 1), "sqlite": round(sqlite_load_s, 1)},
        "rollup_s": {"influxdb_v1": round(influx_rollup_s, 1), "sqlite": round(sqlite_rollup_s, 1)},
        "rollups": {
            "influxdb_v1": f"backfill of {', '.join(ZONE_ROLLUPS)} over the {args.days} days: {rolled} points",
            "sqlite": "one maintenance run (1h, 1d, zone_5m, zone_1h): "
            + ", ".join(f"{k}={v}" for k, v in done.items() if k.startswith("rollup_")),
        },
        "influxdb_version": version,
        "repeat": args.repeat,
        "cpus": __import__("os").cpu_count(),
    }
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        for name, r in results.items():
            sys.stdout.write(f"{name:40s} cold {r['cold_s']:.3f}s  median {r['median_s']:.3f}s  rows {r['rows']}\n")
        for name, r in scan.items():
            sys.stdout.write(f"window_scan {name:28s} cold {r['cold_s']:.3f}s  median {r['median_s']:.3f}s\n")
        sys.stdout.write(f"max_query_s {report['max_query_s']:.3f} ({points} points loaded)\n")
    return 0 if match else 1
