"""Scenario files (TOML): which zones and sensors, when, and which incidents, weather and faults.

A scenario is read with :func:`load_scenario` (a path, or the name of a scenario shipped in
``simulators/scenarios/``) and validated strictly: unknown keys, wrong types, bad durations,
zones, kinds, types or sensors are rejected with a :class:`~simulators.errors.ScenarioError`
naming the file, the line (when it can be found) and the field. :meth:`Scenario.plan`
resolves it into a :class:`~simulators.feed.Plan`, placing the random incidents and faults.

The format (every key but ``start`` and ``duration`` is optional)::

    name = "rush-hour"
    zones = ["futian", "luohu"]          # default: all six districts
    start = "2026-06-01T00:00:00Z"       # RFC 3339 UTC (or a TOML datetime with offset)
    duration = "24h"                     # durations: 250ms, 10s, 5m, 1h30m, 2d
    interval = "30s"                     # default 10s
    seed = 7

    [sensors]                            # per kind, spread round-robin over the zones
    traffic = 48
    environment = 24
    crowd = 24
    iot = 24

    [random]                             # placed without overlapping anything else
    incidents = 20
    faults = 20
    seed = 11

    [[weather]]
    type = "rain"
    zones = ["baoan"]
    start = "14h"                        # offset from the scenario start, or RFC 3339
    duration = "2h"
    intensity = 0.6

    [[incident]]
    type = "accident"                    # see simulators.events.INCIDENT_TYPES
    zone = "luohu"
    start = "7h30m"
    duration = "40m"                     # or end = "8h10m"
    severity = 0.8                       # (0, 1], default 0.8
    sensor = "trf-luohu-0001"            # optional: accident segment / leaking sensor

    [[fault]]
    type = "stuck"                       # see simulators.events.FAULT_TYPES
    kind = "environment"                 # the sensor: kind + zone (+ index, default 0) ...
    zone = "futian"
    index = 1
    # sensor = "env-futian-0049"         # ... or its id
    start = "3h"
    duration = "1h"
    # severity, metric (drift, spike), offset = "-5m" (clock_skew), delay = "2m"
    # (out_of_order), probability = 0.1 and seed (spike)

>>> s = parse_scenario('start = "2026-06-01T00:00:00Z"\\nduration = "1h"\\n[sensors]\\ncrowd = 6', "x.toml")
>>> p = s.plan()
>>> (p.steps, len(p.city.sensors), p.city.sensors[0].sensor_id)
(360, 6, 'crd-futian-0000')
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

from simulators.city import KIND_ORDER, KIND_PREFIX, ZONES, plan_city
from simulators.errors import ScenarioError
from simulators.events import FAULT_TYPES, INCIDENT_TYPES, Event, Fault, Rain, make_fault, make_incident, random_events
from simulators.feed import Plan

__all__ = ["Scenario", "list_scenarios", "load_scenario", "parse_duration", "parse_scenario"]

_DURATION_RE: Final = re.compile(r"([+-]?)((?:\d+(?:ms|s|m|h|d))+)")
_PART_RE: Final = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")
_ZONE_IDS: Final = tuple(z.zone_id for z in ZONES)
_MAX_SENSORS: Final = 1_000_000
_MAX_STEPS: Final = 100_000_000


def parse_duration(text: str, *, signed: bool = False) -> int:
    """Parse ``1h30m``, ``45m``, ``10s``, ``250ms``, ``2d`` (``-5m`` when ``signed``) into ms.

    >>> parse_duration("1h30m"), parse_duration("-5m", signed=True)
    (5400000, -300000)

    Raises:
        ValueError: not a duration, a sign where none is allowed, or zero.
    """
    m = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None or (m[1] and not signed):
        sign = "[+-]" if signed else ""
        msg = f"expected a duration like {sign}1h30m (units d, h, m, s, ms), got {text!r}"
        raise ValueError(msg)
    value = sum(int(n) * _UNIT_MS[u] for n, u in _PART_RE.findall(m[2]))
    if value == 0:
        msg = f"expected a non-zero duration, got {text!r}"
        raise ValueError(msg)
    return -value if m[1] == "-" else value


def _parse_instant(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            msg = f"expected a date-time with a UTC offset, got {value.isoformat()}"
            raise ValueError(msg)
        return int(value.timestamp() * 1000)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            dt = None
        if dt is not None and dt.tzinfo is not None:
            return round(dt.astimezone(UTC).timestamp() * 1000)
    msg = f"expected an RFC 3339 date-time with offset (2026-06-01T00:00:00Z), got {value!r}"
    raise ValueError(msg)


# --------------------------------------------------------------------------------------------
# Locating fields in the source, for error messages


def _locate(text: str, section: str | None, index: int | None, key: str | None) -> int | None:
    """1-based line of ``key`` in table ``section`` (entry ``index`` of an array of tables)."""
    current: tuple[str | None, int | None] = (None, None)
    counts: dict[str, int] = {}
    header_line = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if m := re.match(r"\[\[\s*([A-Za-z0-9_.\-]+)\s*\]\]", stripped):
            counts[m[1]] = counts.get(m[1], -1) + 1
            current = (m[1], counts[m[1]])
        elif m := re.match(r"\[\s*([A-Za-z0-9_.\-]+)\s*\]", stripped):
            current = (m[1], None)
        else:
            if current == (section, index) and key is not None and re.match(rf"{re.escape(key)}\s*=", stripped):
                return n
            continue
        if current == (section, index):
            header_line = n
    return header_line


@dataclass(frozen=True, slots=True)
class _Where:
    source: str
    text: str
    section: str | None = None
    index: int | None = None

    def at(self, key: str | None = None) -> str:
        line = _locate(self.text, self.section, self.index, key)
        place = self.source + (f":{line}" if line else "")
        name = self.section if self.index is None else f"{self.section}[{self.index}]"
        field = ".".join(p for p in (name, key) if p) or "scenario"
        return f"{place}: {field}"

    def error(self, key: str | None, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.at(key)}: {problem}")


class _Table:
    """Typed, strict access to one TOML table; :meth:`done` rejects keys nobody asked for."""

    def __init__(self, data: Any, where: _Where) -> None:
        if not isinstance(data, dict):
            raise where.error(None, f"expected a table, got {type(data).__name__}")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def get(self, key: str, types: type | tuple[type, ...], default: Any = ..., *, what: str = "") -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.where.error(key, "required field is missing")
            return default
        value = self.data[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _tuple(types))
        if not ok:
            expected = what or " or ".join(t.__name__ for t in _tuple(types))
            raise self.where.error(key, f"expected {expected}, got {value!r}")
        return value

    def convert(self, key: str, fn: Any, value: Any) -> Any:
        try:
            return fn(value)
        except ValueError as exc:
            raise self.where.error(key, str(exc)) from None

    def number(self, key: str, default: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
        value = float(self.get(key, (int, float), default))
        if not ((lo < value if lo_open else lo <= value) and value <= hi):
            bound = f"{lo} < x <= {hi}" if lo_open else f"{lo} <= x <= {hi}"
            raise self.where.error(key, f"expected a number with {bound}, got {value!r}")
        return value

    def duration(self, key: str, default_ms: int | None = None, *, signed: bool = False) -> int:
        if key not in self.data and default_ms is not None:
            self.used.add(key)
            return default_ms
        value = self.get(key, str, what='a duration string such as "45m"')
        return self.convert(key, lambda v: parse_duration(v, signed=signed), value)  # type: ignore[no-any-return]

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.where.error(extra[0], f"unknown field (allowed: {', '.join(sorted(self.used))})")


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


# --------------------------------------------------------------------------------------------
# Specs (times are offsets from the scenario start)


@dataclass(frozen=True, slots=True)
class _IncidentSpec:
    where: str
    id: str | None
    type: str
    zone: str
    start_ms: int
    end_ms: int
    severity: float
    sensor: str | None


@dataclass(frozen=True, slots=True)
class _FaultSpec:
    where: str
    id: str | None
    type: str
    sensor: str | None
    kind: str | None
    zone: str | None
    index: int
    start_ms: int
    end_ms: int
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario. Times of incidents, weather and faults are offsets from ``start_ms``.

    Attributes:
        name: scenario name.
        source: the file it came from.
        zones: district ids.
        sensors: sensors per kind.
        start_ms: simulated start (UTC epoch ms).
        duration_ms: simulated span.
        interval_ms: time between a sensor's readings.
        seed: noise seed.
        random_incidents: incidents placed at random.
        random_faults: faults placed at random.
        random_seed: seed of the random placement.
        description: free text.
    """

    name: str
    source: str
    zones: tuple[str, ...]
    sensors: Mapping[str, int]
    start_ms: int
    duration_ms: int
    interval_ms: int
    seed: int
    random_incidents: int = 0
    random_faults: int = 0
    random_seed: int = 0
    description: str = ""
    incidents: tuple[_IncidentSpec, ...] = ()
    faults: tuple[_FaultSpec, ...] = ()
    weather: tuple[tuple[str, tuple[str, ...], int, int, float], ...] = ()

    @property
    def total_sensors(self) -> int:
        """Sensors over all kinds."""
        return sum(self.sensors.values())

    def with_overrides(
        self,
        *,
        start_ms: int | None = None,
        duration_ms: int | None = None,
        interval_ms: int | None = None,
        seed: int | None = None,
        total_sensors: int | None = None,
    ) -> Scenario:
        """A copy with another start, span, interval, seed or number of sensors.

        ``total_sensors`` scales every kind's count in proportion (at least one sensor per zone
        for kinds the scenario has). Incidents keep their offsets from the start.
        """
        sensors = dict(self.sensors)
        if total_sensors is not None:
            if total_sensors < 1:
                msg = f"{self.source}: sensors override: expected >= 1, got {total_sensors}"
                raise ScenarioError(msg)
            total = self.total_sensors
            sensors = {
                k: max(round(v * total_sensors / total), len(self.zones)) if v else 0 for k, v in sensors.items()
            }
        return replace(
            self,
            start_ms=self.start_ms if start_ms is None else start_ms,
            duration_ms=self.duration_ms if duration_ms is None else duration_ms,
            interval_ms=self.interval_ms if interval_ms is None else interval_ms,
            seed=self.seed if seed is None else seed,
            sensors=sensors,
        )

    def plan(self) -> Plan:
        """Resolve into a :class:`~simulators.feed.Plan` (deterministic for a scenario).

        Raises:
            ScenarioError: an incident or fault does not fit the city (zone without such
                sensors, unknown sensor, out of the simulated span) or random placement fails.
        """
        city = plan_city(self.zones, self.sensors, self.seed)
        t0 = self.start_ms
        end = self.duration_ms
        events: list[Event] = []
        faults: list[Fault] = []
        used_ids: set[str] = set()

        def check_span(where: str, a: int, b: int) -> None:
            if a < 0 or b > end:
                msg = (
                    f"{where}: expected a window within the simulated span [0, {end // 60_000} min), "
                    f"got [{a // 60_000}, {b // 60_000}) min"
                )
                raise ScenarioError(msg)

        for n, spec in enumerate(self.incidents, 1):
            check_span(spec.where, spec.start_ms, spec.end_ms)
            id_ = spec.id or f"inc-{n:03d}"
            try:
                events.append(
                    make_incident(
                        city,
                        id_,
                        spec.type,
                        spec.zone,
                        t0 + spec.start_ms,
                        t0 + spec.end_ms,
                        spec.severity,
                        interval_ms=self.interval_ms,
                        sensor=spec.sensor,
                    )
                )
            except ValueError as exc:
                raise ScenarioError(f"{spec.where}: {exc}") from None
            used_ids.add(id_)
        for n, fs in enumerate(self.faults, 1):
            check_span(fs.where, fs.start_ms, fs.end_ms)
            sensor = fs.sensor
            if sensor is None:
                assert fs.kind is not None  # noqa: S101 - parse guarantees kind + zone
                pool = [s.sensor_id for s in city.sensors if s.kind == fs.kind and s.zone == fs.zone]
                if fs.index >= len(pool):
                    msg = (
                        f"{fs.where}: index: zone {fs.zone!r} has {len(pool)} {fs.kind} sensor(s), got index {fs.index}"
                    )
                    raise ScenarioError(msg)
                sensor = pool[fs.index]
            id_ = fs.id or f"flt-{n:03d}"
            try:
                faults.append(make_fault(city, id_, fs.type, sensor, t0 + fs.start_ms, t0 + fs.end_ms, **fs.options))
            except ValueError as exc:
                raise ScenarioError(f"{fs.where}: {exc}") from None
            used_ids.add(id_)
        try:
            more_events, more_faults = random_events(
                city,
                incidents=self.random_incidents,
                faults=self.random_faults,
                start_ms=t0,
                end_ms=t0 + end,
                interval_ms=self.interval_ms,
                seed=self.random_seed,
                existing=[*events, *faults],
                first_incident=len(self.incidents) + 1,
                first_fault=len(self.faults) + 1,
            )
        except ValueError as exc:
            raise ScenarioError(f"{self.source}: random: {exc}") from None
        clash = used_ids & ({e.id for e in more_events} | {f.id for f in more_faults})
        if clash:
            msg = f"{self.source}: ids {sorted(clash)} are used both explicitly and by random placement"
            raise ScenarioError(msg)
        weather = tuple(Rain(zones, t0 + a, t0 + b, i) for _, zones, a, b, i in self.weather)
        return Plan(
            city=city,
            start_ms=t0,
            interval_ms=self.interval_ms,
            steps=max(end // self.interval_ms, 1),
            seed=self.seed,
            incidents=tuple(events + more_events),
            faults=tuple(faults + more_faults),
            weather=weather,
            name=self.name,
        )


# --------------------------------------------------------------------------------------------
# Parsing


def _window(t: _Table, start_of_run: int) -> tuple[int, int]:
    raw = t.get("start", (str, datetime), what="an offset (7h30m) or an RFC 3339 date-time")

    def instant(key: str, value: Any) -> int:
        if isinstance(value, str) and value.strip() in ("0", "0s", "0m", "0h"):
            return 0
        if (
            isinstance(value, str)
            and _DURATION_RE.fullmatch(value.strip())
            and not value.strip().startswith(("-", "+"))
        ):
            return parse_duration(value)
        return t.convert(key, _parse_instant, value) - start_of_run  # type: ignore[no-any-return]

    try:
        a = instant("start", raw)
    except ValueError as exc:
        raise t.where.error("start", str(exc)) from None
    has_end, has_dur = "end" in t.data, "duration" in t.data
    if has_end == has_dur:
        raise t.where.error("duration", "expected exactly one of 'duration' and 'end'")
    if has_dur:
        b = a + t.duration("duration")
    else:
        raw_end = t.get("end", (str, datetime), what="an offset or an RFC 3339 date-time")
        try:
            b = instant("end", raw_end)
        except ValueError as exc:
            raise t.where.error("end", str(exc)) from None
        if b <= a:
            raise t.where.error("end", f"expected end after start, got start={raw!r} end={raw_end!r}")
    return a, b


def _choice(t: _Table, key: str, options: Sequence[str], default: Any = ...) -> Any:
    value = t.get(key, str, default)
    if value is not None and value is not default and value not in options:
        raise t.where.error(key, f"expected one of {list(options)}, got {value!r}")
    return value


def _zones(t: _Table, key: str, allowed: Sequence[str], default: Any) -> tuple[str, ...]:
    value = t.get(key, list, default, what="a list of zone ids")
    if value is default:
        return tuple(default)
    if not value or len(set(map(str, value))) != len(value) or any(z not in allowed for z in value):
        raise t.where.error(key, f"expected distinct zone ids from {list(allowed)}, got {value!r}")
    return tuple(value)


def _opt_id(t: _Table) -> str | None:
    value = t.get("id", str, None)
    if value is not None and not _ID_RE.fullmatch(value):
        raise t.where.error("id", f"expected an id matching {_ID_RE.pattern}, got {value!r}")
    return value  # type: ignore[no-any-return]


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Validate scenario TOML ``text``; ``source`` names it in error messages.

    Raises:
        ScenarioError: bad TOML or any invalid field, naming ``source``, line and field.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{source}: invalid TOML: {exc}"
        raise ScenarioError(msg) from None
    w = _Where(source, text)
    top = _Table(doc, w)
    name = top.get("name", str, Path(source).stem)
    description = top.get("description", str, "")
    zones = _zones(top, "zones", _ZONE_IDS, _ZONE_IDS)
    start_raw = top.get("start", (str, datetime), what="an RFC 3339 date-time")
    start_ms = top.convert("start", _parse_instant, start_raw)
    duration_ms = top.duration("duration")
    interval_ms = top.duration("interval", 10_000)
    if interval_ms > duration_ms:
        raise w.error(
            "interval", f"expected an interval no longer than the duration, got {interval_ms} ms > {duration_ms} ms"
        )
    if duration_ms // interval_ms > _MAX_STEPS:
        raise w.error("interval", f"expected at most {_MAX_STEPS} ticks, got {duration_ms // interval_ms}")
    seed = top.get("seed", int, 0)

    sw = _Where(source, text, "sensors")
    sensors: dict[str, int] = dict.fromkeys(KIND_ORDER, 0)
    if "sensors" in doc:
        st = _Table(top.get("sensors", dict), sw)
        for kind in KIND_ORDER:
            n = st.get(kind, int, 0)
            if not 0 <= n <= _MAX_SENSORS:
                raise sw.error(kind, f"expected a count between 0 and {_MAX_SENSORS}, got {n}")
            sensors[kind] = n
        st.done()
    else:
        top.used.add("sensors")
        sensors = dict.fromkeys(KIND_ORDER, len(zones))
    if sum(sensors.values()) < 1:
        raise sw.error(None, "expected at least one sensor")

    rnd = (0, 0, seed)
    if "random" in doc:
        rt = _Table(top.get("random", dict), _Where(source, text, "random"))
        counts = []
        for key in ("incidents", "faults"):
            n = rt.get(key, int, 0)
            if not 0 <= n <= 10_000:
                raise rt.where.error(key, f"expected a count between 0 and 10000, got {n}")
            counts.append(n)
        rnd = (counts[0], counts[1], rt.get("seed", int, seed))
        rt.done()

    incidents = []
    for i, raw in enumerate(top.get("incident", list, [], what="an array of [[incident]] tables")):
        t = _Table(raw, _Where(source, text, "incident", i))
        type_ = _choice(t, "type", tuple(INCIDENT_TYPES))
        zone = _choice(t, "zone", zones)
        a, b = _window(t, start_ms)
        severity = t.number("severity", 0.8, 0.0, 1.0, lo_open=True)
        sensor = t.get("sensor", str, None)
        ident = _opt_id(t)
        t.done()
        incidents.append(_IncidentSpec(t.where.at(), ident, type_, zone, a, b, severity, sensor))

    faults = []
    for i, raw in enumerate(top.get("fault", list, [], what="an array of [[fault]] tables")):
        t = _Table(raw, _Where(source, text, "fault", i))
        type_ = _choice(t, "type", FAULT_TYPES)
        sensor = t.get("sensor", str, None)
        kind = _choice(t, "kind", KIND_ORDER, None)
        zone = _choice(t, "zone", zones, None)
        index = t.get("index", int, 0)
        if sensor is None and (kind is None or zone is None):
            raise t.where.error("sensor", "expected 'sensor' (an id) or 'kind' and 'zone' (plus optional 'index')")
        if sensor is not None and (kind is not None or zone is not None or "index" in t.data):
            raise t.where.error("sensor", "expected either 'sensor' or 'kind'/'zone'/'index', not both")
        if sensor is not None and not sensor.startswith(tuple(KIND_PREFIX.values())):
            raise t.where.error("sensor", f"expected a sensor id such as trf-futian-0000, got {sensor!r}")
        if index < 0:
            raise t.where.error("index", f"expected index >= 0, got {index}")
        a, b = _window(t, start_ms)
        options: dict[str, Any] = {}
        if "severity" in t.data:
            options["severity"] = t.number("severity", ..., 0.0, 10.0, lo_open=True)
        if "metric" in t.data:
            options["metric"] = t.get("metric", str)
        if "offset" in t.data:
            options["offset_ms"] = t.duration("offset", signed=True)
        if "delay" in t.data:
            options["delay_ms"] = t.duration("delay")
        if "probability" in t.data:
            options["probability"] = t.number("probability", ..., 0.0, 1.0, lo_open=True)
        if "seed" in t.data:
            options["seed"] = t.get("seed", int)
        if type_ == "clock_skew" and "offset_ms" not in options:
            raise t.where.error("offset", 'clock_skew needs an offset such as "-5m"')
        if type_ == "out_of_order" and "delay_ms" not in options:
            raise t.where.error("delay", 'out_of_order needs a delay such as "2m"')
        ident = _opt_id(t)
        t.done()
        faults.append(_FaultSpec(t.where.at(), ident, type_, sensor, kind, zone, index, a, b, options))

    weather = []
    for i, raw in enumerate(top.get("weather", list, [], what="an array of [[weather]] tables")):
        t = _Table(raw, _Where(source, text, "weather", i))
        _choice(t, "type", ("rain",))
        wz = _zones(t, "zones", zones, zones)
        a, b = _window(t, start_ms)
        intensity = t.number("intensity", 0.5, 0.0, 1.0, lo_open=True)
        t.done()
        weather.append((t.where.at(), wz, a, b, intensity))
    for what, items in (("incident", incidents), ("fault", faults)):
        ids = [x.id for x in items if x.id]
        if len(ids) != len(set(ids)):
            raise w.error(what, f"ids must be unique, got {ids}")
    top.done()
    return Scenario(
        name=name,
        source=source,
        zones=zones,
        sensors=sensors,
        start_ms=start_ms,
        duration_ms=duration_ms,
        interval_ms=interval_ms,
        seed=seed,
        random_incidents=rnd[0],
        random_faults=rnd[1],
        random_seed=rnd[2],
        description=description,
        incidents=tuple(incidents),
        faults=tuple(faults),
        weather=tuple(weather),
    )


def list_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    folder = resources.files("simulators").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(path_or_name: str | Path) -> Scenario:
    """Load a scenario from a file, or a shipped one by name (``"default"``).

    Raises:
        ScenarioError: no such file or scenario, or an invalid one.
    """
    text_name = str(path_or_name)
    path = Path(path_or_name)
    if path.suffix == ".toml" or path.exists() or "/" in text_name:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"{path}: cannot read scenario: {exc}"
            raise ScenarioError(msg) from None
        return parse_scenario(text, str(path))
    names = list_scenarios()
    if text_name not in names:
        msg = f"scenario {text_name!r}: expected a .toml file or one of {names}"
        raise ScenarioError(msg)
    resource = resources.files("simulators").joinpath("scenarios", f"{text_name}.toml")
    return parse_scenario(resource.read_text(encoding="utf-8"), f"{text_name}.toml")
