"""Zone roll-ups: windows over all sensors of a zone, merged from partial states (pure).

Sensors are spread over partitions, so a zone window is built in two steps:

1. Each input partition, when it closes a sensor window, merges the closed windows of the same
   (zone, kind, metric, window) into one *partial* (:func:`partials_from_closed`) and sends it,
   keyed by zone, followed by a *marker* carrying its watermark.
2. :class:`ZoneRollup` (one per zone-topic partition) keeps the partials per source partition
   (overwriting, so redelivery is harmless) and closes a zone window once every source partition's
   marker has passed the window's end plus grace: by then every partial of that window has arrived,
   because each source sends its partials before its marker, in order, on the same partition.

Partials carry the accumulator fields and sketch counters, never raw readings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams import sketch
from streams.aggregates import acc_merge, acc_result
from streams.panes import NF, Closed, quantiles_of, slid

PartialKey = tuple[str, str, str, str, int]  # zone, kind, metric, window label, start_ms


def partials_from_closed(
    closed: Closed, label: str, size_ms: int, hop_ms: int, src: int,
    slot_zone: Sequence[str], slot_kind: Sequence[str], slot_metric: Sequence[str], slot_unit: Sequence[str],
) -> list[dict[str, Any]]:
    """Merge closed sensor windows into one partial per (zone, kind, metric, window start)."""
    if len(closed) == 0:
        return []
    groups: dict[tuple[str, str, str, int], list[int]] = {}
    slots = closed.slot.tolist()
    starts = closed.start_ms.tolist()
    for i, s in enumerate(slots):
        groups.setdefault((slot_zone[s], slot_kind[s], slot_metric[s], starts[i]), []).append(i)
    out = []
    for (zone, kind, metric, start), rows in sorted(groups.items()):
        acc = closed.acc[rows[0]].tolist()
        for r in rows[1:]:
            acc = acc_merge(acc, closed.acc[r].tolist())
        off, counts = _merge_sketches(closed.sk_off[rows], closed.sk[rows])
        nz = np.flatnonzero(counts)
        out.append({
            "type": "partial", "src": src, "zone": zone, "kind": kind, "metric": metric,
            "unit": slot_unit[slots[rows[0]]], "window": label, "size_ms": size_ms, "hop_ms": hop_ms,
            "start_ms": start, "end_ms": start + size_ms, "sensors": len(rows), "acc": acc,
            "sk": [int(off), nz.tolist(), counts[nz].tolist()],
        })
    return out


def _merge_sketches(offs: np.ndarray, counts: np.ndarray) -> tuple[int, np.ndarray]:
    top = int(offs.max())
    merged = slid(counts.astype(np.int64), (top - offs)[:, None]).sum(axis=0)
    return top, merged


def _dense(sk: list[Any]) -> tuple[int, np.ndarray]:
    counts = np.zeros(sketch.K, dtype=np.int64)
    counts[sk[1]] = sk[2]
    return int(sk[0]), counts


@dataclass
class ZoneRollup:
    """Zone windows of one zone-topic partition."""

    sources: int
    grace_ms: int = 0
    #: A source partition that has sent nothing for this long (wall time) while others have is
    #: treated as empty: zone windows close on the sources that did report.
    idle_timeout_ms: int = 30_000
    partials: dict[PartialKey, dict[int, dict[str, Any]]] = field(default_factory=dict)
    marks: dict[int, int] = field(default_factory=dict)
    late: int = 0
    _incomplete_since_ms: int | None = None
    _now_ms: int | None = None

    @property
    def watermark_ms(self) -> int | None:
        """The smallest source watermark, once every source has reported one (or the silent ones
        have been silent for the idle timeout)."""
        if not self.marks:
            return None
        if len(self.marks) < self.sources:
            since, now = self._incomplete_since_ms, self._now_ms
            if since is None or now is None or now - since < self.idle_timeout_ms:
                return None
        return min(self.marks.values())

    def tick(self, now_ms: int) -> None:
        """Give the rollup the wall clock (only used to stop waiting for sources that never report)."""
        self._now_ms = now_ms
        if len(self.marks) < self.sources and self.marks and self._incomplete_since_ms is None:
            self._incomplete_since_ms = now_ms

    def add(self, msg: dict[str, Any]) -> PartialKey | None:
        """Apply a partial or a marker; returns the key of a changed window (to persist)."""
        if msg["type"] == "marker":
            src = int(msg["src"])
            self.marks[src] = max(self.marks.get(src, msg["watermark_ms"]), int(msg["watermark_ms"]))
            return None
        key: PartialKey = (msg["zone"], msg["kind"], msg["metric"], msg["window"], int(msg["start_ms"]))
        wm = self.watermark_ms
        if wm is not None and msg["end_ms"] + self.grace_ms <= wm and key not in self.partials:
            self.late += 1  # a source sent a partial after its own marker: cannot happen in order
            return None
        self.partials.setdefault(key, {})[int(msg["src"])] = msg
        return key

    def close(self) -> tuple[list[dict[str, Any]], list[PartialKey]]:
        """Zone aggregates of every window all sources have passed; and the keys closed."""
        wm = self.watermark_ms
        if wm is None:
            return [], []
        ready = sorted(k for k, parts in self.partials.items()
                       if next(iter(parts.values()))["end_ms"] + self.grace_ms <= wm)
        out = []
        for key in ready:
            parts = self.partials.pop(key)
            first = parts[min(parts)]
            acc: list[float] | None = None
            sks = []
            sensors = 0
            for src in sorted(parts):
                p = parts[src]
                acc = list(p["acc"]) if acc is None else acc_merge(acc, p["acc"])
                sks.append(_dense(p["sk"]))
                sensors += p["sensors"]
            if acc is None or len(acc) != NF:  # pragma: no cover - partials always carry NF fields
                continue
            off, counts = _merge_sketches(np.array([o for o, _ in sks]), np.stack([c for _, c in sks]))
            q = quantiles_of(np.array([off]), counts[None, :])[0]
            rec: dict[str, Any] = {
                "v": 1, "scope": "zone", "zone": key[0], "kind": key[1], "metric": key[2],
                "unit": first["unit"], "window": first["window"].split(":")[0], "size_ms": first["size_ms"],
                "hop_ms": first["hop_ms"], "start_ms": key[4], "end_ms": first["end_ms"], "sensors": sensors,
            }
            rec.update(acc_result(acc))
            for i, qq in enumerate(sketch.QUANTILES):
                rec[f"p{round(qq * 100)}"] = float(q[i])
            out.append(rec)
        return out, ready

    # -- persistence ------------------------------------------------------------------------
    def window_state(self, key: PartialKey) -> dict[str, Any] | None:
        """Table value of one open zone window (None when closed)."""
        parts = self.partials.get(key)
        return None if parts is None else {"parts": [parts[s] for s in sorted(parts)]}

    def restore_window(self, doc: dict[str, Any]) -> None:
        """Load one zone window from the table (as stored: no late check, whatever the marks say,
        so the order in which a restore meets windows and marks does not matter)."""
        for p in doc["parts"]:
            key: PartialKey = (p["zone"], p["kind"], p["metric"], p["window"], int(p["start_ms"]))
            self.partials.setdefault(key, {})[int(p["src"])] = p

    def closable(self) -> bool:
        """Whether :meth:`close` would close a window now."""
        wm = self.watermark_ms
        return wm is not None and any(
            next(iter(parts.values()))["end_ms"] + self.grace_ms <= wm for parts in self.partials.values()
        )
