"""InfluxDB 2.x: the schema (buckets, tasks) and every query type against a recording HTTP double.

No 2.x server runs on our build machines; the double pins the exact requests influxdb-client
sends and feeds back annotated CSV in the shape a 2.x server answers, so parsing and the
rows that come out are checked to be the ones SQLite and InfluxDB 1.x give.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from connectors.history import (
    AlertQuery,
    HistoryQuery,
    TopQuery,
    build_flux,
    build_flux_alerts,
    build_flux_top,
    iter_alerts,
    query_history,
    top_zones,
)
from connectors.retention import ensure_schema, rollup_task_flux
from streams.errors import SinkError
from streams.settings import Settings

TOKEN = "v2-t0ken-never-shown"  # noqa: S105 - a fake
T0 = 1_700_006_400_000  # 2023-11-15T00:00:00Z


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    body: bytes


@dataclass
class Double:
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    replies: deque[tuple[int, bytes, str]] = field(default_factory=deque)

    def answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        self.replies.append((status, raw, content_type))


@pytest.fixture
def double() -> Iterator[Double]:
    state = Double()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            parts = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            state.seen.append(Seen(self.command, parts.path, query, raw))
            status, body, ctype = state.replies.popleft() if state.replies else (500, b"{}", "application/json")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = _handle  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def settings(double: Double) -> Settings:
    return Settings(influx={"url": double.url, "version": 2, "token": TOKEN, "org": "acme", "bucket": "city"})


ORG = {"id": "0a1b2c3d4e5f6789", "name": "acme"}


def bucket(name: str, seconds: int, bid: str) -> dict[str, Any]:
    return {
        "id": bid,
        "name": name,
        "orgID": ORG["id"],
        "retentionRules": [{"type": "expire", "everySeconds": seconds}],
    }


def task(tid: str, name: str, flux: str) -> dict[str, Any]:
    return {"id": tid, "orgID": ORG["id"], "name": name, "flux": flux, "status": "active", "every": "1h"}


# --- schema -------------------------------------------------------------------------------------


def test_schema_creates_missing_updates_changed_and_keeps_equal(double: Double) -> None:
    flux_1d = rollup_task_flux("1d", "city", "acme")
    double.answer(200, {"orgs": [ORG]})
    double.answer(200, {"buckets": []})  # city_raw: missing
    double.answer(201, bucket("city_raw", 7 * 86400, "b1"))
    double.answer(200, {"buckets": [bucket("city", 0, "b2")]})  # infinite: set to 90 days
    double.answer(200, bucket("city", 90 * 86400, "b2"))
    double.answer(200, {"buckets": [bucket("city_rollup", 730 * 86400, "b3")]})  # already right
    double.answer(200, {"tasks": []})
    double.answer(201, task("t1", "urbansense-rollup-1h", "x"))
    double.answer(200, {"tasks": [task("t2", "urbansense-rollup-1d", flux_1d)]})  # unchanged
    double.answer(200, {"tasks": []})
    double.answer(201, task("t3", "urbansense-rollup-zone_5m", "x"))
    double.answer(200, {"tasks": [task("t4", "urbansense-rollup-zone_1h", "old flux")]})  # changed
    double.answer(200, task("t4", "urbansense-rollup-zone_1h", "new"))
    report = ensure_schema(settings(double))
    assert report.store == "influxdb-v2"
    assert report.actions == (
        "create bucket city_raw retention=604800s",
        "update bucket city retention=7776000s",
        "create task urbansense-rollup-1h",
        "create task urbansense-rollup-zone_5m",
        "update task urbansense-rollup-zone_1h",
    )
    calls = [(s.method, s.path) for s in double.seen]
    assert calls == [
        ("GET", "/api/v2/orgs"),
        ("GET", "/api/v2/buckets"),
        ("POST", "/api/v2/buckets"),
        ("GET", "/api/v2/buckets"),
        ("PATCH", "/api/v2/buckets/b2"),
        ("GET", "/api/v2/buckets"),
        ("GET", "/api/v2/tasks"),
        ("POST", "/api/v2/tasks"),
        ("GET", "/api/v2/tasks"),
        ("GET", "/api/v2/tasks"),
        ("POST", "/api/v2/tasks"),
        ("GET", "/api/v2/tasks"),
        ("PATCH", "/api/v2/tasks/t4"),
    ]
    assert double.seen[0].query["org"] == "acme"
    assert [double.seen[i].query["name"] for i in (1, 3, 5)] == ["city_raw", "city", "city_rollup"]
    created = orjson.loads(double.seen[2].body)
    assert created["name"] == "city_raw" and created["orgID"] == ORG["id"]
    assert created["retentionRules"] == [{"type": "expire", "everySeconds": 604800}]
    assert orjson.loads(double.seen[4].body)["retentionRules"] == [{"type": "expire", "everySeconds": 7776000}]
    assert double.seen[6].query["name"] == "urbansense-rollup-1h"
    new_task = orjson.loads(double.seen[7].body)
    assert new_task["orgID"] == ORG["id"] and new_task["flux"] == rollup_task_flux("1h", "city", "acme")
    assert orjson.loads(double.seen[10].body)["flux"] == rollup_task_flux("zone_5m", "city", "acme")
    assert orjson.loads(double.seen[12].body)["flux"] == rollup_task_flux("zone_1h", "city", "acme")


def test_rollup_task_flux() -> None:
    flux = rollup_task_flux("1h", "city", "acme")
    assert 'option task = {name: "urbansense-rollup-1h", every: 1h, offset: 5m}' in flux
    assert "stop = date.truncate(t: now(), unit: 1h)\nstart = date.sub(d: 2h, from: stop)" in flux
    assert flux.count("aggregateWindow(every: 1h") == 6
    assert 'set(key: "_field", value: "windows")' in flux
    assert flux.endswith(
        '|> set(key: "_measurement", value: "window_agg_1h")\n  |> to(bucket: "city_rollup", org: "acme")'
    )


def test_zone_rollup_task_flux() -> None:
    flux = rollup_task_flux("zone_5m", "city", "acme")
    head = 'import "date"\nimport "math"\n\noption task = {name: "urbansense-rollup-zone_5m", every: 5m, offset: 1m}'
    assert flux.startswith(head)
    assert "stop = date.truncate(t: now(), unit: 5m)\nstart = date.sub(d: 1h, from: stop)" in flux
    assert flux.count('  |> group(columns: ["zone", "metric"])\n  |> sort(columns: ["_time"])\n') == 6
    assert flux.count("aggregateWindow(every: 5m") == 6 and flux.count("window(every: 5m, createEmpty: false)") == 4
    for p in (50, 90, 95, 99):
        assert f"float(v: r.lo + r.hi - 1) * {p / 100!r} + 0.5)))" in flux
        assert f'set(key: "_field", value: "p{p}")' in flux
    assert "union(tables: [t0, t1, t2, t3, t4, t5, p50, p90, p95, p99])" in flux
    assert flux.endswith(
        '|> set(key: "_measurement", value: "window_agg_zone_5m")\n  |> to(bucket: "city_rollup", org: "acme")'
    )


def test_schema_error_hides_token(double: Double) -> None:
    double.answer(401, {"code": "unauthorized", "message": f"bad token {TOKEN}"})
    with pytest.raises(SinkError, match="schema on influxdb-v2") as info:
        ensure_schema(settings(double))
    assert TOKEN not in str(info.value)


# --- queries ------------------------------------------------------------------------------------


def csv_body(types: list[str], columns: list[str], rows: list[list[str]], group: list[str] | None = None) -> bytes:
    lines = [
        "#datatype,string,long," + ",".join(types),
        "#group,false,false," + ",".join(group or ["false"] * len(types)),
        "#default,_result,,," + "," * (len(types) - 2),
        ",result,table," + ",".join(columns),
    ]
    lines += [",,0," + ",".join(r) for r in rows]
    return ("\n".join(lines) + "\n\n").encode()


def test_zone_percentile_by_sensor(double: Double) -> None:
    q = HistoryQuery(
        None, "pm25", T0 + 1, T0 + 3_600_000, every_ms=300_000, agg="p95", zone="futian", group_by="sensor_id"
    )
    body = csv_body(
        ["dateTime:RFC3339", "string", "double"],
        ["_time", "sensor_id", "_value"],
        [
            ["2023-11-15T00:00:00.001Z", "s1", "41.5"],
            ["2023-11-15T00:05:00Z", "s1", "40"],
            ["2023-11-15T00:00:00.001Z", "s2", "7.25"],
        ],
    )
    double.answer(200, body, "text/csv")
    rows = query_history(settings(double), q)
    flux = orjson.loads(double.seen[0].body)["query"]
    assert flux == build_flux("city", q)
    assert flux.startswith('import "math"\n\nfrom(bucket: "city")\n')
    assert (
        '  |> filter(fn: (r) => r._measurement == "window_agg" and r.metric == "pm25" and r.zone == "futian")\n' in flux
    )
    assert '  |> group(columns: ["sensor_id"])\n  |> sort(columns: ["_time"])\n  |> window(every: 300000ms' in flux
    assert "r.lo == int(v: math.floor(x: float(v: r.lo + r.hi - 1) * 0.95 + 0.5))" in flux
    assert flux.endswith('|> group()\n  |> sort(columns: ["sensor_id", "_time"])')
    assert rows == [
        {"time_ms": T0, "sensor_id": "s1", "value": 41.5},  # first window re-aligned to the grid
        {"time_ms": T0 + 300_000, "sensor_id": "s1", "value": 40.0},
        {"time_ms": T0, "sensor_id": "s2", "value": 7.25},
    ]


def test_zone_percentile_from_the_zone_rollup(double: Double) -> None:
    q = HistoryQuery(None, "pm25", T0, T0 + 3 * 3_600_000, every_ms=300_000, agg="p95", zone="futian")
    stored = csv_body(
        ["dateTime:RFC3339", "double"],
        ["_time", "p95"],
        [["2023-11-15T00:00:00Z", "41.5"], ["2023-11-15T00:05:00Z", "40"], ["2023-11-15T02:00:00Z", "39"]],
    )
    windows = csv_body(["dateTime:RFC3339", "double"], ["_time", "_value"], [["2023-11-15T02:01:00Z", "38.25"]])
    double.answer(200, stored, "text/csv")
    double.answer(200, windows, "text/csv")
    rows = query_history(settings(double), q)
    first, second = (orjson.loads(seen.body)["query"] for seen in double.seen)
    assert first.startswith('from(bucket: "city_rollup")\n  |> range(start: 2023-11-15T00:00:00.000Z, stop: ')
    assert 'r._measurement == "window_agg_zone_5m" and r.metric == "pm25" and r.zone == "futian"' in first
    assert 'r._field == "p95"' in first and 'keep(columns: ["_time", "p95"])' in first
    # the newest period is at 02:00, so from 01:05 on (its end minus the resample hour) the windows answer
    assert second == build_flux("city", HistoryQuery(**{**q.__dict__, "since_ms": T0 + 65 * 60_000, "rollups": False}))
    assert rows == [
        {"time_ms": T0, "value": 41.5},
        {"time_ms": T0 + 300_000, "value": 40.0},
        {"time_ms": T0 + 2 * 3_600_000, "value": 38.25},
    ]


def test_kind_rows_carry_the_sensor_and_rollup_bucket(double: Double) -> None:
    q = HistoryQuery(
        None, "speed", T0, T0 + 86_400_000, kind="traffic", source="1h", columns=("count", "mean", "windows")
    )
    body = csv_body(
        ["dateTime:RFC3339", "string", "long", "double", "long"],
        ["_time", "sensor_id", "count", "mean", "windows"],
        [["2023-11-15T00:00:00Z", "t1", "300", "41.5", "60"], ["2023-11-15T01:00:00Z", "t1", "12", "", ""]],
    )
    double.answer(200, body, "text/csv")
    rows = query_history(settings(double), q)
    flux = orjson.loads(double.seen[0].body)["query"]
    assert flux.startswith('from(bucket: "city_rollup")') and 'r._measurement == "window_agg_1h"' in flux
    assert 'keep(columns: ["_time", "sensor_id", "count", "mean", "windows"])' in flux
    assert flux.endswith('sort(columns: ["sensor_id", "_time"])')
    assert rows == [
        {"time_ms": T0, "sensor_id": "t1", "count": 300, "mean": 41.5, "windows": 60},
        {"time_ms": T0 + 3_600_000, "sensor_id": "t1", "count": 12, "mean": None, "windows": None},
    ]


def test_top_zones(double: Double) -> None:
    body = csv_body(["string", "double"], ["zone", "_value"], [["a", "3.5"], ["b", "9"], ["c", "9"]])
    double.answer(200, body, "text/csv")
    q = TopQuery("pm25", T0, T0 + 3_600_000, n=2, agg="p99", kind="environment")
    assert top_zones(settings(double), q) == [
        {"rank": 1, "zone": "b", "value": 9.0},
        {"rank": 2, "zone": "c", "value": 9.0},
    ]
    flux = orjson.loads(double.seen[0].body)["query"]
    assert flux == build_flux_top("city", q)
    assert 'group(columns: ["zone"])' in flux and "* 0.99 + 0.5" in flux
    assert flux.endswith('|> group()\n  |> keep(columns: ["zone", "_value"])')


def test_alerts_with_evidence(double: Double) -> None:
    alerts = csv_body(
        [
            "dateTime:RFC3339",
            "string",
            "string",
            "string",
            "string",
            "string",
            "string",
            "string",
            "string",
            "double",
            "double",
            "long",
            "string",
        ],
        [
            "_time",
            "_measurement",
            "rule",
            "severity",
            "state",
            "zone",
            "sensor_id",
            "metric",
            "alert_id",
            "value",
            "threshold",
            "latency_ms",
            "message",
        ],
        [
            [
                "2023-11-15T00:02:00Z",
                "alert",
                "hi",
                "warning",
                "raised",
                "a",
                "s1",
                "pm25",
                "a-2",
                "80.5",
                "75",
                "20",
                "pm25 80.5 > 75",
            ],
            [
                "2023-11-15T00:02:00Z",
                "alert",
                "hi",
                "warning",
                "raised",
                "a",
                "",
                "pm25",
                "a-1",
                "81",
                "75",
                "20",
                "zone",
            ],
        ],
    )
    evidence = csv_body(
        ["dateTime:RFC3339", "long", "double", "double", "double"],
        ["_time", "count", "mean", "min", "max"],
        [["2023-11-15T00:01:00Z", "4", "60.5", "40", "80.5"]],
    )
    zone_evidence = csv_body(
        ["dateTime:RFC3339", "string", "long", "double", "double", "double"],
        ["_time", "sensor_id", "count", "mean", "min", "max"],
        [["2023-11-15T00:01:00Z", "s1", "4", "60.5", "40", "80.5"]],
    )
    double.answer(200, alerts, "text/csv")
    double.answer(200, zone_evidence, "text/csv")  # a-1 first: same time, ordered by alert id
    double.answer(200, evidence, "text/csv")
    q = AlertQuery(T0, T0 + 3_600_000, zone="a", severity="warning", evidence_ms=120_000)
    rows = list(iter_alerts(settings(double), q))
    assert [r["alert_id"] for r in rows] == ["a-1", "a-2"]
    assert rows[1] == {
        "time_ms": T0 + 120_000,
        "alert_id": "a-2",
        "rule": "hi",
        "severity": "warning",
        "state": "raised",
        "kind": "",
        "zone": "a",
        "sensor_id": "s1",
        "metric": "pm25",
        "value": 80.5,
        "threshold": 75.0,
        "latency_ms": 20,
        "message": "pm25 80.5 > 75",
        "evidence": [{"time_ms": T0 + 60_000, "count": 4, "mean": 60.5, "min": 40.0, "max": 80.5}],
    }
    assert rows[0]["evidence"][0]["sensor_id"] == "s1"
    scripts = [orjson.loads(s.body)["query"] for s in double.seen]
    assert scripts[0] == build_flux_alerts("city", q)
    assert 'r._measurement == "alert" and r.severity == "warning" and r.zone == "a"' in scripts[0]
    assert 'r.zone == "a"' in scripts[1] and "r.sensor_id" not in scripts[1].split("|> filter")[1]
    assert 'r.sensor_id == "s1"' in scripts[2]
    assert "range(start: 2023-11-15T00:00:00.000Z, stop: 2023-11-15T00:02:00.000Z)" in scripts[2]
