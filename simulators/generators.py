"""Seeded, deterministic city feeds: one :class:`Batch` of readings per time step.

Values follow Shenzhen local time (UTC+8): morning and evening rush hours for traffic and crowds,
a diurnal cycle for temperature, humidity and ozone, traffic-driven NO2/PM and noise. Each
sensor has its own baseline and slowly wandering (AR(1)) deviations on top of small white
measurement noise; every value is clipped to its physical bounds and rounded to the metric's
decimals. :class:`Incident` overlays a zone-wide event on one kind of sensor.

Everything is generated with one :func:`numpy.random.default_rng` seeded from ``seed``, so the
same arguments always give the same bytes. Incidents are applied after the noise is drawn: adding
an incident changes only the readings it covers.

>>> from simulators.city import build_city
>>> city = build_city(8, seed=1)
>>> batch = next(generate(city, start_ms=1_780_000_000_000, interval_ms=1000, steps=1, seed=3))
>>> topic, payload = batch.to_messages()[0]
>>> topic
'city/traffic/futian/trf-futian-0000'
>>> payload[:48]
b'{"v":1,"sensor_id":"trf-futian-0000","kind":"tra'
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np

from simulators.city import METRICS, City, MetricSpec
from simulators.encode import Renderer

__all__ = ["Batch", "Effect", "Incident", "ValueFault", "chunks", "generate"]

_HOUR_MS: Final = 3_600_000
_DAY_MS: Final = 86_400_000
_LOCAL_OFFSET_MS: Final = 8 * _HOUR_MS  # Asia/Shanghai has no DST
#: Correlation time of the slow (AR(1)) per-sensor deviations.
_TAU_MS: Final = 15 * 60 * 1000
#: Standard deviation of the white measurement noise, relative to the slow deviation.
_WHITE: Final = 0.25
#: Target (ticks x sensors) cells generated per numpy pass.
_CHUNK_CELLS: Final = 8192


@dataclass(frozen=True, slots=True)
class Incident:
    """A zone-wide event pushing one kind of sensor's readings during ``[start_ms, end_ms)``.

    ``magnitude`` (>= 0) scales the effect:

    ========== =====================================================================
    kind       effect
    ========== =====================================================================
    traffic    accident: speed / (1 + m), occupancy closes (m / (1 + m)) of its gap
               to 100 %, flow / (1 + m / 2)
    environment pollution episode: pm25 x (1 + m), pm10 x (1 + 0.8 m), no2 x (1 + 0.3 m)
    crowd      surge: people x (1 + m) (m = 2 triples the crowd)
    iot        flood: drain_level + 60 m cm, water_pressure / (1 + 0.2 m)
    ========== =====================================================================

    Values stay within physical bounds (for example occupancy <= 100).

    >>> Incident("crowd", "futian", 0, 60_000, 2.0).active(30_000)
    True
    """

    kind: str
    zone: str
    start_ms: int
    end_ms: int
    magnitude: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in METRICS:
            msg = f"incident: expected kind in {sorted(METRICS)}, got {self.kind!r}"
            raise ValueError(msg)
        if self.end_ms <= self.start_ms:
            msg = (
                f"incident {self.kind}/{self.zone}: expected end_ms > start_ms, "
                f"got [{self.start_ms}, {self.end_ms})"
            )
            raise ValueError(msg)
        if not (math.isfinite(self.magnitude) and self.magnitude >= 0):
            msg = f"incident {self.kind}/{self.zone}: expected magnitude >= 0, got {self.magnitude!r}"
            raise ValueError(msg)

    def active(self, ts_ms: int) -> bool:
        """Whether the incident covers ``ts_ms`` (half-open ``[start_ms, end_ms)``)."""
        return self.start_ms <= ts_ms < self.end_ms

    def apply(self, model: _Model, ts: np.ndarray, rows: np.ndarray, raw: dict[str, dict[str, np.ndarray]]) -> None:
        """Overlay the incident on the ticks ``rows`` of a chunk (see :class:`Effect`)."""
        model.apply(self, rows, raw)


class Effect(Protocol):
    """Something that changes raw values while ``start_ms <= ts < end_ms`` (an incident, rain)."""

    @property
    def start_ms(self) -> int: ...

    @property
    def end_ms(self) -> int: ...

    def apply(self, model: _Model, ts: np.ndarray, rows: np.ndarray, raw: dict[str, dict[str, np.ndarray]]) -> None:
        """Change ``raw`` (kind -> metric -> (ticks, sensors of the kind)) in place on ``rows``."""


class ValueFault(Protocol):
    """A single-sensor fault acting on the final (clipped, rounded) values of ``sensor_id``."""

    @property
    def start_ms(self) -> int: ...

    @property
    def end_ms(self) -> int: ...

    @property
    def sensor_id(self) -> str: ...

    def apply_values(
        self, ts: np.ndarray, rows: np.ndarray, cols: dict[str, np.ndarray], state: dict[str, Any]
    ) -> None:
        """Change the sensor's metric columns ``cols`` (views, one value per tick) on ``rows``."""


