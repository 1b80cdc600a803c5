"""Session and sliding windows: per-key windows whose bounds depend on the data (pure).

* **Session** windows (gap ``g``): readings of a key less than ``g`` apart belong to one session
  ``[first, last + g)``; a reading that bridges two sessions merges them. A session closes when the
  watermark passes ``last + g + grace``.
* **Sliding** windows (size ``s``, as in Kafka Streams): every distinct reading time ``t`` of a key
  defines the window ``[t - s + 1, t + 1)`` over that key's readings; it closes when the watermark
  passes ``t + 1 + grace``. Readings are kept (time, value, watermark on arrival) only as long as an
  open window can still need them.

Both decide per reading against the watermark as it stood when that reading arrived, so results do
not depend on micro-batch boundaries. Rows are handled one by one in Python: these windows are for
per-sensor analysis, not the high-volume tumbling path (:mod:`streams.panes`).
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from streams import sketch
from streams.aggregates import acc_add, acc_merge, acc_new
from streams.panes import NF, Closed, quantiles_of


def _closed(rows: list[tuple[int, int, int, list[float], int, np.ndarray]]) -> Closed:
    """Build a :class:`Closed` from ``(slot, start, end, acc, sketch offset, counts)`` rows."""
    n = len(rows)
    if n == 0:
        z = np.empty(0, dtype=np.int64)
        return Closed(z, z, z, np.empty((0, NF)), np.empty((0, len(sketch.QUANTILES))), z,
                      np.empty((0, sketch.K), np.int64))
    rows.sort(key=lambda r: (r[2], r[0], r[1]))
    off = np.array([r[4] for r in rows], dtype=np.int64)
    counts = np.stack([r[5] for r in rows]).astype(np.int64)
    return Closed(
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.int64),
        np.array([r[3] for r in rows], dtype=np.float64).reshape(n, NF),
        quantiles_of(off, counts),
        off,
        counts,
    )


def _sketch_of(values: np.ndarray) -> tuple[int, np.ndarray]:
    keys = sketch.skeys(values)
    off = int(keys.max()) - sketch.K + 1
    counts = np.bincount(np.maximum(keys - off, 0), minlength=sketch.K).astype(np.int64)
    return off, counts


class SessionStore:
    """Open sessions per key."""

    def __init__(self, gap_ms: int, grace_ms: int) -> None:
        self.gap_ms = gap_ms
        self.grace_ms = grace_ms
        # slot -> sessions sorted by start: [start, last, acc, sketch offset, sketch counts]
        self.sessions: dict[int, list[list[Any]]] = {}
        self._done: list[tuple[int, int, int, list[float], int, np.ndarray]] = []

    @property
    def open_cells(self) -> int:
        """Number of open sessions."""
        return sum(len(v) for v in self.sessions.values())

    def add(self, slot: np.ndarray, ts: np.ndarray, val: np.ndarray, wm_before: np.ndarray) -> np.ndarray:
        """Apply rows in arrival order; returns a mask of the rows that were late."""
        late = np.zeros(len(slot), dtype=bool)
        gap, grace = self.gap_ms, self.grace_ms
        for i, (s, t, v, wm) in enumerate(zip(slot.tolist(), ts.tolist(), val.tolist(), wm_before.tolist(),
                                              strict=True)):
            open_ = self.sessions.setdefault(s, [])
            # sessions the watermark closed before this reading arrived are final
            for x in [x for x in open_ if x[1] + gap + grace <= wm]:
                open_.remove(x)
                self._done.append((s, x[0], x[1] + gap, x[2], x[3], x[4]))
            hit = [x for x in open_ if x[0] - gap < t < x[1] + gap]
            if not hit:
                if t + gap + grace <= wm:
                    late[i] = True
                    continue
                key = sketch.skey(v)
                counts = np.zeros(sketch.K, dtype=np.int64)
                counts[-1] = 1  # top-anchored store: its offset follows the largest key
                new = [t, t, acc_new(t, v), key - sketch.K + 1, counts]
                bisect.insort(open_, new, key=lambda x: x[0])
                continue
            base = hit[0]
            for other in hit[1:]:  # this reading bridges sessions: merge them, in start order
                base[0] = min(base[0], other[0])
                base[1] = max(base[1], other[1])
                base[2] = acc_merge(base[2], other[2])
                base[3], base[4] = sketch.merge((base[3], base[4]), (other[3], other[4]))
                open_.remove(other)
            base[0] = min(base[0], t)
            base[1] = max(base[1], t)
            acc_add(base[2], t, v)
            k = sketch.skey(v)
            base[3] = sketch.add(base[3], base[4], k)
        return late

    def close(self, limit_ms: int) -> Closed:
        """Emit sessions whose ``last + gap + grace`` is at or before ``limit_ms``."""
        rows = self._done
        self._done = []
        gap, grace = self.gap_ms, self.grace_ms
        for s, open_ in self.sessions.items():
            keep = []
            for x in open_:
                if x[1] + gap + grace <= limit_ms:
                    rows.append((s, x[0], x[1] + gap, x[2], x[3], x[4]))
                else:
                    keep.append(x)
            open_[:] = keep
        return _closed(rows)

    def export(self, slot: int) -> list[Any]:
        """JSON-safe open sessions of one key."""
        return [[x[0], x[1], list(x[2]), int(x[3]), x[4].tolist()] for x in self.sessions.get(slot, [])]

    def restore(self, slot: int, doc: list[Any]) -> None:
        """Inverse of :meth:`export`."""
        self.sessions[slot] = [[a, b, list(acc), int(o), np.asarray(c, dtype=np.int64)] for a, b, acc, o, c in doc]


class SlidingStore:
    """Buffered readings and pending sliding windows per key."""

    def __init__(self, size_ms: int, grace_ms: int) -> None:
        self.size_ms = size_ms
        self.grace_ms = grace_ms
        self.buffers: dict[int, list[tuple[int, int, float, int]]] = {}  # (ts, seq, value, wm_before)
        self.pending: dict[int, set[int]] = {}  # window end times (t + 1) not yet emitted
        self._seq = 0

    @property
    def open_cells(self) -> int:
        """Number of pending windows."""
        return sum(len(v) for v in self.pending.values())

    def add(self, slot: np.ndarray, ts: np.ndarray, val: np.ndarray, wm_before: np.ndarray) -> np.ndarray:
        """Apply rows in arrival order; returns a mask of rows whose own window had closed."""
        late = np.zeros(len(slot), dtype=bool)
        grace = self.grace_ms
        for i, (s, t, v, wm) in enumerate(zip(slot.tolist(), ts.tolist(), val.tolist(), wm_before.tolist(),
                                              strict=True)):
            if t + self.size_ms + grace <= wm:  # no open window can contain it
                late[i] = True
                continue
            self._seq += 1
            bisect.insort(self.buffers.setdefault(s, []), (t, self._seq, v, wm))
            if t + 1 + grace <= wm:
                late[i] = True  # its own window has closed; it still counts in later open windows
            else:
                self.pending.setdefault(s, set()).add(t + 1)
        return late

    def close(self, limit_ms: int) -> Closed:
        """Emit every window whose ``end + grace`` is at or before ``limit_ms``."""
        rows = []
        grace, size = self.grace_ms, self.size_ms
        for s, ends in self.pending.items():
            ready = sorted(e for e in ends if e + grace <= limit_ms)
            if not ready:
                continue
            buf = self.buffers[s]
            times = [b[0] for b in buf]
            for end in ready:
                ends.discard(end)
                lo = bisect.bisect_left(times, end - size)
                hi = bisect.bisect_left(times, end)
                # a reading counts if the window was still open when it arrived
                members = [b for b in buf[lo:hi] if b[3] < end + grace]
                acc = acc_new(members[0][0], members[0][2])
                for b in members[1:]:
                    acc_add(acc, b[0], b[2])
                off, counts = _sketch_of(np.array([b[2] for b in members]))
                rows.append((s, end - size, end, acc, off, counts))
        horizon = limit_ms - grace - size  # no open or future window reaches back before this
        for buf in self.buffers.values():
            cut = bisect.bisect_left(buf, (horizon + 1,))
            if cut:
                del buf[:cut]
        return _closed(rows)

    def export(self, slot: int) -> list[Any]:
        """JSON-safe buffer and pending windows of one key."""
        return [[list(b) for b in self.buffers.get(slot, [])], sorted(self.pending.get(slot, ()))]

    def restore(self, slot: int, doc: list[Any]) -> None:
        """Inverse of :meth:`export`."""
        buf, pending = doc
        self.buffers[slot] = [(int(a), int(b), float(c), int(d)) for a, b, c, d in buf]
        self._seq = max([self._seq] + [b[1] for b in self.buffers[slot]])
        self.pending[slot] = set(pending)
