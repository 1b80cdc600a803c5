"""A slow time-series store: the worker slows down through back-pressure, memory stays bounded.

A local HTTP server poses as InfluxDB 1.x (``/query`` for CREATE DATABASE, ``/write`` with gzip
line protocol) and answers every write after ``delay_s``; like InfluxDB it keeps one point per
(measurement, tags, time), so a write repeated after a client timeout stores nothing twice. The
worker writes 50 points per request (URBAN_INFLUX__BATCH_SIZE) with a 2 s request timeout.

1. Slow (0.5 s per request, within the timeout): the writer falls behind the windows it closes (the
   aggregates topic's lag grows) while the server never sees more than one request at a time and
   the worker buffers nothing in memory.
2. Slower than the timeout (3 s): writes fail; what fits goes to the memory buffer
   (URBAN_INFLUX__BUFFER_MEMORY_POINTS) and the spool (URBAN_INFLUX__SPOOL_MAX_BYTES), and once
   they cannot take the held batch the writer stops consuming (``buffer_full``); both budgets hold
   and the worker's RSS (VmRSS) stays bounded.
3. Fast again: the backlog drains and every window equals the numpy reference.
"""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from connectors.kafka import producer_config
from simulators.publish import publish_kafka
from streams.settings import KafkaSettings
from tests.integration.harness import (
    assert_matches_reference,
    numpy_reference,
    pipeline_env,
    start_worker,
    stats,
    try_stats,
    wait_until,
)
from tests.integration.test_faults_support import WINDOW_MS, RssSampler, feed, figures, readings_in_windows, rss_kb

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MEMORY_POINTS = 300
SPOOL_BYTES = 96 * 1024


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes and not escaped with a backslash."""
    parts, cur, quoted, escaped = [], [], False, False
    for c in text:
        if escaped:
            cur.append(c)
            escaped = False
        elif c == "\\":
            cur.append(c)
            escaped = True
        elif c == '"':
            cur.append(c)
            quoted = not quoted
        elif c == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _value(text: str) -> object:
    if text.startswith('"'):
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if text.endswith("i"):
        return int(text[:-1])
    if text in ("true", "false"):
        return text == "true"
    return float(text)


def parse_line(line: str) -> tuple[tuple[str, tuple[tuple[str, str], ...], int], dict[str, object]]:
    """``((measurement, tags, time_ms), fields)`` of one line of line protocol."""
    head, fields, ts = _split(line, " ")
    measurement, *tags = _split(head, ",")
    tag_pairs = tuple(tuple(t.replace("\\", "").split("=", 1)) for t in tags)
    out = {}
    for f in _split(fields, ","):
        k, v = f.split("=", 1)
        out[k] = _value(v)
    return (measurement, tag_pairs, int(ts)), out  # type: ignore[return-value]


class SlowInflux:
    """A fake InfluxDB 1.x HTTP API in a thread; ``delay_s`` is applied to every ``/write``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.points: dict[tuple, dict[str, object]] = {}
        self.writes = 0
        self.lines = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer(204)  # /ping

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.startswith("/query"):
                    self._answer(200, b'{"results":[{"statement_id":0}]}')
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with outer._lock:
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    time.sleep(outer.delay_s)
                    lines = [ln for ln in body.decode().split("\n") if ln]
                    try:
                        parsed = [parse_line(ln) for ln in lines]
                    except ValueError as exc:  # a test bug or a bad line: say so, like InfluxDB's 400
                        outer.errors.append(f"{exc}: {lines[:1]}")
                        self._answer(400, b'{"error":"unable to parse"}')
                        return
                    with outer._lock:
                        outer.writes += 1
                        outer.lines += len(lines)
                        outer.points.update(parsed)
                    self._answer(204)
                finally:
                    with outer._lock:
                        outer.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def windows(self) -> dict[tuple[str, str, int], dict[str, object]]:
        """``window_agg`` points by ``(sensor_id, metric, start_ms)``."""
        with self._lock:
            items = list(self.points.items())
        out = {}
        for (measurement, tags, ts), fields in items:
            if measurement == "window_agg":
                t = dict(tags)
                out[(t["sensor_id"], t["metric"], ts)] = fields
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_slow_influx_applies_backpressure_with_bounded_memory(tmp_path: Path, bootstrap: str) -> None:
    t0 = time.monotonic()
    messages = feed(100, 144, seed=61)  # 14,400 readings, 12 windows per sensor
    reference = numpy_reference((p for _, p, _ in messages), WINDOW_MS)
    sink = SlowInflux(delay_s=0.5)
    try:
        env = pipeline_env(
            tmp_path, bootstrap,
            URBAN_INFLUX__URL=f"http://127.0.0.1:{sink.port}", URBAN_INFLUX__VERSION="1",
            URBAN_INFLUX__DATABASE="slow", URBAN_INFLUX__BATCH_SIZE="50", URBAN_INFLUX__TIMEOUT_MS="2000",
            URBAN_INFLUX__MAX_RETRIES="0", URBAN_INFLUX__BUFFER_MEMORY_POINTS=str(MEMORY_POINTS),
            URBAN_INFLUX__SPOOL_MAX_BYTES=str(SPOOL_BYTES),
        )
        worker = start_worker(env, tmp_path)
        base_kb = rss_kb(worker.proc.pid)
        rss = RssSampler(worker.proc.pid)
        peak: dict[str, int] = {}
        lag: list[int] = []

        def watch(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                s = try_stats(env) or {}
                for f in ("buffered_memory_points", "spool_bytes", "buffer_full", "write_failures"):
                    peak[f] = max(peak.get(f, 0), int(s.get(f, 0)))
                if s:
                    lag.append(s["aggregates"] - s["points_written"])
                time.sleep(0.5)

        try:
            pcfg = producer_config(KafkaSettings(bootstrap_servers=bootstrap))
            assert publish_kafka(messages, producer_config=pcfg, topic=env["URBAN_KAFKA__READINGS_TOPIC"]) == len(
                messages)
            # Phase 1: slow but within the timeout.
            wait_until(lambda: (try_stats(env) or {}).get("aggregates", 0) > 0, 60, "the first closed windows")
            watch(15)
            slow = {"lag": max(lag), "writes": sink.writes, "max_in_flight": sink.max_in_flight, **dict(peak)}
            # Phase 2: slower than the request timeout: buffer, spool, then stop consuming.
            sink.delay_s = 3.0
            watch(20)
            slower = dict(peak)
            # Phase 3: fast again; everything must arrive.
            sink.delay_s = 0.0
            t_fast = time.monotonic()

            def all_stored() -> bool:
                s = try_stats(env) or {}
                return (not s.get("open_windows", 1) and s.get("spool_batches", 1) == 0
                        and s.get("buffered_memory_points", 1) == 0 and len(sink.windows()) >= len(reference))

            wait_until(all_stored, 120, "every window to reach the fake InfluxDB", interval_s=1.0)
            drained_s = time.monotonic() - t_fast
            after = stats(env)
            log = worker.text()
        finally:
            samples = rss.stop()
            worker.stop()
    finally:
        sink.close()

    assert not sink.errors, sink.errors[:3]
    got = sink.windows()
    assert_matches_reference(got, reference, "slow influx")  # type: ignore[arg-type]
    # Phase 1: the writer lagged behind without buffering (no failures, nothing held in memory).
    assert slow["write_failures"] == 0 and slow["buffered_memory_points"] == 0, slow
    assert slow["lag"] >= 500, f"the slow sink never held the writer back: {slow}"
    # One request at a time: a slow store never sees a growing number of concurrent writes (later,
    # a request the client gave up on may still be sleeping in the server when the next one comes).
    assert slow["max_in_flight"] == 1, slow
    # Phase 2: writes timed out; what was held stayed within the memory and spool budgets and the
    # writer stopped pulling (buffer_full). The batch the lagging writer holds is larger than the
    # whole outage budget here (up to 5,000 points per batch), so it is held as a whole by the agent.
    assert slower["write_failures"] > 0, slower
    assert slower["buffered_memory_points"] <= MEMORY_POINTS, slower
    assert slower["spool_bytes"] <= SPOOL_BYTES, slower
    assert slower["buffer_full"] > 0 and "time-series buffer FULL" in log, slower
    peak_mb, base_mb = max(samples) / 1024, base_kb / 1024
    assert peak_mb - base_mb < 150, f"worker RSS grew from {base_mb:.0f} MB to {peak_mb:.0f} MB"
    assert after["dead_letters"] == 0 and after["late"] == 0
    lost = figures(
        "slow_sink", len(messages), readings_in_windows(got), after["dead_letters"], windows=len(reference),
        windows_stored=len(got), write_requests=sink.writes, lines_received=sink.lines,
        lines_repeated=sink.lines - len(sink.points), phase1_peak_lag_points=slow["lag"],
        peak_memory_points=slower["buffered_memory_points"], peak_spool_bytes=slower["spool_bytes"],
        buffer_full_events=slower["buffer_full"], write_failures=after["write_failures"],
        max_concurrent_writes=sink.max_in_flight, worker_rss_mb=f"{base_mb:.0f}->{peak_mb:.0f}",
        drained_in_s=round(drained_s, 1), elapsed_s=round(time.monotonic() - t0, 1),
    )
    assert lost == 0
