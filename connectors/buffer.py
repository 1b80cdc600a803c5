"""Outage buffering for the time-series writer: a bounded memory buffer that spills to disk.

When the time-series store is down, the writer must neither drop points nor grow without bound.
:class:`BufferedSink` wraps any :class:`~connectors.influx.TimeSeriesSink`:

1. With no backlog, a batch is written straight through (the normal path).
2. When a write fails (after the sink's own retries), the batch goes to a memory buffer of at most
   ``memory_points`` points; what does not fit spills to :class:`SpoolQueue`, an append-only
   segment-file queue under ``<data_dir>/spool`` with at most ``max_bytes`` on disk.
3. While there is a backlog, new batches queue behind it (order is kept) and :meth:`BufferedSink.flush`
   (called by each write and by a timer) probes the store with back-off and replays the backlog
   oldest first: memory, then disk.
4. When memory and disk are both full, :meth:`BufferedSink.write` raises :class:`BufferFull`
   (after logging an ERROR once per episode) saying how much of the batch's head it took
   (``taken``): the caller holds the rest and stops consuming, which is back-pressure rather than
   data loss.

Durability: spooled batches survive a crash or restart (each append is fsynced; a restarted
worker replays the spool first). Batches in the memory buffer are spilled to the spool on a clean
:meth:`BufferedSink.close`; a SIGKILL during an outage loses at most the memory buffer's points
*from the store*, not from Kafka's aggregates topic. Set ``memory_points=0`` to spool every
held batch before its offsets are acknowledged.

Spool record format (big-endian): ``u32 length | u32 crc32(payload) | payload``. A torn record at
the tail of the newest segment (crash mid-append) is truncated away on open, with a WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

import orjson

from connectors.lineprotocol import Point
from streams.errors import SinkError, UrbanSensingError

if TYPE_CHECKING:
    from connectors.influx import TimeSeriesSink

logger = logging.getLogger(__name__)

_HEADER: Final = struct.Struct(">II")
_SEGMENT_PREFIX: Final = "seg-"
_SEGMENT_SUFFIX: Final = ".log"
_CURSOR: Final = "cursor"
_LOCK: Final = "lock"
DEFAULT_SEGMENT_BYTES: Final = 4 * 1024 * 1024


class SpoolFull(UrbanSensingError):  # noqa: N818 - a state, like queue.Full
    """The spool's byte budget cannot take the record."""


class BufferFull(SinkError):  # noqa: N818 - a state, like queue.Full
    """Memory and disk budgets are exhausted: hold the rest of the batch and stop consuming until it drains.

    ``taken`` points from the head of the batch were buffered; retry with ``points[taken:]``.
    """

    def __init__(self, message: str, taken: int = 0) -> None:
        super().__init__(message)
        self.taken = taken


