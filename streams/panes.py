"""Columnar pane store: tumbling and hopping windows for many keys at once (pure, numpy).

A window of ``size_ms`` advancing by ``hop_ms`` is the merge of panes of ``gcd(size, hop)``; each
(key, pane) cell keeps the accumulator fields of :mod:`streams.aggregates` plus a quantile sketch
(:mod:`streams.sketch`) in numpy arrays, in a ring of panes per key. A micro-batch is applied with
sequential ``ufunc.at`` updates, so every field depends only on the per-key order of the readings,
never on how they were batched: replays at any speed give identical bits.

Keys ("slots") are dense integers handed out by the caller (one per sensor and metric).

The ring holds the panes a key needs while the watermark follows the newest readings. A key whose
open panes span more than that (a sensor whose clock runs ahead of the partition's frontier: its
windows stay open until the frontier reaches them, see :mod:`streams.engine`) is moved whole to an
overflow store (``far``), a second :class:`PaneStore` with its own slot numbers and a ring that
grows to fit; it moves back once its open panes fit the ring again. The ring of the many other keys
stays small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from streams import sketch

# Accumulator columns (same meaning as streams.aggregates).
CNT, SUM, SHIFT, SD, SD2, MIN, MAX, FTS, FIRST, LTS, LAST = range(11)
NF: Final = 11
_EMPTY: Final = -(2**62)
FREE: Final = np.iinfo(np.int64).min  # pane id of an empty cell (pane ids may be negative)
_NO_OFFSET: Final = np.iinfo(np.int64).min  # sketch offset of a cell without values
_K_IDX: Final = np.arange(sketch.K)


def slid(c: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Slide dense sketch stores up by ``shift`` keys (rows), collapsing what falls off into bucket 0."""
    cum = np.cumsum(c, axis=1)
    low = np.take_along_axis(cum, np.minimum(shift, sketch.K - 1), axis=1)[:, 0]
    src = _K_IDX[None, :] + shift
    moved = np.take_along_axis(c, np.minimum(src, sketch.K - 1), axis=1)
    out = np.where((src < sketch.K) & (_K_IDX[None, :] > 0), moved, 0)
    out[:, 0] += low
    return out
_LOG2: Final = math.log(2)


@dataclass(frozen=True, slots=True)
class Closed:
    """Closed windows, one row per (slot, window), in (end, slot) order."""

    slot: np.ndarray
    start_ms: np.ndarray
    end_ms: np.ndarray
    acc: np.ndarray  # (n, NF)
    quantiles: np.ndarray  # (n, len(sketch.QUANTILES))
    sk_off: np.ndarray  # (n,) sketch offsets, for merging into zone roll-ups
    sk: np.ndarray  # (n, sketch.K) sketch counters

    def __len__(self) -> int:
        return len(self.slot)

    def columns(self) -> dict[str, np.ndarray]:
        """Final aggregate values as columns."""
        a = self.acc
        n = a[:, CNT]
        md = a[:, SD] / n
        span = a[:, LTS] - a[:, FTS]
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(span > 0, (a[:, LAST] - a[:, FIRST]) * 1000.0 / np.where(span > 0, span, 1), 0.0)
        cols = {
            "count": n.astype(np.int64),
            "sum": a[:, SUM],
            "mean": a[:, SUM] / n,
            "min": a[:, MIN],
            "max": a[:, MAX],
            "std": np.sqrt(np.maximum(a[:, SD2] / n - md * md, 0.0)),
            "first": a[:, FIRST],
            "last": a[:, LAST],
            "first_ts_ms": a[:, FTS].astype(np.int64),
            "last_ts_ms": a[:, LTS].astype(np.int64),
            "rate_per_s": rate,
        }
        for i, q in enumerate(sketch.QUANTILES):
            cols[f"p{round(q * 100)}"] = self.quantiles[:, i]
        return cols


