"""Which aggregates of a window close may raise an alert: they go through routing and the engine first.

A live window close of 10,000 sensors is 35,000 aggregates at once. Routing and the engine take
them in the order they were sent, and on one core they need 1-2 s for all of them: an alert
whose aggregate came late in that order waited for everything before it. :class:`Urgency` picks,
at the close, the aggregates some rule could raise on now, so that the windows stage sends them
ahead of the rest (``streams.agents``), the router routes them in a message of their own and the
engine publishes their alerts before it takes the next message (``streams.alert_agents``).

The pick is made without the engine's state, which lives with the zone's partition and may be on
another worker. Per rule it judges the aggregate alone where the rule does (``threshold``,
``anomaly``, ``out_of_range``, ``stuck``) and, where the rule compares a sensor with its own past
(``baseline``, ``rate_of_change``, ``jump``, ``spike``), against the sensor's previous window,
which is about the baseline at an incident's onset. ``drift`` and ``silence`` rules are not
judged (a drift is judged at checkpoints, a silence has no aggregate). The pick changes only
the order: every aggregate still reaches the engine, which alone decides, and an aggregate the
pick misses costs its alert only the wait it had before. The engine sees each (rule, sensor) in
window order all the same: only a close with at most one window per sensor and metric is
reordered (a live close; a catch-up that closes several windows at once keeps its order).

>>> from alerting.rules import load_rules
>>> u = Urgency(load_rules(None))
>>> def agg(sid, end, lo): return {"sensor_id": sid, "kind": "iot", "zone": "futian", "metric": "drain_level",
...     "window": "tumbling", "size_ms": 60_000, "end_ms": end, "count": 60, "min": lo, "max": lo + 1,
...     "mean": lo + 0.5, "std": 0.3, "first": lo, "last": lo + 1}
>>> first, rest = u.split([agg("a", 60_000, 20.0), agg("b", 60_000, 190.0)])  # drain_overflow: min > 180
>>> [a["sensor_id"] for a in first], [a["sensor_id"] for a in rest]
(['b'], ['a'])
>>> first, rest = u.split([agg("a", 120_000, 35.0), agg("b", 120_000, 190.0)])  # drain_rise: mean 8 above
>>> sorted(a["sensor_id"] for a in first)
['a', 'b']
"""

from __future__ import annotations

from typing import Any, Final

from alerting.engine import ALONE, measure_alone
from alerting.rules import Rule, RuleSet, crosses

#: rule types judged here; the others never make an aggregate urgent
JUDGED: Final = ALONE | {"baseline", "rate_of_change", "jump", "spike"}
#: rule types that read the sensor's previous window
NEEDS_PREVIOUS: Final = frozenset({"baseline", "rate_of_change", "jump", "spike"})
_EPS: Final = 1e-12  # as alerting.engine

_Key = tuple[str, str, str, Any]


