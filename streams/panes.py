"""Columnar pane store: tumbling and hopping windows for many keys at once (pure, numpy).

A window of ``size_ms`` advancing by ``hop_ms`` is the merge of panes of ``gcd(size, hop)``; each
(key, pane) cell keeps the accumulator fields of :mod:`streams.aggregates` plus a quantile sketch
(:mod:`streams.sketch`) in numpy arrays, in a ring of panes per key. A micro-batch is applied with
sequential ``ufunc.at`` updates, so every field depends only on the per-key order of the readings,
never on how they were batched: replays at any speed give identical bits.

Keys ("slots") are dense integers handed out by the caller (one per sensor and metric).
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
        return int((self.pid != FREE).sum())

    def state_bytes(self) -> int:
        """Bytes held by the arrays (allocated capacity)."""
        return self.pid.nbytes + self.acc.nbytes + self.sk_off.nbytes + self.sk.nbytes

    # -- updates ----------------------------------------------------------------------------
    def add(self, slot: np.ndarray, ts: np.ndarray, val: np.ndarray) -> int:
        """Add readings (already checked not late) in arrival order; returns how many were applied.

        Fewer than all are applied when a reading's pane would reuse the ring cell of a pane that is
        still open: the caller closes windows up to that reading's watermark (which always frees the
        cell) and calls again with the rest.
        """
        if len(slot) == 0:
            return 0
        self._grow(int(slot.max()) + 1)
        pane = ts // self.pane_ms
        r = pane % self.ring
        cell = slot.astype(np.int64) * self.ring + r
        ucell, first_idx, inv = np.unique(cell, return_index=True, return_inverse=True)
        first_pane = pane[first_idx]
        occupant = self.pid.reshape(-1)[ucell]
        clash = np.flatnonzero(pane != first_pane[inv])
        j = int(clash[0]) if len(clash) else len(slot)
        bad = (occupant != FREE) & (occupant != first_pane)
        if bad.any():
            j = min(j, int(first_idx[bad].min()))
        if j < len(slot):
            if j > 0:
                self.add(slot[:j], ts[:j], val[:j])
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

    # -- closing ----------------------------------------------------------------------------
    def close(self, limit_ms: int) -> Closed:
        """Emit every window whose ``end + grace`` is at or before ``limit_ms``; free their panes."""
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

    def early(self) -> Closed:
        """Provisional results of the open windows updated since the last call (not freed)."""
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


def _empty() -> Closed:
    z = np.empty(0, dtype=np.int64)
    return Closed(
        z, z, z, np.empty((0, NF)), np.empty((0, len(sketch.QUANTILES))), z, np.empty((0, sketch.K), np.int64)
    )
