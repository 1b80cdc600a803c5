"""The Influx sinks and the v2 history query against a recording HTTP double.

The double is a real ``ThreadingHTTPServer`` on loopback, so these tests pin the exact bytes
influxdb-client (v2) and aiohttp (v1) put on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from pydantic import SecretStr

from connectors.history import HistoryQuery, build_flux, query_history
from connectors.influx import InfluxV1Sink, InfluxV2Sink
from connectors.lineprotocol import Point, aggregate_point, encode_lines
from streams.errors import SinkError
from streams.settings import Settings
from tests.unit.connectors.test_store import T0, make_aggregates

TOKEN = "s3cr3t-t0ken-value"  # noqa: S105 - a fake, to prove it never leaks
PASSWORD = "pa55-w0rd"  # noqa: S105


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes  # decompressed when the request was gzip-encoded


@dataclass
class Reply:
    status: int = 204
    body: bytes = b""
    content_type: str = "application/json"


@dataclass
class Double:
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    replies: deque[Reply] = field(default_factory=deque)

    def answer(self, *replies: Reply) -> None:
        self.replies.extend(replies)


@pytest.fixture
def double() -> Iterator[Double]:
    state = Double()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            parts = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            state.seen.append(Seen(self.command, parts.path, query, dict(self.headers), raw))
            reply = state.replies.popleft() if state.replies else Reply()
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = _handle  # noqa: N815 - http.server's naming

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    with serve(Handler) as url:
        state.url = url
        yield state


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler], server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
          ) -> Iterator[str]:
    """Run ``handler`` on a loopback port in a thread; yield the base URL."""
    server = server_class(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


def points(n: int = 3) -> list[Point]:
    return [aggregate_point(a) for a in make_aggregates(7, sensors=("env-1",), windows=n)][:n]


def v2_sink(double: Double, **kwargs: Any) -> InfluxV2Sink:
    return InfluxV2Sink(double.url, SecretStr(TOKEN), "acme", "city", **kwargs)


async def _write_and_close(sink: InfluxV1Sink | InfluxV2Sink, batch: list[Point]) -> None:
    try:
        await sink.write(batch)
    finally:
        await sink.close()


# --- InfluxDB 2.x --------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_v2_sends_exact_request(double: Double, compress: bool) -> None:
    batch = points()
    asyncio.run(_write_and_close(v2_sink(double, gzip=compress), batch))
    [req] = double.seen
    assert (req.method, req.path) == ("POST", "/api/v2/write")
    assert req.query == {"org": "acme", "bucket": "city", "precision": "ms"}
    assert req.headers["Authorization"] == f"Token {TOKEN}"
    assert req.headers.get("Content-Encoding") == ("gzip" if compress else None)
    assert req.headers["Content-Type"].startswith("text/plain")
    assert req.body == encode_lines(batch)


def test_v2_splits_batches(double: Double) -> None:
    batch = points(5)
    asyncio.run(_write_and_close(v2_sink(double, batch_size=2), batch))
    assert [len(r.body.splitlines()) for r in double.seen] == [2, 2, 1]
    assert b"\n".join(r.body for r in double.seen) == encode_lines(batch)


def test_bad_point_stops_the_batch_before_sending(double: Double) -> None:
    bad = Point("window_agg", {"sensor_id": "s"}, {"mean": float("nan")}, 1)
    with pytest.raises(ValueError, match="field 'mean'"):
        asyncio.run(_write_and_close(v2_sink(double, batch_size=2), [*points(5), bad]))
    with pytest.raises(ValueError, match="field 'mean'"):
        asyncio.run(_write_and_close(v1_sink(double, batch_size=2), [*points(5), bad]))
    assert double.seen == []


def test_v2_retries_5xx_then_succeeds(double: Double) -> None:
    double.answer(Reply(503, b'{"code":"unavailable","message":"busy"}'), Reply(503), Reply(204))
    sleeps = Sleeps()
    batch = points()
    asyncio.run(_write_and_close(v2_sink(double, sleep=sleeps, base_delay_ms=100), batch))
    assert len(double.seen) == 3
    assert all(r.body == encode_lines(batch) for r in double.seen)
    assert len(sleeps.delays) == 2
    assert 0.05 <= sleeps.delays[0] <= 0.1 and 0.1 <= sleeps.delays[1] <= 0.2  # doubling, jittered


def test_v2_gives_up_after_max_retries(double: Double) -> None:
    double.answer(*[Reply(500, b'{"code":"internal error","message":"disk"}')] * 3)
    with pytest.raises(SinkError) as info:
        asyncio.run(_write_and_close(v2_sink(double, sleep=Sleeps(), max_retries=2), points()))
    assert len(double.seen) == 3
    assert "HTTP 500: disk" in str(info.value) and "after 3 attempt(s)" in str(info.value)
    assert TOKEN not in str(info.value)


def test_v2_does_not_retry_4xx(double: Double, caplog: pytest.LogCaptureFixture) -> None:
    message = f"unable to parse 'window_agg count=1': bad timestamp (token {TOKEN})"
    double.answer(Reply(400, orjson.dumps({"code": "invalid", "message": message})))
    sleeps = Sleeps()
    batch = points()
    with pytest.raises(SinkError) as info:
        asyncio.run(_write_and_close(v2_sink(double, sleep=sleeps), batch))
    text = str(info.value)
    assert len(double.seen) == 1 and sleeps.delays == []
    assert "HTTP 400" in text and "unable to parse 'window_agg count=1': bad timestamp" in text
    assert encode_lines(batch).split(b"\n")[0].decode() in text  # the first line sent
    assert TOKEN not in text and TOKEN not in caplog.text
    assert info.value.__cause__ is not None


def test_v2_connection_refused_is_retried(double: Double) -> None:
    sink = InfluxV2Sink("http://127.0.0.1:9", SecretStr(TOKEN), "acme", "city",
                        sleep=Sleeps(), max_retries=2)  # fmt: skip
    with pytest.raises(SinkError, match="after 3 attempt") as info:
        asyncio.run(_write_and_close(sink, points()))
    assert TOKEN not in str(info.value)


# --- InfluxDB 1.x --------------------------------------------------------------------------------


def v1_sink(double: Double, **kwargs: Any) -> InfluxV1Sink:
    return InfluxV1Sink(double.url, 'urban"db', "writer", SecretStr(PASSWORD), **kwargs)


def test_v1_creates_database_then_writes_gzip(double: Double) -> None:
    double.answer(Reply(200, b'{"results":[{"statement_id":0}]}'))
    batch = points(5)
    sink = v1_sink(double, batch_size=3)

    async def twice() -> None:
        await sink.write(batch[:3])
        await sink.write(batch[3:])
        await sink.close()

    asyncio.run(twice())
    create, *writes = double.seen
    assert (create.method, create.path) == ("POST", "/query")
    assert parse_qs(create.body.decode()) == {"q": ['CREATE DATABASE "urban\\"db"']}
    assert [(w.path, w.query) for w in writes] == [
        ("/write", {"db": 'urban"db', "precision": "ms"})
    ] * 2
    assert all(w.headers["Content-Encoding"] == "gzip" for w in writes)
    auth = base64.b64encode(f"writer:{PASSWORD}".encode()).decode()
    assert all(r.headers["Authorization"] == f"Basic {auth}" for r in double.seen)
    assert b"\n".join(w.body for w in writes) == encode_lines(batch)


def test_v1_4xx_names_status_text_and_first_line(double: Double) -> None:
    error = 'partial write: field type conflict: input field "count" is type float dropped=1'
    created = Reply(200, b'{"results":[{"statement_id":0}]}')
    double.answer(created, Reply(400, orjson.dumps({"error": error})))
    sleeps = Sleeps()
    batch = points()
    with pytest.raises(SinkError) as info:
        asyncio.run(_write_and_close(v1_sink(double, sleep=sleeps), batch))
    text = str(info.value)
    assert len(double.seen) == 2 and sleeps.delays == []
    assert f"HTTP 400: {error}" in text
    assert encode_lines(batch).split(b"\n")[0].decode() in text
    assert PASSWORD not in text


def test_v1_retries_5xx_for_create_and_write(double: Double) -> None:
    double.answer(
        Reply(503), Reply(200, b'{"results":[{"statement_id":0}]}'), Reply(502), Reply(204)
    )
    sleeps = Sleeps()
    asyncio.run(_write_and_close(v1_sink(double, sleep=sleeps, gzip=False), points()))
    assert [r.path for r in double.seen] == ["/query", "/query", "/write", "/write"]
    assert "Content-Encoding" not in double.seen[-1].headers
    assert len(sleeps.delays) == 2


def test_v1_statement_error_fails(double: Double) -> None:
    double.answer(Reply(200, b'{"results":[{"statement_id":0,"error":"not authorized"}]}'))
    with pytest.raises(SinkError, match="create database.*HTTP 200: not authorized"):
        asyncio.run(_write_and_close(v1_sink(double, sleep=Sleeps()), points()))


def test_sinks_reject_bad_config() -> None:
    with pytest.raises(ValueError, match="url"):
        InfluxV1Sink("127.0.0.1:8086", "db")
    with pytest.raises(ValueError, match="batch_size"):
        InfluxV2Sink("http://x", SecretStr(TOKEN), "o", "b", batch_size=0)
    with pytest.raises(ValueError, match="max_retries"):
        InfluxV1Sink("http://x", "db", max_retries=-1)


# --- InfluxDB 2.x history query ------------------------------------------------------------------

BUCKET_CSV = b"""\
#datatype,string,long,dateTime:RFC3339,double
#group,false,false,false,false
#default,_result,,,
,result,table,_time,_value
,,0,2023-11-14T22:13:20Z,35.25
,,0,2023-11-14T22:15:00Z,40.5