class Urgency:
    """Split each window close into the aggregates that may raise an alert now and the rest.

    Args:
        rules: the rules in force (:meth:`set_rules` on a reload).
        max_sensors: bound on the previous windows remembered (sensor, metric and window kind; about
            400 bytes each); beyond it they are forgotten at once and the next close judges without them.
    """

    __slots__ = ("_memo", "_filtered", "max_sensors", "picked", "previous", "rules")

    def __init__(self, rules: RuleSet, max_sensors: int = 250_000) -> None:
        self.max_sensors = max_sensors
        self.previous: dict[_Key, tuple[float, dict[str, float]]] = {}
        self.picked = 0  # aggregates sent ahead, over this object's life
        self.set_rules(rules)

    def set_rules(self, rules: RuleSet) -> None:
        self.rules = tuple(r for r in rules.rules if r.type in JUDGED)
        self._filtered = any(r.zones is not None or r.sensors is not None for r in self.rules)
        self._memo: dict[tuple[Any, ...], tuple[tuple[Rule, ...], tuple[str, ...]]] = {}

    def forget(self) -> None:
        """Drop the previous windows (partitions revoked: their sensors may move elsewhere)."""
        self.previous.clear()

    def _applicable(self, agg: dict[str, Any]) -> tuple[tuple[Rule, ...], tuple[str, ...]]:
        """The judged rules that look at ``agg`` and the fields to remember of it (memoised)."""
        key: tuple[Any, ...] = (agg["kind"], agg["metric"], agg.get("window", "tumbling"), agg.get("size_ms"))
        if self._filtered:
            key = (*key, agg["zone"], agg["sensor_id"])
        hit = self._memo.get(key)
        if hit is None:
            rules = tuple(r for r in self.rules if r.applies(agg))
            fields = sorted({r.field for r in rules if r.type in NEEDS_PREVIOUS} | {"last", "min"}
                            if any(r.type in NEEDS_PREVIOUS for r in rules) else set())
            hit = self._memo[key] = (rules, tuple(fields))
        return hit

    def split(self, aggregates: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(urgent, rest)``, each in the order given; ``([], aggregates)`` when a sensor, metric and
        window kind comes twice (several windows of one sensor: their order must hold).

        Remembers each aggregate's fields as its sensor's previous window for the next close.
        Malformed aggregates (a missing or non-numeric field) are never urgent.
        """
        urgent: list[dict[str, Any]] = []
        rest: list[dict[str, Any]] = []
        seen: set[_Key] = set()
        once = True
        previous = self.previous
        if len(previous) > self.max_sensors:
            previous.clear()
        for agg in aggregates:
            try:
                rules, fields = self._applicable(agg)
            except (KeyError, TypeError):
                rest.append(agg)
                continue
            if not rules:
                rest.append(agg)
                continue
            key = (agg["sensor_id"], agg["metric"], agg.get("window", "tumbling"), agg.get("size_ms"))
            if key in seen:
                once = False
            seen.add(key)
            try:
                hit = self._judge(rules, agg, previous.get(key))
                if fields:
                    previous[key] = (float(agg["end_ms"]), {f: float(agg[f]) for f in fields if f in agg})
            except (KeyError, TypeError, ValueError):
                hit = False
            (urgent if hit else rest).append(agg)
        if not once:
            return [], aggregates
        if not urgent:
            return [], rest
        self.picked += len(urgent)
        return urgent, rest

    @staticmethod
    def _judge(rules: tuple[Rule, ...], agg: dict[str, Any], prev: tuple[float, dict[str, float]] | None) -> bool:
        """Whether one of ``rules`` could raise on ``agg`` (the sensor's previous window: ``prev``)."""
        end = float(agg["end_ms"])
        for r in rules:
            t = r.type
            if t in ALONE:
                m = measure_alone(r, agg)  # as the engine judges it
                if m is not None and m[1]:
                    return True
            elif t == "jump":
                step = float(agg["max"]) - float(agg["min"])
                if prev is not None and "first" in agg and "last" in prev[1]:
                    step = max(step, abs(float(agg["first"]) - prev[1]["last"]))
                if step > r.raise_level:
                    return True
            elif prev is not None and r.field in prev[1]:
                was, dt = prev[1][r.field], end - prev[0]
                v = float(agg[r.field])
                if t == "baseline":
                    if dt <= r.baseline_ms:
                        dev = v / max(was, r.baseline_floor, _EPS) if r.mode == "ratio" else v - was
                        if crosses(r.op, dev, r.raise_level):
                            return True
                elif t == "rate_of_change":
                    if 0 < dt <= 3 * float(agg.get("size_ms", 60_000)) and crosses(r.op, (v - was) / (dt / 1000.0),
                                                                                    r.raise_level):
                        return True
                elif t == "spike":  # the previous window's peak over this window's floor
                    if was / max(float(agg["min"]), r.baseline_floor, _EPS) >= r.raise_level:
                        return True
        return False


__all__ = ["Urgency"]
