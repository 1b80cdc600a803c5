"""A small model of Shenzhen: districts, sensors and the metrics each sensor kind reports.

The city is pure data: :func:`build_city` places ``n_sensors`` sensors round-robin over the four
kinds and six districts, jittered around each district centre, from a seed. Nothing here does I/O.

>>> city = build_city(8, seed=1)
>>> [s.sensor_id for s in city.sensors[:4]]
['trf-futian-0000', 'env-futian-0001', 'crd-futian-0002', 'iot-futian-0003']
>>> city.sensors[4].zone
'luohu'
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

#: The sensor kinds, in the order sensors are placed.
KIND_ORDER: Final[tuple[str, ...]] = ("traffic", "environment", "crowd", "iot")
#: Short prefix of each kind's sensor ids.
KIND_PREFIX: Final[Mapping[str, str]] = MappingProxyType(
    {"traffic": "trf", "environment": "env", "crowd": "crd", "iot": "iot"}
)

_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
_KM_PER_DEG_LAT: Final = 110.574


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric a sensor kind reports.

    Attributes:
        name: metric name (``[a-z][a-z0-9_]{0,63}``).
        unit: unit string carried in every reading.
        lo: physical lower bound; generated values never go below it.
        hi: physical upper bound; generated values never exceed it.
        decimals: values are rounded to this many decimals.
    """

    name: str
    unit: str
    lo: float
    hi: float
    decimals: int


#: Metrics per kind, in the order they appear in a reading.
METRICS: Final[Mapping[str, tuple[MetricSpec, ...]]] = MappingProxyType(
    {
        "traffic": (
            MetricSpec("flow", "veh/min", 0.0, 200.0, 1),
            MetricSpec("speed", "km/h", 0.0, 130.0, 1),
            MetricSpec("occupancy", "%", 0.0, 100.0, 1),
        ),
        "environment": (
            MetricSpec("pm25", "ug/m3", 0.0, 1000.0, 1),
            MetricSpec("pm10", "ug/m3", 0.0, 1500.0, 1),
            MetricSpec("no2", "ug/m3", 0.0, 1000.0, 1),
            MetricSpec("o3", "ug/m3", 0.0, 800.0, 1),
            MetricSpec("temperature", "degC", -10.0, 50.0, 2),
            MetricSpec("humidity", "%", 0.0, 100.0, 1),
            MetricSpec("noise", "dBA", 20.0, 130.0, 1),
        ),
        "crowd": (MetricSpec("people", "count", 0.0, 100_000.0, 0),),
        "iot": (
            MetricSpec("water_pressure", "bar", 0.0, 10.0, 3),
            MetricSpec("power_load", "kW", 0.0, 5000.0, 2),
            MetricSpec("drain_level", "cm", 0.0, 300.0, 1),
        ),
    }
)


@dataclass(frozen=True, slots=True)
class Zone:
    """A district: lowercase ascii id, display name, centre and rough radius."""

    zone_id: str
    name: str
    lat: float
    lon: float
    radius_km: float


#: Shenzhen districts (approximate centres, WGS84).
ZONES: Final[tuple[Zone, ...]] = (
    Zone("futian", "Futian", 22.5410, 114.0550, 4.0),
    Zone("luohu", "Luohu", 22.5485, 114.1315, 4.0),
    Zone("nanshan", "Nanshan", 22.5333, 113.9305, 5.0),
    Zone("baoan", "Bao'an", 22.5553, 113.8830, 6.0),
    Zone("longgang", "Longgang", 22.7209, 114.2467, 7.0),
    Zone("longhua", "Longhua", 22.6968, 114.0449, 5.0),
)


#: Districts sharing a border; pollution episodes spread along these edges.
NEIGHBOURS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "futian": ("luohu", "nanshan", "longhua"),
        "luohu": ("futian", "longgang", "longhua"),
        "nanshan": ("futian", "baoan", "longhua"),
        "baoan": ("nanshan", "longhua"),
        "longgang": ("luohu", "longhua"),
        "longhua": ("futian", "luohu", "nanshan", "baoan", "longgang"),
    }
)


