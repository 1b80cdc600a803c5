"""Event-time tumbling windows with a per-partition watermark (pure, deterministic).

One :class:`PartitionWindows` holds the open windows of one input partition. The watermark is the
largest event time seen minus ``allowed_lateness_ms``; a window ``[start, end)`` closes, emitting
exactly one final aggregate per metric, once the watermark reaches ``end + grace_ms``. A reading
whose window has already closed is *late*: it is returned to the caller to route to the
late-readings topic and never reopens the window.

Recovery: each sensor's open windows carry the offset of the last source record applied to them,
so a record redelivered after a crash is recognised and skipped (:meth:`PartitionWindows.add`
returns :data:`DUPLICATE`). Together with idempotent emission this gives exactly-once results
from at-least-once delivery. Time never comes from the wall clock: ``now_ms`` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from streams.aggregates import Acc, acc_add, acc_new, acc_result
from streams.schema import Reading

NO_WATERMARK: Final = -(2**62)
DUPLICATE: Final = "duplicate"


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Tumbling window settings, all in milliseconds."""

    size_ms: int = 60_000
    allowed_lateness_ms: int = 5_000
    grace_ms: int = 0
    idle_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.allowed_lateness_ms < 0 or self.grace_ms < 0 or self.idle_timeout_ms <= 0:
            msg = f"window spec: sizes must be positive and lateness/grace non-negative, got {self}"
            raise ValueError(msg)

    @property
    def tag(self) -> str:
        """Short label, e.g. ``tumbling``."""
        return "tumbling"


@dataclass(frozen=True, slots=True)
class Late:
    """A reading that arrived after its window closed."""

    reading: Reading
    watermark_ms: int
    window_start_ms: int
    late_by_ms: int


@dataclass(slots=True)
class SensorWindows:
    """The open windows of one sensor: ``start_ms -> metric -> accumulator``."""

    kind: str
    zone: str
    units: dict[str, str]
    windows: dict[int, dict[str, Acc]] = field(default_factory=dict)
    offset: int = -1

    def to_json(self, partition: int) -> dict[str, Any]:
        """Table value (JSON-safe)."""
        return {
            "p": partition,
            "k": self.kind,
            "z": self.zone,
            "u": self.units,
            "o": self.offset,
            "w": {str(s): m for s, m in self.windows.items()},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SensorWindows:
        """Inverse of :meth:`to_json`."""
        return cls(doc["k"], doc["z"], dict(doc["u"]), {int(s): m for s, m in doc["w"].items()}, doc["o"])


class PartitionWindows:
    """Open tumbling windows and the watermark of one input partition."""

    def __init__(self, spec: WindowSpec, partition: int = 0) -> None:
        self.spec = spec
        self.partition = partition
        self.max_ts_ms = NO_WATERMARK
        self.sensors: dict[str, SensorWindows] = {}
        self._ends: dict[int, set[str]] = {}
        self._last_input_ms: int | None = None
        self.dirty: set[str] = set()

    @property
    def watermark_ms(self) -> int:
        """Largest event time seen minus the allowed lateness."""
        if self.max_ts_ms == NO_WATERMARK:
            return NO_WATERMARK
        return self.max_ts_ms - self.spec.allowed_lateness_ms

    def restore(self, sensor_id: str, state: SensorWindows) -> None:
        """Load one sensor's open windows (from a table) into this partition."""
        self.sensors[sensor_id] = state
        size = self.spec.size_ms
        for start in state.windows:
            self._ends.setdefault(start + size, set()).add(sensor_id)

    def restore_watermark(self, max_ts_ms: int) -> None:
        """Load the partition's watermark position (from a table)."""
        self.max_ts_ms = max(self.max_ts_ms, max_ts_ms)

    def add(self, reading: Reading, offset: int = -1, now_ms: int | None = None) -> Late | str | None:
        """Apply one reading. Returns a :class:`Late`, :data:`DUPLICATE`, or ``None`` when counted."""
        sid = reading.sensor_id
        st = self.sensors.get(sid)
        if st is not None and 0 <= offset <= st.offset:
            return DUPLICATE
        size = self.spec.size_ms
        ts = reading.ts_ms
        start = ts - ts % size
        if now_ms is not None:
            self._last_input_ms = now_ms
        wm = self.watermark_ms
        if start + size + self.spec.grace_ms <= wm:
            if st is not None and offset >= 0:
                st.offset = offset
                self.dirty.add(sid)
            return Late(reading, wm, start, wm - ts)
        if st is None:
            st = self.sensors[sid] = SensorWindows(reading.kind, reading.zone, {})
        st.offset = offset
        self.dirty.add(sid)
        accs = st.windows.get(start)
        if accs is None:
            st.windows[start] = accs = {}
            self._ends.setdefault(start + size, set()).add(sid)
        units = st.units
        for metric, value in reading.metrics.items():
            acc = accs.get(metric)
            if acc is None:
                accs[metric] = acc_new(ts, value)
                if metric not in units:
                    units[metric] = reading.units.get(metric, "")
            else:
                acc_add(acc, ts, value)
        if ts > self.max_ts_ms:
            self.max_ts_ms = ts
        return None

    def idle_advance(self, now_ms: int) -> bool:
        """Move a silent partition's event time on, so its open windows can close.

        After ``idle_timeout_ms`` of wall time without input, the partition's event time advances
        by the time it has been idle, and at least to the wall clock (``now_ms``): a live feed
        that stops still closes its windows on time, and a replayed (past) feed that ends is
        flushed. Returns True when the watermark moved. The host calls this with its clock.
        """
        last = self._last_input_ms
        if last is None:  # restored state: start its idle clock now
            self._last_input_ms = now_ms
            return False
        if self.max_ts_ms == NO_WATERMARK or not self._ends:
            return False
        idle = now_ms - last
        if idle < self.spec.idle_timeout_ms:
            return False
        self.max_ts_ms = max(self.max_ts_ms + idle, now_ms)
        self._last_input_ms = now_ms
        return True

    def close_ready(self) -> list[dict[str, Any]]:
        """Close every window the watermark has passed; return their final aggregates.

        Output order is deterministic: by window end, then sensor id, then metric.
        """
        limit = self.watermark_ms - self.spec.grace_ms
        ready = sorted(end for end in self._ends if end <= limit)
        out: list[dict[str, Any]] = []
        size = self.spec.size_ms
        tag = self.spec.tag
        for end in ready:
            start = end - size
            for sid in sorted(self._ends.pop(end)):
                st = self.sensors[sid]
                accs = st.windows.pop(start)
                self.dirty.add(sid)
                for metric in sorted(accs):
                    rec: dict[str, Any] = {
                        "v": 1,
                        "sensor_id": sid,
                        "kind": st.kind,
                        "zone": st.zone,
                        "metric": metric,
                        "unit": st.units.get(metric, ""),
                        "window": tag,
                        "size_ms": size,
                        "start_ms": start,
                        "end_ms": end,
                    }
                    rec.update(acc_result(accs[metric]))
                    out.append(rec)
        return out

    def take_dirty(self) -> dict[str, SensorWindows | None]:
        """Sensors changed since the last call (``None``: nothing open, delete from the table)."""
        out: dict[str, SensorWindows | None] = {}
        for sid in self.dirty:
            st = self.sensors.get(sid)
            out[sid] = st
        self.dirty.clear()
        return out

    @property
    def open_windows(self) -> int:
        """Number of open sensor windows."""
        return sum(len(s) for s in self._ends.values())