def _segment_name(seq: int) -> str:
    return f"{_SEGMENT_PREFIX}{seq:020d}{_SEGMENT_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolQueue:
    """A bounded FIFO of byte records in append-only segment files.

    Not thread-safe; one process owns a directory (an ``flock`` on ``<dir>/lock`` enforces it).

    Args:
        directory: where the segments live (created if missing).
        max_bytes: most bytes the segment files may hold together.
        segment_bytes: a new segment starts once the current one reaches this size; fully consumed
            segments are deleted, which is how space is reclaimed.

    Raises:
        ValueError: ``max_bytes`` or ``segment_bytes`` is not positive.
        SpoolFull: never from the constructor; from :meth:`append`.
        BlockingIOError: another process holds the directory's lock.
    """

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            msg = f"SpoolQueue {directory}: expected max_bytes, segment_bytes > 0, got {max_bytes}, {segment_bytes}"
            raise ValueError(msg)
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(1024, max_bytes // 4))
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise
        # (segment seq, file size) oldest first; the read cursor is (head seq, byte offset).
        self._segments: deque[list[int]] = deque()
        self._read_offset = 0
        self._records = 0
        self._open()

    # -- state -------------------------------------------------------------------------------

    @property
    def bytes_used(self) -> int:
        """Bytes held by the segment files (consumed records count until their segment is deleted)."""
        return sum(size for _, size in self._segments)

    def __len__(self) -> int:
        return self._records

    def _path(self, seq: int) -> Path:
        return self.directory / _segment_name(seq)

    def _open(self) -> None:
        seqs = sorted(
            int(p.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)])
            for p in self.directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}")
        )
        cursor_seq, cursor_off = -1, 0
        with contextlib.suppress(OSError, ValueError):
            a, b = (self.directory / _CURSOR).read_text().split()
            cursor_seq, cursor_off = int(a), int(b)
        for seq in seqs:
            if seq < cursor_seq:  # consumed before a crash, deletion did not happen
                self._path(seq).unlink(missing_ok=True)
                continue
            good, count = self._scan(seq, cursor_off if seq == cursor_seq else 0)
            self._segments.append([seq, good])
            self._records += count
        if self._segments and self._segments[0][0] == cursor_seq:
            self._read_offset = min(cursor_off, self._segments[0][1])
        if self._records:
            logger.warning(
                "spool holds unsent batches from an earlier run dir=%s batches=%d bytes=%d",
                self.directory, self._records, self.bytes_used,
            )

    def _scan(self, seq: int, start: int) -> tuple[int, int]:
        """Validate a segment; truncate a torn or corrupt tail. Returns (good size, records after start)."""
        path = self._path(seq)
        data = path.read_bytes()
        pos, count = 0, 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if end > len(data) or zlib.crc32(data[pos + _HEADER.size : end]) != crc:
                break
            if pos >= start:
                count += 1
            pos = end
        if pos != len(data):
            logger.warning(
                "spool segment has a torn or corrupt tail, truncating file=%s kept_bytes=%d dropped_bytes=%d",
                path, pos, len(data) - pos,
            )
            with open(path, "r+b") as fh:
                fh.truncate(pos)
                os.fsync(fh.fileno())
        return pos, count

    # -- queue operations ----------------------------------------------------------------------

    def append(self, record: bytes) -> None:
        """Append one record and fsync it.

        Raises:
            SpoolFull: the record does not fit in ``max_bytes`` (nothing is written).
        """
        size = _HEADER.size + len(record)
        if self.bytes_used + size > self.max_bytes:
            msg = (
                f"spool {self.directory}: a record of {size} bytes does not fit "
                f"({self.bytes_used} of {self.max_bytes} bytes used)"
            )
            raise SpoolFull(msg)
        if not self._segments or self._segments[-1][1] >= self.segment_bytes:
            seq = self._segments[-1][0] + 1 if self._segments else 0
            self._path(seq).touch()
            _fsync_dir(self.directory)
            self._segments.append([seq, 0])
        seg = self._segments[-1]
        with open(self._path(seg[0]), "ab") as fh:
            fh.write(_HEADER.pack(len(record), zlib.crc32(record)) + record)
            fh.flush()
            os.fsync(fh.fileno())
        seg[1] += size
        self._records += 1

    def peek(self) -> bytes | None:
        """The oldest record, or ``None`` when empty."""
        while self._segments:
            seq, size = self._segments[0]
            if self._read_offset < size:
                with open(self._path(seq), "rb") as fh:
                    fh.seek(self._read_offset)
                    length, crc = _HEADER.unpack(fh.read(_HEADER.size))
                    record = fh.read(length)
                if zlib.crc32(record) != crc:  # changed on disk behind our back
                    msg = f"spool segment {self._path(seq)} offset {self._read_offset}: CRC mismatch"
                    raise SinkError(msg)
                return record
            if len(self._segments) == 1:
                return None
            self._drop_head()
        return None

    def pop(self) -> None:
        """Remove the oldest record (after it was written); deletes a segment once consumed."""
        if self.peek() is None:
            return
        seq, size = self._segments[0]
        with open(self._path(seq), "rb") as fh:
            fh.seek(self._read_offset)
            length, _ = _HEADER.unpack(fh.read(_HEADER.size))
        self._read_offset += _HEADER.size + length
        self._records -= 1
        if self._read_offset >= size and (len(self._segments) > 1 or self._records == 0):
            self._drop_head()
        self._save_cursor()

    def _drop_head(self) -> None:
        seq, _ = self._segments.popleft()
        self._path(seq).unlink(missing_ok=True)
        self._read_offset = 0

    def _save_cursor(self) -> None:
        head = self._segments[0][0] if self._segments else -1
        tmp = self.directory / (_CURSOR + ".tmp")
        tmp.write_text(f"{head} {self._read_offset}\n")
        os.replace(tmp, self.directory / _CURSOR)

    def close(self) -> None:
        """Release the directory lock."""
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1