class _LazyCells:
    """Value texts of one chunk, computed on first use (plain value checks never pay for them)."""

    __slots__ = ("_cells", "_renderer", "_values")

    def __init__(self, renderer: Renderer, values: dict[str, dict[str, np.ndarray]]) -> None:
        self._renderer = renderer
        self._values = values
        self._cells: list[list[list[str]]] | None = None

    def render(self, ts_ms: int, row: int) -> list[Any]:
        if self._cells is None:
            self._cells = self._renderer.cells(self._values)
        return self._renderer.render(ts_ms, self._cells, row)


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    """All sensors' readings at one tick.

    Attributes:
        city: the city the readings belong to; ``city.sensors[i]`` produced reading ``i``.
        ts_ms: event time of every reading in the batch (UTC epoch milliseconds).
        values: metric name -> float64 array parallel to ``city.sensors``; NaN where the sensor's
            kind does not report that metric.
    """

    city: City
    ts_ms: int
    values: Mapping[str, np.ndarray]
    _cells: _LazyCells = field(repr=False)
    _row: int = field(repr=False, default=0)

    def __len__(self) -> int:
        return len(self.city.sensors)

    @property
    def sensor_ids(self) -> tuple[str, ...]:
        """Sensor ids, parallel to the value arrays."""
        return self.city.sensor_ids

    def metrics_of(self, i: int) -> dict[str, float]:
        """Metric name -> value of reading ``i`` (the metrics of that sensor's kind only)."""
        kind = self.city.sensors[i].kind
        return {m.name: float(self.values[m.name][i]) for m in METRICS[kind]}

    def to_messages(self) -> list[tuple[str, bytes]]:
        """``(mqtt_topic, payload)`` per reading, in sensor order.

        The topic is ``city/<kind>/<zone>/<sensor_id>``; the payload is byte-identical to
        :func:`streams.schema.encode_reading` for the same reading.
        """
        return [(t, p) for t, p, _ in self.to_timed_messages()]

    def to_timed_messages(self) -> list[tuple[str, bytes, int]]:
        """Like :meth:`to_messages`, with the event time ``ts_ms`` as a third element.

        Kafka publishers use it as the record timestamp without re-parsing the payload.
        """
        return self._cells.render(self.ts_ms, self._row)


def _bump(h: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-(((h - centre) / width) ** 2))


