"""The plain Faust baseline of the e2e benchmark: the same job written the obvious way.

``python -m benchmarks baseline_faust worker`` runs it (configured from ``BASELINE_*`` variables,
set by :mod:`benchmarks.e2e`). What it does, event by event, as the Faust docs suggest:

* a per-event agent on the readings topic: ``parse_reading`` (the same validation as UrbanSense)
  of the record, or of each reading of a frame (:mod:`streams.frames`, all of one event time),
  then for each metric read-modify-write of a **Faust windowed table**
  (``app.Table(...).tumbling(size, expires=size + lateness)``, keyed ``sensor|metric``, windowed
  on the message timestamp = event time); every table write is a changelog record;
* ``on_window_close`` (driven by Faust's table cleanup timer, every ``BASELINE_CLEANUP_S`` s) hands
  the closed window to a task that evaluates the packaged threshold rules on it, sends an alert
  record to the alerts topic and writes the aggregate to InfluxDB 1.x with **one HTTP request per
  point** (no batching, no compression);
* ``/baseline/stats/`` reports readings in, aggregates, alerts and points written.

Not a straw man: it shares our parser and takes a thousand records per fetch like any Faust app;
it is what a first implementation on Faust's own abstractions looks like.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import timedelta
from typing import Any

import aiohttp
import faust
import orjson

from streams.errors import InvalidReading
from streams.frames import split_frame
from streams.schema import parse_reading

logger = logging.getLogger(__name__)

#: The packaged threshold rules (alerting/default_rules.toml), without hysteresis or durations.
RULES: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("pm25_very_unhealthy", "environment", "pm25", "mean", ">", 150.0),
    ("traffic_standstill", "traffic", "speed", "mean", "<", 8.0),
    ("crowd_surge", "crowd", "people", "max", ">", 2500.0),
    ("drain_overflow", "iot", "drain_level", "max", ">", 180.0),
)


def build_app(env: dict[str, str]) -> faust.App:  # noqa: C901 - the whole app, on purpose in one place
    """The baseline Faust app from ``BASELINE_*`` settings."""
    size_s = float(env.get("BASELINE_WINDOW_S", "60"))
    lateness_s = float(env.get("BASELINE_LATENESS_S", "5"))
    partitions = int(env.get("BASELINE_PARTITIONS", "4"))
    influx = env["BASELINE_INFLUX_URL"].rstrip("/")
    database = env.get("BASELINE_DB", "baseline")
    app = faust.App(
        env.get("BASELINE_APP_ID", "baseline"),
        broker=f"kafka://{env['BASELINE_BROKER']}",
        store="memory://",
        topic_partitions=partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        web_port=int(env.get("BASELINE_WEB_PORT", "6067")),
        web_host="127.0.0.1",
        datadir=env.get("BASELINE_DATADIR", "var/baseline"),
        autodiscover=False,
        table_cleanup_interval=float(env.get("BASELINE_CLEANUP_S", "1.0")),
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    readings = app.topic(env["BASELINE_TOPIC"], partitions=partitions, **raw)
    alerts = app.topic(env["BASELINE_ALERTS_TOPIC"], partitions=partitions, **raw)
    closed: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()
    stats = {"readings_in": 0, "dead_letters": 0, "aggregates": 0, "alerts": 0, "points_written": 0}

    def on_close(key: Any, value: Any) -> None:
        closed.put_nowait((key, value))

    windows = app.Table(
        "baseline_windows", default=dict, partitions=partitions, on_window_close=on_close,
        key_type=str, value_type=dict,
    ).tumbling(size_s, expires=timedelta(seconds=size_s + lateness_s))

    @app.agent(readings)
    async def process(stream: faust.StreamT) -> Any:
        async for event in stream.events():
            for raw in split_frame(event.value):  # a record holds one reading, or a frame of them
                stats["readings_in"] += 1
                try:
                    r = parse_reading(raw, now_ms=int(event.message.timestamp * 1000) + 86_400_000)
                except InvalidReading:
                    stats["dead_letters"] += 1
                    continue
                for metric, value in r.metrics.items():
                    key = f"{r.sensor_id}|{metric}"
                    w = dict(windows[key].current())
                    if not w:
                        w = {"kind": r.kind, "zone": r.zone, "unit": r.units.get(metric, ""), "count": 0,
                             "sum": 0.0, "min": value, "max": value, "first_ts_ms": r.ts_ms}
                    w["count"] += 1
                    w["sum"] += value
                    w["min"] = min(w["min"], value)
                    w["max"] = max(w["max"], value)
                    w["first_ts_ms"] = min(w["first_ts_ms"], r.ts_ms)
                    windows[key] = w
            yield None

    @app.task
    async def sink() -> None:
        async with aiohttp.ClientSession() as http:
            await http.post(f"{influx}/query", data={"q": f'CREATE DATABASE "{database}"'})
            while True:
                key, w = await closed.get()
                name, (start_s, _end_s) = key
                sid, metric = name.split("|", 1)
                start_ms = round(start_s * 1000)
                end_ms = start_ms + round(size_s * 1000)
                mean = w["sum"] / w["count"]
                stats["aggregates"] += 1
                agg = {"mean": mean, "max": w["max"], "min": w["min"]}
                for rule, kind, m, fld, op, level in RULES:
                    if kind == w["kind"] and m == metric and (agg[fld] > level if op == ">" else agg[fld] < level):
                        doc = {"rule": rule, "sensor_id": sid, "zone": w["zone"], "metric": metric,
                               "value": agg[fld], "threshold": level, "first_reading_ts_ms": w["first_ts_ms"],
                               "ts_ms": end_ms, "latency_ms": end_ms - w["first_ts_ms"]}
                        await alerts.send(key=f"{rule}:{sid}:{start_ms}".encode(), value=orjson.dumps(doc))
                        stats["alerts"] += 1
                line = (
                    f"window_agg,kind={w['kind']},metric={metric},sensor_id={sid},window=tumbling "
                    f"count={w['count']}i,sum={w['sum']!r},mean={mean!r},min={float(w['min'])!r},"
                    f"max={float(w['max'])!r} {start_ms}"
                )
                async with http.post(f"{influx}/write", params={"db": database, "precision": "ms"},
                                     data=line.encode()) as resp:
                    if resp.status >= 300:
                        logger.error("influx write failed status=%d body=%s", resp.status, await resp.text())
                    else:
                        stats["points_written"] += 1

    @app.page("/baseline/stats/")
    async def stats_page(web_: Any, request: Any) -> Any:
        return web_.json(stats)

    return app


def main(argv: list[str]) -> int:
    """``worker``: run the baseline worker (entrypoint; reads ``BASELINE_*`` from the environment)."""
    logging.basicConfig(level=logging.INFO)
    app = build_app(dict(os.environ))
    sys.argv = ["baseline_faust", *(argv or ["worker"]), "-l", "info"]
    app.main()
    return 0