def open_spool(root: Path, name: str, max_bytes: int) -> SpoolQueue:
    """The spool ``<root>/<name>``, or ``<root>/<name>-<n>`` when another live process holds it.

    A restarted worker takes the first unlocked directory, so it replays what a killed one left.
    """
    for n in range(64):
        directory = root / (name if n == 0 else f"{name}-{n}")
        try:
            return SpoolQueue(directory, max_bytes)
        except BlockingIOError:
            continue
    msg = f"no free spool directory under {root} for {name!r} (64 in use)"
    raise SinkError(msg)


def encode_points(points: Sequence[Point]) -> bytes:
    """Serialise points for the spool (int/float/str/bool field types survive the round trip)."""
    return orjson.dumps([[p.measurement, dict(p.tags), dict(p.fields), p.time_ms] for p in points])


def decode_points(data: bytes) -> list[Point]:
    """Inverse of :func:`encode_points`."""
    return [Point(m, t, f, ts) for m, t, f, ts in orjson.loads(data)]


class BufferedSink:
    """A :class:`~connectors.influx.TimeSeriesSink` that survives store outages (see the module doc).

    Args:
        sink: the real store.
        spool: the on-disk overflow queue.
        memory_points: most points held in memory while the store is down (0: spool at once).
        probe_min_s: first wait before probing a failed store again; doubles per failure.
        probe_max_s: cap of that wait.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        sink: TimeSeriesSink,
        spool: SpoolQueue,
        *,
        memory_points: int = 50_000,
        probe_min_s: float = 1.0,
        probe_max_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if memory_points < 0 or probe_min_s <= 0 or probe_max_s < probe_min_s:
            msg = (
                "BufferedSink: expected memory_points >= 0 and 0 < probe_min_s <= probe_max_s, got "
                f"{memory_points}, {probe_min_s}, {probe_max_s}"
            )
            raise ValueError(msg)
        self.sink = sink
        self.spool = spool
        self.memory_points = memory_points
        self._probe_min_s = probe_min_s
        self._probe_max_s = probe_max_s
        self._clock = clock
        self._memory: deque[list[Point]] = deque()
        self._memory_count = 0
        self._next_probe = 0.0
        self._probe_delay = probe_min_s
        self._full_episode = False
        self._lock = asyncio.Lock()
        self.stats: dict[str, int] = {
            "points_written": 0,
            "write_failures": 0,
            "buffered_memory_points": 0,
            "spool_batches": 0,
            "spool_bytes": spool.bytes_used,
            "spooled_points_total": 0,
            "buffer_full_events": 0,
        }
        self._refresh()

    @property
    def backlog(self) -> bool:
        """Whether anything waits to be written."""
        return bool(self._memory) or len(self.spool) > 0

    @property
    def full(self) -> bool:
        """Whether the last write was refused for lack of space."""
        return self._full_episode

    def _refresh(self) -> None:
        self.stats["buffered_memory_points"] = self._memory_count
        self.stats["spool_batches"] = len(self.spool)
        self.stats["spool_bytes"] = self.spool.bytes_used

    async def write(self, points: Sequence[Point]) -> None:
        """Write or buffer ``points``.

        Raises:
            BufferFull: memory and disk are full; its ``taken`` head of ``points`` was buffered,
                retry with the rest later.
            ValueError: a point cannot be encoded (from the underlying sink).
        """
        if not points:
            return
        async with self._lock:
            await self._drain(force=False)
            if not self.backlog:
                try:
                    await self.sink.write(points)
                except SinkError as exc:
                    self._failed(exc)
                else:
                    self.stats["points_written"] += len(points)
                    return
            try:
                self._hold(list(points))
            finally:
                self._refresh()

    async def flush(self, *, force: bool = False) -> bool:
        """Replay the backlog if the next probe is due (or ``force``); ``True`` when nothing is left."""
        async with self._lock:
            await self._drain(force=force)
            return not self.backlog

    async def close(self) -> None:
        """Spill the memory buffer to the spool (as far as it fits), close the sink and the spool."""
        async with self._lock:
            while self._memory:
                batch = self._memory[0]
                try:
                    self.spool.append(encode_points(batch))
                except SpoolFull:
                    logger.error(  # noqa: TRY400 - not an exception trace, a loss report
                        "time-series buffer closing with points that fit neither store nor spool points=%d",
                        self._memory_count,
                    )
                    break
                self._memory.popleft()
                self._memory_count -= len(batch)
            self._refresh()
            try:
                await self.sink.close()
            finally:
                self.spool.close()

    # -- internals ---------------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        self.stats["write_failures"] += 1
        now = self._clock()
        self._next_probe = now + self._probe_delay
        logger.warning(
            "time-series store unavailable, buffering retry_in_s=%.1f memory_points=%d spool_batches=%d error=%s",
            self._probe_delay, self._memory_count, len(self.spool), exc,
        )
        self._probe_delay = min(self._probe_delay * 2, self._probe_max_s)

    def _spool_records(self, points: list[Point]) -> list[bytes]:
        """``points`` encoded as spool records of at most a quarter of the spool's budget each."""
        step = max(1, self.memory_points)
        while True:
            records = [encode_points(points[i : i + step]) for i in range(0, len(points), step)]
            if step == 1 or max(len(r) for r in records) + _HEADER.size <= self.spool.max_bytes // 4:
                return records
            step //= 2

    def _hold(self, points: list[Point]) -> None:
        # Memory first (only while the spool is empty, so the order stays memory -> spool), then the
        # spool in records small enough for its budget; whatever fits neither is refused with
        # BufferFull(taken=...), so memory and disk fill up before consumption pauses, and one big
        # micro-batch (a loaded worker batches more) is never refused by an empty store.
        room = 0 if len(self.spool) else max(0, self.memory_points - self._memory_count)
        head, tail = points[:room], points[room:]
        if head:
            self._memory.append(head)
            self._memory_count += len(head)
        taken = len(head)
        if tail:
            step = self._record_points(tail)
            for i in range(0, len(tail), step):
                chunk = tail[i : i + step]
                try:
                    self.spool.append(encode_points(chunk))
                except SpoolFull as exc:
                    self._full(exc, taken)
                taken += len(chunk)
                self.stats["spooled_points_total"] += len(chunk)
        self._full_episode = False

    def _record_points(self, points: list[Point]) -> int:
        """Points per spool record: the memory budget, halved until a record is <= 1/4 of the spool."""
        step = max(1, self.memory_points)
        while step > 1 and len(encode_points(points[:step])) + _HEADER.size > self.spool.max_bytes // 4:
            step //= 2
        return step

    def _full(self, exc: SpoolFull, taken: int) -> NoReturn:
        self.stats["buffer_full_events"] += 1
        if not self._full_episode:
            self._full_episode = True
            logger.error(  # noqa: TRY400 - a state to shout about, not a traceback
                "time-series buffer FULL: store down, memory (%d points) and spool (%d of %d bytes) exhausted; "
                "pausing consumption until the store is back dir=%s",
                self._memory_count, self.spool.bytes_used, self.spool.max_bytes, self.spool.directory,
            )
        msg = f"time-series buffer full: {exc}"
        raise BufferFull(msg, taken) from exc

    async def _drain(self, *, force: bool) -> None:
        if not self.backlog:
            return
        if not force and self._clock() < self._next_probe:
            return
        written = 0
        try:
            while self._memory:
                batch = self._memory[0]
                await self.sink.write(batch)
                self._memory.popleft()
                self._memory_count -= len(batch)
                written += len(batch)
            while (record := self.spool.peek()) is not None:
                batch = decode_points(record)
                await self.sink.write(batch)
                self.spool.pop()
                written += len(batch)
        except SinkError as exc:
            self._failed(exc)
        else:
            self._probe_delay = self._probe_min_s
            self._full_episode = False
            logger.info("time-series backlog flushed points=%d", written)
        finally:
            self.stats["points_written"] += written
            self._refresh()


__all__ = ["BufferFull", "BufferedSink", "SpoolFull", "SpoolQueue", "decode_points", "encode_points", "open_spool"]