@dataclass(frozen=True, slots=True)
class Sensor:
    """One sensor.

    Attributes:
        sensor_id: unique id matching ``[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}``.
        kind: one of ``traffic``, ``environment``, ``crowd``, ``iot``.
        zone: id of the district the sensor is in.
        lat: latitude in degrees (6 decimals).
        lon: longitude in degrees (6 decimals).
        upstream: previous traffic segment in the zone's chain (traffic sensors only).
        downstream: next traffic segment in the zone's chain (traffic sensors only).
    """

    sensor_id: str
    kind: str
    zone: str
    lat: float
    lon: float
    upstream: str | None = None
    downstream: str | None = None

    @property
    def topic(self) -> str:
        """MQTT topic of this sensor: ``city/<kind>/<zone>/<sensor_id>``."""
        return f"city/{self.kind}/{self.zone}/{self.sensor_id}"


@dataclass(frozen=True, slots=True)
class City:
    """Districts and sensors, in placement order."""

    zones: tuple[Zone, ...]
    sensors: tuple[Sensor, ...]
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        zone_ids = {z.zone_id for z in self.zones}
        for s in self.sensors:
            if not _ID_RE.fullmatch(s.sensor_id) or s.kind not in METRICS or s.zone not in zone_ids:
                msg = (
                    f"city: sensor {s.sensor_id!r}: expected an id matching {_ID_RE.pattern}, "
                    f"a kind in {sorted(METRICS)} and a zone in {sorted(zone_ids)}, "
                    f"got kind={s.kind!r} zone={s.zone!r}"
                )
                raise ValueError(msg)
        index = {s.sensor_id: i for i, s in enumerate(self.sensors)}
        if len(index) != len(self.sensors):
            msg = "city: sensor ids must be unique"
            raise ValueError(msg)
        object.__setattr__(self, "_index", MappingProxyType(index))

    @property
    def sensor_ids(self) -> tuple[str, ...]:
        """Sensor ids in placement order."""
        return tuple(s.sensor_id for s in self.sensors)

    def index_of(self, sensor_id: str) -> int:
        """Position of ``sensor_id`` in :attr:`sensors` (``KeyError`` if unknown)."""
        return self._index[sensor_id]

    def sensor(self, sensor_id: str) -> Sensor:
        """The sensor with this id (``KeyError`` if unknown)."""
        return self.sensors[self._index[sensor_id]]

    def of_kind(self, kind: str) -> tuple[Sensor, ...]:
        """Sensors of one kind, in placement order."""
        return tuple(s for s in self.sensors if s.kind == kind)

    def zone_ids(self) -> tuple[str, ...]:
        """District ids."""
        return tuple(z.zone_id for z in self.zones)