def _key_values(keys: np.ndarray) -> np.ndarray:
    """Vectorised :func:`streams.sketch.key_value`."""
    mag = np.abs(keys) - sketch.BIAS
    v = np.power(2.0, mag / sketch._MULT) * (2.0 / (1 + sketch._MAPPING.gamma))  # noqa: SLF001
    return np.where(keys == 0, 0.0, np.where(keys < 0, -v, v))


class PaneStore:
    """Open panes of one window definition for all keys of one partition."""

    def __init__(self, size_ms: int, hop_ms: int, lateness_ms: int, grace_ms: int, capacity: int = 256) -> None:
        if size_ms <= 0 or hop_ms <= 0 or hop_ms > size_ms or size_ms % hop_ms:
            msg = f"window: size_ms must be a positive multiple of hop_ms, got size={size_ms} hop={hop_ms}"
            raise ValueError(msg)
        self.size_ms = size_ms
        self.hop_ms = hop_ms
        self.pane_ms = math.gcd(size_ms, hop_ms)
        self.per_window = size_ms // self.pane_ms
        # The current pane(s) plus those kept open by lateness and grace. A reading that needs a cell
        # still in use makes the engine close windows first (always safe, see PartitionWindows).
        self.ring = self.per_window + -(-(lateness_ms + grace_ms) // self.pane_ms)
        self.grace_ms = grace_ms
        self.cap = 0
        self.pid = np.empty((0, self.ring), dtype=np.int64)
        self.acc = np.empty((0, self.ring, NF), dtype=np.float64)
        self.sk_off = np.empty((0, self.ring), dtype=np.int64)
        # Sketch counters start as uint16 (128 bytes a window) and widen if a window gets busier.
        self.sk = np.empty((0, self.ring, sketch.K), dtype=np.uint16)
        self.closed_end = _EMPTY  # every window ending at or before this has been emitted
        self.touched: set[int] = set()  # cells updated since the last early() call
        self.track_early = False
        #: Overflow store of the slots whose open panes outgrew the ring (None: no such slot).
        self.far: PaneStore | None = None
        self._far_of: dict[int, int] = {}  # slot -> its slot in ``far``
        self._far_slot: list[int] = []  # slot in ``far`` -> slot (-1: free)
        self._grow(capacity)

    # -- capacity ---------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        if need <= self.cap:
            return
        new = max(need, self.cap * 2, 64)
        r = self.ring
        pid = np.full((new, r), FREE, dtype=np.int64)
        acc = np.zeros((new, r, NF), dtype=np.float64)
        off = np.zeros((new, r), dtype=np.int64)
        sk = np.zeros((new, r, sketch.K), dtype=self.sk.dtype if self.cap else np.uint16)
        pid[: self.cap] = self.pid
        acc[: self.cap] = self.acc
        off[: self.cap] = self.sk_off
        sk[: self.cap] = self.sk
        self.pid, self.acc, self.sk_off, self.sk, self.cap = pid, acc, off, sk, new

    # -- queries ----------------------------------------------------------------------------
    def last_window_end(self, ts: np.ndarray) -> np.ndarray:
        """End of the last window that contains each timestamp."""
        return ts - ts % self.hop_ms + self.size_ms

    @property
    def open_cells(self) -> int:
        """Number of occupied (key, pane) cells."""
        n = int((self.pid != FREE).sum())
        return n if self.far is None else n + self.far.open_cells

    def state_bytes(self) -> int:
        """Bytes held by the arrays (allocated capacity)."""
        n = self.pid.nbytes + self.acc.nbytes + self.sk_off.nbytes + self.sk.nbytes
        return n if self.far is None else n + self.far.state_bytes()

    def far_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the overflow store in use, and the slot each holds."""
        g = np.asarray(self._far_slot, dtype=np.int64)
        rows = np.flatnonzero(g >= 0)
        return rows, g[rows]

    def cells_of(self, slot: int) -> list[tuple[int, np.ndarray, int, np.ndarray]]:
        """The open cells of ``slot`` as ``(pane id, accumulator, sketch offset, sketch counters)``."""
        store, row = (self.far, self._far_of[slot]) if self.far is not None and slot in self._far_of else (self, slot)
        if row >= store.cap:
            return []
        return [
            (int(store.pid[row, r]), store.acc[row, r], int(store.sk_off[row, r]), store.sk[row, r])
            for r in np.flatnonzero(store.pid[row] != FREE).tolist()
        ]

    # -- updates ----------------------------------------------------------------------------
    def add(self, slot: np.ndarray, ts: np.ndarray, val: np.ndarray) -> int:
        """Add readings (already checked not late) in arrival order; returns how many were applied.

        Fewer than all are applied when a reading's pane would reuse the ring cell of a pane that is
        still open: the caller closes windows up to that reading's watermark and calls again with
        the rest; if the cell is still taken (the key's open panes span more than the ring), it
        calls :meth:`make_room` first.
        """
        if self.far is None or len(slot) == 0:
            return self._add(slot, ts, val)
        isfar = np.isin(slot, np.fromiter(self._far_of, dtype=np.int64, count=len(self._far_of)))
        if not isfar.any():
            return self._add(slot, ts, val)
        n = len(slot)
        mi, fi = np.flatnonzero(~isfar), np.flatnonzero(isfar)
        local = self._local(slot[fi])
        # the rows of both stores before the first that does not fit in its store
        jm, jf = self._fits(slot[mi], ts[mi])[0], self.far._fits(local, ts[fi])[0]  # noqa: SLF001 - same class
        stop = min(int(mi[jm]) if jm < len(mi) else n, int(fi[jf]) if jf < len(fi) else n)
        a, b = mi[mi < stop], np.flatnonzero(fi < stop)
        if len(a):
            self._add(slot[a], ts[a], val[a])
        if len(b):
            self.far._add(local[b], ts[fi[b]], val[fi[b]])  # noqa: SLF001 - same class
        return stop

    def _local(self, slots: np.ndarray) -> np.ndarray:
        """Slot numbers in ``far`` of slots held there."""
        return np.fromiter(map(self._far_of.__getitem__, slots.tolist()), dtype=np.int64, count=len(slots))

    def _fits(self, slot: np.ndarray, ts: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """How many of the rows, from the first, fit in this store's cells; their panes and cells."""
        self._grow(int(slot.max()) + 1 if len(slot) else 0)
        pane = ts // self.pane_ms
        cell = slot.astype(np.int64) * self.ring + pane % self.ring
        if len(slot) == 0:
            return 0, pane, cell
        ucell, first_idx, inv = np.unique(cell, return_index=True, return_inverse=True)
        first_pane = pane[first_idx]
        occupant = self.pid.reshape(-1)[ucell]
        clash = np.flatnonzero(pane != first_pane[inv])
        j = int(clash[0]) if len(clash) else len(slot)
        bad = (occupant != FREE) & (occupant != first_pane)
        if bad.any():
            j = min(j, int(first_idx[bad].min()))
        return j, pane, cell

    def _add(self, slot: np.ndarray, ts: np.ndarray, val: np.ndarray) -> int:
        """:meth:`add` to this store's own cells."""
        if len(slot) == 0:
            return 0
        j, pane, cell = self._fits(slot, ts)
        if j < len(slot):
            if j > 0:
                self._add(slot[:j], ts[:j], val[:j])
            return j
        pid = self.pid.reshape(-1)
        acc = self.acc.reshape(-1, NF)
        # Initialise cells that are empty or hold an older pane (already emitted and freed).
        stale = pid[cell] != pane
        if stale.any():
            # first row per stale cell, in arrival order
            cs, first_idx = np.unique(cell[stale], return_index=True)
            rows = np.flatnonzero(stale)[first_idx]
            pid[cs] = pane[rows]
            init = acc[cs]
            init[:] = 0.0
            v0 = val[rows]
            t0 = ts[rows].astype(np.float64)
            init[:, SHIFT] = v0
            init[:, MIN] = np.inf
            init[:, MAX] = -np.inf
            init[:, FTS] = np.inf
            init[:, FIRST] = v0
            init[:, LTS] = -np.inf
            init[:, LAST] = v0
            acc[cs] = init
            self.sk_off.reshape(-1)[cs] = _NO_OFFSET
            self.sk.reshape(-1, sketch.K)[cs] = 0
            del t0
        np.add.at(acc[:, CNT], cell, 1.0)
        np.add.at(acc[:, SUM], cell, val)
        d = val - acc[cell, SHIFT]
        np.add.at(acc[:, SD], cell, d)
        np.add.at(acc[:, SD2], cell, d * d)
        np.minimum.at(acc[:, MIN], cell, val)
        np.maximum.at(acc[:, MAX], cell, val)
        tsf = ts.astype(np.float64)
        # first: smallest ts, earliest arrival on ties; last: largest ts, latest arrival on ties
        order = np.lexsort((tsf, cell))
        sc = cell[order]
        bounds = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
        ends = np.r_[bounds[1:], len(sc)] - 1
        uc = sc[bounds]
        if self.track_early:
            self.touched.update(uc.tolist())
        fi = order[bounds]
        li = order[ends]
        better_first = tsf[fi] < acc[uc, FTS]
        acc[uc[better_first], FTS] = tsf[fi[better_first]]
        acc[uc[better_first], FIRST] = val[fi[better_first]]
        better_last = tsf[li] >= acc[uc, LTS]
        acc[uc[better_last], LTS] = tsf[li[better_last]]
        acc[uc[better_last], LAST] = val[li[better_last]]
        self._sketch_add(cell, uc, sketch.skeys(val))
        return len(slot)

    def _sketch_add(self, cell: np.ndarray, uc: np.ndarray, keys: np.ndarray) -> None:
        if self.sk.dtype == np.uint16 and self.acc[..., CNT].reshape(-1)[uc].max() > 65_535:
            self.sk = self.sk.astype(np.int64)
        off = self.sk_off.reshape(-1)
        counts = self.sk.reshape(-1, sketch.K)
        top = np.full(len(off), _NO_OFFSET, dtype=np.int64)
        np.maximum.at(top, cell, keys)
        want = top[uc] - sketch.K + 1  # top-anchored: the offset depends only on the largest key
        old = off[uc]
        moved = want > old
        if moved.any():
            mc = uc[moved]
            fresh = old[moved] == _NO_OFFSET
            slide = mc[~fresh]
            if len(slide):
                shift = (want[moved][~fresh] - old[moved][~fresh])[:, None]
                counts[slide] = slid(counts[slide].astype(np.int64), shift).astype(counts.dtype)
            off[mc] = want[moved]
        idx = np.maximum(keys - off[cell], 0)
        np.add.at(counts, (cell, idx), 1)

    # -- overflow ---------------------------------------------------------------------------
    def make_room(self, slot: int, ts_ms: int) -> None:
        """Free the cell a reading of ``slot`` at ``ts_ms`` needs, when closing windows did not: the
        slot's open panes span more than the ring. The slot moves to the overflow store, or the
        overflow store's ring grows."""
        if self.far is None or slot not in self._far_of:
            self._spill(slot)
        far = self.far
        assert far is not None  # noqa: S101 - _spill made it
        far.widen_ring(self._far_of[slot], ts_ms // self.pane_ms)

    def put(self, slot: int, pane: int, acc: np.ndarray, off: int, counts: np.ndarray) -> None:
        """Load one restored cell (pane ``pane`` of ``slot``); a slot whose cells do not fit the ring
        goes to the overflow store."""
        if self.far is not None and slot in self._far_of:
            self.far.put_cell(self._far_of[slot], pane, acc, off, counts)
            return
        self._grow(slot + 1)
        if self.pid[slot, pane % self.ring] not in (FREE, pane):
            self._spill(slot)
            self.put(slot, pane, acc, off, counts)
            return
        self.put_cell(slot, pane, acc, off, counts)

    def put_cell(self, row: int, pane: int, acc: np.ndarray, off: int, counts: np.ndarray) -> None:
        """Write one cell of this store (row ``row``), widening the ring if its cell is taken."""
        self._grow(row + 1)
        if self.pid[row, pane % self.ring] not in (FREE, pane):
            self.widen_ring(row, pane)
        if self.sk.dtype == np.uint16 and counts.max(initial=0) > np.iinfo(np.uint16).max:
            self.sk = self.sk.astype(np.int64)
        r = pane % self.ring
        self.pid[row, r] = pane
        self.acc[row, r] = np.asarray(acc, dtype=np.float64).reshape(NF)
        self.sk_off[row, r] = off
        self.sk[row, r] = counts

    def widen_ring(self, row: int, pane: int) -> None:
        """Grow the ring (at least doubling it) so that ``pane`` of ``row`` gets a free cell: a ring
        at least as long as every row's span of open panes gives each pane its own cell."""
        self._grow(row + 1)
        if self.pid[row, pane % self.ring] in (FREE, pane):
            return
        occ, lo, hi = _open_span(self.pid)
        lo[row], hi[row] = min(int(lo[row]), pane), max(int(hi[row]), pane)
        span = int((hi - lo)[occ.any(axis=1) | (np.arange(self.cap) == row)].max()) + 1
        self._regrow(max(2 * self.ring, span))

    def _regrow(self, ring: int) -> None:
        """Reallocate with ``ring`` cells per row, each open pane in its cell ``pane % ring``."""
        s, r = np.nonzero(self.pid != FREE)
        p = self.pid[s, r]
        if self.touched:
            t = np.fromiter(self.touched, dtype=np.int64, count=len(self.touched))
            tp = self.pid.reshape(-1)[t]
            live = tp != FREE
            self.touched = set((t[live] // self.ring * ring + tp[live] % ring).tolist())
        cap = self.cap
        pid = np.full((cap, ring), FREE, dtype=np.int64)
        acc = np.zeros((cap, ring, NF), dtype=np.float64)
        off = np.zeros((cap, ring), dtype=np.int64)
        sk = np.zeros((cap, ring, sketch.K), dtype=self.sk.dtype)
        nr = p % ring
        pid[s, nr] = p
        acc[s, nr] = self.acc[s, r]
        off[s, nr] = self.sk_off[s, r]
        sk[s, nr] = self.sk[s, r]
        self.pid, self.acc, self.sk_off, self.sk, self.ring = pid, acc, off, sk, ring

    def _spill(self, slot: int) -> None:
        """Move ``slot`` and its open cells to the overflow store."""
        far = self.far
        if far is None:
            far = self.far = PaneStore(self.size_ms, self.hop_ms, 0, self.grace_ms, capacity=1)
            far.track_early = self.track_early
        far.closed_end = self.closed_end
        free = [i for i, g in enumerate(self._far_slot) if g < 0]
        row = free[0] if free else len(self._far_slot)
        if row == len(self._far_slot):
            self._far_slot.append(slot)
        else:
            self._far_slot[row] = slot
        self._far_of[slot] = row
        self._grow(slot + 1)
        for r in np.flatnonzero(self.pid[slot] != FREE).tolist():
            pane = int(self.pid[slot, r])
            far.put_cell(row, pane, self.acc[slot, r], int(self.sk_off[slot, r]), self.sk[slot, r])
            if slot * self.ring + r in self.touched:
                self.touched.discard(slot * self.ring + r)
                far.touched.add(row * far.ring + pane % far.ring)
        self.pid[slot] = FREE

    def _release(self) -> None:
        """Move back to the ring the overflow slots whose open panes fit it again (none left, or a
        span no longer than the ring: the sensor is back in step)."""
        far = self.far
        if far is None:
            return
        rows = np.asarray(self._far_slot, dtype=np.int64)
        pid = far.pid[: len(rows)]
        occ, lo, hi = _open_span(pid)
        back = (rows >= 0) & (~occ.any(axis=1) | (hi - lo < self.ring))
        for row in np.flatnonzero(back).tolist():
            slot = int(rows[row])
            for r in np.flatnonzero(occ[row]).tolist():
                pane = int(pid[row, r])
                self.put_cell(slot, pane, far.acc[row, r], int(far.sk_off[row, r]), far.sk[row, r])
                if row * far.ring + r in far.touched:
                    self.touched.add(slot * self.ring + pane % self.ring)
            pid[row] = FREE
            del self._far_of[slot]
            self._far_slot[row] = -1
        if not self._far_of:
            self.far, self._far_slot = None, []
        elif far.touched:
            far.touched = {c for c in far.touched if self._far_slot[c // far.ring] >= 0}

    def _global(self, closed: Closed) -> Closed:
        """``closed`` of the overflow store with this store's slot numbers."""
        slots = np.asarray(self._far_slot, dtype=np.int64)[closed.slot]
        return Closed(slots, *(getattr(closed, f) for f in Closed.__slots__[1:]))

    # -- closing ----------------------------------------------------------------------------
    def close(self, limit_ms: int) -> Closed:
        """Emit every window whose ``end + grace`` is at or before ``limit_ms``; free their panes."""
        far = self.far
        if far is None:
            return self._close(limit_ms)
        far.closed_end = self.closed_end
        near, out = self._close(limit_ms), far._close(limit_ms)  # noqa: SLF001 - same class
        out = self._global(out)
        self._release()
        return _merged(near, out)

    def early(self) -> Closed:
        """Provisional results of the open windows updated since the last call (not freed)."""
        near = self._early()
        far = self.far
        if far is None:
            return near
        far.closed_end = self.closed_end
        return _merged(near, self._global(far._early()))  # noqa: SLF001 - same class

    def _close(self, limit_ms: int) -> Closed:
        limit = limit_ms - self.grace_ms
        prev = self.closed_end
        if limit <= prev:
            return _empty()
        self.closed_end = limit  # any later reading for these windows is late by definition
        occupied = self.pid != FREE
        if not occupied.any():
            return _empty()
        panes = np.unique(self.pid[occupied])
        # window ends that contain data: for each pane, every window it belongs to
        starts = panes * self.pane_ms
        hop, size = self.hop_ms, self.size_ms
        first_start = starts - starts % hop - (size - hop)
        ends = set()
        for k in range(size // hop):
            e = first_start + k * hop + size
            ends.update(e[(e > starts) & (e > prev) & (e <= limit)].tolist())
        parts = [self._window(e) for e in sorted(ends)]
        # free panes no open or future window needs: the last window of pane p ends at
        # floor(p_start / hop) * hop + size
        pstart = self.pid * self.pane_ms
        last_end = pstart - pstart % hop + size
        free = occupied & (last_end <= self.closed_end)
        self.pid[free] = FREE
        parts = [p for p in parts if len(p)]
        if not parts:
            return _empty()
        return Closed(*(np.concatenate([getattr(p, f) for p in parts]) for f in Closed.__slots__))

    def _early(self) -> Closed:
        cells = np.fromiter(self.touched, dtype=np.int64, count=len(self.touched))
        self.touched.clear()
        if len(cells) == 0:
            return _empty()
        slots = cells // self.ring
        panes = self.pid.reshape(-1)[cells]
        live = panes != FREE
        slots, panes = slots[live], panes[live]
        starts = panes * self.pane_ms
        hop, size = self.hop_ms, self.size_ms
        first_start = starts - starts % hop - (size - hop)
        ends: set[int] = set()
        for k in range(size // hop):
            e = first_start + k * hop + size
            ends.update(e[e > self.closed_end].tolist())
        parts = []
        want = set(slots.tolist())
        for e in sorted(ends):
            w = self._window(e)
            keep = np.isin(w.slot, list(want))
            if keep.any():
                parts.append(Closed(*(getattr(w, f)[keep] for f in Closed.__slots__)))
        if not parts:
            return _empty()
        return Closed(*(np.concatenate([getattr(x, f) for x in parts]) for f in Closed.__slots__))

    def _window(self, end: int) -> Closed:
        start = end - self.size_ms
        p0 = start // self.pane_ms
        pane_ids = np.arange(p0, p0 + self.per_window)
        rs = pane_ids % self.ring
        hit = self.pid[:, rs] == pane_ids[None, :]  # (cap, per_window)
        slots = np.flatnonzero(hit.any(axis=1))
        if len(slots) == 0:
            return _empty()
        if self.per_window == 1:
            acc = self.acc[slots, rs[0]].copy()
            off = self.sk_off[slots, rs[0]].copy()
            counts = self.sk[slots, rs[0]].astype(np.int64)
        else:
            acc, off, counts = self._merge_panes(slots, rs, hit[slots])
        q = self._quantiles(off, counts)
        n = len(slots)
        return Closed(slots, np.full(n, start, np.int64), np.full(n, end, np.int64), acc, q, off, counts)

    def _merge_panes(
        self, slots: np.ndarray, rs: np.ndarray, hit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(slots)
        acc = np.zeros((n, NF))
        have = np.zeros(n, dtype=bool)
        off = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        for j, r in enumerate(rs):  # pane order: deterministic merge
            m = hit[:, j]
            if not m.any():
                continue
            b = self.acc[slots[m], r]
            a = acc[m]
            new = ~have[m]
            a[new] = b[new]
            old = ~new
            if old.any():
                aa, bb = a[old], b[old]
                delta = bb[:, SHIFT] - aa[:, SHIFT]
                aa[:, CNT] += bb[:, CNT]
                aa[:, SUM] += bb[:, SUM]
                sd_b = bb[:, SD] + bb[:, CNT] * delta
                aa[:, SD2] += bb[:, SD2] + 2 * delta * bb[:, SD] + bb[:, CNT] * delta * delta
                aa[:, SD] += sd_b
                aa[:, MIN] = np.minimum(aa[:, MIN], bb[:, MIN])
                aa[:, MAX] = np.maximum(aa[:, MAX], bb[:, MAX])
                f = bb[:, FTS] < aa[:, FTS]
                aa[f, FTS], aa[f, FIRST] = bb[f, FTS], bb[f, FIRST]
                g = bb[:, LTS] >= aa[:, LTS]
                aa[g, LTS], aa[g, LAST] = bb[g, LTS], bb[g, LAST]
                a[old] = aa
            acc[m] = a
            have[m] = True
            off[m] = np.maximum(off[m], self.sk_off[slots[m], r])
        counts = np.zeros((n, sketch.K), dtype=np.int64)
        for j, r in enumerate(rs):
            m = np.flatnonzero(hit[:, j])
            if len(m) == 0:
                continue
            c = self.sk[slots[m], r].astype(np.int64)
            counts[m] += slid(c, (off[m] - self.sk_off[slots[m], r])[:, None])
        return acc, off, counts

    @staticmethod
    def _quantiles(off: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return quantiles_of(off, counts)


def quantiles_of(off: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sketch quantiles (``sketch.QUANTILES``) of many dense stores at once."""
    cum = np.cumsum(counts, axis=1)
    n = cum[:, -1]
    out = np.empty((len(off), len(sketch.QUANTILES)))
    for i, q in enumerate(sketch.QUANTILES):
        rank = q * (n - 1)
        idx = (cum > rank[:, None]).argmax(axis=1)
        out[:, i] = _key_values(off + idx)
    return out


def _open_span(pid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of pane ids: which cells are open, and the lowest and highest open pane."""
    occ = pid != FREE
    return occ, np.where(occ, pid, np.iinfo(np.int64).max).min(axis=1), np.where(occ, pid, FREE).max(axis=1)


def _merged(a: Closed, b: Closed) -> Closed:
    """Rows of both, in (end, slot) order."""
    if len(b) == 0:
        return a
    if len(a) == 0:
        return b
    cols = [np.concatenate([getattr(a, f), getattr(b, f)]) for f in Closed.__slots__]
    order = np.lexsort((cols[0], cols[2]))
    return Closed(*(c[order] for c in cols))


def _empty() -> Closed:
    z = np.empty(0, dtype=np.int64)
    return Closed(
        z, z, z, np.empty((0, NF)), np.empty((0, len(sketch.QUANTILES))), z, np.empty((0, sketch.K), np.int64)
    )
