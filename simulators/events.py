"""Incidents, weather and sensor faults, resolved against a city, with their ground truth (pure).

An **incident** is something real happening in the city; it moves several sensors at once:

============ =========== ==============================================================
type         kind        effect (``s`` = severity in (0, 1])
============ =========== ==============================================================
accident     traffic     at the segment: speed / (1 + 4 s), occupancy closes 0.8 s of its
                         gap to 100 %, flow / (1 + 2 s); the queue then grows upstream,
                         one segment per :data:`HOP_MS`, each hop 0.75 x weaker, and
                         clears later the further upstream it is
pollution    environment pm25 x (1 + 4 s), pm10 x (1 + 3.2 s), no2 x (1 + 1.2 s) in the zone,
                         spreading to neighbouring zones after :data:`SPREAD_MS` at half strength
concert      crowd       people x (1 + 6 s), 30 min ramps
holiday      crowd       people x (1 + 2.5 s), 1 h ramps
surge        crowd       people x (1 + 5 s), sudden
leak         iot         water_pressure x (1 - 0.6 s) at the leaking sensor, x (1 - 0.3 s)
                         elsewhere in the zone
outage       iot         power_load -> (1 - 0.9 s - 0.1) of itself, i.e. about 0
flood        iot         drain_level + 150 s cm (20 min ramp), after rain from 1 h before
============ =========== ==============================================================

**Rain** (weather, not an incident) slows traffic a little, raises humidity and drains, washes
out particles. A **fault** acts on one sensor only and is not a real event: ``stuck``, ``drift``,
``spike`` change values; ``dropout``, ``clock_skew``, ``duplicate`` and ``out_of_order`` change
what is delivered (see :mod:`simulators.feed`).

>>> from simulators.city import plan_city
>>> city = plan_city(["futian"], {"traffic": 4}, seed=1)
>>> acc = make_incident(city, "inc-001", "accident", "futian", 0, 1_800_000, 1.0, interval_ms=60_000)
>>> acc.sensors
('trf-futian-0003', 'trf-futian-0002', 'trf-futian-0001', 'trf-futian-0000')
>>> acc.truth()["class"], acc.truth()["kind"], acc.truth()["start"]
('incident', 'traffic', '1970-01-01T00:00:00.000Z')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from simulators.city import METRICS, NEIGHBOURS, City
from streams.schema import format_ts

if TYPE_CHECKING:
    from simulators.generators import _Model

__all__ = [
    "DELIVERY_FAULTS",
    "FAULT_TYPES",
    "HOP_MS",
    "INCIDENT_TYPES",
    "SPREAD_MS",
    "VALUE_FAULTS",
    "Event",
    "Fault",
    "Overlay",
    "Rain",
    "make_fault",
    "make_incident",
    "random_events",
]

_MIN_MS: Final = 60_000
_HOUR_MS: Final = 3_600_000
#: Time for an accident's queue to reach the next segment upstream.
HOP_MS: Final = 5 * _MIN_MS
#: Time for a pollution episode to reach the neighbouring zones.
SPREAD_MS: Final = 45 * _MIN_MS
#: Incident type -> the sensor kind it affects.
INCIDENT_TYPES: Final[Mapping[str, str]] = {
    "accident": "traffic",
    "pollution": "environment",
    "concert": "crowd",
    "holiday": "crowd",
    "surge": "crowd",
    "leak": "iot",
    "outage": "iot",
    "flood": "iot",
}
VALUE_FAULTS: Final[tuple[str, ...]] = ("stuck", "drift", "spike")
DELIVERY_FAULTS: Final[tuple[str, ...]] = ("dropout", "clock_skew", "duplicate", "out_of_order")
FAULT_TYPES: Final[tuple[str, ...]] = VALUE_FAULTS + DELIVERY_FAULTS
#: The metric a drift or spike hits unless told otherwise.
MAIN_METRIC: Final[Mapping[str, str]] = {
    "traffic": "speed",
    "environment": "pm25",
    "crowd": "people",
    "iot": "water_pressure",
}
#: Typical durations (min, max) in minutes of random incidents and faults.
_DURATIONS: Final[Mapping[str, tuple[int, int]]] = {
    "accident": (20, 60),
    "pollution": (90, 240),
    "concert": (120, 240),
    "holiday": (360, 600),
    "surge": (10, 30),
    "leak": (30, 120),
    "outage": (15, 60),
    "flood": (60, 180),
    "stuck": (30, 120),
    "drift": (120, 360),
    "dropout": (10, 60),
    "spike": (30, 90),
    "clock_skew": (30, 120),
    "duplicate": (15, 60),
    "out_of_order": (15, 60),
}
#: Incidents and faults placed at random keep this far apart on any one sensor.
_MARGIN_MS: Final = 30 * _MIN_MS


@dataclass(frozen=True, slots=True)
class Overlay:
    """A time-shaped change of some metrics of some sensors of one kind.

    The strength rises linearly from 0 to 1 over ``ramp_ms`` after ``start_ms`` and falls back
    to 0 over ``ramp_ms`` before ``end_ms``. Each op is ``(metric, how, amount)``: ``mul``
    multiplies by ``1 + (amount - 1) * a``, ``add`` adds ``amount * a``, and ``toward``
    (``amount = (target, share)``) moves ``share * a`` of the way to ``target``.
    """

    kind: str
    sensors: tuple[str, ...]
    start_ms: int
    end_ms: int
    ramp_ms: int
    ops: tuple[tuple[str, str, Any], ...]

    def strength(self, ts: np.ndarray) -> np.ndarray:
        """Strength in [0, 1] at each of ``ts``."""
        ramp = max(self.ramp_ms, 1)
        up = (ts - self.start_ms + 1) / ramp
        down = (self.end_ms - ts) / ramp
        out: np.ndarray = np.clip(np.minimum(up, down), 0.0, 1.0)
        return out

    def apply(self, model: _Model, ts: np.ndarray, rows: np.ndarray, raw: dict[str, dict[str, np.ndarray]]) -> None:
        """Apply to the chunk's raw values (the :class:`~simulators.generators.Effect` protocol)."""
        cols = _columns(model, self.sensors)
        a = self.strength(ts[rows])[:, None]
        at = np.ix_(rows, cols)
        v = raw[self.kind]
        for metric, how, amount in self.ops:
            x = v[metric][at]
            if how == "mul":
                x = x * (1.0 + (amount - 1.0) * a)
            elif how == "add":
                x = x + amount * a
            else:
                target, share = amount
                x = x + (target - x) * (share * a)
            v[metric][at] = x


