"""The alert engine (pure): closed aggregates and commands in, alert transitions out.

:class:`AlertEngine` keeps one :class:`Track` per (rule, subject) — a sensor, a zone, or a rate
limit — and turns window aggregates into alert records with a lifecycle::

    raised -> updated* -> escalated* -> acknowledged -> cleared      (or suppressed -> cleared)

Every transition is a new record of the same ``alert_id`` with a larger ``seq``. The id is a hash
of (rule, subject, event time the occurrence started), so redelivered or replayed aggregates
yield the same ids, and an aggregate at or before a track's last window is ignored.

Time is injected: :meth:`AlertEngine.process` and :meth:`AlertEngine.tick` take the host's
``now_ms``. Alert event times come from the data (window ends); timer-driven checks (silence,
escalation, rate-limit summaries) use the *event clock*: the newest window end seen, advanced by
the host clock while no data arrives (so a replay does not look silent, and a stopped feed does).
A sensor's gap that no check saw while it lasted (a backlog or a fast replay delivering the windows
before and after it in one batch) is raised and cleared when its data shows it, with the same id.

Zone rules (k of n sensors in alarm within T) are decided in event time. A zone's aggregates
come from several source partitions (the windows stage's), which a host consuming a backlog or
a fast replay reads at different speeds, so member alarms reach a zone out of event-time order:
counting them as they arrive stamps an incident with whichever member ran ahead, and judges
``within`` against it. So member alarms are held per zone and applied in event-time order once
every source partition feeding the zone has delivered a window ending at or after theirs, as an
event-time operator holds a window until the watermarks of all its inputs pass it. A source that
delivered nothing for ``zone_hold`` (host time) is not waited for.

Drift rules compare each sensor with its zone peers (see :class:`~alerting.rules.Rule`), so a
zone's windows are gathered per (rule, zone, window start) and judged in window order once the
zone's sources have passed the window (or every known peer has reported it), as zone rules are.

State is JSON-safe (:meth:`Track.to_doc`) so the host can keep it in a changelogged table
(:meth:`AlertEngine.take_state`, :meth:`AlertEngine.restore`). The windows gathered for drift
rules and not yet judged (a few per zone) are not: after a restart they are gathered anew.

>>> from alerting.rules import Rule, RuleSet
>>> eng = AlertEngine(RuleSet((Rule("hot", "threshold", "iot", "t", raise_level=10, clear_level=5),)))
>>> agg = {"sensor_id": "s1", "kind": "iot", "zone": "z", "metric": "t", "unit": "C", "window": "tumbling",
...        "size_ms": 60000, "start_ms": 0, "end_ms": 60000, "first_ts_ms": 1000, "mean": 12.0}
>>> [(a["state"], a["value"], a["latency_ms"]) for a in eng.process([agg], now_ms=60000)]
[('raised', 12.0, 59000)]
>>> eng.process([agg], now_ms=60000)  # redelivery: nothing new
[]
"""

from __future__ import annotations

import bisect
import logging
import math
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from alerting.rules import (
    DRIFT_MAX_STEP_SHARE,
    DRIFT_MIN_LAST_RISE,
    DRIFT_MIN_RISE,
    KINDS,
    SEVERITIES,
    Rule,
    RuleSet,
    ZoneRule,
    alert_id,
    crosses,
)

logger = logging.getLogger(__name__)

RATE_LIMIT_RULE: Final = "rate_limit"
ACTIVE_STATES: Final = frozenset({"raised", "updated", "escalated", "acknowledged"})
#: Table key prefix of a partition's newest reading per silence track (``{"p", "seen": {key: ms}}``).
#: A track's own document is written when it changes state, not at every window (a record per
#: sensor and window, 10,000 per close); this one document per partition and commit carries what
#: a restored track needs to be judged on the source's clock without looking silent.
SEEN_PREFIX: Final = "~seen|"
_EPS: Final = 1e-12
#: drift rules: windows gathered per zone beyond this many (a day of 1-min windows: a source of the
#: zone that far behind the others) are judged with the peers that came. Only a bound on memory: a
#: live source is otherwise waited for, and on the broker a replayed day's source partitions reach the
#: alert stage up to 16 h of event time apart (the earlier bound of 2 h judged windows without the
#: lagging source's sensors and then dropped them, so no drift was raised there)
_DRIFT_MAX_PENDING: Final = 1440
#: drift rules: ``Track.base`` is ``[long-run log ratio, smoothed log ratio, windows learned, end_ms of the
#: last window, log peer median (smoothed), log peer median (averaged over the judged span), end_ms
#: the zone was last unsettled, in an incident or its peers changed, end_ms learning stopped (-1:
#: learning), a checksum of the peers, end_ms of the last checkpoint, deviations at the last checkpoints...]``
_D_REF, _D_FAST, _D_N, _D_LAST, _D_ZF, _D_ZS, _D_UNSETTLED, _D_FROZEN, _D_PEERS, _D_CP = range(10)
#: drift rules: the fields of a sensor's aggregate kept (once per sensor) for its alerts
_DRIFT_META: Final = ("sensor_id", "kind", "zone", "metric", "unit", "window", "size_ms", "src")


@dataclass(slots=True)
class _Gather:
    """Windows of one (drift rule, zone) gathered until the zone's sources have passed them."""

    p: int
    members: set[str] = field(default_factory=set)
    srcs: set[int] = field(default_factory=set)
    #: window start -> sensor id -> (field value, end_ms, first_ts_ms): a few numbers per window
    pending: dict[int, dict[str, tuple[float, int, int]]] = field(default_factory=dict)
    #: sensor id -> its latest aggregate without the window's numbers (kind, unit, ...), for the alerts
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    newest_end: int = -1
    judged_start: int = -1


@dataclass(slots=True)
class Track:
    """State of one (rule, subject): the condition's streak, the current occurrence's record."""

    key: str
    p: int
    rule: str
    subject_type: str
    zone: str
    sensor_id: str | None = None
    kind: str | None = None
    metric: str | None = None
    unit: str = ""
    last_end_ms: int = -1
    prev: list[float] | None = None  # [value field, last, end_ms] of the previous window
    #: baseline rules: [exponential average, windows learned, end_ms of the last window seen]
    base: list[float] | None = None
    streak: int = 0
    streak_start_ms: int = 0
    streak_end_ms: int = 0
    streak_first_ts_ms: int = 0
    streak_vals: list[list[float]] = field(default_factory=list)  # [start_ms, end_ms, value]
    clear_streak: int = 0
    active: bool = False
    latched: bool = False
    cleared_ms: int | None = None
    alert: dict[str, Any] | None = None
    emitted: bool = True
    folded: bool = False
    escalate_at_ms: int | None = None
    last_seen_ms: int = -1
    #: silence and zone-member tracks: the source (windows-stage) partition of the sensor's aggregates
    src: int = -1
    series: deque[list[float]] = field(default_factory=lambda: deque(maxlen=30))
    #: zone incidents: sensor id -> [last alarm end_ms, active 0/1, first_ts_ms, start_ms, value]
    members: dict[str, list[float]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    #: zone incidents: the source partitions of the members, and member alarms not yet applied
    #: ``[end_ms, sensor id, active 0/1, value, start_ms, first_ts_ms]`` (held until those pass end_ms)
    srcs: list[int] = field(default_factory=list)
    held: list[list[Any]] = field(default_factory=list)
    suppressed: int = 0  # rate-limit summaries: alerts held back in this trip

    def to_doc(self) -> dict[str, Any]:
        """JSON-safe state."""
        doc = {name: getattr(self, name) for name in _DOC_FIELDS}
        doc["series"] = list(self.series)
        doc["seen"] = sorted(self.seen)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any], series_points: int = 30) -> Track:
        """Inverse of :meth:`to_doc`."""
        t = cls(**{k: doc[k] for k in _DOC_FIELDS if k in doc})
        t.series = deque(doc.get("series", ()), maxlen=series_points)
        t.seen = set(doc.get("seen", ()))
        return t


_DOC_FIELDS: Final = tuple(
    n for n in Track.__dataclass_fields__ if n not in ("series", "seen")
)


#: rule types whose breach is judged on one window alone, without the sensor's past
ALONE: Final = frozenset({"threshold", "anomaly", "stuck", "out_of_range"})


