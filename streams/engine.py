"""Event-time windows with a per-partition watermark (pure, deterministic).

One :class:`PartitionWindows` holds the open windows of one input partition for every configured
window definition (tumbling or hopping, see :class:`WindowDef`). The watermark is the partition's
event-time *frontier* minus ``allowed_lateness_ms``; a window ``[start, end)`` closes, emitting
exactly one final aggregate per (sensor, metric), once the watermark reaches ``end + grace_ms``. A
reading whose windows have all closed is *late*: it is returned to the caller to route to the
late-readings topic and never reopens a window.

The frontier is the largest event time seen, except that one sensor alone cannot move it far: each
reading, in arrival order (redelivered ones included), with ``F`` the frontier before it and
``M = max_ahead_ms``:

* ``F`` unset, ``M == 0`` or ``ts <= F + M``: ``F = max(F, ts)``, and the sensor is no longer ahead;
* otherwise the reading is *ahead*: ``ahead[sensor] = max(ahead[sensor], ts)``; when ``ahead``
  holds ``q = min(2, sensors seen)`` sensors (this one included), ``F`` becomes the ``q``-th
  largest of their times if that is later. So a second sensor corroborates a jump (a feed back
  after a gap), and a partition that only ever saw one sensor follows it as the plain maximum;
* then sensors whose time is within ``F + M`` leave ``ahead`` (at most one stays).

A reading still more than ``M`` ahead of ``F`` after that is *held*: it is windowed as usual and
its windows close when the frontier reaches them. One held further than ``ahead_horizon_ms`` ahead
is not windowed (its windows would stay open without bound) and is returned as :class:`Ahead`
for the caller to dead-letter. Lateness is checked against ``F`` as it stood before each reading.

Readings are applied in micro-batches with numpy (:mod:`streams.panes`); the frontier before each
reading is a running maximum unless a reading of the batch is more than ``M`` ahead of it (then
the rule above runs row by row), and lateness is decided per reading against the watermark as it
stood when that reading arrived, so results do not depend on batch boundaries.

Recovery: each sensor's state carries the offset of the last source record applied to it, so a
record redelivered after a crash is recognised and skipped (reported as a duplicate). Together with
idempotent emission this gives exactly-once results from at-least-once delivery. Time never comes
from the wall clock: ``now_ms`` is passed in.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any, Final, Literal

import numpy as np
import orjson

from streams import sketch
from streams.keyed import SessionStore, SlidingStore
from streams.panes import FREE, NF, Closed, PaneStore
from streams.schema import Reading, ReadingRows, Shape

NO_WATERMARK: Final = -(2**62)
DUPLICATE: Final = "duplicate"
WindowKind = Literal["tumbling", "hopping", "session", "sliding"]
_UNITS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_ms(text: str) -> int:
    """``500ms``, ``10s``, ``5m``, ``1h``, ``1d`` to milliseconds.

    >>> parse_ms("5m")
    300000
    """
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)\s*", text)
    if not m:
        msg = f"duration: expected <integer><ms|s|m|h|d>, got {text!r}"
        raise ValueError(msg)
    return int(m[1]) * _UNITS[m[2]]


@dataclass(frozen=True, slots=True)
class WindowDef:
    """One window definition.

    ``tumbling`` (hop = size), ``hopping`` (hop divides size), ``session`` (``size_ms`` is the gap)
    and ``sliding`` (a window ``[t - size + 1, t + 1)`` per distinct reading time ``t``).
    """

    kind: WindowKind
    size_ms: int
    hop_ms: int

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.hop_ms <= 0 or self.size_ms % self.hop_ms:
            msg = f"window {self.kind}: size must be a positive multiple of hop, got {self.size_ms}/{self.hop_ms} ms"
            raise ValueError(msg)
        if self.kind != "hopping" and self.hop_ms != self.size_ms:
            msg = f"window {self.kind}: hop must equal size, got {self.size_ms}/{self.hop_ms} ms"
            raise ValueError(msg)

    @property
    def keyed(self) -> bool:
        """Whether window bounds depend on the data (session, sliding)."""
        return self.kind in ("session", "sliding")

    @property
    def label(self) -> str:
        """e.g. ``tumbling:60000`` or ``hopping:300000/60000``."""
        if self.kind == "hopping":
            return f"hopping:{self.size_ms}/{self.hop_ms}"
        return f"{self.kind}:{self.size_ms}"

    @classmethod
    def parse(cls, text: str) -> WindowDef:
        """``tumbling:1m`` or ``hopping:5m/1m``.

        >>> WindowDef.parse("hopping:5m/1m")
        WindowDef(kind='hopping', size_ms=300000, hop_ms=60000)
        """
        kind, _, rest = text.strip().partition(":")
        if kind in ("tumbling", "session", "sliding"):
            size = parse_ms(rest)
            return cls(kind, size, size)  # type: ignore[arg-type]
        if kind == "hopping":
            size, _, hop = rest.partition("/")
            return cls("hopping", parse_ms(size), parse_ms(hop))
        msg = (
            "window: expected 'tumbling:<size>', 'hopping:<size>/<hop>', 'session:<gap>' or 'sliding:<size>', "
            f"got {text!r}"
        )
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Window definitions plus lateness, grace and idle settings, all in milliseconds."""

    size_ms: int = 60_000
    allowed_lateness_ms: int = 5_000
    grace_ms: int = 0
    idle_timeout_ms: int = 30_000
    extra: tuple[WindowDef, ...] = ()
    #: Also emit provisional results of open tumbling/hopping windows after each micro-batch.
    early_updates: bool = False
    #: A reading further than this ahead of the frontier moves it only once a second sensor is that
    #: far ahead too (see the module docstring); 0: every reading moves it (the plain maximum).
    max_ahead_ms: int = 60_000
    #: A held reading further than this ahead of the frontier is refused (:class:`Ahead`), not windowed.
    ahead_horizon_ms: int = 3_600_000

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.allowed_lateness_ms < 0 or self.grace_ms < 0 or self.idle_timeout_ms <= 0:
            msg = f"window spec: sizes must be positive and lateness/grace non-negative, got {self}"
            raise ValueError(msg)
        if self.max_ahead_ms < 0 or self.ahead_horizon_ms < self.max_ahead_ms:
            msg = (
                "window spec: expected 0 <= max_ahead_ms <= ahead_horizon_ms, "
                f"got {self.max_ahead_ms} and {self.ahead_horizon_ms} ms"
            )
            raise ValueError(msg)

    @property
    def windows(self) -> tuple[WindowDef, ...]:
        """The primary tumbling window, then the extra definitions."""
        return (WindowDef("tumbling", self.size_ms, self.size_ms), *self.extra)