def _columns(model: _Model, sensors: tuple[str, ...]) -> np.ndarray:
    cache = model.columns_cache
    cols = cache.get(sensors)
    if cols is None:
        cols = np.asarray([model.kind_pos[model.index[s]] for s in sensors], dtype=np.intp)
        cache[sensors] = cols
    return cols


@dataclass(frozen=True, slots=True)
class Rain:
    """Rain over some zones during ``[start_ms, end_ms)`` with ``intensity`` in (0, 1]."""

    zones: tuple[str, ...]
    start_ms: int
    end_ms: int
    intensity: float

    def overlays(self, city: City) -> tuple[Overlay, ...]:
        """The rain's effects on the city's sensors in its zones."""
        i = self.intensity
        out = []
        by_kind = {
            "traffic": (
                15 * _MIN_MS,
                (("speed", "mul", 1 - 0.2 * i), ("flow", "mul", 1 - 0.1 * i), ("occupancy", "add", 5 * i)),
            ),
            "environment": (
                15 * _MIN_MS,
                (
                    ("humidity", "toward", (97.0, 0.8 * i)),
                    ("temperature", "add", -2.5 * i),
                    ("pm25", "mul", 1 - 0.35 * i),
                    ("pm10", "mul", 1 - 0.4 * i),
                    ("noise", "add", 3 * i),
                ),
            ),
            "iot": (45 * _MIN_MS, (("drain_level", "add", 15 * i),)),
        }
        for kind, (ramp, ops) in by_kind.items():
            sensors = tuple(s.sensor_id for s in city.sensors if s.kind == kind and s.zone in self.zones)
            if sensors:
                out.append(Overlay(kind, sensors, self.start_ms, self.end_ms, ramp, ops))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Event:
    """A resolved incident: what it is, where and when, and the overlays that produce it.

    ``windows`` maps each affected sensor to the ``[start_ms, end_ms)`` during which it is
    affected (later and longer upstream of an accident, or in zones a pollution episode
    spreads to); ``start_ms``/``end_ms`` span all of them.
    """

    id: str
    type: str
    kind: str
    zone: str
    zones: tuple[str, ...]
    sensors: tuple[str, ...]
    start_ms: int
    end_ms: int
    severity: float
    windows: Mapping[str, tuple[int, int]]
    overlays: tuple[Overlay, ...]
    rain: tuple[Rain, ...] = ()

    def truth(self) -> dict[str, Any]:
        """The ground-truth record (JSON-ready)."""
        return _truth(
            self.id,
            "incident",
            self.kind,
            self.type,
            self.zone,
            self.zones,
            self.sensors,
            self.start_ms,
            self.end_ms,
            self.severity,
            {"sensor_windows": {s: [a, b] for s, (a, b) in self.windows.items()}},
        )


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault of one sensor during ``[start_ms, end_ms)``.

    Attributes:
        severity: drift: relative offset reached at the end; spike: a spike multiplies the
            value by ``1 + 4 * severity`` (clipped to the metric's bounds).
        metric: the metric a drift or spike hits (stuck holds all metrics).
        offset_ms: clock skew added to the sensor's timestamps.
        delay_ms: how late out-of-order readings (every other one) arrive, in whole ticks.
        probability: chance of a spike at each tick.
        seed: seed of the spike ticks.
    """

    id: str
    type: str
    sensor_id: str
    kind: str
    zone: str
    start_ms: int
    end_ms: int
    severity: float = 1.0
    metric: str | None = None
    offset_ms: int = 0
    delay_ms: int = 0
    probability: float = 0.1
    seed: int = 0

    def truth(self) -> dict[str, Any]:
        """The ground-truth record (JSON-ready)."""
        params: dict[str, Any] = {}
        if self.type in ("drift", "spike"):
            params["metric"] = self.metric
        if self.type == "clock_skew":
            params["offset_ms"] = self.offset_ms
        if self.type == "out_of_order":
            params["delay_ms"] = self.delay_ms
        if self.type == "spike":
            params["probability"] = self.probability
        return _truth(
            self.id,
            "fault",
            self.kind,
            self.type,
            self.zone,
            (self.zone,),
            (self.sensor_id,),
            self.start_ms,
            self.end_ms,
            self.severity,
            {"params": params} if params else {},
        )

    def apply_values(
        self, ts: np.ndarray, rows: np.ndarray, cols: dict[str, np.ndarray], state: dict[str, Any]
    ) -> None:
        """Value faults on the sensor's final values (the ``ValueFault`` protocol); others: no-op."""
        if self.type == "stuck":
            if "held" not in state:
                first = int(np.argmax(rows))
                state["held"] = {m: float(c[first]) for m, c in cols.items()}
            for m, c in cols.items():
                c[rows] = state["held"][m]
        elif self.type == "drift":
            assert self.metric is not None  # noqa: S101 - set by make_fault
            frac = (ts[rows] - self.start_ms) / (self.end_ms - self.start_ms)
            cols[self.metric][rows] *= 1.0 + self.severity * frac
        elif self.type == "spike":
            assert self.metric is not None  # noqa: S101 - set by make_fault
            hit = rows & self.spike_at(ts)
            cols[self.metric][hit] *= 1.0 + 4.0 * self.severity

    def spike_at(self, ts: np.ndarray) -> np.ndarray:
        """Whether a spike happens at each of ``ts`` (independent of chunking)."""
        # A hash of (seed, ts) rather than a stream of draws, so any chunk sees the same spikes.
        h = (ts.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(self.seed)) & np.uint64(0xFFFFFFFF)
        h = (h * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
        h ^= h >> np.uint64(13)
        h = (h * np.uint64(0xC2B2AE35)) & np.uint64(0xFFFFFFFF)
        h ^= h >> np.uint64(16)
        out: np.ndarray = (h.astype(np.float64) / 4294967296.0) < self.probability
        return out


def _truth(
    id_: str,
    cls: str,
    kind: str,
    type_: str,
    zone: str,
    zones: tuple[str, ...],
    sensors: tuple[str, ...],
    start_ms: int,
    end_ms: int,
    severity: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": id_,
        "class": cls,
        "kind": kind,
        "type": type_,
        "zone": zone,
        "zones": list(zones),
        "sensors": list(sensors),
        "start": format_ts(start_ms),
        "end": format_ts(end_ms),
        "start_ms": start_ms,
        "end_ms": end_ms,
        "severity": round(severity, 3),
        **extra,
    }


def _of(city: City, kind: str, zones: Sequence[str]) -> tuple[str, ...]:
    return tuple(s.sensor_id for s in city.sensors if s.kind == kind and s.zone in zones)


def make_incident(
    city: City,
    id_: str,
    type_: str,
    zone: str,
    start_ms: int,
    end_ms: int,
    severity: float,
    *,
    interval_ms: int,
    sensor: str | None = None,
) -> Event:
    """Resolve an incident against ``city``.

    Args:
        city: the sensors.
        id_: stable id written to the ground truth.
        type_: a key of :data:`INCIDENT_TYPES`.
        zone: district of the incident (must have sensors of the incident's kind).
        start_ms: start (UTC epoch ms).
        end_ms: end (exclusive, > ``start_ms``).
        severity: in (0, 1].
        interval_ms: tick interval; the incident must last at least one.
        sensor: accident: the segment (default: the zone's most downstream one);
            leak: the leaking sensor (default: the zone's first iot sensor).

    Raises:
        ValueError: unknown type, zone without such sensors, bad window, severity or sensor.
    """
    if type_ not in INCIDENT_TYPES:
        msg = f"incident {id_}: type: expected one of {sorted(INCIDENT_TYPES)}, got {type_!r}"
        raise ValueError(msg)
    kind = INCIDENT_TYPES[type_]
    if end_ms - start_ms < interval_ms or not (0.0 < severity <= 1.0):
        msg = (
            f"incident {id_}: expected end >= start + one interval and 0 < severity <= 1, "
            f"got [{start_ms}, {end_ms}) severity={severity}"
        )
        raise ValueError(msg)
    local = _of(city, kind, (zone,))
    if not local:
        msg = f"incident {id_} ({type_}): zone {zone!r} has no {kind} sensors"
        raise ValueError(msg)
    if sensor is not None and sensor not in local:
        msg = f"incident {id_} ({type_}): sensor: expected a {kind} sensor of zone {zone!r}, got {sensor!r}"
        raise ValueError(msg)
    s = severity
    tick = 1  # sudden: full strength from the first tick on (interval_ms only checks the window)
    span = end_ms - start_ms
    overlays: list[Overlay] = []
    ops: tuple[tuple[str, str, Any], ...]
    windows: dict[str, tuple[int, int]] = {}
    zones: tuple[str, ...] = (zone,)
    rain: tuple[Rain, ...] = ()

    def add(sensors: tuple[str, ...], a: int, b: int, ramp: int, ops: tuple[tuple[str, str, Any], ...]) -> None:
        overlays.append(Overlay(kind, sensors, a, b, ramp, ops))
        for sid in sensors:
            windows[sid] = (a, b)

    if type_ == "accident":
        chain = [sensor or local[-1]]
        while len(chain) < 4 and city.sensor(chain[-1]).upstream is not None:
            chain.append(str(city.sensor(chain[-1]).upstream))
        for hop, sid in enumerate(chain):
            a = start_ms + hop * HOP_MS
            if a >= end_ms:
                break
            sj = s * 0.75**hop
            ops = (
                ("speed", "mul", 1 / (1 + 4 * sj)),
                ("occupancy", "toward", (100.0, 0.8 * sj)),
                ("flow", "mul", 1 / (1 + 2 * sj)),
            )
            add((sid,), a, end_ms + hop * 2 * _MIN_MS, tick if hop == 0 else HOP_MS, ops)
    elif type_ == "pollution":
        ops = (("pm25", "mul", 1 + 4 * s), ("pm10", "mul", 1 + 3.2 * s), ("no2", "mul", 1 + 1.2 * s))
        add(local, start_ms, end_ms, 20 * _MIN_MS, ops)
        near = tuple(z for z in NEIGHBOURS[zone] if _of(city, kind, (z,)))
        if near and start_ms + SPREAD_MS < end_ms:
            half = (("pm25", "mul", 1 + 2 * s), ("pm10", "mul", 1 + 1.6 * s), ("no2", "mul", 1 + 0.6 * s))
            add(_of(city, kind, near), start_ms + SPREAD_MS, end_ms + 30 * _MIN_MS, 30 * _MIN_MS, half)
            zones = (zone, *near)
    elif type_ in ("concert", "holiday", "surge"):
        factor, ramp = {"concert": (6.0, 30 * _MIN_MS), "holiday": (2.5, _HOUR_MS), "surge": (5.0, tick)}[type_]
        add(
            local,
            start_ms,
            end_ms,
            min(ramp, span // 3) if type_ != "surge" else ramp,
            (("people", "mul", 1 + factor * s),),
        )
    elif type_ == "leak":
        origin = sensor or local[0]
        add((origin,), start_ms, end_ms, 5 * _MIN_MS, (("water_pressure", "mul", 1 - 0.6 * s),))
        rest = tuple(x for x in local if x != origin)
        if rest:
            add(rest, start_ms, end_ms, 5 * _MIN_MS, (("water_pressure", "mul", 1 - 0.3 * s),))
    elif type_ == "outage":
        add(local, start_ms, end_ms, tick, (("power_load", "mul", 1 - (0.9 * s + 0.1) * 0.98),))
    else:  # flood: rain first, then the drains overflow
        rain = (Rain((zone,), start_ms - _HOUR_MS, start_ms + span // 2, 0.5 + 0.5 * s),)
        add(local, start_ms, end_ms, min(20 * _MIN_MS, span // 3), (("drain_level", "add", 150.0 * s),))
    sensors = tuple(windows)
    return Event(
        id=id_,
        type=type_,
        kind=kind,
        zone=zone,
        zones=zones,
        sensors=sensors,
        start_ms=min(a for a, _ in windows.values()),
        end_ms=max(b for _, b in windows.values()),
        severity=severity,
        windows=windows,
        overlays=tuple(overlays),
        rain=rain,
    )


def make_fault(
    city: City,
    id_: str,
    type_: str,
    sensor: str,
    start_ms: int,
    end_ms: int,
    *,
    severity: float = 1.0,
    metric: str | None = None,
    offset_ms: int = 0,
    delay_ms: int = 0,
    probability: float = 0.1,
    seed: int = 0,
) -> Fault:
    """Resolve a fault of one sensor (see :class:`Fault` for the parameters).

    Raises:
        ValueError: unknown type or sensor, bad window, severity, metric, offset, delay or probability.
    """
    if type_ not in FAULT_TYPES:
        msg = f"fault {id_}: type: expected one of {list(FAULT_TYPES)}, got {type_!r}"
        raise ValueError(msg)
    try:
        s = city.sensor(sensor)
    except KeyError:
        msg = f"fault {id_}: sensor: expected a sensor id of the city, got {sensor!r}"
        raise ValueError(msg) from None
    if end_ms <= start_ms or not (0.0 < severity <= 10.0):
        msg = (
            f"fault {id_}: expected end > start and 0 < severity <= 10, got [{start_ms}, {end_ms}) severity={severity}"
        )
        raise ValueError(msg)
    names = [m.name for m in METRICS[s.kind]]
    if type_ in ("drift", "spike"):
        metric = metric or MAIN_METRIC[s.kind]
        if metric not in names:
            msg = f"fault {id_} ({type_}): metric: expected one of {names} for {s.kind}, got {metric!r}"
            raise ValueError(msg)
    elif metric is not None:
        msg = f"fault {id_} ({type_}): metric applies to drift and spike only, got {metric!r}"
        raise ValueError(msg)
    if type_ == "clock_skew" and offset_ms == 0:
        msg = f"fault {id_} (clock_skew): offset: expected a non-zero offset, got 0"
        raise ValueError(msg)
    if type_ == "out_of_order" and delay_ms <= 0:
        msg = f"fault {id_} (out_of_order): delay: expected a positive delay, got {delay_ms} ms"
        raise ValueError(msg)
    if not (0.0 < probability <= 1.0):
        msg = f"fault {id_}: probability: expected 0 < p <= 1, got {probability}"
        raise ValueError(msg)
    return Fault(
        id_, type_, sensor, s.kind, s.zone, start_ms, end_ms, severity, metric, offset_ms, delay_ms, probability, seed
    )


def _overlaps(windows: Mapping[str, tuple[int, int]], taken: Mapping[str, list[tuple[int, int]]]) -> bool:
    for sid, (a, b) in windows.items():
        for c, d in taken.get(sid, ()):
            if a < d + _MARGIN_MS and c < b + _MARGIN_MS:
                return True
    return False


def _take(windows: Mapping[str, tuple[int, int]], taken: dict[str, list[tuple[int, int]]]) -> None:
    for sid, w in windows.items():
        taken.setdefault(sid, []).append(w)


def random_events(
    city: City,
    *,
    incidents: int,
    faults: int,
    start_ms: int,
    end_ms: int,
    interval_ms: int,
    seed: int,
    existing: Sequence[Event | Fault] = (),
    first_incident: int = 1,
    first_fault: int = 1,
    incident_types: Sequence[str] = tuple(INCIDENT_TYPES),
    fault_types: Sequence[str] = FAULT_TYPES,
) -> tuple[list[Event], list[Fault]]:
    """Place random incidents and faults in ``[start_ms, end_ms)``, seeded.

    Types cycle through ``incident_types``/``fault_types`` (shuffled per round), so every kind
    shows up once there are enough. No two incidents or faults touch the same sensor within
    30 minutes of each other (nor of ``existing`` ones): every fault is a *pure* fault.

    Raises:
        ValueError: they cannot be placed (span too short, too few sensors, too many asked).
    """
    rng = np.random.default_rng(seed)
    taken: dict[str, list[tuple[int, int]]] = {}
    for e in existing:
        _take(e.windows if isinstance(e, Event) else {e.sensor_id: (e.start_ms, e.end_ms)}, taken)
    kinds_present = {s.kind for s in city.sensors}
    inc_types = [t for t in incident_types if INCIDENT_TYPES[t] in kinds_present]
    events: list[Event] = []
    order: list[str] = []
    for n in range(incidents):
        if not order:
            order = list(rng.permutation(inc_types)) if inc_types else []
        if not order:
            msg = "random incidents: the city has no sensors for any incident type"
            raise ValueError(msg)
        type_ = str(order.pop())
        kind = INCIDENT_TYPES[type_]
        zones = [z for z in city.zone_ids() if _of(city, kind, (z,))]
        lo, hi = _DURATIONS[type_]
        for _ in range(300):
            dur = max(int(rng.integers(lo, hi + 1)) * _MIN_MS, interval_ms)
            latest = end_ms - dur - _HOUR_MS
            earliest = start_ms + _HOUR_MS + (_HOUR_MS if type_ == "flood" else 0)
            if latest <= earliest:
                continue
            t0 = start_ms + (int(rng.integers(earliest - start_ms, latest - start_ms)) // interval_ms) * interval_ms
            zone = str(zones[int(rng.integers(len(zones)))])
            sev = round(float(rng.uniform(0.5, 1.0)), 2)
            ev = make_incident(
                city, f"inc-{first_incident + n:03d}", type_, zone, t0, t0 + dur, sev, interval_ms=interval_ms
            )
            if not _overlaps(ev.windows, taken):
                break
        else:
            msg = f"random incidents: could not place incident {n + 1} of {incidents} ({type_}) without overlap"
            raise ValueError(msg)
        _take(ev.windows, taken)
        events.append(ev)
    out_faults: list[Fault] = []
    order = []
    sensors = list(city.sensor_ids)
    for n in range(faults):
        if not order:
            order = list(rng.permutation(list(fault_types)))
        type_ = str(order.pop())
        lo, hi = _DURATIONS[type_]
        for _ in range(300):
            dur = max(int(rng.integers(lo, hi + 1)) * _MIN_MS, interval_ms)
            latest = end_ms - dur - 30 * _MIN_MS
            earliest = start_ms + 30 * _MIN_MS
            if latest <= earliest:
                continue
            t0 = start_ms + (int(rng.integers(earliest - start_ms, latest - start_ms)) // interval_ms) * interval_ms
            sid = sensors[int(rng.integers(len(sensors)))]
            if not _overlaps({sid: (t0, t0 + dur)}, taken):
                break
        else:
            msg = f"random faults: could not place fault {n + 1} of {faults} ({type_}) without overlap"
            raise ValueError(msg)
        extra: dict[str, Any] = {}
        if type_ == "drift":
            extra["severity"] = round(float(rng.uniform(0.3, 0.8)), 2)
        elif type_ == "spike":
            extra["severity"] = round(float(rng.uniform(0.5, 1.0)), 2)
            extra["probability"] = round(float(rng.uniform(0.05, 0.15)), 3)
            extra["seed"] = int(rng.integers(2**31))
        elif type_ == "clock_skew":
            extra["offset_ms"] = int(rng.choice([-1, 1])) * int(rng.integers(2, 11)) * _MIN_MS
        elif type_ == "out_of_order":
            extra["delay_ms"] = int(rng.integers(2, 7)) * interval_ms
        f = make_fault(city, f"flt-{first_fault + n:03d}", type_, sid, t0, t0 + dur, **extra)
        _take({sid: (t0, t0 + dur)}, taken)
        out_faults.append(f)
    return events, out_faults