def build_city(n_sensors: int, seed: int) -> City:
    """Place ``n_sensors`` sensors over the Shenzhen districts.

    Sensor ``i`` has kind ``KIND_ORDER[i % 4]`` and zone ``ZONES[(i // 4) % 6]``, so every 24
    consecutive sensors cover each (kind, zone) pair once. Positions are jittered uniformly within
    each district's radius. Traffic sensors of a zone form a chain (upstream -> downstream) in
    placement order.

    Args:
        n_sensors: number of sensors (>= 1).
        seed: seed of the position jitter; the same seed gives the same city.

    Raises:
        ValueError: ``n_sensors`` < 1.

    >>> c = build_city(48, seed=7)
    >>> s = c.sensor("trf-futian-0024")
    >>> s.upstream, s.downstream
    ('trf-futian-0000', None)
    """
    if n_sensors < 1:
        msg = f"build_city: expected n_sensors >= 1, got {n_sensors}"
        raise ValueError(msg)
    rng = random.Random(seed)
    placed: list[tuple[str, str, str, float, float]] = []
    for i in range(n_sensors):
        kind = KIND_ORDER[i % len(KIND_ORDER)]
        zone = ZONES[(i // len(KIND_ORDER)) % len(ZONES)]
        # Uniform over a disc: radius ~ sqrt(u) keeps the density flat.
        r_km = zone.radius_km * math.sqrt(rng.random())
        theta = rng.uniform(0.0, 2.0 * math.pi)
        lat = zone.lat + r_km * math.sin(theta) / _KM_PER_DEG_LAT
        lon = zone.lon + r_km * math.cos(theta) / (111.320 * math.cos(math.radians(zone.lat)))
        sensor_id = f"{KIND_PREFIX[kind]}-{zone.zone_id}-{i:04d}"
        placed.append((sensor_id, kind, zone.zone_id, round(lat, 6), round(lon, 6)))

    return City(zones=ZONES, sensors=_link(placed))


def plan_city(zone_ids: Sequence[str], counts: Mapping[str, int], seed: int) -> City:
    """Place ``counts[kind]`` sensors of each kind, round-robin over ``zone_ids``.

    Sensors are laid out kind by kind (traffic, environment, crowd, iot); sensor ``i`` of a kind
    goes to ``zone_ids[i % len(zone_ids)]``. Each zone's traffic sensors sit along one arterial
    road through the district centre, in driving order: a segment's ``upstream`` neighbour is the
    previous one on the road. Other sensors are spread uniformly over the district.

    Args:
        zone_ids: districts to use (ids from :data:`ZONES`, no duplicates).
        counts: sensors per kind (kinds from :data:`KIND_ORDER`, each >= 0, total >= 1).
        seed: the same seed gives the same city.

    Raises:
        ValueError: unknown or duplicate zone, unknown kind, negative count or no sensors at all.

    >>> c = plan_city(["futian", "luohu"], {"traffic": 4, "iot": 1}, seed=1)
    >>> [s.sensor_id for s in c.sensors]
    ['trf-futian-0000', 'trf-luohu-0001', 'trf-futian-0002', 'trf-luohu-0003', 'iot-futian-0004']
    >>> c.sensor("trf-futian-0002").upstream
    'trf-futian-0000'
    """
    by_id = {z.zone_id: z for z in ZONES}
    if not zone_ids or len(set(zone_ids)) != len(zone_ids) or any(z not in by_id for z in zone_ids):
        msg = f"plan_city zones: expected distinct ids from {sorted(by_id)}, got {list(zone_ids)!r}"
        raise ValueError(msg)
    bad = {k: v for k, v in counts.items() if k not in KIND_PREFIX or not isinstance(v, int) or v < 0}
    if bad or sum(counts.values()) < 1:
        msg = (
            f"plan_city counts: expected kinds from {list(KIND_ORDER)} with counts >= 0 (total >= 1), "
            f"got {dict(counts)!r}"
        )
        raise ValueError(msg)
    rng = random.Random(seed)
    zones = [by_id[z] for z in zone_ids]
    road = {z.zone_id: rng.uniform(0.0, math.pi) for z in zones}
    per_zone = {z.zone_id: -(-counts.get("traffic", 0) // len(zones)) for z in zones}
    placed: list[tuple[str, str, str, float, float]] = []
    seen: dict[str, int] = {}
    i = 0
    for kind in KIND_ORDER:
        for j in range(counts.get(kind, 0)):
            zone = zones[j % len(zones)]
            if kind == "traffic":
                # Evenly spaced along the road, driving away from the (-) end, with a little jitter.
                k = seen.get(zone.zone_id, 0)
                seen[zone.zone_id] = k + 1
                along = zone.radius_km * (-0.9 + 1.8 * (k + 0.5) / per_zone[zone.zone_id])
                side = rng.uniform(-0.05, 0.05)
                theta = road[zone.zone_id]
                dx = along * math.cos(theta) - side * math.sin(theta)
                dy = along * math.sin(theta) + side * math.cos(theta)
            else:
                r_km = zone.radius_km * math.sqrt(rng.random())
                theta = rng.uniform(0.0, 2.0 * math.pi)
                dx, dy = r_km * math.cos(theta), r_km * math.sin(theta)
            lat = zone.lat + dy / _KM_PER_DEG_LAT
            lon = zone.lon + dx / (111.320 * math.cos(math.radians(zone.lat)))
            placed.append(
                (f"{KIND_PREFIX[kind]}-{zone.zone_id}-{i:04d}", kind, zone.zone_id, round(lat, 6), round(lon, 6))
            )
            i += 1
    return City(zones=tuple(zones), sensors=_link(placed))


def _link(placed: list[tuple[str, str, str, float, float]]) -> tuple[Sensor, ...]:
    chains: dict[str, list[str]] = {}
    for sensor_id, kind, zone_id, _, _ in placed:
        if kind == "traffic":
            chains.setdefault(zone_id, []).append(sensor_id)
    links: dict[str, tuple[str | None, str | None]] = {}
    for chain in chains.values():
        for j, sid in enumerate(chain):
            links[sid] = (chain[j - 1] if j > 0 else None, chain[j + 1] if j + 1 < len(chain) else None)
    return tuple(
        Sensor(sid, kind, zone_id, lat, lon, *links.get(sid, (None, None))) for sid, kind, zone_id, lat, lon in placed
    )