@dataclass(frozen=True, slots=True)
class Late:
    """A reading that arrived after its windows closed."""

    reading: Reading
    watermark_ms: int
    window_start_ms: int
    late_by_ms: int


@dataclass(frozen=True, slots=True)
class Ahead:
    """A reading refused for being further than ``ahead_horizon_ms`` ahead of the frontier, with no
    other sensor that far ahead: a clock far off. It is not windowed."""

    reading: Reading
    frontier_ms: int
    ahead_by_ms: int


@dataclass(slots=True)
class SensorMeta:
    """What a sensor's slots need to label their aggregates."""

    kind: str
    zone: str
    idx: int = -1  # dense index in PartitionWindows.sensors order (set on creation)
    offset: int = -1
    slots: dict[str, int] = field(default_factory=dict)  # metric -> slot
    units: dict[str, str] = field(default_factory=dict)
    shapes: dict[Shape, tuple[int, ...]] = field(default_factory=dict)  # a reading's metrics -> their slots
    #: The encoded start of the sensor's table document, up to ``"o":`` (empty: not built yet).
    head: bytes = b""


def _store(w: WindowDef, spec: WindowSpec) -> Any:
    if w.kind == "session":
        return SessionStore(w.size_ms, spec.grace_ms)
    if w.kind == "sliding":
        return SlidingStore(w.size_ms, spec.grace_ms)
    return PaneStore(w.size_ms, w.hop_ms, spec.allowed_lateness_ms, spec.grace_ms)