def _profiles(ts_ms: np.ndarray) -> dict[str, np.ndarray]:
    """Daily profiles at each ``ts_ms`` (Shenzhen local time), each roughly in [0, 1].

    Returned as column vectors so they broadcast against (ticks, sensors) matrices.
    """
    local_ms = ts_ms + _LOCAL_OFFSET_MS
    h = (local_ms % _DAY_MS) / _HOUR_MS
    weekend = (local_ms // _DAY_MS + 3) % 7 >= 5  # 1970-01-01 was a Thursday; Monday = 0
    day = np.where((h >= 6.0) & (h <= 22.0), np.sin(np.pi * (h - 6.0) / 16.0), 0.0).clip(0.0)
    commute = _bump(h, 8.5, 1.1) + 0.9 * _bump(h, 18.25, 1.4)
    evening = _bump(h, 20.0, 2.0)
    traffic = 0.08 + 0.35 * day + np.where(weekend, 0.25, 0.6) * commute
    profiles = {
        "traffic": traffic,
        "crowd": 0.03 + 0.35 * day + np.where(weekend, 0.15, 0.6) * commute + np.where(weekend, 0.6, 0.35) * evening,
        "inversion": _bump(h, 4.0, 3.0),
        "sun": np.where((h >= 7.0) & (h <= 19.0), np.sin(np.pi * (h - 7.0) / 12.0), 0.0).clip(0.0),
        "phase": np.sin(2.0 * np.pi * (h - 9.0) / 24.0),  # peaks at 15:00
        "day": day,
        "water": 0.3 + 0.5 * _bump(h, 7.5, 1.5) + 0.6 * evening,
    }
    return {k: v[:, None] for k, v in profiles.items()}


class _Model:
    """Per-sensor baselines and the AR(1) state; produces raw values a chunk of ticks at a time.

    Noise is drawn as one ``(ticks, 2, slots)`` block per chunk, which consumes the generator
    exactly as one ``(2, slots)`` draw per tick would: the output does not depend on chunking.
    """

    def __init__(self, city: City, interval_ms: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.n = len(city.sensors)
        kinds = np.array([s.kind for s in city.sensors])
        zones = np.array([s.zone for s in city.sensors])
        self.idx = {k: np.flatnonzero(kinds == k) for k in METRICS}
        self.zone_mask = {(k, z): zones[self.idx[k]] == z for k in METRICS for z in city.zone_ids()}
        #: Column of each sensor within its kind's arrays.
        self.kind_pos = np.zeros(self.n, dtype=np.intp)
        for k in METRICS:
            self.kind_pos[self.idx[k]] = np.arange(len(self.idx[k]))
        self.interval_ms = interval_ms
        self.index = {s.sensor_id: i for i, s in enumerate(city.sensors)}
        #: Kind columns of sensor groups, filled by overlays (sensor ids -> columns).
        self.columns_cache: dict[tuple[str, ...], np.ndarray] = {}
        n_of = {k: len(v) for k, v in self.idx.items()}
        self.capacity = rng.uniform(25.0, 60.0, n_of["traffic"])
        self.free_speed = rng.uniform(45.0, 90.0, n_of["traffic"])
        self.pm_base = rng.uniform(15.0, 35.0, n_of["environment"])
        self.temp_off = rng.normal(0.0, 0.8, n_of["environment"])
        self.noise_base = rng.uniform(0.0, 8.0, n_of["environment"])
        self.crowd_cap = rng.uniform(80.0, 2500.0, n_of["crowd"])
        self.pressure0 = rng.uniform(2.5, 4.0, n_of["iot"])
        self.load0 = rng.uniform(50.0, 800.0, n_of["iot"])
        self.drain0 = rng.uniform(5.0, 40.0, n_of["iot"])
        # One slow-deviation slot per (metric, sensor), laid out kind by kind, metric-major.
        self.slices: dict[str, slice] = {}
        start = 0
        for k, specs in METRICS.items():
            stop = start + n_of[k] * len(specs)
            self.slices[k] = slice(start, stop)
            start = stop
        self.phi = math.exp(-interval_ms / _TAU_MS)
        self.innov = math.sqrt(1.0 - self.phi**2)
        self.state = rng.standard_normal(start)

    def deviations(self, ticks: int) -> dict[str, np.ndarray]:
        """Advance the noise ``ticks`` ticks; per kind an array (metrics, ticks, sensors)."""
        noise = self.rng.standard_normal((ticks, 2, self.state.size))
        dev = np.empty((ticks, self.state.size))
        state = self.state
        for r in range(ticks):
            state *= self.phi
            state += self.innov * noise[r, 0]
            dev[r] = state
        dev += _WHITE * noise[:, 1]
        return {
            k: dev[:, self.slices[k]].reshape(ticks, len(specs), -1).transpose(1, 0, 2) for k, specs in METRICS.items()
        }

    def raw(self, ts_ms: np.ndarray, dev: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Unclipped values per kind and metric, each a (ticks, sensors of that kind) array."""
        p = _profiles(ts_ms)
        out: dict[str, dict[str, np.ndarray]] = {}

        z = dev["traffic"]
        ratio = p["traffic"] * np.exp(0.15 * z[0])
        occupancy = 6.0 + 55.0 * ratio**2 + 2.0 * z[2]
        congestion = np.clip(occupancy / 100.0, 0.0, 1.0) ** 1.5
        out["traffic"] = {
            "flow": self.capacity * ratio,
            "speed": self.free_speed * (1.0 - 0.75 * congestion) + 2.0 * z[1],
            "occupancy": occupancy,
        }

        z = dev["environment"]
        pm25 = self.pm_base * (0.6 + 0.5 * p["traffic"] + 0.3 * p["inversion"]) * np.exp(0.25 * z[0])
        no2 = (15.0 + 45.0 * p["traffic"]) * np.exp(0.2 * z[2])
        out["environment"] = {
            "pm25": pm25,
            "pm10": pm25 * 1.6 * np.exp(0.08 * z[1]),
            "no2": no2,
            "o3": (25.0 + 90.0 * p["sun"]) * np.exp(0.2 * z[3]) - 0.2 * no2,
            "temperature": 24.0 + 4.5 * p["phase"] + self.temp_off + 0.6 * z[4],
            "humidity": 78.0 - 14.0 * p["phase"] + 4.0 * z[5],
            "noise": 42.0 + 25.0 * p["traffic"] + self.noise_base + 2.0 * z[6],
        }

        z = dev["crowd"]
        out["crowd"] = {"people": self.crowd_cap * p["crowd"] * np.exp(0.15 * z[0])}

        z = dev["iot"]
        load_shape = 0.45 + 0.3 * p["day"] + 0.25 * p["traffic"]
        out["iot"] = {
            "water_pressure": self.pressure0 * (1.0 - 0.12 * p["water"]) + 0.05 * z[0],
            "power_load": self.load0 * load_shape * np.exp(0.08 * z[1]),
            "drain_level": self.drain0 + 3.0 * z[2],
        }
        return out

    def apply(self, incident: Incident, rows: np.ndarray, raw: dict[str, dict[str, np.ndarray]]) -> None:
        """Overlay ``incident`` on the ticks ``rows`` (boolean) of a chunk, in place."""
        at = np.ix_(rows, self.zone_mask[(incident.kind, incident.zone)])
        m = incident.magnitude
        v = raw[incident.kind]
        if incident.kind == "traffic":
            occ = np.clip(v["occupancy"][at], 0.0, 100.0)
            v["speed"][at] /= 1.0 + m
            v["occupancy"][at] = occ + (100.0 - occ) * (m / (1.0 + m))
            v["flow"][at] /= 1.0 + 0.5 * m
        elif incident.kind == "environment":
            v["pm25"][at] *= 1.0 + m
            v["pm10"][at] *= 1.0 + 0.8 * m
            v["no2"][at] *= 1.0 + 0.3 * m
        elif incident.kind == "crowd":
            v["people"][at] *= 1.0 + m
        else:
            v["drain_level"][at] += 60.0 * m
            v["water_pressure"][at] /= 1.0 + 0.2 * m


def _finish(spec: MetricSpec, x: np.ndarray) -> np.ndarray:
    # Adding 0.0 turns a rounded -0.0 into 0.0, which encodes as "0.0".
    out: np.ndarray = np.round(np.clip(x, spec.lo, spec.hi), spec.decimals) + 0.0
    return out


def generate(
    city: City,
    *,
    start_ms: int,
    interval_ms: int,
    steps: int,
    seed: int,
    incidents: Sequence[Effect] = (),
    faults: Sequence[ValueFault] = (),
) -> Iterator[Batch]:
    """Yield one :class:`Batch` per tick ``start_ms + k * interval_ms`` for ``k < steps``.

    Args:
        city: the sensors to simulate.
        start_ms: event time of the first tick (UTC epoch milliseconds).
        interval_ms: time between ticks (> 0).
        steps: number of ticks (>= 0).
        seed: the same seed (and arguments) always yields identical batches and bytes.
        incidents: events overlaid on the readings they cover, in order: :class:`Incident`,
            or the richer incidents and rain of :mod:`simulators.events`.
        faults: single-sensor value faults (stuck, drift, spike) of :mod:`simulators.events`;
            delivery faults (dropouts, clock skew, duplicates, reordering) act on the message
            stream and are applied by :func:`simulators.feed.feed`.

    Raises:
        ValueError: bad ``interval_ms``/``steps``, an incident in a zone the city lacks or a
            fault on an unknown sensor.
    """
    if interval_ms <= 0 or steps < 0:
        msg = "generate: expected interval_ms > 0 and steps >= 0, " f"got interval_ms={interval_ms} steps={steps}"
        raise ValueError(msg)
    zone_ids = set(city.zone_ids())
    for inc in incidents:
        zone = getattr(inc, "zone", None)
        if zone is not None and zone not in zone_ids:
            msg = f"generate: incident zone: expected one of {sorted(zone_ids)}, got {zone!r}"
            raise ValueError(msg)
    known = set(city.sensor_ids)
    for f in faults:
        if f.sensor_id not in known:
            msg = f"generate: fault sensor: expected a sensor of the city, got {f.sensor_id!r}"
            raise ValueError(msg)
    return _generate(city, start_ms, interval_ms, steps, seed, tuple(incidents), tuple(faults))


def _generate(
    city: City,
    start_ms: int,
    interval_ms: int,
    steps: int,
    seed: int,
    incidents: tuple[Effect, ...],
    faults: tuple[ValueFault, ...],
) -> Iterator[Batch]:
    renderer = Renderer(city, "message")
    n = len(city.sensors)
    for ts, kind_values in chunks(city, start_ms, interval_ms, steps, seed, incidents, faults):
        ticks = len(ts)
        cells = _LazyCells(renderer, kind_values)
        values: dict[str, np.ndarray] = {}
        for kind, specs in METRICS.items():
            idx = np.asarray([i for i, s in enumerate(city.sensors) if s.kind == kind], dtype=np.intp)
            for spec in specs:
                col = np.full((ticks, n), np.nan)
                col[:, idx] = kind_values[kind][spec.name]
                values[spec.name] = col
        for r in range(ticks):
            yield Batch(city, int(ts[r]), {m: col[r] for m, col in values.items()}, cells, r)


def chunks(
    city: City,
    start_ms: int,
    interval_ms: int,
    steps: int,
    seed: int,
    effects: Sequence[Effect] = (),
    faults: Sequence[ValueFault] = (),
    chunk_cells: int = _CHUNK_CELLS,
) -> Iterator[tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]]:
    """The generator core: ``(ts_ms, values)`` per chunk of ticks, without building batches.

    ``values`` maps kind -> metric -> a (ticks, sensors of that kind) array of final values
    (clipped and rounded), columns in sensor order. The output does not depend on chunking.
    Arguments are not validated; use :func:`generate` for checked input.
    """
    model = _Model(city, interval_ms, np.random.default_rng(seed))
    n = model.n
    state: list[dict[str, Any]] = [{} for _ in faults]
    where = [(city.sensor(f.sensor_id).kind, int(model.kind_pos[city.index_of(f.sensor_id)])) for f in faults]
    # Ticks per chunk: enough to amortise numpy's per-call overhead on small cities.
    chunk = max(1, chunk_cells // n)
    for first in range(0, steps, chunk):
        ticks = min(chunk, steps - first)
        ts = start_ms + (first + np.arange(ticks, dtype=np.int64)) * interval_ms
        lo, hi = int(ts[0]), int(ts[-1])
        raw = model.raw(ts, model.deviations(ticks))
        for eff in effects:
            if eff.start_ms > hi or eff.end_ms <= lo:
                continue
            rows = (ts >= eff.start_ms) & (ts < eff.end_ms)
            if rows.any():
                eff.apply(model, ts, rows, raw)
        values = {
            kind: {spec.name: _finish(spec, raw[kind][spec.name]) for spec in specs} for kind, specs in METRICS.items()
        }
        for f, st, (kind, pos) in zip(faults, state, where, strict=True):
            if f.start_ms > hi or f.end_ms <= lo:
                continue
            rows = (ts >= f.start_ms) & (ts < f.end_ms)
            cols = {spec.name: values[kind][spec.name][:, pos] for spec in METRICS[kind]}
            f.apply_values(ts, rows, cols, st)
            for spec in METRICS[kind]:
                values[kind][spec.name][:, pos] = _finish(spec, cols[spec.name])
        yield ts, values