def measure_alone(rule: Rule, agg: dict[str, Any]) -> tuple[float, bool, float] | None:
    """``(value, breaching, threshold)`` of one window for a rule of a type in :data:`ALONE`; None
    for an ``anomaly`` rule when the window has no score. The engine steps every rule through this
    (``AlertEngine._measure``), and ``alerting.urgency`` picks a close's urgent aggregates with it."""
    rtype = rule.type
    if rtype == "threshold":
        v = float(agg[rule.field])
        return v, crosses(rule.op, v, rule.raise_level), rule.raise_level
    if rtype == "anomaly":
        s = agg.get("score")
        if s is None:
            return None
        return float(s), crosses(rule.op, float(s), rule.raise_level), rule.raise_level
    if rtype == "stuck":
        std = float(agg.get("std", 1.0))
        return std, agg.get("count", 0) >= 2 and std <= _EPS, 0.0
    lo, hi = rule.low, rule.high  # out_of_range
    if lo is not None and float(agg["min"]) < lo:
        return float(agg["min"]), True, lo
    if hi is not None and float(agg["max"]) > hi:
        return float(agg["max"]), True, hi
    return float(agg["mean"]), False, hi if hi is not None else lo or 0.0


def _median_without(ordered: list[float], v: float) -> float:
    """Median of ``ordered`` (sorted, len >= 2) without one occurrence of ``v``: O(log n), not a sort per sensor.

    >>> _median_without([1.0, 2.0, 3.0, 10.0], 2.0), _median_without([1.0, 2.0, 3.0], 3.0)
    (3.0, 1.5)
    """
    k = bisect.bisect_left(ordered, v)
    m = len(ordered) - 1

    def at(j: int) -> float:
        return ordered[j if j < k else j + 1]

    return at(m // 2) if m % 2 else (at(m // 2 - 1) + at(m // 2)) / 2.0


def _open_at(t: Track | None, end_ms: int) -> bool:
    """Whether ``t``'s latest occurrence covered the window ending at ``end_ms`` (raised, not yet cleared).

    Judged on the occurrence's event times, not on the track's state now: a track that has run a
    few windows ahead (its source delivered sooner) answers as it would have at ``end_ms``.
    """
    if t is None or t.alert is None or int(t.alert["raised_ts_ms"]) > end_ms:
        return False
    return t.active or (t.cleared_ms is not None and t.cleared_ms >= end_ms)


@dataclass(slots=True)
class EngineCounters:
    """Running totals for the stats page."""

    aggregates: int = 0
    matched: int = 0
    duplicates: int = 0
    records: int = 0
    raised: int = 0
    folded: int = 0
    suppressed: int = 0
    rate_limited: int = 0
    missing_score: int = 0
    commands: int = 0


class AlertEngine:
    """Stateful rule evaluation for the partitions one worker owns."""

    def __init__(self, rules: RuleSet) -> None:
        self.tracks: dict[str, Track] = {}
        self.by_alert: dict[str, str] = {}
        self.open: set[str] = set()  # tracks with an active, published alert (escalation)
        self.event_ms: int | None = None
        #: newest window end per source partition (the aggregates' ``src``): silence is judged on
        #: the clock of the sensor's own source, so a source that lags behind the others (a replay
        #: or backlog consumed unevenly) does not make its sensors look silent.
        #: Keyed by (engine input partition, source partition): each engine input partition is one
        #: ordered stream, but the host consumes its partitions unevenly, so one source's windows
        #: reach the zones of one input partition later than those of another.
        self.src_ms: dict[tuple[int, int], int] = {}
        #: host ms each ``src_ms`` entry last moved: a source's own clock runs on from there
        self.src_wall: dict[tuple[int, int], int] = {}
        #: (engine input partition, zone, source partition) -> [newest window end, host ms last seen]:
        #: how far each source feeding a zone has got (the zone rules' event-time watermark).
        self.zone_src: dict[tuple[int, str, int], list[int]] = {}
        self._host_ms = 0
        self.event_wall_ms = 0
        self.counters = EngineCounters()
        self._dirty: set[str] = set()
        self._deleted: dict[str, int] = {}
        self._out: list[dict[str, Any]] = []
        self._held: set[str] = set()  # zone tracks with member alarms held
        self._summary_dirty: set[str] = set()
        self._rate: dict[str, deque[int]] = {}
        self._last_silence_check = -(2**62)
        self._silence_keys: set[str] = set()
        #: partition -> silence track key -> newest reading (the SEEN_PREFIX documents), and the
        #: partitions whose map changed since the last :meth:`take_seen`
        self._seen_ms: dict[int, dict[str, int]] = {}
        self._seen_moved: set[int] = set()
        self._gather: dict[tuple[str, str], _Gather] = {}
        self._gathered: set[tuple[str, str]] = set()  # gathers that got windows in this batch
        self._install(rules)

    # -- rules ----------------------------------------------------------------------------------
    def _install(self, rules: RuleSet) -> None:
        self.rules = rules
        self.cfg = rules.config
        self._by_metric: dict[tuple[str | None, str | None], list[Rule]] = {}
        self._silence: list[Rule] = []
        # _applicable's memo; keyed also by zone and sensor once a rule filters on them
        self._applies: dict[tuple[Any, ...], tuple[tuple[Rule, ...], tuple[Rule, ...]]] = {}
        self._filtered = any(r.zones is not None or r.sensors is not None for r in rules.rules)
        self._silence_rules: dict[str, Rule] = {r.name: r for r in rules.rules if r.type == "silence"}
        for r in rules.rules:
            if r.type == "silence":
                self._silence.append(r)
            else:
                self._by_metric.setdefault((r.kind, r.metric), []).append(r)
        self._zone_by_member: dict[str, list[ZoneRule]] = {}
        for zr in rules.zone_rules:
            self._zone_by_member.setdefault(zr.members, []).append(zr)
        self._zone_rules = {zr.name: zr for zr in rules.zone_rules}
        self._rule_by_name = {r.name: r for r in rules.rules}
        # drift rules hold while an incident rule of the kind is active on the sensor or its zone
        self._incident_rules: dict[str, tuple[str, ...]] = {}
        self._incident_zone_rules: dict[str, tuple[str, ...]] = {}
        if any(r.type == "drift" for r in rules.rules):
            for kind in KINDS | {r.kind for r in rules.rules if r.kind is not None}:
                names = tuple(
                    r.name for r in rules.rules
                    if r.category == "incident" and r.type != "silence" and r.kind in (None, kind)
                )
                self._incident_rules[kind] = names
                self._incident_zone_rules[kind] = tuple(zr.name for zr in rules.zone_rules if zr.members in names)
        drift_names = {r.name for r in rules.rules if r.type == "drift"}
        self._gather = {k: g for k, g in getattr(self, "_gather", {}).items() if k[0] in drift_names}

    def wants(self, agg: dict[str, Any]) -> bool:
        """Whether any rule looks at ``agg`` (lets the host skip routing the rest)."""
        other, silence = self.interest(agg)
        return other or bool(silence)

    def interest(self, agg: dict[str, Any]) -> tuple[bool, tuple[str, ...]]:
        """Whether a rule other than a silence rule looks at ``agg``, and the silence rules that do.

        A silence rule reads an aggregate's sensor, source, window end and first and last reading
        times, nothing else, so of several aggregates that agree on those (the metrics of one
        sensor's window: one reading carries them all) one does its work. The host routes the
        others only when no aggregate wanted by another rule carries the same (``streams.alert_agents``).
        """
        rules, silence = self._applicable(agg)
        return bool(rules), tuple(rule.name for rule in silence)

    def _applicable(self, agg: dict[str, Any]) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
        """The rules that look at ``agg`` (:meth:`Rule.applies`), in the order :meth:`process` steps
        them, and the silence rules that do; remembered per the fields ``applies`` reads."""
        key: tuple[Any, ...] = (agg["kind"], agg["metric"], agg.get("window", "tumbling"), agg.get("size_ms"))
        if self._filtered:
            key = (*key, agg["zone"], agg["sensor_id"])
        try:
            hit = self._applies.get(key)
        except TypeError:  # an unhashable field: judge it without the memo
            return self._applicable_now(agg)
        if hit is None:
            hit = self._applies[key] = self._applicable_now(agg)
        return hit

    def _applicable_now(self, agg: dict[str, Any]) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
        kind, metric = agg["kind"], agg["metric"]
        rules = tuple(
            rule for key in ((kind, metric), (None, metric), (kind, None), (None, None))
            for rule in self._by_metric.get(key, ()) if rule.applies(agg)
        )
        return rules, tuple(rule for rule in self._silence if rule.applies(agg))

    def set_rules(self, rules: RuleSet, now_ms: int) -> list[dict[str, Any]]:
        """Hot reload: switch to ``rules``; open alerts of removed rules are cleared.

        Tracks of rules that stay (same name) keep their state.
        """
        self._install(rules)
        names = set(self._rule_by_name) | set(self._zone_rules) | {RATE_LIMIT_RULE}
        ts = self.clock(now_ms)
        for key in [k for k, t in self.tracks.items() if t.rule not in names]:
            t = self.tracks.pop(key)
            if t.alert is not None and t.alert["state"] in ACTIVE_STATES | {"suppressed"}:
                self._transition(t, "cleared", ts, message=f"rule {t.rule} removed; {t.alert['message']}")
            self.open.discard(key)
            self._held.discard(key)
            if t.alert is not None:
                self.by_alert.pop(t.alert["alert_id"], None)
            self._dirty.discard(key)
            self._deleted[key] = t.p
            if self._seen_ms.get(t.p, {}).pop(key, None) is not None:
                self._seen_moved.add(t.p)
        return self._flush()

    # -- time -----------------------------------------------------------------------------------
    def clock(self, now_ms: int) -> int:
        """The event clock: newest window end seen, advanced by host time since it last moved."""
        if self.event_ms is None:
            return now_ms
        return self.event_ms + max(0, now_ms - self.event_wall_ms)

    def _advance(self, end_ms: int, now_ms: int) -> None:
        if self.event_ms is None or end_ms > self.event_ms:
            self.event_ms = end_ms
            self.event_wall_ms = now_ms

    # -- state ----------------------------------------------------------------------------------
    @property
    def state_pending(self) -> bool:
        """Whether :meth:`take_state` has table writes to give."""
        return bool(self._dirty or self._deleted)

    def take_state(self) -> list[tuple[int, str, dict[str, Any] | None]]:
        """Table writes since the last call: ``(partition, key, doc)``; ``doc`` None deletes."""
        out: list[tuple[int, str, dict[str, Any] | None]] = [
            (self.tracks[k].p, k, self.tracks[k].to_doc()) for k in sorted(self._dirty) if k in self.tracks
        ]
        out += [(p, k, None) for k, p in sorted(self._deleted.items())]
        self._dirty.clear()
        self._deleted.clear()
        return out

    def take_seen(self) -> list[tuple[int, str, dict[str, Any]]]:
        """The :data:`SEEN_PREFIX` document of each partition whose silence tracks read on since
        the last call: for the offset commit (:meth:`take_state` is per batch; this is a copy of
        every silence track of the partition, so once per commit)."""
        out = [(p, f"{SEEN_PREFIX}{p}", {"p": p, "seen": dict(self._seen_ms.get(p, {}))})
               for p in sorted(self._seen_moved)]
        self._seen_moved.clear()
        return out

    def restore(self, items: Iterable[tuple[str, Any]], partition: int, now_ms: int) -> int:
        """Load the tracks of ``partition`` from table items; returns how many were loaded.

        The event clock resumes at the newest window the restored tracks saw.
        """
        n = 0
        items = [(key, doc) for key, doc in items if isinstance(doc, dict) and doc.get("p") == partition]
        seen_doc = next((doc for key, doc in items if key == f"{SEEN_PREFIX}{partition}"), None)
        seen: dict[str, int] = seen_doc["seen"] if seen_doc is not None else {}
        for key, doc in items:
            if key in self.tracks or key.startswith(SEEN_PREFIX):
                continue
            t = Track.from_doc(doc, self.cfg.series_points)
            t.last_seen_ms = max(t.last_seen_ms, int(seen.get(key, -1)))
            if t.rule in self._silence_rules and t.last_seen_ms >= 0:
                self._seen_ms.setdefault(partition, {})[key] = t.last_seen_ms
            self.tracks[key] = t
            if t.alert is not None:
                self.by_alert[t.alert["alert_id"]] = key
                if t.emitted and not t.folded and t.alert["state"] in ACTIVE_STATES:
                    self.open.add(key)
            if t.rule in self._silence_rules:
                self._silence_keys.add(key)
            if t.held:
                self._held.add(key)
            latest = max(t.last_end_ms, t.last_seen_ms)
            if latest > 0:
                self._advance(latest, now_ms)
            if t.src >= 0 and t.last_seen_ms > self.src_ms.get((t.p, t.src), -1):
                self.src_ms[(t.p, t.src)] = t.last_seen_ms
                self.src_wall[(t.p, t.src)] = now_ms
            n += 1
        return n

    def forget(self, partitions: Iterable[int] | None = None) -> None:
        """Drop the in-memory tracks of ``partitions`` (all when None), e.g. after a rebalance."""
        keep = None if partitions is None else set(partitions)
        for key in [k for k, t in self.tracks.items() if keep is None or t.p in keep]:
            t = self.tracks.pop(key)
            self.open.discard(key)
            self._dirty.discard(key)
            self._silence_keys.discard(key)
            self._held.discard(key)
            if t.alert is not None:
                self.by_alert.pop(t.alert["alert_id"], None)
        self._gather = {k: g for k, g in self._gather.items() if keep is not None and g.p not in keep}
        self._seen_moved = {p for p in self._seen_moved if keep is not None and p not in keep}
        self._seen_ms = {p: m for p, m in self._seen_ms.items() if keep is not None and p not in keep}
        # The clocks of those partitions' sources: :meth:`restore` and the input replayed from the
        # committed offsets set them again. Kept, they stood where this worker had read to, ahead
        # of the restored tracks, whose sensors then looked silent until their next window.
        for clocks in (self.src_ms, self.src_wall, self.zone_src):
            for k in [k for k in clocks if keep is None or k[0] in keep]:
                del clocks[k]

    def active_alerts(self) -> list[dict[str, Any]]:
        """The latest record of every published alert that is not cleared (for a board snapshot)."""
        return [
            t.alert for t in self.tracks.values()
            if t.alert is not None and t.emitted and not t.folded and t.alert["state"] != "cleared"
        ]

    # -- input ----------------------------------------------------------------------------------
    def process(self, aggregates: Iterable[dict[str, Any]], now_ms: int, partition: int = 0) -> list[dict[str, Any]]:
        """Apply closed aggregates (one micro-batch); return the alert records to publish."""
        c = self.counters
        applicable = self._applicable
        src_ms = self.src_ms
        zone_src = self.zone_src
        self._host_ms = now_ms
        for agg in aggregates:
            c.aggregates += 1
            end = agg["end_ms"]
            self._advance(end, now_ms)
            src = agg.get("src")
            if src is not None:
                if end > src_ms.get((partition, src), -1):
                    src_ms[(partition, src)] = end
                    self.src_wall[(partition, src)] = now_ms
                zs = zone_src.get((partition, agg["zone"], src))
                if zs is None:
                    zone_src[(partition, agg["zone"], src)] = [end, now_ms]
                else:
                    zs[0], zs[1] = max(zs[0], end), now_ms
            rules, silence = applicable(agg)
            for rule in rules:
                if rule.type == "drift":
                    self._collect(rule, agg, partition)
                else:
                    self._step(rule, agg, partition)
            for rule in silence:
                self._seen(rule, agg, partition)
        self._check_zones(now_ms)
        if self._gathered:
            self._check_drift(now_ms, self._gathered)
        ts = self.clock(now_ms)
        if ts - self._last_silence_check >= 1000:
            self._check_silence(ts, now_ms)
        self._check_timers(ts)
        return self._flush()

    def progress(self, ends: dict[int, int], now_ms: int, partition: int = 0) -> list[dict[str, Any]]:
        """Apply a progress marker: source partition -> newest window end it has emitted so far.

        The host sends one to every engine input partition after routing a batch, behind that
        batch's aggregates. A sensor's silence is judged on the clock of its (input partition,
        source) pair, which its aggregates alone would only advance if other sensors share that
        pair: a sensor alone in it would stall its own clock by going silent.
        """
        self._host_ms = now_ms
        src_ms = self.src_ms
        moved = False
        for src, end in ends.items():
            end = int(end)
            if end > src_ms.get((partition, int(src)), -1):
                src_ms[(partition, int(src))] = end
                self.src_wall[(partition, int(src))] = now_ms
                moved = True
            self._advance(end, now_ms)
        ts = self.clock(now_ms)
        if moved:  # a source's clock moved on without the event clock: judge silence now
            self._check_silence(ts, now_ms)
            # ... and the zones and drift windows that waited for the source to pass them
            self._check_zones(now_ms)
            if self._gather:
                self._check_drift(now_ms, set(self._gather))
        self._check_timers(ts)
        return self._flush()

    def apply(self, doc: dict[str, Any], now_ms: int, partition: int = 0) -> list[dict[str, Any]]:
        """Apply one message of the routed alerting topic: ``{"t": "aggs"|"src"|"cmd", ...}``.

        The one dispatch the ``alerting`` agent and the recorded-input replay
        (``simulators.evaluate.replay_engine_input``) share; other kinds are ignored.
        """
        kind = doc.get("t")
        if kind == "aggs":
            return self.process(doc["aggs"], now_ms, partition)
        if kind == "src":
            return self.progress({int(s): int(v) for s, v in doc["ends"].items()}, now_ms, partition)
        if kind == "cmd":
            return self.command(doc, now_ms)
        return []

    def tick(self, now_ms: int) -> list[dict[str, Any]]:
        """Timer: silence, escalation and rate-limit summaries on the event clock."""
        ts = self.clock(now_ms)
        self._check_zones(now_ms)  # zones held for a source that has stopped delivering
        if self._gather:
            self._check_drift(now_ms, set(self._gather))  # windows held for a source that has stopped
        self._check_silence(ts, now_ms)
        self._check_timers(ts)
        return self._flush()

    def command(self, cmd: dict[str, Any], now_ms: int) -> list[dict[str, Any]]:
        """Apply an operator command ``{"action": "ack"|"clear", "alert_id", "by", "token_ok"}``.

        Commands for alerts this engine does not hold are ignored (they are broadcast to every
        partition); repeating a command changes nothing.
        """
        key = self.by_alert.get(str(cmd.get("alert_id")))
        t = self.tracks.get(key) if key else None
        if t is None or t.alert is None or cmd.get("token_ok") is not True:
            return []
        self.counters.commands += 1
        action, by = cmd.get("action"), cmd.get("by")
        by = str(by)[:128] if by is not None else None
        ts = max(self.clock(now_ms), int(t.alert["ts_ms"]))
        state = t.alert["state"]
        if action == "ack" and state in ("raised", "updated", "escalated"):
            t.escalate_at_ms = None
            self._transition(t, "acknowledged", ts, acked_by=by)
        elif action == "clear" and state in ACTIVE_STATES | {"suppressed"}:
            t.active = False
            t.latched = t.subject_type == "sensor"  # a still-breaching sensor must recover first
            t.streak = 0
            t.cleared_ms = ts
            if t.subject_type == "zone":
                t.members.clear()
                t.held.clear()
                self._held.discard(t.key)
            self._transition(t, "cleared", ts, acked_by=by or t.alert.get("acked_by"))
        return self._flush()

    # -- per-sensor rules -------------------------------------------------------------------------
    def _track(self, rule_name: str, agg: dict[str, Any], partition: int, *, per_metric: bool = True) -> Track:
        sid = agg["sensor_id"]
        key = f"{rule_name}|{sid}"
        t = self.tracks.get(key)
        if t is None:
            t = self.tracks[key] = Track(
                key, partition, rule_name, "sensor", agg["zone"], sid, agg["kind"],
                agg["metric"] if per_metric else None, agg.get("unit", "") if per_metric else "",
                series=deque(maxlen=self.cfg.series_points),
            )
        return t

    def _measure(self, rule: Rule, t: Track, agg: dict[str, Any]) -> tuple[float, bool, float] | None:
        """(value, breaching, threshold) of one window, or None when it cannot be judged."""
        rtype = rule.type
        if rtype in ALONE:
            m = measure_alone(rule, agg)
            if m is None:
                self.counters.missing_score += 1
            return m
        if rtype == "baseline":
            return self._baseline(rule, t, agg)
        if rtype == "spike":
            return self._spike(rule, t, agg)
        if rtype == "drift":
            return self._drift(rule, t, agg)
        prev, t.prev = t.prev, [float(agg.get(rule.field, agg["mean"])), float(agg.get("last", agg["mean"])),
                                float(agg["end_ms"])]
        if rtype == "rate_of_change":
            if prev is None or agg["end_ms"] - prev[2] > 3 * agg.get("size_ms", 60_000):
                return None
            v = (float(agg[rule.field]) - prev[0]) / ((agg["end_ms"] - prev[2]) / 1000.0)
            return v, crosses(rule.op, v, rule.raise_level), rule.raise_level
        # jump: a step between windows, or a spread inside one
        step = float(agg["max"]) - float(agg["min"])
        if prev is not None and "first" in agg:
            step = max(step, abs(float(agg["first"]) - prev[1]))
        return step, step > rule.raise_level, rule.raise_level

    @staticmethod
    def _baseline(rule: Rule, t: Track, agg: dict[str, Any]) -> tuple[float, bool, float] | None:
        """A window against the sensor's own baseline (see :class:`~alerting.rules.Rule`)."""
        v = float(agg[rule.field])
        end = float(agg["end_ms"])
        b = t.base
        if b is None or end - b[2] > rule.baseline_ms:  # first window, or a gap: start over
            t.base = [v, 1.0, end]
            return None
        avg, n, last = b
        b[2] = end
        if n < rule.warmup_windows:
            b[0] = avg + (1.0 - math.exp(-(end - last) / rule.baseline_ms)) * (v - avg)
            b[1] = n + 1
            return None
        dev = v / max(avg, rule.baseline_floor, _EPS) if rule.mode == "ratio" else v - avg
        breach = crosses(rule.op, dev, rule.raise_level)
        accepted = t.active and rule.accept_after_ms is not None and end - t.streak_start_ms >= rule.accept_after_ms
        if (not breach and not t.active and not t.latched) or accepted:
            b[0] = avg + (1.0 - math.exp(-(end - last) / rule.baseline_ms)) * (v - avg)
            b[1] = n + 1
        return dev, breach, rule.raise_level

    @staticmethod
    def _spike(rule: Rule, t: Track, agg: dict[str, Any]) -> tuple[float, bool, float] | None:
        """Whether the previous window held a spike (see :class:`~alerting.rules.Rule`).

        ``t.base`` is ``[average of the windows' min, windows learned, end_ms, the previous
        window's field / average, its min / average]`` (-1: no previous window).
        """
        end = float(agg["end_ms"])
        low = float(agg["min"])
        b = t.base
        if b is None or len(b) != 5 or end - b[2] > rule.baseline_ms:  # first window, or a long gap
            t.base = [low, 1.0, end, -1.0, -1.0]
            return None
        avg, n, last, prev_hi, prev_lo = b
        if end - last > float(agg.get("size_ms", 60_000)):  # a missing window: no previous one
            prev_hi = prev_lo = -1.0
        ref = max(avg, rule.baseline_floor, _EPS)
        hi, lo = float(agg[rule.field]) / ref, low / ref
        b[0] = avg + (1.0 - math.exp(-(end - last) / rule.baseline_ms)) * (low - avg)  # the min: spikes barely move it
        b[1], b[2], b[3], b[4] = n + 1, end, hi, lo
        if n < rule.warmup_windows or prev_hi < 0:
            return None
        calm = rule.clear_level
        return prev_hi, prev_hi >= rule.raise_level and prev_lo <= calm and lo <= calm, rule.raise_level

    def _drift(self, rule: Rule, t: Track, agg: dict[str, Any]) -> tuple[float, bool, float] | None:
        """A window's ratio to the zone peers against the sensor's long-run ratio (see :class:`~alerting.rules.Rule`).

        ``agg`` carries ``_r`` (log ratio to the peers' median), ``_y`` (log of that median) and
        ``_incident`` (an incident rule is active on the sensor or its zone) from :meth:`_judge`.
        Judged only at the checkpoints (window ends that are multiples of ``step_ms``).
        """
        r, y, incident, peers = float(agg["_r"]), float(agg["_y"]), bool(agg["_incident"]), float(agg["_peers"])
        end = float(agg["end_ms"])
        b = t.base
        if b is None or len(b) <= _D_CP or end - b[_D_LAST] > rule.baseline_ms:  # first window, or a long gap
            t.base = [r, r, 1.0, end, y, y, end, -1.0, peers, -1.0]
            return None
        dt = end - b[_D_LAST]
        b[_D_LAST] = end
        span = rule.steps * rule.step_ms
        a_fast = 1.0 - math.exp(-dt / rule.smooth_ms)
        b[_D_FAST] += a_fast * (r - b[_D_FAST])
        b[_D_ZF] += a_fast * (y - b[_D_ZF])
        b[_D_ZS] += (1.0 - math.exp(-dt / span)) * (y - b[_D_ZS])
        if incident or abs(b[_D_ZF] - b[_D_ZS]) > math.log1p(rule.settle) or peers != b[_D_PEERS]:
            b[_D_UNSETTLED] = end  # a peer missing, back or left out moves the median by a step
            b[_D_PEERS] = peers
        dev = b[_D_FAST] - b[_D_REF]
        lr, lc = math.log(rule.raise_level), math.log(rule.clear_level)
        hold = t.active or incident or (b[_D_N] >= rule.warmup_windows and abs(dev) >= lc)
        if not hold:
            b[_D_FROZEN] = -1.0
        elif b[_D_FROZEN] < 0:
            b[_D_FROZEN] = end
        accepted = hold and rule.accept_after_ms is not None and end - b[_D_FROZEN] >= rule.accept_after_ms
        if not hold or accepted:
            b[_D_N] += 1.0
            b[_D_REF] += max(1.0 / b[_D_N], 1.0 - math.exp(-dt / rule.baseline_ms)) * (r - b[_D_REF])
        if b[_D_N] < rule.warmup_windows or int(end) % rule.step_ms:
            return None
        cps = b[_D_CP + 1:] if b[_D_CP] == end - rule.step_ms else []  # checkpoints must be consecutive
        cps = [*cps, dev][-(rule.steps + 1):]
        t.base = [*b[:_D_CP], end, *cps]
        self._dirty.add(t.key)  # persisted once per checkpoint: a restart resumes from the last one
        ratio = math.exp(dev)
        if t.active:
            return ratio, abs(dev) >= lc, rule.raise_level
        if len(cps) <= rule.steps or abs(dev) < lr or end - b[_D_UNSETTLED] < span:
            return ratio, False, rule.raise_level
        sign = 1.0 if dev > 0 else -1.0
        rises = [sign * (c1 - c0) for c0, c1 in zip(cps, cps[1:], strict=False)]
        total = sign * (cps[-1] - cps[0])
        steady = (
            total >= lc and max(rises) <= DRIFT_MAX_STEP_SHARE * total
            and min(rises) >= DRIFT_MIN_RISE * total / len(rises)
            and rises[-1] >= DRIFT_MIN_LAST_RISE * total / len(rises)  # still moving: not a smoothed-out step
        )
        return ratio, steady, rule.raise_level

    def _collect(self, rule: Rule, agg: dict[str, Any], partition: int) -> None:
        """Gather a window of a drift rule's zone; :meth:`_check_drift` judges it with its peers."""
        key = (rule.name, agg["zone"])
        g = self._gather.get(key)
        if g is None:
            g = self._gather[key] = _Gather(partition)
        sid = agg["sensor_id"]
        g.members.add(sid)
        src = agg.get("src")
        if src is not None:
            g.srcs.add(int(src))  # a source the zone's windows wait for from now on
        start = int(agg["start_ms"])
        if start <= g.judged_start:  # the zone's window was judged without it
            self.counters.duplicates += 1
            return
        g.pending.setdefault(start, {})[sid] = (
            float(agg[rule.field]), int(agg["end_ms"]), int(agg.get("first_ts_ms", start))
        )
        g.meta[sid] = {k: agg[k] for k in _DRIFT_META if k in agg}
        g.newest_end = max(g.newest_end, int(agg["end_ms"]))
        self._gathered.add(key)

    def _check_drift(self, now_ms: int, keys: Iterable[tuple[str, str]]) -> None:
        """Judge the gathered windows every source of their zone has passed, in window order."""
        hold = self.cfg.zone_hold_ms
        for key in sorted(keys):
            g = self._gather.get(key)
            rule = self._rule_by_name.get(key[0])
            if g is None or rule is None or not g.pending:
                continue
            if g.srcs:  # every source feeding the zone has passed the window (a silent one is not waited for)
                # A source's windows come in end order, but one window's aggregates of a source can
                # come in several batches: the source has passed a window once it has delivered a
                # later one (or its progress marker says so), not when the window's first aggregate
                # came (that judged windows without their peers still to come, and the changing peer
                # set kept every drift rule unsettled on the broker).
                wm = math.inf
                for s in g.srcs:
                    seen = self.zone_src.get((g.p, key[1], s))
                    if seen is not None and now_ms - seen[1] <= hold:
                        wm = min(wm, max(seen[0], self.src_ms.get((g.p, s), -1)) - 1)
                complete = math.inf  # sources may hold peers not seen yet
            else:  # one ordered stream: a later window, or every peer seen so far, completes a window
                wm, complete = g.newest_end - 1, len(g.members)
            for start in sorted(g.pending):
                aggs = g.pending[start]
                end = next(iter(aggs.values()))[1]
                if not (end <= wm or len(aggs) >= complete or len(g.pending) > _DRIFT_MAX_PENDING):
                    break
                del g.pending[start]
                g.judged_start = start
                self._judge(rule, g, key[1], start, aggs)
        self._gathered = set()

    def _judge(self, rule: Rule, g: _Gather, zone: str, start: int, aggs: dict[str, tuple[float, int, int]]) -> None:
        """Each sensor's window against the median of its peers' (same zone, kind, metric, window)."""
        values = {sid: a[0] for sid, a in aggs.items()}
        if len(values) <= rule.min_peers:
            return
        # a sensor already flagged as drifting is no reference for its peers (it would drag their median)
        drifting = {sid for sid in values if (d := self.tracks.get(f"{rule.name}|{sid}")) is not None and d.active}
        ordered = sorted(v for sid, v in values.items() if sid not in drifting)
        checksum = 2 * zlib.crc32("\x1f".join(sid for sid in sorted(values) if sid not in drifting).encode())
        floor = max(rule.baseline_floor, _EPS)
        for sid in sorted(values):
            v = values[sid]
            own = sid not in drifting
            if v <= _EPS or len(ordered) - own < rule.min_peers:
                continue
            m = _median_without(ordered, v) if own else _median_without([*ordered, math.inf], math.inf)
            if m < floor:
                continue
            _, end, first_ts = aggs[sid]
            agg = {**g.meta[sid], rule.field: v, "start_ms": start, "end_ms": end, "first_ts_ms": first_ts}
            kind = str(agg["kind"])
            tracks = self.tracks
            incident = any(
                _open_at(tracks.get(f"{name}|{sid}"), end) for name in self._incident_rules.get(kind, ())
            ) or any(
                _open_at(tracks.get(f"{name}|zone:{zone}"), end) for name in self._incident_zone_rules.get(kind, ())
            )
            agg.update(_r=math.log(v / m), _y=math.log(m), _incident=incident, _peers=checksum + own,
                       peers=len(ordered) - own, peer_median=m)
            self._step(rule, agg, g.p)

    def _step(self, rule: Rule, agg: dict[str, Any], partition: int) -> None:
        t = self._track(rule.name, agg, partition)
        end = agg["end_ms"]
        if end <= t.last_end_ms:
            self.counters.duplicates += 1
            return
        self.counters.matched += 1
        src = agg.get("src")
        if rule.name in self._zone_by_member and (t.last_end_ms < 0 or (src is not None and src != t.src)):
            # a new sensor counts in n; its source partition is one the zone waits for
            if src is not None:
                t.src = int(src)
            for zr in self._zone_by_member[rule.name]:
                if zr.covers(t.zone):
                    z = self._zone_track(zr, t)
                    if src is not None and t.src not in z.srcs:
                        z.srcs = sorted([*z.srcs, t.src])
                    self._dirty.add(z.key)
        t.last_end_ms = end
        m = self._measure(rule, t, agg)
        if m is None:
            return
        value, breach, threshold = m
        t.series.append([end, value])
        if t.active:
            leveled = ("threshold", "baseline", "rate_of_change", "anomaly")
            recovered = rule.clears(value) if rule.type in leveled else not breach
            if recovered:
                t.clear_streak += 1
                if t.clear_streak >= rule.clear_windows:
                    self._clear_sensor(rule, t, end, value)
            else:
                t.clear_streak = 0
                if breach:
                    self._member_alarm(rule, t, agg, value, active=True)
            self._dirty.add(t.key)
            return
        if t.latched:
            if not breach:
                t.latched = False
                self._dirty.add(t.key)
            return
        if not breach:
            if t.streak:
                t.streak = 0
                t.streak_vals = []
                self._dirty.add(t.key)
            return
        start = agg["start_ms"]
        if t.streak == 0 or start > t.streak_end_ms:  # a gap in the windows restarts the streak
            t.streak, t.streak_start_ms, t.streak_vals = 0, start, []
            t.streak_first_ts_ms = int(agg.get("first_ts_ms", start))
        t.streak += 1
        t.streak_end_ms = end
        t.streak_vals.append([start, end, value])
        del t.streak_vals[: -self.cfg.evidence_values]
        self._dirty.add(t.key)
        if t.streak >= rule.for_windows and end - t.streak_start_ms >= rule.for_ms:
            self._raise_sensor(rule, t, agg, value, threshold)

    def _raise_sensor(self, rule: Rule, t: Track, agg: dict[str, Any], value: float, threshold: float) -> None:
        end = agg["end_ms"]
        t.active, t.clear_streak = True, 0
        evidence = {
            "values": [v for _, _, v in t.streak_vals],
            "windows": [[int(s), int(e)] for s, e, _ in t.streak_vals],
            "score": agg.get("score"),
            "model_version": agg.get("model_version"),
            "series": list(t.series),
            "sensors": [],
        }
        if agg.get("top_features") is not None:
            evidence["top_features"] = agg["top_features"]
        unit = agg.get("unit", "")
        message = self._message(rule, agg, value, threshold, unit)
        reopen = (
            t.alert is not None and t.alert["state"] == "cleared" and t.cleared_ms is not None
            and end - t.cleared_ms < self.cfg.cooldown_ms and not t.folded
        )
        first_ts, start = t.streak_first_ts_ms, t.streak_start_ms
        t.streak, t.streak_vals = 0, []
        folded = self._member_alarm(rule, t, agg, value, active=True, start_ms=start, first_ts_ms=first_ts)
        if reopen and t.alert is not None:
            ev = {**evidence, "reopened": int(t.alert["evidence"].get("reopened", 0)) + 1}
            if t.emitted:
                self._transition(t, "raised", end, value=value, message=message, evidence=ev)
                self._arm_escalation(t, rule.escalate_after_ms, end)
            else:
                t.alert = {**t.alert, "state": "raised", "ts_ms": end, "value": value, "evidence": ev}
            return
        rec = self._new_record(
            rule.name, rule.category, rule.severity, "sensor", t.sensor_id, agg["zone"], agg["kind"], agg["metric"],
            value, threshold, message, evidence, first_ts, start, end,
        )
        self._open(t, rec, folded, rule.escalate_after_ms)

    def _clear_sensor(self, rule: Rule, t: Track, end: int, value: float) -> None:
        t.active, t.clear_streak, t.cleared_ms = False, 0, end
        self._member_alarm(rule, t, None, value, active=False, end_ms=end)
        if t.alert is not None and t.alert["state"] != "cleared":
            self._transition(t, "cleared", end, value=value)

    @staticmethod
    def _message(rule: Rule, agg: dict[str, Any], value: float, threshold: float, unit: str) -> str:
        who = f"{agg['kind']} sensor {agg['sensor_id']} in {agg['zone']}"
        what = {
            "threshold": f"{agg['metric']} {rule.field} {value:.6g} {rule.op} {threshold:g} {unit}",
            "baseline": (
                f"{agg['metric']} {rule.field} {float(agg[rule.field]):.6g} {unit} is "
                + (f"{value:.3g} x" if rule.mode == "ratio" else f"{value:+.6g} {unit} from")
                + f" its baseline ({rule.op} {threshold:g})"
            ),
            "rate_of_change": f"{agg['metric']} {rule.field} changing {value:+.6g} {unit}/s ({rule.op} {threshold:g})",
            "anomaly": f"{agg['metric']} anomaly score {value:.3g} {rule.op} {threshold:g}",
            "stuck": f"{agg['metric']} stuck at {agg.get('mean', value):.6g} {unit} for {rule.for_windows} windows",
            "out_of_range": f"{agg['metric']} {value:.6g} {unit} outside the physical range "
            f"[{'' if rule.low is None else f'{rule.low:g}'}, {'' if rule.high is None else f'{rule.high:g}'}]",
            "jump": f"{agg['metric']} jumped by {value:.6g} {unit} (> {threshold:g}): sensor fault?",
            "spike": f"{agg['metric']} {rule.field} was {value:.3g} x its baseline for one window only "
            f"(>= {threshold:g}): sensor fault?",
            "drift": f"{agg['metric']} {rule.field} {float(agg[rule.field]):.6g} {unit}: its ratio to the median of "
            f"{agg.get('peers', 0)} zone peers is {value:.3g} x its long-run ratio and has moved steadily for "
            f"{rule.steps * rule.step_ms / 60_000:g} min (>= {threshold:g} or <= {1 / max(threshold, _EPS):.3g}): "
            "sensor drift?",
        }[rule.type]
        return f"{who}: {what}".rstrip()

    # -- silence ----------------------------------------------------------------------------------
    def _seen(self, rule: Rule, agg: dict[str, Any], partition: int) -> None:
        t = self._track(rule.name, agg, partition, per_metric=False)
        if t.last_seen_ms < 0:
            self._silence_keys.add(t.key)
        src = agg.get("src")
        if src is not None and src != t.src:
            t.src = int(src)
            self._dirty.add(t.key)
        last = int(agg.get("last_ts_ms", agg["end_ms"] - 1))
        if last <= t.last_seen_ms:
            return
        first = int(agg.get("first_ts_ms", last))
        if not t.active and not t.latched and t.last_seen_ms >= 0 and first - t.last_seen_ms > rule.silent_ms:
            # A gap the clock never judged while it lasted: its windows and the first ones after it
            # came in one batch (a backlog or a fast replay), so the sensor was reading again before
            # a silence check ran. The data itself shows the silence; raise it as of when it was due
            # (the same alert id the clock would have given), then clear it below.
            self._raise_silent(t, rule, first)
        t.last_seen_ms = last
        self._seen_ms.setdefault(t.p, {})[t.key] = last  # its partition's SEEN_PREFIX document (take_seen)
        self._seen_moved.add(t.p)
        if t.active:
            t.active, t.cleared_ms = False, last
            if t.alert is not None and t.alert["state"] != "cleared":
                self._transition(t, "cleared", max(last, int(t.alert["ts_ms"])),
                                 message=f"{t.alert['message']}; reading again at {last}")
            self._dirty.add(t.key)
        elif t.latched:
            t.latched = False
            self._dirty.add(t.key)

    def _check_silence(self, ts: int, now_ms: int) -> None:
        self._last_silence_check = ts
        if not self._silence:
            return
        rules = self._silence_rules
        for key in sorted(self._silence_keys):
            t = self.tracks.get(key)
            rule = rules.get(t.rule) if t is not None else None
            if t is None or rule is None or t.active or t.latched or t.last_seen_ms < 0:
                continue
            due = t.last_seen_ms + rule.silent_ms
            if ts < due:
                continue
            # The event clock of the sensor's own source: its newest window end, run on by the host
            # time since the lead or that source last moved, whichever is later. (Since the lead
            # alone: when the sources ahead had finished a replay, the lead stood still while an
            # input partition behind was still being caught up, and every sensor there looked
            # silent as it came. Since the source alone: an input partition the host reads later
            # than the others would look silent while it waits.)
            key_src = (t.p, t.src)
            src_end = self.src_ms.get(key_src) if t.src >= 0 else None
            if src_end is not None:
                moved = max(self.src_wall.get(key_src, now_ms), self.event_wall_ms)
                now_t = src_end + max(0, now_ms - moved)  # never ahead of ts: src_end <= lead
            else:
                now_t = ts
            if now_t < due:
                continue
            self._raise_silent(t, rule, now_t)

    def _raise_silent(self, t: Track, rule: Rule, now_t: int) -> None:
        """Raise ``t``'s silence alert, judged at event time ``now_t`` (at or after it was due)."""
        due = t.last_seen_ms + rule.silent_ms
        t.active = True
        silent_s = (now_t - t.last_seen_ms) / 1000
        message = (
            f"{t.kind} sensor {t.sensor_id} in {t.zone}: no reading for {silent_s:.0f} s "
            f"(> {rule.silent_ms / 1000:g} s)"
        )
        evidence = {"values": [silent_s], "windows": [], "score": None, "model_version": None,
                    "series": list(t.series), "sensors": [], "last_reading_ts_ms": t.last_seen_ms}
        rec = self._new_record(
            rule.name, rule.category, rule.severity, "sensor", t.sensor_id, t.zone, t.kind, None,
            silent_s, rule.silent_ms / 1000, message, evidence, t.last_seen_ms, due, now_t,
        )
        rec["latency_ms"] = now_t - due  # detection delay: there is no triggering reading
        self._open(t, rec, False, rule.escalate_after_ms)

    # -- zone rules -------------------------------------------------------------------------------
    def _member_alarm(
        self, rule: Rule, t: Track, agg: dict[str, Any] | None, value: float, *, active: bool,
        start_ms: int | None = None, first_ts_ms: int | None = None, end_ms: int | None = None,
    ) -> bool:
        """Tell the zone rules built on ``rule`` about a member; returns whether ``t`` is folded."""
        zrs = self._zone_by_member.get(rule.name)
        if not zrs:
            return False
        folded = False
        for zr in zrs:
            if not zr.covers(t.zone):
                continue
            z = self._zone_track(zr, t)
            end = agg["end_ms"] if agg is not None else end_ms or t.last_end_ms
            z.held.append([int(end), t.sensor_id or "", int(active), value,
                           -1 if start_ms is None else int(start_ms), -1 if first_ts_ms is None else int(first_ts_ms)])
            self._held.add(z.key)
            self._dirty.add(z.key)
            if zr.fold == "always":
                folded = True
            elif active:
                # Folded only while the zone incident is open at this alarm's window: a closed zone
                # applies what the sources allow now (this sensor may complete k); an open one folds
                # only if its state is known up to the window before (not if still held further back).
                if not (z.alert is not None and z.alert["state"] in ACTIVE_STATES):
                    self._release(zr, z, self._host_ms)
                size = int(agg.get("size_ms", 60_000)) if agg is not None else 60_000
                if (z.alert is not None and z.alert["state"] in ACTIVE_STATES
                        and self._known(z, self._host_ms) >= end - size):
                    folded = True
        return folded

    def _zone_track(self, zr: ZoneRule, member: Track) -> Track:
        key = f"{zr.name}|zone:{member.zone}"
        z = self.tracks.get(key)
        if z is None:
            z = self.tracks[key] = Track(
                key, member.p, zr.name, "zone", member.zone, None, member.kind, member.metric, member.unit,
                series=deque(maxlen=self.cfg.series_points),
            )
        if member.sensor_id not in z.seen:
            z.seen.add(member.sensor_id or "")
        return z

    def _check_zones(self, now_ms: int) -> None:
        for key in sorted(self._held):
            z = self.tracks.get(key)
            zr = self._zone_rules.get(z.rule) if z is not None else None
            if z is None or zr is None:
                self._held.discard(key)
                continue
            self._release(zr, z, now_ms)

    def _watermark(self, z: Track, now_ms: int) -> float:
        """Event time every source feeding ``z`` has passed (sources silent for ``zone_hold`` aside).

        A source has passed the window ends before the newest it delivered (or its progress
        marker announced): its windows come in end order, but one window in several batches.
        """
        wm = math.inf
        hold = self.cfg.zone_hold_ms
        for s in z.srcs:
            seen = self.zone_src.get((z.p, z.zone, s))
            if seen is not None and now_ms - seen[1] <= hold:
                wm = min(wm, max(seen[0], self.src_ms.get((z.p, s), -1)) - 1)
        return wm

    def _known(self, z: Track, now_ms: int) -> float:
        """Event time up to which ``z``'s state is settled: its sources passed it, nothing older is held."""
        wm = self._watermark(z, now_ms)
        if z.held:
            wm = min(wm, min(e[0] for e in z.held) - 1)
        return wm

    def _release(self, zr: ZoneRule, z: Track, now_ms: int) -> None:
        """Apply the held member alarms up to the zone's watermark in event-time order, judging each end."""
        if not z.held:
            self._held.discard(z.key)
            return
        wm = self._watermark(z, now_ms)
        ready = sorted((e for e in z.held if e[0] <= wm), key=lambda e: (e[0], e[1], -e[2]))
        if not ready:
            return
        z.held = [e for e in z.held if e[0] > wm]
        if not z.held:
            self._held.discard(z.key)
        self._dirty.add(z.key)
        for i, (end, sid, active, value, start, first_ts) in enumerate(ready):
            m = z.members.get(sid)
            if active:
                if m is None or m[1] == 0:
                    m = z.members[sid] = [end, 1, first_ts if first_ts >= 0 else end, start if start >= 0 else end,
                                          value]
                m[0], m[1], m[4] = max(m[0], end), 1, value
            elif m is not None:
                m[1] = 0
                m[0] = max(m[0], end)
            if i + 1 == len(ready) or ready[i + 1][0] != end:
                self._eval_zone(zr, z)

    def _eval_zone(self, zr: ZoneRule, z: Track) -> None:
        if not z.members:
            return
        ref = max(int(m[0]) for m in z.members.values())
        for sid in [s for s, m in z.members.items() if not m[1] and m[0] < ref - zr.within_ms]:
            del z.members[sid]  # recovered longer than T ago: no longer counts
        counted = sorted(z.members)
        active_n = sum(1 for m in z.members.values() if m[1])
        is_open = z.alert is not None and z.alert["state"] in ACTIVE_STATES | {"suppressed"}
        if z.series and z.series[-1][0] == ref:
            z.series[-1] = [ref, len(counted)]
        else:
            z.series.append([ref, len(counted)])
        if z.latched:
            if active_n == 0:
                z.latched = False
            return
        evidence = {
            "values": [z.members[s][4] for s in counted],
            "windows": [[int(z.members[s][3]), int(z.members[s][0])] for s in counted],
            "score": None, "model_version": None, "series": list(z.series), "sensors": counted,
            "n": len(z.seen), "k": zr.k,
        }
        rule = self._rule_by_name.get(zr.members)
        what = f"{rule.metric} {rule.field} {rule.op} {rule.raise_level:g}" if rule else zr.members
        message = (
            f"zone {z.zone}: {len(counted)} of {len(z.seen)} sensors in alarm ({what}) "
            f"within {zr.within_ms / 1000:g} s"
        )
        if not is_open:
            if len(counted) < zr.k:
                return
            start = min(int(z.members[s][3]) for s in counted)
            first_ts = min(int(z.members[s][2]) for s in counted)
            z.active = True
            rec = self._new_record(
                zr.name, "incident", zr.severity, "zone", None, z.zone, z.kind, z.metric, float(len(counted)),
                float(zr.k), message, evidence, first_ts, start, ref,
            )
            self._open(z, rec, False, zr.escalate_after_ms)
            return
        if z.alert is None:
            return
        if active_n < zr.clear_below:
            z.active, z.cleared_ms = False, ref
            z.members = {s: m for s, m in z.members.items() if m[1]}
            self._transition(z, "cleared", max(ref, int(z.alert["ts_ms"])), value=float(active_n),
                             message=message, evidence=evidence)
        elif counted != z.alert["evidence"].get("sensors"):
            state = "suppressed" if z.alert["state"] == "suppressed" else "updated"
            if z.alert["state"] == "acknowledged":
                state = "acknowledged"  # keep the ack; the record still carries the new evidence
            self._transition(z, state, max(ref, int(z.alert["ts_ms"])), value=float(len(counted)),
                             message=message, evidence=evidence)

    # -- records ----------------------------------------------------------------------------------
    def _new_record(
        self, rule: str, category: str, severity: str, subject_type: str, sensor_id: str | None, zone: str,
        kind: str | None, metric: str | None, value: float, threshold: float, message: str,
        evidence: dict[str, Any], first_ts_ms: int, start_ms: int, ts_ms: int,
    ) -> dict[str, Any]:
        subject = sensor_id if subject_type == "sensor" else f"zone:{zone}"
        return {
            "v": 1,
            "alert_id": alert_id(rule, subject or "", start_ms),
            "seq": 0,
            "rule": rule,
            "category": category,
            "severity": severity,
            "state": "raised",
            "subject_type": subject_type,
            "sensor_id": sensor_id,
            "zone": zone,
            "kind": kind,
            "metric": metric,
            "value": value,
            "threshold": threshold,
            "message": message,
            "evidence": evidence,
            "first_reading_ts_ms": first_ts_ms,
            "raised_ts_ms": ts_ms,
            "ts_ms": ts_ms,
            "latency_ms": max(0, ts_ms - first_ts_ms),
            "acked_by": None,
            "escalation_level": 0,
        }

    def _open(self, t: Track, rec: dict[str, Any], folded: bool, escalate_after_ms: int | None) -> None:
        """Publish a new occurrence (or fold, suppress or rate-limit it)."""
        old = t.alert
        if old is not None:
            self.by_alert.pop(old["alert_id"], None)
            self.open.discard(t.key)
        self.by_alert[rec["alert_id"]] = t.key
        t.folded, t.emitted = folded, True
        t.escalate_at_ms = None
        self._dirty.add(t.key)
        ts = rec["ts_ms"]
        if folded:
            self.counters.folded += 1
            t.alert = {**rec, "seq": 1}
            return
        if self._in_maintenance(rec, ts):
            self.counters.suppressed += 1
            rec = {**rec, "state": "suppressed"}
            t.alert = {**rec, "seq": 0}
            self._transition(t, "suppressed", ts)
            return
        if not self._allow(rec["zone"], ts):
            t.emitted = False
            t.alert = {**rec, "seq": 1}
            return
        self.counters.raised += 1
        t.alert = {**rec, "seq": 0}
        self._transition(t, "raised", ts)
        self._arm_escalation(t, escalate_after_ms, ts)

    def _arm_escalation(self, t: Track, after_ms: int | None, ts: int) -> None:
        after = self.cfg.escalate_after_ms if after_ms is None else after_ms
        t.escalate_at_ms = ts + after if after > 0 else None
        self.open.add(t.key)

    def _transition(self, t: Track, state: str, ts: int, **changes: Any) -> None:
        if t.alert is None:
            return
        rec = {**t.alert, **changes, "state": state, "ts_ms": ts, "seq": int(t.alert["seq"]) + 1}
        t.alert = rec
        self._dirty.add(t.key)
        if state == "cleared":
            self.open.discard(t.key)
            t.escalate_at_ms = None
        if t.folded or not t.emitted:
            return
        self.counters.records += 1
        self._out.append(rec)

    def _in_maintenance(self, rec: dict[str, Any], ts: int) -> bool:
        return any(m.covers(rec["rule"], rec["sensor_id"], rec["zone"], ts) for m in self.rules.maintenance)

    # -- escalation and rate limits ---------------------------------------------------------------
    def _check_timers(self, ts: int) -> None:
        for key in sorted(self.open):
            t = self.tracks.get(key)
            if t is None or t.alert is None or t.escalate_at_ms is None or ts < t.escalate_at_ms:
                continue
            if t.alert["state"] not in ("raised", "updated", "escalated"):
                t.escalate_at_ms = None
                continue
            level = SEVERITIES.index(t.alert["severity"])
            if level + 1 >= len(SEVERITIES):
                t.escalate_at_ms = None
                continue
            rule = self._rule_by_name.get(t.rule) or self._zone_rules.get(t.rule)
            after = getattr(rule, "escalate_after_ms", None)
            after = self.cfg.escalate_after_ms if after is None else after
            at = t.escalate_at_ms
            t.escalate_at_ms = at + after if after > 0 else None
            self._transition(
                t, "escalated", at, severity=SEVERITIES[level + 1],
                escalation_level=int(t.alert["escalation_level"]) + 1,
            )
        for key in sorted(self._summary_dirty):
            t = self.tracks[key]
            if t.alert is not None and t.alert["state"] in ACTIVE_STATES:
                self._transition(t, "updated", max(int(t.alert["ts_ms"]), t.last_end_ms),
                                 value=float(t.suppressed), message=self._summary_message(t))
        self._summary_dirty.clear()
        window = self.cfg.rate_window_ms
        for key in [k for k in self.open if k.startswith(RATE_LIMIT_RULE + "|")]:
            t = self.tracks[key]
            if t.alert is not None and ts - t.last_end_ms >= window:
                t.active = False
                self._transition(t, "cleared", max(ts, int(t.alert["ts_ms"])))

    def _allow(self, zone: str, ts: int) -> bool:
        window = self.cfg.rate_window_ms
        ok = True
        for subject, limit in ((f"zone:{zone}", self.cfg.zone_rate_limit), ("global", self.cfg.global_rate_limit)):
            q = self._rate.setdefault(subject, deque())
            while q and q[0] <= ts - window:
                q.popleft()
            if len(q) >= limit:
                ok = False
                self._summary(subject, zone if subject != "global" else "*", limit, ts)
                break
        if ok:
            for subject in (f"zone:{zone}", "global"):
                self._rate[subject].append(ts)
        else:
            self.counters.rate_limited += 1
        return ok

    def _summary(self, subject: str, zone: str, limit: int, ts: int) -> None:
        key = f"{RATE_LIMIT_RULE}|{subject}"
        t = self.tracks.get(key)
        if t is None:
            t = self.tracks[key] = Track(key, 0, RATE_LIMIT_RULE, "zone", zone,
                                         series=deque(maxlen=self.cfg.series_points))
        t.last_end_ms = max(t.last_end_ms, ts)
        self._dirty.add(key)
        if t.alert is not None and t.alert["state"] in ACTIVE_STATES:
            t.suppressed += 1
            t.series.append([ts, float(t.suppressed)])
            self._summary_dirty.add(key)
            return
        t.suppressed, t.active = 1, True
        t.series = deque([[ts, 1.0]], maxlen=self.cfg.series_points)
        scope = "all zones" if subject == "global" else f"zone {zone}"
        rec = self._new_record(
            RATE_LIMIT_RULE, "summary", "warning", "zone", None, zone, None, None, 1.0, float(limit),
            f"alert rate limit tripped in {scope}: more than {limit} new alerts per "
            f"{self.cfg.rate_window_ms / 1000:g} s; 1 held back",
            {"values": [], "windows": [], "score": None, "model_version": None, "series": list(t.series),
             "sensors": []},
            ts, ts, ts,
        )
        if t.alert is not None:
            self.by_alert.pop(t.alert["alert_id"], None)
        self.by_alert[rec["alert_id"]] = key
        t.alert, t.emitted, t.folded = {**rec, "seq": 0}, True, False
        self.open.add(key)
        self._transition(t, "raised", ts)

    def _summary_message(self, t: Track) -> str:
        scope = "all zones" if t.key.endswith("|global") else f"zone {t.zone}"
        threshold = int(t.alert["threshold"]) if t.alert is not None else 0
        return (
            f"alert rate limit tripped in {scope}: more than {threshold} new alerts per "
            f"{self.cfg.rate_window_ms / 1000:g} s; {t.suppressed} held back"
        )

    def _flush(self) -> list[dict[str, Any]]:
        out, self._out = self._out, []
        return out


__all__ = ["ACTIVE_STATES", "ALONE", "AlertEngine", "EngineCounters", "Track", "measure_alone"]