class PartitionWindows:
    """Open windows and the watermark of one input partition."""

    def __init__(self, spec: WindowSpec, partition: int = 0) -> None:
        self.spec = spec
        self.partition = partition
        #: The event-time frontier (the largest event time seen, but for readings held ahead).
        self.max_ts_ms = NO_WATERMARK
        #: Sensor -> its latest time while more than ``max_ahead_ms`` ahead of the frontier (at most one).
        self.ahead: dict[str, int] = {}
        #: Readings held ahead (windowed without moving the frontier), refused ones included.
        self.held_ahead = 0
        #: Readings refused as further than ``ahead_horizon_ms`` ahead (:class:`Ahead`).
        self.refused_ahead = 0
        self.sensors: dict[str, SensorMeta] = {}
        self.slot_sensor: list[str] = []
        self.slot_metric: list[str] = []
        self._slot_owner: list[int] = []  # slot -> SensorMeta.idx
        self._slot_rank: list[int] = []  # slot -> position among its sensor's slots ("u" order)
        self._heads: list[tuple[str, str, str, str, str]] = []  # see _slot_heads
        self._ranks: np.ndarray | None = None  # see _sort_ranks
        self._slot_cols: tuple[int, np.ndarray, np.ndarray] = (0, np.empty(0, np.int64), np.empty(0, np.int64))
        self.stores: list[Any] = [_store(w, spec) for w in spec.windows]
        self._all_panes = all(isinstance(store, PaneStore) for store in self.stores)
        for store in self.stores:
            if isinstance(store, PaneStore):
                store.track_early = spec.early_updates
        self._last_input_ms: int | None = None
        self._pending: list[list[Closed | None]] = [[] for _ in self.stores]
        self.dirty: set[str] = set()
        self.marked_ms = NO_WATERMARK  # watermark last announced to the zone stage

    # -- watermark --------------------------------------------------------------------------
    @property
    def watermark_ms(self) -> int:
        """The event-time frontier minus the allowed lateness."""
        if self.max_ts_ms == NO_WATERMARK:
            return NO_WATERMARK
        return self.max_ts_ms - self.spec.allowed_lateness_ms

    def sensors_ahead(self) -> dict[str, int]:
        """Sensors whose latest reading is held ahead of the frontier, and by how many milliseconds."""
        return {sid: t - self.max_ts_ms for sid, t in self.ahead.items()}

    def restore_watermark(self, max_ts_ms: int, ahead: dict[str, int] | None = None) -> None:
        """Load the partition's frontier and the sensors ahead of it (from a table)."""
        self.max_ts_ms = max(self.max_ts_ms, max_ts_ms)
        for sid, t in (ahead or {}).items():
            if int(t) > self.ahead.get(sid, NO_WATERMARK):
                self.ahead[sid] = int(t)
        self._caught_up()
        for store in self.stores:  # every window ending by the watermark was emitted
            if isinstance(store, PaneStore):
                store.closed_end = max(store.closed_end, self.watermark_ms - self.spec.grace_ms)

    def _caught_up(self) -> None:
        """Drop the sensors the frontier has caught up with (all of them when the guard is off)."""
        if self.ahead:
            reach = self.max_ts_ms + self.spec.max_ahead_ms if self.spec.max_ahead_ms else None
            for sid in [sid for sid, t in self.ahead.items() if reach is None or t <= reach]:
                del self.ahead[sid]

    def _advance(
        self, ts: np.ndarray, ids: Callable[[], Sequence[str]]
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Move the frontier over rows ``ts`` (sensor ids from ``ids()``) in arrival order.

        Returns the frontier before each row and after the last (``n + 1`` values), then the rows
        held ahead and the rows refused, or None twice when no row is more than ``max_ahead_ms``
        ahead of the running maximum: the rule then is that maximum (vectorised).
        """
        front = np.maximum.accumulate(np.r_[np.int64(self.max_ts_ms), ts])
        m = self.spec.max_ahead_ms
        if m:
            before = front[:-1]
            if ((ts > before + m) & (before != NO_WATERMARK)).any():
                return self._advance_rows(ts, ids())
            if self.ahead:  # a sensor ahead that reported in step is no longer ahead
                for sid in set(ids()).intersection(self.ahead):
                    del self.ahead[sid]
        self.max_ts_ms = int(front[-1])
        self._caught_up()
        return front, None, None

    def _advance_rows(self, ts: np.ndarray, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_advance` row by row: the rule of the module docstring."""
        m, horizon = self.spec.max_ahead_ms, self.spec.ahead_horizon_ms
        ahead = self.ahead
        f = self.max_ts_ms
        # sensors seen, while fewer than two (a single-sensor partition follows the plain maximum)
        seen = None if len(self.sensors) >= 2 else set(self.sensors)
        front = np.empty(len(ts) + 1, dtype=np.int64)
        held = np.zeros(len(ts), dtype=bool)
        refused = np.zeros(len(ts), dtype=bool)
        for k, (t, sid) in enumerate(zip(ts.tolist(), ids, strict=True)):
            front[k] = f
            if seen is not None:
                seen.add(sid)
                if len(seen) >= 2:
                    seen = None
            if f == NO_WATERMARK or t <= f + m:
                ahead.pop(sid, None)
                if t > f:
                    f = t
                    if ahead:
                        self.max_ts_ms = f
                        self._caught_up()
                continue
            if t > ahead.get(sid, NO_WATERMARK):
                ahead[sid] = t
            q = 1 if seen is not None else 2
            if len(ahead) >= q:
                t_q = sorted(ahead.values(), reverse=True)[q - 1]
                if t_q > f:
                    f = self.max_ts_ms = t_q
                    self._caught_up()
            if t > f + m:
                held[k] = True
                refused[k] = t > f + horizon
        front[-1] = self.max_ts_ms = f
        return front, held, refused

    def _wm(self, front: np.ndarray) -> np.ndarray:
        """Watermarks of frontier values."""
        wm = front - self.spec.allowed_lateness_ms
        wm[front == NO_WATERMARK] = NO_WATERMARK
        return wm

    # -- slots ------------------------------------------------------------------------------
    def _meta(self, r: Reading) -> SensorMeta:
        meta = self.sensors.get(r.sensor_id)
        if meta is None:
            meta = self._new_meta(r.sensor_id, r.kind, r.zone)
        return meta

    def _new_meta(self, sensor_id: str, kind: str, zone: str) -> SensorMeta:
        meta = self.sensors[sensor_id] = SensorMeta(kind, zone, len(self.sensors))
        return meta

    def _slot(self, meta: SensorMeta, sensor_id: str, metric: str, unit: str) -> int:
        slot = meta.slots.get(metric)
        if slot is None:
            self._slot_rank.append(len(meta.slots))
            slot = meta.slots[metric] = len(self.slot_sensor)
            self.slot_sensor.append(sensor_id)
            self.slot_metric.append(metric)
            self._slot_owner.append(meta.idx)
            meta.units[metric] = unit
            meta.head = b""
        return slot

    # -- input ------------------------------------------------------------------------------
    def add(self, reading: Reading, offset: int = -1, now_ms: int | None = None) -> Late | Ahead | str | None:
        """Apply one reading: a :class:`Late`, an :class:`Ahead`, :data:`DUPLICATE`, or ``None`` when counted."""
        return self.add_batch([reading], [offset], now_ms)[0]

    def add_batch(
        self, readings: Sequence[Reading], offsets: Sequence[int], now_ms: int | None = None
    ) -> list[Late | Ahead | str | None]:
        """Apply a micro-batch in arrival order; one outcome per reading (as :meth:`add`)."""
        return self.add_rows(ReadingRows.of(readings), offsets, now_ms)

    def add_rows(  # noqa: C901 - the per-reading loop is kept in one place
        self, rows: ReadingRows, offsets: Sequence[int], now_ms: int | None = None
    ) -> list[Late | Ahead | str | None]:
        """:meth:`add_batch` of parsed columns (:func:`streams.schema.parse_batch`); ``offsets[k]`` is row k's."""
        n = len(rows)
        out: list[Late | Ahead | str | None] = [None] * n
        if n == 0:
            return out
        if now_ms is not None:
            self._last_input_ms = now_ms
        ts = np.array(rows.ts_ms, dtype=np.int64)
        # the frontier before each reading and after the last; watermarks before and after each
        front, held, refused = self._advance(ts, lambda: [x[0] for x in rows.ident])
        wm_before, wm_after = self._wm(front[:-1]), self._wm(front[1:])
        late_any = np.zeros(n, dtype=bool)
        per_store_ok = []
        for store in self.stores:
            if isinstance(store, PaneStore):
                late = store.last_window_end(ts) + self.spec.grace_ms <= wm_before
                late_any |= late
            else:  # session/sliding decide per row while adding
                late = np.zeros(n, dtype=bool)
            per_store_ok.append(~late)
        any_late = bool(late_any.any())
        if refused is not None and refused.any():  # not windowed either
            per_store_ok = [okk & ~refused for okk in per_store_ok]
            any_late = True
        # all-late (and refused) readings create no slots (as duplicates)
        skip = (~np.logical_or.reduce(per_store_ok)).tolist() if any_late else None
        # duplicates (redelivered after a restart) and each row's slots
        sensors = self.sensors
        ident, shapes = rows.ident, rows.shape
        chunks: list[tuple[int, ...]] = []
        touched: list[str] = []
        dup: list[int] = []
        add_chunk, add_touched = chunks.append, touched.append
        for k, (sensor, shape, off) in enumerate(zip(ident, shapes, offsets, strict=True)):
            sid = sensor[0]
            meta = sensors.get(sid)
            if meta is None:
                meta = self._new_meta(sid, sensor[1], sensor[2])
            if 0 <= off <= meta.offset:
                out[k] = DUPLICATE
                dup.append(k)
                add_chunk((-1,) * len(shape.names))
                continue
            if off >= 0:
                meta.offset = off
            add_touched(sid)
            if skip is not None and skip[k]:
                add_chunk((-1,) * len(shape.names))
                continue
            slots = meta.shapes.get(shape)
            if slots is None:
                slots = meta.shapes[shape] = tuple(
                    [self._slot(meta, sid, m, u) for m, u in zip(shape.names, shape.units, strict=True)]
                )
            add_chunk(slots)
        self.dirty.update(touched)
        ok = np.ones(n, dtype=bool)
        ok[dup] = False
        if any_late:
            for i in np.flatnonzero(late_any & ok).tolist():
                wm = int(wm_before[i])
                first_late = next(s for s, okk in zip(self.stores, per_store_ok, strict=True) if not okk[i])
                out[i] = Late(rows.reading(i), wm, int(ts[i] - ts[i] % first_late.hop_ms), wm - int(ts[i]))
        if held is not None and refused is not None:
            self.held_ahead += int((held & ok).sum())
            for i in np.flatnonzero(refused & ok).tolist():
                out[i] = Ahead(rows.reading(i), int(front[i + 1]), int(ts[i] - front[i + 1]))
                self.refused_ahead += 1
        lens = np.fromiter(map(len, chunks), dtype=np.int64, count=n)
        total = int(lens.sum())
        if total:
            slot_a = np.fromiter(chain.from_iterable(chunks), dtype=np.int64, count=total)
            val_a = np.fromiter(rows.values, dtype=np.float64, count=total)
            row_a = np.repeat(np.arange(n), lens)
            for si, okk in enumerate(per_store_ok):
                store = self.stores[si]
                keep = (okk & ok)[row_a] if any_late or dup else None
                if keep is None:
                    s_, r_, v_ = slot_a, row_a, val_a
                else:
                    s_, r_, v_ = slot_a[keep], row_a[keep], val_a[keep]
                if isinstance(store, PaneStore):
                    self._feed(si, s_, ts[r_], v_, wm_before[r_], wm_after[r_])
                    continue
                late_rows = store.add(s_, ts[r_], v_, wm_before[r_])
                for i in np.unique(r_[late_rows]).tolist():
                    if out[i] is None:
                        wm = int(wm_before[i])
                        out[i] = Late(rows.reading(i), wm, int(ts[i]), wm - int(ts[i]))
        return out

    def add_columns(self, slot: np.ndarray, ts: np.ndarray, val: np.ndarray) -> int:
        """Fast path for pre-registered slots (benchmarks, replays): returns the number of late values.

        Rows are (slot, event time, value) in arrival order; no offsets, no duplicate check. Rows
        refused as too far ahead (see the module docstring) are counted in :attr:`refused_ahead`.
        """
        front, held, refused = self._advance(ts, lambda: self._owners(slot))
        wm_before, wm_after = self._wm(front[:-1]), self._wm(front[1:])
        if held is not None and refused is not None:
            self.held_ahead += int(held.sum())
            self.refused_ahead += int(refused.sum())
            if refused.any():
                take = ~refused
                slot, ts, val, wm_before, wm_after = slot[take], ts[take], val[take], wm_before[take], wm_after[take]
        late_n = 0
        for si, store in enumerate(self.stores):
            if not isinstance(store, PaneStore):
                late_n = max(late_n, int(store.add(slot, ts, val, wm_before).sum()))
                continue
            keep = store.last_window_end(ts) + self.spec.grace_ms > wm_before
            late_n = max(late_n, int((~keep).sum()))
            self._feed(si, slot[keep], ts[keep], val[keep], wm_before[keep], wm_after[keep])
        return late_n

    def _owners(self, slot: np.ndarray) -> list[str]:
        """The sensor id of each slot."""
        names = list(self.sensors)
        return [names[i] for i in np.asarray(self._slot_owner, dtype=np.int64)[slot].tolist()]

    def _feed(
        self, si: int, slot: np.ndarray, ts: np.ndarray, val: np.ndarray, wm_before: np.ndarray, wm_after: np.ndarray
    ) -> None:
        """Add to store ``si`` in segments, closing windows between them exactly when the per-reading
        watermark passes their end (hopping windows share panes, so a window must be emitted before
        a reading that is late for it, but not for a later window, lands in a shared pane)."""
        store = self.stores[si]
        if store.per_window > 1 and len(slot):
            epoch = (wm_before - self.spec.grace_ms) // store.hop_ms
            cuts = np.flatnonzero(epoch[1:] != epoch[:-1]) + 1
            lo = 0
            for cut in [*cuts.tolist(), len(slot)]:
                self._pending[si].append(store.close(int(wm_before[lo])))
                self._feed_ring(si, slot[lo:cut], ts[lo:cut], val[lo:cut], wm_before[lo:cut], wm_after[lo:cut])
                lo = cut
            self._pending[si] = [c for c in self._pending[si] if c is not None and len(c)]
            return
        self._feed_ring(si, slot, ts, val, wm_before, wm_after)

    def _feed_ring(
        self, si: int, slot: np.ndarray, ts: np.ndarray, val: np.ndarray, wm_before: np.ndarray, wm_after: np.ndarray
    ) -> None:
        """Add to store ``si``. Where a reading needs a ring cell still in use, close windows up to
        its watermark first, and if that does not free the cell (the sensor's open panes span more
        than the ring: its clock runs ahead), make room in the store's overflow."""
        store = self.stores[si]
        i = 0
        n = len(slot)
        closed_at = roomed_at = -1
        while i < n:
            i += store.add(slot[i:], ts[i:], val[i:])
            if i >= n:
                break
            if closed_at != i:
                # No window holding reading i, or a later one, ends by this watermark: safe to close.
                t = int(ts[i]) - self.spec.allowed_lateness_ms
                self._pending[si].append(store.close(max(int(wm_before[i]), min(int(wm_after[i]), t))))
                closed_at = i
            elif roomed_at != i:
                store.make_room(int(slot[i]), int(ts[i]))
                roomed_at = i
            else:
                msg = "pane store: ring cell still occupied after making room (internal error)"
                raise RuntimeError(msg)
        self._pending[si] = [c for c in self._pending[si] if c is not None and len(c)]

    def register(self, sensor_id: str, kind: str, zone: str, metrics: dict[str, str]) -> list[int]:
        """Create slots for a sensor's metrics up front; returns them in ``metrics`` order."""
        meta = self.sensors.get(sensor_id) or self._new_meta(sensor_id, kind, zone)
        return [self._slot(meta, sensor_id, m, u) for m, u in metrics.items()]

    # -- time -------------------------------------------------------------------------------
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
        if self.max_ts_ms == NO_WATERMARK or self.open_windows == 0:
            return False
        idle = now_ms - last
        if idle < self.spec.idle_timeout_ms:
            return False
        self.max_ts_ms = max(self.max_ts_ms + idle, now_ms)
        self._caught_up()
        self._last_input_ms = now_ms
        return True

    def hold_idle(self, now_ms: int) -> None:
        """Restart the idle clock: the host is not reading this partition (its own back-pressure),
        so the silence says nothing about the feed."""
        if self._last_input_ms is not None:
            self._last_input_ms = now_ms

    # -- output -----------------------------------------------------------------------------
    def close_columns(self) -> list[tuple[WindowDef, Closed]]:
        """Close every window the watermark has passed, as columns per window definition."""
        wm = self.watermark_ms
        out = []
        for si, (wdef, store) in enumerate(zip(self.spec.windows, self.stores, strict=True)):
            parts = [c for c in self._pending[si] if c is not None]
            self._pending[si] = []
            if wm != NO_WATERMARK:
                parts.append(store.close(wm))
            for closed in parts:
                if len(closed):
                    out.append((wdef, closed))
                    for s in np.unique(closed.slot).tolist():
                        self.dirty.add(self.slot_sensor[s])
        return out

    def close_ready(self, zone_partials: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Close every window the watermark has passed; return their final aggregates.

        Order is deterministic: by window definition, then window end, then sensor id and metric.
        With ``zone_partials``, also append one zone partial per (zone, kind, metric, window)
        (see :mod:`streams.zones`).
        """
        records: list[dict[str, Any]] = []
        for wdef, closed in self.close_columns():
            if zone_partials is not None and not wdef.keyed:
                from streams.zones import partials_from_closed

                heads = self._slot_heads()  # (sensor id, kind, zone, metric, unit) per slot
                zone_partials.extend(
                    partials_from_closed(
                        closed,
                        wdef.label,
                        wdef.size_ms,
                        wdef.hop_ms,
                        self.partition,
                        [h[2] for h in heads],
                        [h[1] for h in heads],
                        self.slot_metric,
                        [h[4] for h in heads],
                    )
                )
            records.extend(self._records(wdef, closed, final=True))
        return records

    def early_records(self) -> list[dict[str, Any]]:
        """Provisional aggregates (``"final": false``) of open windows updated since the last call."""
        if not self.spec.early_updates:
            return []
        out: list[dict[str, Any]] = []
        for wdef, store in zip(self.spec.windows, self.stores, strict=True):
            if isinstance(store, PaneStore):
                out.extend(self._records(wdef, store.early(), final=False))
        return out

    def _records(self, wdef: WindowDef, closed: Closed, *, final: bool) -> list[dict[str, Any]]:
        """One aggregate record per closed cell, ordered by window end, sensor id, metric, window start.

        The order comes from one ``np.lexsort`` over the slots' (sensor id, metric) ranks, and each
        record is a constant-key dict plus its columns: a 10,000-sensor close builds 35,000 of them
        on the alert path (``tests/unit/streams/test_fast_paths.py`` compares it with the plain version).
        """
        if len(closed) == 0:
            return []
        cols = closed.columns()
        names = tuple(cols)
        order = np.lexsort((closed.start_ms, self._sort_ranks()[closed.slot], closed.end_ms))
        slots = closed.slot[order].tolist()
        starts = closed.start_ms[order].tolist()
        ends = closed.end_ms[order].tolist()
        values = zip(*(c[order].tolist() for c in cols.values()), strict=True)
        heads = self._slot_heads()
        wkind, size, hop = wdef.kind, wdef.size_ms, wdef.hop_ms
        rows: list[dict[str, Any]] = []
        append = rows.append
        for s, start, end, vals in zip(slots, starts, ends, values, strict=True):
            sid, kind, zone, metric, unit = heads[s]
            rec: dict[str, Any] = {
                "v": 1, "sensor_id": sid, "kind": kind, "zone": zone, "metric": metric, "unit": unit,
                "window": wkind, "size_ms": size, "hop_ms": hop, "start_ms": start, "end_ms": end, "final": final,
            }
            rec.update(zip(names, vals, strict=True))
            append(rec)
        return rows

    def _slot_heads(self) -> list[tuple[str, str, str, str, str]]:
        """Per slot: (sensor id, kind, zone, metric, unit), extended as slots are added (they never change)."""
        heads = self._heads
        for s in range(len(heads), len(self.slot_sensor)):
            sid, metric = self.slot_sensor[s], self.slot_metric[s]
            meta = self.sensors[sid]
            heads.append((sid, meta.kind, meta.zone, metric, meta.units.get(metric, "")))
        return heads

    def _sort_ranks(self) -> np.ndarray:
        """Per slot, its rank in (sensor id, metric) order; recomputed only when slots were added."""
        n = len(self.slot_sensor)
        if self._ranks is None or len(self._ranks) != n:
            keys = sorted(range(n), key=lambda s: (self.slot_sensor[s], self.slot_metric[s]))
            ranks = np.empty(n, dtype=np.int64)
            ranks[keys] = np.arange(n, dtype=np.int64)
            self._ranks = ranks
        return self._ranks

    @property
    def open_windows(self) -> int:
        """Number of open (sensor, metric, pane) cells over all window definitions."""
        return sum(s.open_cells for s in self.stores)

    # -- persistence ------------------------------------------------------------------------
    def sensor_state(self, sensor_id: str) -> dict[str, Any]:
        """The readable form of a sensor's table document: its open panes in every store as JSON lists (``"w"``).

        :meth:`restore` reads it as well as the packed documents of :meth:`take_dirty`; tests use it as
        the reference for those.
        """
        meta = self.sensors[sensor_id]
        panes: list[list[Any]] = []
        keyed: list[list[Any]] = []
        for si, store in enumerate(self.stores):
            if not isinstance(store, PaneStore):
                for metric, slot in meta.slots.items():
                    doc = store.export(slot)
                    if doc and any(doc):
                        keyed.append([si, metric, doc])
                continue
            for metric, slot in meta.slots.items():
                for pane, acc, off, counts in store.cells_of(slot):
                    nz = np.flatnonzero(counts)
                    panes.append([si, metric, pane, acc.tolist(), off, nz.tolist(), counts[nz].tolist()])
        return {
            "p": self.partition,
            "k": meta.kind,
            "z": meta.zone,
            "u": meta.units,
            "o": meta.offset,
            "w": panes,
            "c": [getattr(store, "closed_end", 0) for store in self.stores],
            "ks": keyed,
        }

    def restore(self, sensor_id: str, doc: dict[str, Any]) -> None:
        """Load one sensor's state written by :meth:`take_dirty` (``"b"``) or :meth:`sensor_state` (``"w"``)."""
        meta = self.sensors.get(sensor_id) or self._new_meta(sensor_id, doc["k"], doc["z"])
        meta.offset = max(meta.offset, int(doc["o"]))
        for metric, unit in doc["u"].items():
            self._slot(meta, sensor_id, metric, unit)
        for store, closed_end in zip(self.stores, doc.get("c", ()), strict=False):
            if isinstance(store, PaneStore):
                store.closed_end = max(store.closed_end, int(closed_end))
        for si, metric, kdoc in doc.get("ks", ()):
            self.stores[si].restore(meta.slots[metric], kdoc)
        for si, metric, pane, acc, off, idx, cnt in doc.get("w", ()):
            counts = np.zeros(sketch.K, dtype=np.int64)
            counts[idx] = cnt
            self.stores[si].put(meta.slots[metric], pane, np.asarray(acc, dtype=np.float64), off, counts)
        blob = doc.get("b")
        if blob:
            names = list(doc["u"])
            buf = binascii.a2b_base64(blob)
            width = int(doc.get("bw", 2))
            cdt = "<u2" if width == 2 else "<i8"
            pos = 0
            while len(buf) - pos >= _CELL.itemsize:
                h = np.frombuffer(buf, _CELL, 1, pos)[0]
                n = int(h["n"])
                counts = np.zeros(sketch.K, dtype=np.int64)
                counts[sketch.K - n :] = np.frombuffer(buf, cdt, n, pos + _CELL.itemsize)
                pos += _CELL.itemsize + n * width
                slot = meta.slots[names[int(h["m"])]]
                self.stores[int(h["si"])].put(slot, int(h["pid"]), h["acc"], int(h["off"]), counts)

    def take_dirty(self, *, encoded: bool = False) -> dict[str, Any]:
        """State of the sensors changed since the last call, in the order they were first seen.

        With ``encoded``, each document may come already encoded (see :meth:`sensor_states`).
        """
        dirty = list(self.dirty)
        self.dirty.clear()
        metas = list(map(self.sensors.__getitem__, dirty))
        idx = np.fromiter(map(_IDX, metas), dtype=np.int64, count=len(metas))
        # first-seen order: deterministic, and the order of the slots (no re-sort when packing)
        order = np.argsort(idx).tolist()
        return self._states([dirty[i] for i in order], [metas[i] for i in order], encoded=encoded)

    def sensor_states(self, sensor_ids: Sequence[str], *, encoded: bool = False) -> dict[str, Any]:
        """Table documents of many sensors: their open pane cells packed into ``"b"`` (see ``_CELL``).

        :meth:`restore` of a document gives the same state as :meth:`restore` of :meth:`sensor_state`
        (the readable form). A worker writes the state of every sensor a micro-batch touched, so the
        cells of all of them are gathered and packed with numpy, then cut per sensor.

        With ``encoded`` (and only tumbling/hopping windows), a document is an ``orjson.Fragment`` of
        the bytes ``orjson.dumps`` gives for the dict: the table's JSON serializer (orjson) writes it
        as is, and a worker writes one document per reading. Its constant start (partition, kind,
        zone, units) is encoded once per sensor; no dict is built (nor traversed by the cyclic GC:
        a Fragment is not tracked). :func:`decoded` turns it back into the dict.
        """
        return self._states(sensor_ids, list(map(self.sensors.__getitem__, sensor_ids)), encoded=encoded)

    def _states(self, sensor_ids: Sequence[str], metas: list[SensorMeta], *, encoded: bool) -> dict[str, Any]:
        closed = tuple(getattr(store, "closed_end", 0) for store in self.stores)
        p = self.partition
        if encoded and _FRAGMENT is not None and self._all_panes:
            blobs_b, width = self._pack_cells(metas, raw=True)
            mid = b',"c":' + orjson.dumps(closed) + b',"b":"'
            end = b'"}' if width == 2 else b'","bw":%d}' % width
            frag = _FRAGMENT
            return {
                sid: frag(b"%b%d%b%b%b" % (meta.head or self._head(meta), meta.offset, mid, blob, end))
                for sid, meta, blob in zip(sensor_ids, metas, blobs_b, strict=True)
            }
        blobs, width = self._pack_cells(metas)
        out = {
            sid: {"p": p, "k": meta.kind, "z": meta.zone, "u": meta.units, "o": meta.offset, "c": closed, "b": blob}
            for sid, meta, blob in zip(sensor_ids, metas, blobs, strict=True)
        }
        if width != 2:
            for doc in out.values():
                doc["bw"] = width
        for si, store in enumerate(self.stores):
            if isinstance(store, PaneStore):
                continue
            for sid, meta in zip(sensor_ids, metas, strict=True):
                ks = out[sid].setdefault("ks", [])
                for metric, slot in meta.slots.items():
                    doc = store.export(slot)
                    if doc and any(doc):
                        ks.append([si, metric, doc])
        return out

    def _head(self, meta: SensorMeta) -> bytes:
        """``meta.head``: the encoded document up to its offset (the keys before ``"o"`` never change
        while the sensor's metrics stay the same; a new metric resets it)."""
        doc = orjson.dumps({"p": self.partition, "k": meta.kind, "z": meta.zone, "u": meta.units})
        meta.head = doc[:-1] + b',"o":'
        return meta.head

    def _pack_cells(self, metas: list[SensorMeta], *, raw: bool = False) -> tuple[list[Any], int]:
        """The open pane cells of ``metas`` as one base64 string per sensor (bytes with ``raw``), and
        the counter width."""
        n_slots = len(self.slot_sensor)
        if self._slot_cols[0] != n_slots:
            owner = np.asarray(self._slot_owner, dtype=np.int64)
            self._slot_cols = (n_slots, owner, np.asarray(self._slot_rank, dtype=np.int64))
        _, owner, rank = self._slot_cols
        pos = np.full(len(self.sensors), -1, dtype=np.int64)
        pos[np.fromiter(map(_IDX, metas), dtype=np.int64, count=len(metas))] = np.arange(len(metas))
        sel = np.flatnonzero(pos[owner] >= 0)  # slot order: within a sensor, also "u" order
        # each pane store, then its overflow (rows, and the slot of each row)
        panes: list[tuple[int, PaneStore, np.ndarray, np.ndarray]] = []
        for si, store in enumerate(self.stores):
            if isinstance(store, PaneStore):
                cs = sel[sel < store.cap]
                panes.append((si, store, cs, cs))
                if store.far is not None:
                    rows, slots = store.far_rows()
                    mine = pos[owner[slots]] >= 0
                    panes.append((si, store.far, rows[mine], slots[mine]))
        width = 2 if all(s.sk.dtype == np.uint16 for _, s, _, _ in panes) else 8
        dt = _CELL_U2 if width == 2 else _CELL_I8
        parts = []
        for si, store, rows, slots in panes:
            row, ring = np.nonzero(store.pid[rows] != FREE)  # slot order, then ring index
            if len(row) == 0:
                continue
            c, g = rows[row], slots[row]
            rec = np.empty(len(c), dtype=dt)
            rec["si"] = si
            rec["m"] = rank[g]
            rec["pid"] = store.pid[c, ring]
            rec["off"] = store.sk_off[c, ring]
            rec["acc"] = store.acc[c, ring]
            rec["sk"] = counts = store.sk[c, ring]
            rec["n"] = sketch.K - (counts != 0).argmax(axis=1)  # all K when none is set (never: count >= 1)
            parts.append((pos[owner[g]], rec))
        if not parts:
            return [b"" if raw else ""] * len(metas), width
        spos = np.concatenate([x[0] for x in parts]) if len(parts) > 1 else parts[0][0]
        rec = np.concatenate([x[1] for x in parts]) if len(parts) > 1 else parts[0][1]
        if len(parts) > 1 or (len(spos) > 1 and (spos[1:] < spos[:-1]).any()):
            order = np.argsort(spos, kind="stable")  # per sensor: store, then slot, then ring
            spos, rec = spos[order], rec[order]
        # Keep each cell's header and its top n counters (the rest are zero); pad each sensor's bytes
        # to a multiple of 3 so that one base64 string cuts into the sensors' strings.
        n = rec["n"].astype(np.int64)
        per_sensor = np.bincount(spos, weights=_CELL.itemsize + n * width, minlength=len(metas)).astype(np.int64)
        pad = -per_sensor % 3
        last = np.r_[spos[1:] != spos[:-1], True]
        size = dt.itemsize
        full = np.zeros((len(rec), size + 2), dtype=np.uint8)
        full[:, :size] = rec.view(np.uint8).reshape(len(rec), size)
        keep = _keep_masks(width)[n * 3 + np.where(last, pad[spos], 0)]
        text = binascii.b2a_base64(full[keep].tobytes(), newline=False)
        if not raw:
            text = text.decode("ascii")
        ends = (np.cumsum(per_sensor + pad) // 3 * 4).tolist()
        return [text[lo:hi] for lo, hi in zip([0, *ends[:-1]], ends, strict=True)], width


#: One open pane cell in a state document's ``"b"`` (base64 of the packed little-endian records of a
#: sensor's cells): store index, number ``n`` of sketch counters kept, metric index in ``"u"`` order,
#: pane id, sketch offset and the 11 accumulator fields (110 bytes); then the top ``n`` counters of the
#: sketch (those below are zero), u2 each, or i8 when the document says ``"bw": 8``. Fewer trailing
#: bytes than a header are padding.
_FIELDS: Final = [("si", "u1"), ("n", "u1"), ("m", "<u4"), ("pid", "<i8"), ("off", "<i8"), ("acc", "<f8", (NF,))]
_CELL: Final = np.dtype(_FIELDS)
_CELL_U2: Final = np.dtype([*_FIELDS, ("sk", "<u2", (sketch.K,))])
_CELL_I8: Final = np.dtype([*_FIELDS, ("sk", "<i8", (sketch.K,))])


_KEEP: dict[int, np.ndarray] = {}
_IDX: Final = attrgetter("idx")
#: ``orjson.Fragment`` (orjson >= 3.10), else None: documents stay dicts.
_FRAGMENT: Final[Any] = getattr(orjson, "Fragment", None)


def decoded(doc: Any) -> Any:
    """A table document as a dict (or other JSON value): ``doc`` itself unless it is an encoded
    ``orjson.Fragment`` (see :meth:`PartitionWindows.sensor_states`)."""
    if _FRAGMENT is not None and type(doc) is _FRAGMENT:
        return orjson.loads(orjson.dumps(doc))
    return doc


def _keep_masks(width: int) -> np.ndarray:
    """Bytes of a packed cell row (record + 2 pad bytes) to keep, for each ``n * 3 + pad``."""
    masks = _KEEP.get(width)
    if masks is None:
        hdr, size = _CELL.itemsize, _CELL.itemsize + sketch.K * width
        col = np.arange(size + 2)
        n = np.repeat(np.arange(sketch.K + 1), 3)
        pad = np.tile(np.arange(3), sketch.K + 1)
        masks = _KEEP[width] = (col < hdr) | ((col >= (size - n * width)[:, None]) & (col < (size + pad)[:, None]))
    return masks


__all__ = ["DUPLICATE", "Ahead", "Late", "PartitionWindows", "WindowDef", "WindowSpec", "decoded", "parse_ms", "sketch"]
