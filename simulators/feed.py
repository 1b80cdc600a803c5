"""A resolved simulation plan and the encoded feed it produces, faults included (pure).

:class:`Plan` is everything needed to generate a run: the city, the time axis, the seed, the
incidents, weather and faults. :func:`feed` yields, per tick, the readings to deliver in
delivery order, after the sensor faults that change delivery:

* ``dropout``: the sensor's readings are not delivered;
* ``clock_skew``: its timestamps (payload ``ts`` and ``ts_ms``) are shifted by ``offset_ms``;
* ``duplicate``: each reading is delivered twice (the copy at the end of the tick);
* ``out_of_order``: every other reading is held back ``delay_ms`` (whole ticks) and delivered
  after newer readings of the same sensor.

>>> from simulators.city import plan_city
>>> from simulators.events import make_fault
>>> city = plan_city(["futian"], {"crowd": 2}, seed=1)
>>> drop = make_fault(city, "flt-001", "dropout", "crd-futian-0000", 0, 2000)
>>> plan = Plan(city, start_ms=0, interval_ms=1000, steps=3, seed=1, faults=(drop,))
>>> [len(tick) for tick in feed(plan)]
[1, 1, 2]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from simulators.city import City
from simulators.encode import Format, Renderer
from simulators.events import DELIVERY_FAULTS, VALUE_FAULTS, Event, Fault, Overlay, Rain
from simulators.generators import chunks

__all__ = ["Plan", "feed"]


@dataclass(frozen=True, slots=True)
class Plan:
    """A fully resolved run.

    Attributes:
        city: the sensors.
        start_ms: event time of the first tick (UTC epoch ms).
        interval_ms: time between ticks.
        steps: number of ticks.
        seed: noise seed.
        incidents: resolved incidents.
        faults: resolved single-sensor faults.
        weather: rain episodes (context, not ground truth).
        name: scenario name, for logs.
    """

    city: City
    start_ms: int
    interval_ms: int
    steps: int
    seed: int
    incidents: tuple[Event, ...] = ()
    faults: tuple[Fault, ...] = ()
    weather: tuple[Rain, ...] = ()
    name: str = "adhoc"

    def __post_init__(self) -> None:
        if self.interval_ms <= 0 or self.steps < 0:
            msg = f"plan {self.name}: expected interval_ms > 0 and steps >= 0, got {self.interval_ms}, {self.steps}"
            raise ValueError(msg)

    @property
    def end_ms(self) -> int:
        """End of the simulated span (exclusive)."""
        return self.start_ms + self.steps * self.interval_ms

    @property
    def readings(self) -> int:
        """Readings generated (before delivery faults drop or add any)."""
        return self.steps * len(self.city.sensors)

    def effects(self) -> tuple[Overlay, ...]:
        """All value overlays: rain first, then incidents."""
        rains = [*self.weather, *(r for e in self.incidents for r in e.rain)]
        return (*(o for r in rains for o in r.overlays(self.city)), *(o for e in self.incidents for o in e.overlays))

    def truth(self) -> list[dict[str, Any]]:
        """Ground-truth records of every incident and fault, by start time then id."""
        records = [e.truth() for e in self.incidents] + [f.truth() for f in self.faults]
        return sorted(records, key=lambda r: (r["start_ms"], r["id"]))


def feed(plan: Plan, fmt: Format = "message", *, topic_root: str = "city") -> Iterator[list[Any]]:
    """Yield the encoded readings of each tick of ``plan``, in delivery order.

    Items are ``(topic, payload, ts_ms)`` tuples for ``fmt="message"``, or text lines (with
    newline) for ``"jsonl"`` (as :func:`simulators.publish.write_jsonl` writes them) and
    ``"csv"`` (under :func:`simulators.encode.csv_header`). Readings held back by an
    out-of-order fault past the last tick come in one extra final list.
    """
    renderer = Renderer(plan.city, fmt, topic_root)
    city = plan.city
    value_faults = tuple(f for f in plan.faults if f.type in VALUE_FAULTS)
    delivery = []
    for f in plan.faults:
        if f.type in DELIVERY_FAULTS:
            k0 = max(0, math.ceil((f.start_ms - plan.start_ms) / plan.interval_ms))
            k1 = math.ceil((f.end_ms - plan.start_ms) / plan.interval_ms)
            delay = math.ceil(f.delay_ms / plan.interval_ms)
            delivery.append((k0, k1, f.type, city.index_of(f.sensor_id), f.offset_ms, delay))
    delayed: dict[int, list[Any]] = {}
    k = 0
    for ts, values in chunks(
        city, plan.start_ms, plan.interval_ms, plan.steps, plan.seed, plan.effects(), value_faults
    ):
        cells = renderer.cells(values)
        for row, t in enumerate(ts.tolist()):
            items = renderer.render(t, cells, row)
            active = [d for d in delivery if d[0] <= k < d[1]]
            if active or delayed:
                drop: set[int] = set()
                extra: list[Any] = []
                for _, _, type_, i, offset_ms, _ in active:
                    if type_ == "clock_skew":
                        items[i] = renderer.render_one(i, t + offset_ms, cells, row)
                for k0, _, type_, i, _, delay in active:
                    if type_ == "dropout":
                        drop.add(i)
                    elif type_ == "duplicate":
                        extra.append(items[i])
                    elif type_ == "out_of_order" and (k - k0) % 2 == 0:
                        drop.add(i)
                        delayed.setdefault(k + delay, []).append(items[i])
                if drop:
                    items = [x for j, x in enumerate(items) if j not in drop]
                items.extend(extra)
                items.extend(delayed.pop(k, ()))
            yield items
            k += 1
    if delayed:
        yield [x for key in sorted(delayed) for x in delayed[key]]
