"""connectors.buffer: the spool (segments, CRC, torn tails, bounds, restart) and the buffered sink."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from connectors.buffer import BufferedSink, BufferFull, SpoolFull, SpoolQueue, decode_points, encode_points, open_spool
from connectors.lineprotocol import Point
from streams.errors import SinkError


def pts(start: int, n: int) -> list[Point]:
    return [Point("window_agg", {"sensor_id": f"s{i}"}, {"count": i, "mean": i / 2, "ok": True}, i) for i in
            range(start, start + n)]


class FakeSink:
    def __init__(self) -> None:
        self.up = True
        self.written: list[Point] = []
        self.closed = False

    async def write(self, points: Sequence[Point]) -> None:
        if not self.up:
            raise SinkError("store down")
        self.written.extend(points)

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_points_round_trip_keeps_field_types() -> None:
    p = pts(3, 2)
    back = decode_points(encode_points(p))
    assert back == p
    assert type(back[0].fields["count"]) is int and type(back[0].fields["mean"]) is float


def test_spool_fifo_across_segments_and_restart(tmp_path: Path) -> None:
    q = SpoolQueue(tmp_path / "s", max_bytes=64 * 1024, segment_bytes=100)
    for i in range(50):
        q.append(f"rec-{i}".encode() * 3)
    assert len(q) == 50 and len(list((tmp_path / "s").glob("seg-*"))) > 1
    for i in range(20):
        assert q.peek() == f"rec-{i}".encode() * 3
        q.pop()
    q.close()
    q2 = SpoolQueue(tmp_path / "s", max_bytes=64 * 1024, segment_bytes=100)  # a restart resumes at the cursor
    assert len(q2) == 30
    got = []
    while (r := q2.peek()) is not None:
        got.append(r)
        q2.pop()
    assert got == [f"rec-{i}".encode() * 3 for i in range(20, 50)]
    assert len(q2) == 0 and q2.bytes_used == 0


def test_spool_is_bounded_and_frees_space(tmp_path: Path) -> None:
    q = SpoolQueue(tmp_path / "s", max_bytes=4096, segment_bytes=1024)
    n = 0
    with pytest.raises(SpoolFull):
        while True:
            q.append(b"x" * 200)
            n += 1
    assert q.bytes_used <= 4096 and n >= 15
    for _ in range(n):
        q.pop()
    q.append(b"y" * 200)  # consumed segments were deleted
    assert q.peek() == b"y" * 200


def test_spool_truncates_a_torn_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    q = SpoolQueue(tmp_path / "s", max_bytes=1 << 20)
    q.append(b"first")
    q.append(b"second")
    q.close()
    seg = next((tmp_path / "s").glob("seg-*"))
    data = seg.read_bytes()
    seg.write_bytes(data[:-3])  # crash in the middle of the second append
    q2 = SpoolQueue(tmp_path / "s", max_bytes=1 << 20)
    assert len(q2) == 1 and q2.peek() == b"first"
    assert "torn or corrupt tail" in caplog.text


def test_spool_corrupt_crc_is_cut_off(tmp_path: Path) -> None:
    q = SpoolQueue(tmp_path / "s", max_bytes=1 << 20)
    q.append(b"good")
    q.append(b"evil")
    q.close()
    seg = next((tmp_path / "s").glob("seg-*"))
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    q2 = SpoolQueue(tmp_path / "s", max_bytes=1 << 20)
    assert len(q2) == 1 and q2.peek() == b"good"


def test_open_spool_skips_a_directory_held_by_another_writer(tmp_path: Path) -> None:
    a = open_spool(tmp_path, "app", 1 << 20)
    b = open_spool(tmp_path, "app", 1 << 20)
    assert a.directory.name == "app" and b.directory.name == "app-1"
    a.close()
    c = open_spool(tmp_path, "app", 1 << 20)  # the orphan of a dead worker is taken over
    assert c.directory.name == "app"


def test_buffered_sink_outage_memory_then_spool_then_full_then_in_order(tmp_path: Path) -> None:
    async def run() -> None:
        real, clock = FakeSink(), Clock()
        spool = SpoolQueue(tmp_path / "s", max_bytes=8 * 1024, segment_bytes=2048)
        sink = BufferedSink(real, spool, memory_points=10, clock=clock)
        await sink.write(pts(0, 5))
        real.up = False
        sent = 5
        await sink.write(pts(sent, 8))  # fails -> memory
        sent += 8
        assert sink.stats["buffered_memory_points"] == 8 and len(spool) == 0
        full = taken = 0
        for _ in range(200):
            try:
                await sink.write(pts(sent, 8))
            except BufferFull as exc:
                full, taken = full + 1, exc.taken
                break
            sent += 8
        assert full == 1 and len(spool) > 0 and sink.full
        assert sink.stats["buffer_full_events"] == 1
        clock.t += 100
        assert not await sink.flush()  # still down
        real.up = True
        clock.t += 100
        assert await sink.flush()
        await sink.write(pts(sent + taken, 8 - taken))  # the refused rest of the batch, retried by the caller
        sent += 8
        assert [p.time_ms for p in real.written] == list(range(sent))
        assert sink.stats["points_written"] == sent and not sink.backlog and spool.bytes_used == 0
        await sink.close()

    asyncio.run(run())


def test_buffered_sink_close_spills_memory_to_disk_and_replays_after_restart(tmp_path: Path) -> None:
    async def run() -> None:
        real = FakeSink()
        real.up = False
        sink = BufferedSink(real, SpoolQueue(tmp_path / "s", 1 << 20), memory_points=100)
        await sink.write(pts(0, 7))
        assert sink.stats["buffered_memory_points"] == 7
        await sink.close()
        real2 = FakeSink()
        sink2 = BufferedSink(real2, SpoolQueue(tmp_path / "s", 1 << 20), memory_points=100)
        assert sink2.backlog
        await sink2.write(pts(7, 3))
        assert [p.time_ms for p in real2.written] == list(range(10))
        await sink2.close()

    asyncio.run(run())


def test_buffered_sink_probes_with_backoff(tmp_path: Path) -> None:
    async def run() -> None:
        real, clock = FakeSink(), Clock()
        sink = BufferedSink(real, SpoolQueue(tmp_path / "s", 1 << 20), memory_points=100, clock=clock)
        real.up = False
        await sink.write(pts(0, 1))
        real.up = True
        await sink.write(pts(1, 1))  # probe not due yet: queued behind the backlog, not written
        assert real.written == []
        clock.t += 1.5
        await sink.write(pts(2, 1))
        assert [p.time_ms for p in real.written] == [0, 1, 2]
        await sink.close()

    asyncio.run(run())


def test_a_batch_larger_than_one_spool_record_is_spooled_in_pieces(tmp_path: Path) -> None:
    """A big micro-batch during an outage fills memory, then the spool; only the rest is refused."""

    async def run() -> None:
        real = FakeSink()
        real.up = False
        one_record = len(encode_points(pts(0, 40))) + 64
        spool = SpoolQueue(tmp_path / "s", max_bytes=one_record * 4, segment_bytes=one_record)
        sink = BufferedSink(real, spool, memory_points=10)
        await sink.write(pts(0, 40))  # larger than memory (10 points): the head to memory, the rest spooled
        assert sink.stats["buffered_memory_points"] == 10 and len(spool) == 3
        assert sink.stats["spooled_points_total"] == 30 and not sink.full
        with pytest.raises(BufferFull) as info:
            await sink.write(pts(40, 400))  # fills the spool, the rest is refused
        taken = info.value.taken
        assert 0 < taken < 400 and sink.full and sink.stats["spooled_points_total"] == 30 + taken
        assert sink.stats["buffered_memory_points"] == 10
        real.up = True
        assert await sink.flush(force=True)
        assert [p.time_ms for p in real.written] == list(range(40 + taken))
        await sink.close()

    asyncio.run(run())


def test_records_are_cut_to_fit_a_small_spool(tmp_path: Path) -> None:
    """A memory budget whose batch encodes larger than the spool's budget: records are halved until they fit."""

    async def run() -> None:
        real = FakeSink()
        real.up = False
        per_point = len(encode_points(pts(0, 100))) / 100
        spool = SpoolQueue(tmp_path / "s", max_bytes=int(per_point * 120), segment_bytes=1 << 20)
        sink = BufferedSink(real, spool, memory_points=300)  # 300 points would never fit one record
        await sink.write(pts(0, 300))
        await sink.write(pts(300, 60))  # memory is full: spooled in records of <= a quarter of the budget
        assert len(spool) > 1 and sink.stats["spooled_points_total"] == 60
        real.up = True
        assert await sink.flush(force=True)
        assert [p.time_ms for p in real.written] == list(range(360))
        await sink.close()

    asyncio.run(run())