"""

RAW_CSV = b"""\
#datatype,string,long,dateTime:RFC3339,long,double,double,double
#group,false,false,false,false,false,false,false
#default,_result,,,,,,
,result,table,_time,count,mean,min,max
,,0,2023-11-14T22:13:20Z,3,35.1,20.5,44.25
,,0,2023-11-14T22:14:20Z,1,0.30000000000000004,0.30000000000000004,0.30000000000000004

"""


def v2_settings(double: Double) -> Settings:
    return Settings(
        influx={"url": double.url, "version": 2, "token": TOKEN, "org": "acme", "bucket": "city"}
    )


def test_v2_history_buckets(double: Double) -> None:
    double.answer(Reply(200, BUCKET_CSV, "text/csv"))
    q = HistoryQuery("env-1", "pm25", T0, T0 + 3_600_000, every_ms=300_000, agg="max")
    rows = query_history(v2_settings(double), q)
    [req] = double.seen
    assert (req.method, req.path, req.query) == ("POST", "/api/v2/query", {"org": "acme"})
    assert req.headers["Authorization"] == f"Token {TOKEN}"
    flux = orjson.loads(req.body)["query"]
    assert flux == build_flux("city", q)
    assert flux == (
        'from(bucket: "city")\n'
        "  |> range(start: 2023-11-14T22:13:20.000Z, stop: 2023-11-14T23:13:20.000Z)\n"
        '  |> filter(fn: (r) => r._measurement == "window_agg" and r.sensor_id == "env-1"'
        ' and r.metric == "pm25")\n'
        '  |> filter(fn: (r) => r._field == "mean")\n'
        "  |> group()\n"
        '  |> sort(columns: ["_time"])\n'
        '  |> aggregateWindow(every: 300000ms, fn: max, createEmpty: false, timeSrc: "_start")'
    )
    # Flux starts the first window at range start; it is re-aligned to the epoch grid.
    assert rows == [
        {"time_ms": T0 // 300_000 * 300_000, "value": 35.25},
        {"time_ms": T0 + 100_000, "value": 40.5},
    ]


def test_v2_history_raw_rows(double: Double) -> None:
    double.answer(Reply(200, RAW_CSV, "text/csv"))
    q = HistoryQuery('env-"1"', "pm25", T0, T0 + 120_000)
    rows = query_history(v2_settings(double), q)
    flux = orjson.loads(double.seen[0].body)["query"]
    assert 'r.sensor_id == "env-\\"1\\""' in flux
    assert '|> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")' in flux
    assert rows == [
        {"time_ms": T0, "count": 3, "mean": 35.1, "min": 20.5, "max": 44.25},
        {"time_ms": T0 + 60_000, "count": 1, "mean": 0.30000000000000004,
         "min": 0.30000000000000004, "max": 0.30000000000000004},
    ]  # fmt: skip


def test_v2_history_error_hides_token(double: Double) -> None:
    double.answer(Reply(401, orjson.dumps({"code": "unauthorized", "message": f"bad {TOKEN}"})))
    with pytest.raises(SinkError, match="unauthorized|bad") as info:
        query_history(v2_settings(double), HistoryQuery("s", "m", T0, T0 + 1))
    assert TOKEN not in str(info.value)


def test_flux_string_blocks_interpolation_and_injection() -> None:
    q = HistoryQuery('x") |> drop() //', "${secret}", 0, 1)
    flux = build_flux("b", q)
    assert 'r.sensor_id == "x\\") |> drop() //"' in flux
    assert 'r.metric == "\\${secret}"' in flux
