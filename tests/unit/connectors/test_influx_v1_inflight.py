"""InfluxV1Sink with several requests in flight, against a slow recording HTTP double.

The double holds every ``/write`` for a moment and records how many overlap, so the tests see
whether a batch went out in parallel or strictly in order.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from connectors import lineprotocol
from connectors.influx import InfluxV1Sink
from connectors.lineprotocol import Point, encode_line, encode_lines, series_key
from streams.errors import SinkError
from tests.unit.connectors.test_influx_v2_double import serve


@dataclass
class SlowDouble:
    url: str = ""
    bodies: list[bytes] = field(default_factory=list)  # decompressed, in arrival order
    levels: list[int] = field(default_factory=list)  # the gzip header's XFL byte: 4 = fastest
    fail_body_with: bytes | None = None  # answer 400 to the write whose body contains this
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def slow() -> Iterator[SlowDouble]:
    state = SlowDouble()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, reply = 200, b'{"results":[{"statement_id":0}]}'
            if self.path.startswith("/write"):
                with state.lock:
                    state.in_flight += 1
                    state.most_in_flight = max(state.most_in_flight, state.in_flight)
                time.sleep(0.05)
                body = gzip.decompress(raw)
                with state.lock:
                    state.in_flight -= 1
                    state.bodies.append(body)
                    state.levels.append(raw[8])
                status, reply = 204, b""
                if state.fail_body_with is not None and state.fail_body_with in body:
                    status, reply = 400, b'{"error":"bad point"}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a request the sink cancelled (the batch had failed) breaks its pipe

    with serve(Handler, Server) as url:
        state.url = url
        yield state


def series(n: int, t0: int = 1_700_000_000_000) -> list[Point]:
    """``n`` points of distinct sensors at one timestamp."""
    return [Point("window_agg", {"sensor_id": f"s{i}", "metric": "t"}, {"mean": i + 0.5}, t0) for i in range(n)]


def write(sink: InfluxV1Sink, points: list[Point]) -> None:
    async def run() -> None:
        try:
            await sink.write(points)
        finally:
            await sink.close()

    asyncio.run(run())


def test_distinct_points_go_out_in_parallel(slow: SlowDouble) -> None:
    batch = series(8)
    write(InfluxV1Sink(slow.url, "db", batch_size=2, max_in_flight=3), batch)
    assert slow.most_in_flight == 3
    assert sorted(slow.bodies) == sorted(encode_lines(batch[i : i + 2]) for i in range(0, 8, 2))
    assert set(slow.levels) == {4}  # gzip level 1 (XFL = fastest)


def test_a_repeated_point_keeps_the_batch_in_order(slow: SlowDouble) -> None:
    first, later = series(3), series(3)
    later[1] = Point("window_agg", {"metric": "t", "sensor_id": "s1"}, {"mean": 99.0}, first[1].time_ms)
    batch = first + later  # s1's window again (tags in another order), with a new value
    write(InfluxV1Sink(slow.url, "db", batch_size=3, max_in_flight=4), batch)
    assert slow.most_in_flight == 1
    assert slow.bodies == [encode_lines(first), encode_lines(later)]


def test_one_request_at_a_time_when_asked(slow: SlowDouble) -> None:
    batch = series(6)
    write(InfluxV1Sink(slow.url, "db", batch_size=2, max_in_flight=1), batch)
    assert slow.most_in_flight == 1
    assert slow.bodies == [encode_lines(batch[i : i + 2]) for i in range(0, 6, 2)]


def test_a_refused_request_fails_the_batch(slow: SlowDouble) -> None:
    batch = series(6)
    slow.fail_body_with = b"sensor_id=s2"
    sink = InfluxV1Sink(slow.url, "db", batch_size=2, max_in_flight=2, max_retries=0)
    with pytest.raises(SinkError, match="HTTP 400: bad point") as info:
        write(sink, batch)
    assert encode_line(batch[2]) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"), [({"gzip_level": 0}, "gzip_level"), ({"max_in_flight": 0}, "max_in_flight")]
)
def test_rejects_bad_tuning(kwargs: dict[str, int], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        InfluxV1Sink("http://127.0.0.1:9", "db", **kwargs)


# --- the encoder's caches ------------------------------------------------------------------------


def test_series_key_ignores_tag_order_and_is_the_line_head() -> None:
    a = Point("m m", {"b": "x,y", "a": "1"}, {"v": 1.0}, 5)
    b = Point("m m", {"a": "1", "b": "x,y"}, {"v": 2.0}, 6)
    assert series_key(a) == series_key(b) == r"m\ m,a=1,b=x\,y"
    assert encode_line(a).startswith(series_key(a) + " ")


def test_caches_stay_bounded_and_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lineprotocol, "_CACHE_MAX", 4)
    monkeypatch.setattr(lineprotocol, "_SERIES", {})
    monkeypatch.setattr(lineprotocol, "_FIELD_KEYS", {})
    batch = [Point("m", {"s": f"s{i}"}, {f"f{i}": 1.5, "n": i}, i) for i in range(10)]
    once = encode_lines(batch)
    assert encode_lines(batch) == once == b"\n".join(f"m,s=s{i} f{i}=1.5,n={i}i {i}".encode() for i in range(10))
    assert len(lineprotocol._SERIES) <= 4 and len(lineprotocol._FIELD_KEYS) <= 4


def test_large_batches_are_encoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window close's points are encoded in a thread (the loop keeps serving the alert path);
    the bodies are the same bytes as encoding on the loop."""
    from connectors import influx
    from connectors.lineprotocol import Point

    points = [Point("agg", {"sensor_id": f"s{i % 300}"}, {"mean": i / 7}, 1_700_000_000_000 + i)
              for i in range(influx.THREAD_MIN_POINTS + 1)]
    threads: list[str] = []
    real = influx._encoded_chunks

    def spy(pts: Any, size: int) -> Any:
        threads.append(threading.current_thread().name)
        return real(pts, size)

    monkeypatch.setattr(influx, "_encoded_chunks", spy)
    big = asyncio.run(influx.encoded_chunks(points, 1000))
    small = asyncio.run(influx.encoded_chunks(points[:10], 1000))
    assert [n for n, _ in big] == [1000, 1000, 1]
    assert big == real(points, 1000)
    assert small == real(points[:10], 1000)
    assert threads[0] != threading.main_thread().name and threads[1] == threading.main_thread().name
