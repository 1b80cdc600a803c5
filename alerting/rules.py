"""Alert rule files: parsing and validation (pure).

A rule file is TOML with up to four parts (see ``alerting/default_rules.toml``)::

    [engine]          # cool-down, rate limits, default escalation, sparkline length, zone hold
    [[rule]]          # per-sensor rules: threshold, baseline, rate_of_change, anomaly,
                      # silence, stuck, out_of_range, jump, spike, drift
    [[zone_rule]]     # k of n sensors of a zone in alarm within T -> one zone incident
    [[maintenance]]   # windows per sensor or zone that suppress (and record) alerts

:func:`load_rules` validates everything at start-up and on every hot reload; a
:class:`~alerting.errors.RuleError` names the file, the line, the rule and the field.

The stateless :class:`ThresholdRule` / :func:`evaluate` pair is kept for
:class:`streams.pipeline.Pipeline`'s per-window checks (tests and benchmarks); the worker runs
the stateful :class:`alerting.engine.AlertEngine` instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, get_args

from alerting.errors import RuleError

logger = logging.getLogger(__name__)

Severity = Literal["info", "warning", "critical"]
Category = Literal["incident", "maintenance", "summary"]
Op = Literal[">", ">=", "<", "<="]
RuleType = Literal[
    "threshold", "baseline", "rate_of_change", "anomaly", "silence", "stuck", "out_of_range", "jump",
    "spike", "drift",
]
#: ``baseline`` rules compare a window with the sensor's own recent normal: ``ratio`` (value / baseline)
#: or ``delta`` (value - baseline, in the metric's unit).
BaselineMode = Literal["ratio", "delta"]
Fold = Literal["always", "after_raise"]

SEVERITIES: Final[tuple[str, ...]] = get_args(Severity)
KINDS: Final[frozenset[str]] = frozenset({"traffic", "environment", "crowd", "iot"})
_FIELDS: Final = frozenset(
    {"mean", "min", "max", "sum", "count", "std", "first", "last", "p50", "p95", "p99", "rate_per_s"}
)
MAINTENANCE_TYPES: Final = frozenset({"silence", "stuck", "out_of_range", "jump", "spike", "drift"})
#: ``drift`` rules: no single checkpoint-to-checkpoint step may carry more than this share of the
#: deviation's growth over the judged span (a step change is an event or a repair, not a drift),
DRIFT_MAX_STEP_SHARE: Final = 0.6
#: every step must grow by at least this share of the average step (steady, not flat then a jump),
DRIFT_MIN_RISE: Final = 0.25
#: and the last step by at least this share of it: a drift keeps moving, while a step change,
#: smoothed by the rule's averaging, levels off.
DRIFT_MIN_LAST_RISE: Final = 0.5
_DRIFT_KEYS: Final = ("smooth", "step", "steps", "min_peers", "settle")


# --------------------------------------------------------------------------------------------
# Stateless per-window rule (kept for Pipeline)


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """Stateless: raise when ``aggregate[field] <op> level`` for ``kind``/``metric``."""

    name: str
    kind: str
    metric: str
    op: Op
    level: float
    field: str = "mean"
    severity: Severity = "warning"

    def crossed(self, value: float) -> bool:
        """Whether ``value`` crosses the level."""
        return crosses(self.op, value, self.level)


def crosses(op: str, value: float, level: float) -> bool:
    """``value <op> level``.

    >>> crosses(">", 2.0, 1.0), crosses("<=", 2.0, 1.0)
    (True, False)
    """
    if op == ">":
        return value > level
    if op == ">=":
        return value >= level
    if op == "<":
        return value < level
    return value <= level


def alert_id(rule: str, subject: str, window_start_ms: int) -> str:
    """Stable alert id for one (rule, sensor or zone, occurrence start) triple.

    >>> alert_id("pm25_high", "env-futian-0001", 60000)
    'a-2f82c14509cd4f2f'
    """
    digest = hashlib.blake2b(f"{rule}\x1f{subject}\x1f{window_start_ms}".encode(), digest_size=8)
    return "a-" + digest.hexdigest()


def evaluate(rules: tuple[ThresholdRule, ...], agg: dict[str, Any]) -> list[dict[str, Any]]:
    """Stateless alerts raised by one closed aggregate (usually zero); no lifecycle, no hysteresis."""
    out: list[dict[str, Any]] = []
    for rule in rules:
        if rule.kind != agg["kind"] or rule.metric != agg["metric"]:
            continue
        value = float(agg[rule.field])
        if not rule.crossed(value):
            continue
        out.append(
            {
                "v": 1,
                "alert_id": alert_id(rule.name, agg["sensor_id"], agg["start_ms"]),
                "rule": rule.name,
                "severity": rule.severity,
                "state": "raised",
                "sensor_id": agg["sensor_id"],
                "kind": agg["kind"],
                "zone": agg["zone"],
                "metric": agg["metric"],
                "field": rule.field,
                "value": value,
                "threshold": rule.level,
                "window_start_ms": agg["start_ms"],
                "window_end_ms": agg["end_ms"],
                "ts_ms": agg["end_ms"],
                "latency_ms": agg["end_ms"] - agg.get("first_ts_ms", agg["start_ms"]),
                "message": (
                    f"{agg['kind']} sensor {agg['sensor_id']} in {agg['zone']}: {agg['metric']} "
                    f"{rule.field} {value:.6g} {rule.op} {rule.level:g} {agg.get('unit', '')}".rstrip()
                ),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# The rule file model


@dataclass(frozen=True, slots=True)
class Rule:
    """One per-sensor rule. Levels and durations are validated by :func:`load_rules`.

    ``raise_level``/``clear_level`` give hysteresis: for ``op='>'`` an occurrence starts when the
    value exceeds ``raise_level`` for ``for_windows`` windows (and ``for_ms``), and ends when it
    falls to ``clear_level`` or below for ``clear_windows`` windows.

    ``baseline`` rules judge ``value / baseline`` (``mode='ratio'``) or ``value - baseline``
    (``'delta'``) instead of the value, where the baseline is an exponential average of the
    sensor's own earlier windows with time constant ``baseline_ms``. It learns only from windows
    that neither breach nor belong to an open alert (an incident must not become its own
    normal), is judged only after ``warmup_windows`` windows, and starts over after a gap in
    the data longer than ``baseline_ms``. Once an alert has been active for ``accept_after_ms``
    (when set), the baseline learns again: a lasting shift becomes the new normal and the alert
    clears, instead of holding the sensor (and any zone incident it is part of) open forever.
    ``baseline_floor`` bounds the ratio's denominator from
    below (a count of 3 people rising to 9 is not a crowd).

    ``spike`` rules (a sensor fault) flag a window whose ``field`` (default ``max``) is at least
    ``raise_level`` x the sensor's baseline (an exponential average of the windows' ``min``, which
    one wild reading does not move) while the window's own ``min`` and the next window's stay
    at or below ``clear_level`` x the baseline: some readings were wild, the level did not move.
    A real jump (a crowd surge, traffic recovering after an accident) lifts the ``min`` too. The
    alert is raised one window late and clears after ``clear_windows`` windows without a spike.

    ``drift`` rules (a sensor fault) compare a sensor with its zone peers of the same kind and
    metric: per window, ``r = log(field / median of the peers' field)`` (at least ``min_peers``
    peers; windows whose peer median is below ``baseline_floor`` are skipped). A drifting sensor
    looks like the daily cycle to its own baseline, but its ratio to its peers moves. The sensor's
    long-run ratio is an exponential average of ``r`` (time constant ``baseline_ms``; it stops
    learning while the smoothed ratio is beyond ``clear_level`` of it, while an alert is open and
    while an incident involves the sensor or its zone, until ``accept_after_ms``); the smoothed
    ratio averages ``r`` over ``smooth_ms``. Every ``step_ms`` of event time (aligned checkpoints)
    the deviation ``smoothed - long-run`` is recorded. A drift is raised when the deviation is
    beyond ``log(raise_level)`` (either way) and grew in that direction at each of the last
    ``steps`` checkpoints, by at least ``log(clear_level)`` in all, with no step carrying more than
    :data:`DRIFT_MAX_STEP_SHARE` of the growth, each at least :data:`DRIFT_MIN_RISE` and the last
    at least :data:`DRIFT_MIN_LAST_RISE` of the average step (slow, monotone, still moving: not a
    step change), while the zone was settled over that span: the peers' median (smoothed like the
    ratio) stayed within ``settle`` (a fraction) of its average over the span, so rush hours and
    zone-wide incidents, which move all peers at once, are not judged, and its set of peers did
    not change (a peer missing or back, or left out once flagged as drifting itself, moves the
    median by a step). It clears at the first
    checkpoint back within ``clear_level``. ``raise_level`` and ``clear_level`` are ratios (> 1;
    ``clear`` defaults to the square root of ``raise``, half-way in log terms).
    """

    name: str
    type: RuleType
    kind: str | None = None
    metric: str | None = None
    field: str = "mean"
    op: Op = ">"
    raise_level: float = 0.0
    clear_level: float = 0.0
    low: float | None = None
    high: float | None = None
    for_windows: int = 1
    for_ms: int = 0
    clear_windows: int = 1
    silent_ms: int = 0
    severity: Severity = "warning"
    category: Category = "incident"
    escalate_after_ms: int | None = None
    zones: frozenset[str] | None = None
    sensors: frozenset[str] | None = None
    window: str = "tumbling"
    window_size_ms: int | None = None
    mode: BaselineMode = "ratio"
    baseline_ms: int = 1_800_000
    warmup_windows: int = 5
    baseline_floor: float = 0.0
    accept_after_ms: int | None = None
    smooth_ms: int = 1_200_000
    step_ms: int = 900_000
    steps: int = 4
    min_peers: int = 2
    settle: float = 0.05
    line: int = 0

    def applies(self, agg: dict[str, Any]) -> bool:
        """Whether this rule looks at ``agg`` (kind, metric, window, zone and sensor filters)."""
        if self.kind is not None and agg["kind"] != self.kind:
            return False
        if self.metric is not None and agg["metric"] != self.metric:
            return False
        if agg.get("window", "tumbling") != self.window:
            return False
        if self.window_size_ms is not None and agg.get("size_ms") != self.window_size_ms:
            return False
        if self.zones is not None and agg["zone"] not in self.zones:
            return False
        return self.sensors is None or agg["sensor_id"] in self.sensors

    def clears(self, value: float) -> bool:
        """Whether ``value`` is back on the safe side of the clear level."""
        if self.op in (">", ">="):
            return value <= self.clear_level
        return value >= self.clear_level


@dataclass(frozen=True, slots=True)
class ZoneRule:
    """k of the zone's sensors in alarm under rule ``members`` within ``within_ms`` -> one zone incident.

    ``fold='always'``: the member rule's per-sensor alerts in a covered zone are never published
    alone, only folded into the zone incident. ``fold='after_raise'``: they are published until
    the zone incident is raised, and folded after that.
    """

    name: str
    members: str
    k: int
    within_ms: int
    clear_below: int = 1
    severity: Severity = "critical"
    fold: Fold = "always"
    escalate_after_ms: int | None = None
    zones: frozenset[str] | None = None
    line: int = 0

    def covers(self, zone: str) -> bool:
        """Whether the rule watches ``zone``."""
        return self.zones is None or zone in self.zones


@dataclass(frozen=True, slots=True)
class Maintenance:
    """A maintenance window ``[start_ms, end_ms)`` for one sensor or one zone (optionally some rules)."""

    start_ms: int
    end_ms: int
    sensor_id: str | None = None
    zone: str | None = None
    rules: frozenset[str] | None = None
    reason: str = ""

    def covers(self, rule: str, sensor_id: str | None, zone: str, ts_ms: int) -> bool:
        """Whether an alert of ``rule`` on this subject at event time ``ts_ms`` is suppressed."""
        if not self.start_ms <= ts_ms < self.end_ms:
            return False
        if self.rules is not None and rule not in self.rules:
            return False
        if self.sensor_id is not None:
            return sensor_id == self.sensor_id
        return self.zone == zone


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Engine-wide settings (the ``[engine]`` table)."""

    cooldown_ms: int = 300_000
    series_points: int = 30
    rate_window_ms: int = 60_000
    zone_rate_limit: int = 20
    global_rate_limit: int = 100
    escalate_after_ms: int = 0
    evidence_values: int = 10
    #: zone rules decide in event time: a zone's member alarms wait until every source partition
    #: feeding the zone has passed their window, but a source that delivered nothing for this long
    #: (host time) is not waited for (see :class:`alerting.engine.AlertEngine`)
    zone_hold_ms: int = 180_000


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Everything a rule file declares, validated."""

    rules: tuple[Rule, ...] = ()
    zone_rules: tuple[ZoneRule, ...] = ()
    maintenance: tuple[Maintenance, ...] = ()
    config: EngineConfig = field(default_factory=EngineConfig)
    source: str = ""
    warnings: tuple[str, ...] = ()

    def rule(self, name: str) -> Rule | None:
        """The per-sensor rule called ``name``."""
        return next((r for r in self.rules if r.name == name), None)


# --------------------------------------------------------------------------------------------
# Loading

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")

_RULE_KEYS: Final = {
    "name", "type", "kind", "metric", "field", "op", "level", "raise", "clear", "low", "high", "for_windows",
    "for", "clear_windows", "silent_for", "severity", "category", "escalate_after", "zones", "sensors", "window",
    "window_size", "max_step", "stuck_windows", "mode", "baseline", "warmup_windows", "baseline_floor",
    "accept_after", *_DRIFT_KEYS,
}
_ZONE_KEYS: Final = {"name", "members", "k", "within", "clear_below", "severity", "fold", "escalate_after", "zones"}
_MAINT_KEYS: Final = {"sensor_id", "zone", "start", "end", "rules", "reason"}
_ENGINE_KEYS: Final = {
    "cooldown", "series_points", "rate_window", "zone_rate_limit", "global_rate_limit", "escalate_after",
    "evidence_values", "zone_hold",
}


class _Where:
    """Finds the line of the i-th ``[[table]]`` and of a key inside it, for error messages."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def table_line(self, table: str, index: int) -> int:
        pat = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
        seen = -1
        for n, line in enumerate(self.lines, 1):
            if pat.match(line):
                seen += 1
                if seen == index:
                    return n
        return 0

    def key_line(self, table: str, index: int, key: str | None) -> int:
        start = self.table_line(table, index)
        if not start or key is None:
            return start
        pat = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for n in range(start, len(self.lines)):
            line = self.lines[n]
            if line.lstrip().startswith("["):
                break
            if pat.match(line):
                return n + 1
        return start

    def error(self, table: str, index: int, name: object, key: str | None, what: str) -> RuleError:
        line = self.key_line(table, index, key)
        label = f"{table} #{index + 1}" + (f" {name!r}" if isinstance(name, str) else "")
        fld = f" field '{key}'" if key else ""
        return RuleError(f"{self.path}:{line}: {label}{fld}: {what}")


def parse_duration_ms(value: object) -> int:
    """A duration: a number of seconds, or a string like ``'90s'``, ``'5m'``, ``'250ms'``.

    >>> parse_duration_ms(90), parse_duration_ms("5m"), parse_duration_ms("250ms")
    (90000, 300000, 250)
    """
    if isinstance(value, bool):
        msg = f"expected a duration (seconds or '5m'), got {value!r}"
        raise ValueError(msg)
    if isinstance(value, int | float):
        if value < 0:
            msg = f"expected a non-negative duration, got {value!r}"
            raise ValueError(msg)
        return round(value * 1000)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return round(float(m.group(1)) * _UNIT_MS[m.group(2)])
    msg = f"expected a duration (seconds or '5m'), got {value!r}"
    raise ValueError(msg)


def _ts_ms(value: object) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            msg = f"expected an offset date-time (e.g. 2026-01-01T00:00:00Z), got local {value.isoformat()}"
            raise ValueError(msg)
        return int(value.timestamp() * 1000)
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # epoch milliseconds
    msg = f"expected an offset date-time or epoch ms, got {value!r}"
    raise ValueError(msg)


def load_rules(
    path: Path | str | None = None, *, text: str | None = None, score_available: bool = False
) -> RuleSet:
    """Load and validate a rule file (the packaged defaults when ``path`` and ``text`` are None).

    Args:
        path: TOML file.
        text: the file's content, when already read (``path`` is then only used in messages).
        score_available: whether aggregates carry an anomaly ``score``; when False, anomaly rules
            load with a warning (they never fire until a model is wired).

    Raises:
        RuleError: naming the file, the line, the rule and the field that is wrong.
    """
    text_given = text
    if text is None:
        if path is None:
            text = resources.files("alerting").joinpath("default_rules.toml").read_text()
        else:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                msg = f"rules file {path}: cannot read: {exc.strerror}"
                raise RuleError(msg) from exc
    where = str(path) if path is not None else "alerting/default_rules.toml" if text_given is None else "<rules text>"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"rules file {where}: invalid TOML: {exc}"
        raise RuleError(msg) from exc
    w = _Where(where, text)
    unknown = sorted(set(doc) - {"engine", "rule", "zone_rule", "maintenance"})
    if unknown:
        msg = (
            f"{where}: unknown top-level table(s) {unknown}; "
            "expected [engine], [[rule]], [[zone_rule]], [[maintenance]]"
        )
        raise RuleError(msg)
    for name in ("rule", "zone_rule", "maintenance"):
        if name in doc and not (isinstance(doc[name], list) and all(isinstance(x, dict) for x in doc[name])):
            msg = f"{where}:{w.table_line(name, 0)}: expected [[{name}]] tables"
            raise RuleError(msg)
    config = _engine(doc.get("engine", {}), w)
    rules: list[Rule] = []
    warnings: list[str] = []
    for i, entry in enumerate(doc.get("rule", [])):
        rule = _rule(entry, i, w)
        if any(r.name == rule.name for r in rules):
            raise w.error("rule", i, rule.name, "name", f"duplicate name {rule.name!r}")
        rules.append(rule)
        if rule.type == "anomaly" and not score_available:
            warnings.append(
                f"{where}:{rule.line}: rule {rule.name!r}: aggregates carry no 'score' until an anomaly model "
                "is wired; the rule never fires without one"
            )
    zone_rules: list[ZoneRule] = []
    for i, entry in enumerate(doc.get("zone_rule", [])):
        zr = _zone_rule(entry, i, w)
        if zr.name in {r.name for r in rules} | {z.name for z in zone_rules} | {"rate_limit"}:
            raise w.error("zone_rule", i, zr.name, "name", f"duplicate name {zr.name!r}")
        member = next((r for r in rules if r.name == zr.members), None)
        if member is None:
            raise w.error("zone_rule", i, zr.name, "members", f"expected the name of a [[rule]], got {zr.members!r}")
        if member.type in ("silence", "drift"):
            raise w.error("zone_rule", i, zr.name, "members", f"{member.type} rules cannot be zone members")
        zone_rules.append(zr)
    maintenance = tuple(_maintenance(entry, i, w) for i, entry in enumerate(doc.get("maintenance", [])))
    if any(r.name == "rate_limit" for r in rules):
        i = next(i for i, r in enumerate(rules) if r.name == "rate_limit")
        raise w.error("rule", i, "rate_limit", "name", "'rate_limit' is reserved for summary alerts")
    for msg in warnings:
        logger.warning("rule warning %s", msg)
    return RuleSet(tuple(rules), tuple(zone_rules), maintenance, config, where, tuple(warnings))


def _check_keys(entry: dict[str, Any], known: set[str], table: str, i: int, w: _Where) -> None:
    for key in entry:
        if key not in known:
            raise w.error(table, i, entry.get("name"), key, f"unknown field; expected one of {sorted(known)}")


def _num(entry: dict[str, Any], key: str, table: str, i: int, w: _Where) -> float:
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise w.error(table, i, entry.get("name"), key, f"expected a number, got {v!r}")
    return float(v)


def _int(entry: dict[str, Any], key: str, default: int, table: str, i: int, w: _Where, lo: int = 1) -> int:
    v = entry.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise w.error(table, i, entry.get("name"), key, f"expected an integer >= {lo}, got {v!r}")
    return v


def _dur(entry: dict[str, Any], key: str, table: str, i: int, w: _Where) -> int | None:
    if key not in entry:
        return None
    try:
        return parse_duration_ms(entry[key])
    except ValueError as exc:
        raise w.error(table, i, entry.get("name"), key, str(exc)) from None


def _choice(
    entry: dict[str, Any], key: str, default: Any, options: tuple[str, ...], table: str, i: int, w: _Where
) -> Any:
    v = entry.get(key, default)
    if v not in options:
        raise w.error(table, i, entry.get("name"), key, f"expected one of {list(options)}, got {v!r}")
    return v


def _names(entry: dict[str, Any], key: str, table: str, i: int, w: _Where) -> frozenset[str] | None:
    if key not in entry:
        return None
    v = entry[key]
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise w.error(table, i, entry.get("name"), key, f"expected a non-empty list of names, got {v!r}")
    return frozenset(v)


def _engine(entry: Any, w: _Where) -> EngineConfig:
    if not isinstance(entry, dict):
        msg = f"{w.path}: expected an [engine] table"
        raise RuleError(msg)

    def err(key: str, what: str) -> RuleError:
        pat = re.compile(rf"^\s*{key}\s*=")
        line = next((n for n, t in enumerate(w.lines, 1) if pat.match(t)), 0)
        return RuleError(f"{w.path}:{line}: engine field '{key}': {what}")

    for key in entry:
        if key not in _ENGINE_KEYS:
            raise err(key, f"unknown field; expected one of {sorted(_ENGINE_KEYS)}")
    kw: dict[str, int] = {}
    for key, attr in (("cooldown", "cooldown_ms"), ("rate_window", "rate_window_ms"),
                      ("escalate_after", "escalate_after_ms"), ("zone_hold", "zone_hold_ms")):
        if key in entry:
            try:
                kw[attr] = parse_duration_ms(entry[key])
            except ValueError as exc:
                raise err(key, str(exc)) from None
    for key in ("series_points", "zone_rate_limit", "global_rate_limit", "evidence_values"):
        if key in entry:
            v = entry[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise err(key, f"expected an integer >= 1, got {v!r}")
            kw[key] = v
    if kw.get("rate_window_ms", 1) <= 0:
        raise err("rate_window", "expected a positive duration")
    return EngineConfig(**kw)


def _rule(entry: dict[str, Any], i: int, w: _Where) -> Rule:  # noqa: C901 - one validator per field
    t = "rule"
    _check_keys(entry, _RULE_KEYS, t, i, w)
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise w.error(t, i, None, "name", f"expected a name matching {_NAME.pattern}, got {name!r}")
    rtype = _choice(entry, "type", "threshold", get_args(RuleType), t, i, w)
    kind = entry.get("kind")
    if kind is not None and kind not in KINDS:
        raise w.error(t, i, name, "kind", f"expected one of {sorted(KINDS)}, got {kind!r}")
    metric = entry.get("metric")
    if rtype != "silence" and not isinstance(metric, str):
        raise w.error(t, i, name, "metric", f"missing or not a string (required for type {rtype!r})")
    field_ = _choice(entry, "field", "max" if rtype == "spike" else "mean", tuple(sorted(_FIELDS)), t, i, w)
    op = _choice(entry, "op", ">", get_args(Op), t, i, w)
    severity = _choice(entry, "severity", "warning", SEVERITIES, t, i, w)
    default_cat = "maintenance" if rtype in MAINTENANCE_TYPES else "incident"
    category = _choice(entry, "category", default_cat, ("incident", "maintenance"), t, i, w)
    kw: dict[str, Any] = {}
    if rtype in ("threshold", "baseline", "rate_of_change", "anomaly", "spike", "drift"):
        key = "raise" if "raise" in entry else "level"
        if key not in entry:
            raise w.error(t, i, name, "raise", f"missing (required for type {rtype!r}; 'level' is an alias)")
        raise_level = _num(entry, key, t, i, w)
        if rtype == "drift":
            if "op" in entry:
                raise w.error(t, i, name, "op", "type 'drift' judges the ratio both ways; 'op' does not apply")
            if raise_level <= 1.0:
                raise w.error(t, i, name, key, f"expected a ratio > 1 (type 'drift'), got {raise_level:g}")
        default_clear = raise_level**0.5 if rtype == "drift" else raise_level
        clear_level = _num(entry, "clear", t, i, w) if "clear" in entry else default_clear
        if rtype == "drift" and clear_level < 1.0:
            raise w.error(t, i, name, "clear", f"expected a ratio >= 1 (type 'drift'), got {clear_level:g}")
        upward = op in (">", ">=")
        if (upward and clear_level > raise_level) or (not upward and clear_level < raise_level):
            side = "<=" if upward else ">="
            raise w.error(t, i, name, "clear", f"expected {side} raise level {raise_level:g} for op {op!r}, "
                          f"got {clear_level:g}")
        kw.update(raise_level=raise_level, clear_level=clear_level)
    elif rtype == "jump":
        if "max_step" not in entry:
            raise w.error(t, i, name, "max_step", "missing (required for type 'jump')")
        step = _num(entry, "max_step", t, i, w)
        if step <= 0:
            raise w.error(t, i, name, "max_step", f"expected a positive number, got {step:g}")
        kw.update(raise_level=step, clear_level=step, op=">")
    elif rtype == "out_of_range":
        if "low" not in entry and "high" not in entry:
            raise w.error(t, i, name, "low", "expected 'low' and/or 'high' for type 'out_of_range'")
        low = _num(entry, "low", t, i, w) if "low" in entry else None
        high = _num(entry, "high", t, i, w) if "high" in entry else None
        if low is not None and high is not None and low >= high:
            raise w.error(t, i, name, "high", f"expected > low {low:g}, got {high:g}")
        kw.update(low=low, high=high)
    elif rtype == "silence":
        silent = _dur(entry, "silent_for", t, i, w)
        if not silent:
            raise w.error(t, i, name, "silent_for", "missing or zero (required for type 'silence')")
        kw.update(silent_ms=silent)
    baseline_keys = sorted(
        k for k in ("mode", "baseline", "warmup_windows", "baseline_floor", "accept_after") if k in entry
    )
    if rtype in ("baseline", "spike", "drift"):
        kw["mode"] = _choice(entry, "mode", "ratio", get_args(BaselineMode), t, i, w)
        if rtype == "drift" and kw["mode"] != "ratio":
            raise w.error(t, i, name, "mode", "type 'drift' judges ratios to the zone peers (mode 'ratio')")
        if rtype == "spike" and (kw["mode"] != "ratio" or op not in (">", ">=")):
            raise w.error(t, i, name, "mode" if kw["mode"] != "ratio" else "op",
                          "type 'spike' judges an upward ratio to the baseline (mode 'ratio', op '>' or '>=')")
        base_ms = _dur(entry, "baseline", t, i, w)
        if base_ms is not None:
            if base_ms <= 0:
                raise w.error(t, i, name, "baseline", "expected a positive duration (the averaging time)")
            kw["baseline_ms"] = base_ms
        elif rtype == "drift":
            kw["baseline_ms"] = 7_200_000
        kw["warmup_windows"] = _int(entry, "warmup_windows", 40 if rtype == "drift" else 5, t, i, w)
        if "baseline_floor" in entry:
            floor = _num(entry, "baseline_floor", t, i, w)
            if floor < 0:
                raise w.error(t, i, name, "baseline_floor", f"expected a number >= 0, got {floor:g}")
            kw["baseline_floor"] = floor
        accept = _dur(entry, "accept_after", t, i, w)
        if accept is not None:
            if accept <= 0:
                raise w.error(t, i, name, "accept_after", "expected a positive duration")
            kw["accept_after_ms"] = accept
        if kw["mode"] == "ratio" and kw.get("raise_level", 0.0) <= 0:
            raise w.error(t, i, name, "raise", f"expected a positive ratio, got {kw.get('raise_level', 0.0):g}")
    elif baseline_keys:
        raise w.error(t, i, name, baseline_keys[0],
                      f"applies to type 'baseline' only (and 'spike', 'drift'), not {rtype!r}")
    if rtype == "drift":
        kw.update(_drift_fields(entry, i, w))
    elif any(k in entry for k in _DRIFT_KEYS):
        key = next(k for k in _DRIFT_KEYS if k in entry)
        raise w.error(t, i, name, key, f"applies to type 'drift' only, not {rtype!r}")
    for_windows = _int(entry, "stuck_windows" if rtype == "stuck" else "for_windows",
                       3 if rtype == "stuck" else 1, t, i, w)
    window = _choice(entry, "window", "tumbling", ("tumbling", "hopping"), t, i, w)
    size = _dur(entry, "window_size", t, i, w)
    rule = Rule(
        name=name,
        type=rtype,
        kind=kind,
        metric=metric if isinstance(metric, str) else None,
        field=field_,
        severity=severity,
        category=category,
        for_windows=for_windows,
        for_ms=_dur(entry, "for", t, i, w) or 0,
        clear_windows=_int(entry, "clear_windows", 1, t, i, w),
        escalate_after_ms=_dur(entry, "escalate_after", t, i, w),
        zones=_names(entry, "zones", t, i, w),
        sensors=_names(entry, "sensors", t, i, w),
        window=window,
        window_size_ms=size,
        line=w.table_line(t, i),
        **{"op": op, **kw},
    )
    return rule


def _drift_fields(entry: dict[str, Any], i: int, w: _Where) -> dict[str, Any]:
    t, name = "rule", entry.get("name")
    kw: dict[str, Any] = {}
    for key, attr in (("smooth", "smooth_ms"), ("step", "step_ms")):
        ms = _dur(entry, key, t, i, w)
        if ms is not None:
            if ms <= 0:
                raise w.error(t, i, name, key, "expected a positive duration")
            kw[attr] = ms
    kw["steps"] = _int(entry, "steps", 4, t, i, w, lo=2)
    kw["min_peers"] = _int(entry, "min_peers", 2, t, i, w, lo=1)
    if "settle" in entry:
        settle = _num(entry, "settle", t, i, w)
        if settle <= 0:
            raise w.error(t, i, name, "settle", f"expected a positive fraction, got {settle:g}")
        kw["settle"] = settle
    return kw


def _zone_rule(entry: dict[str, Any], i: int, w: _Where) -> ZoneRule:
    t = "zone_rule"
    _check_keys(entry, _ZONE_KEYS, t, i, w)
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise w.error(t, i, None, "name", f"expected a name matching {_NAME.pattern}, got {name!r}")
    members = entry.get("members")
    if not isinstance(members, str):
        raise w.error(t, i, name, "members", f"expected the name of a [[rule]], got {members!r}")
    if "k" not in entry:
        raise w.error(t, i, name, "k", "missing (number of sensors in alarm that make a zone incident)")
    k = _int(entry, "k", 2, t, i, w, lo=1)
    within = _dur(entry, "within", t, i, w)
    if not within:
        raise w.error(t, i, name, "within", "missing or zero (the time window T of k-of-n)")
    clear_below = _int(entry, "clear_below", 1, t, i, w)
    if clear_below > k:
        raise w.error(t, i, name, "clear_below", f"expected <= k ({k}), got {clear_below}")
    return ZoneRule(
        name=name,
        members=members,
        k=k,
        within_ms=within,
        clear_below=clear_below,
        severity=_choice(entry, "severity", "critical", SEVERITIES, t, i, w),
        fold=_choice(entry, "fold", "always", get_args(Fold), t, i, w),
        escalate_after_ms=_dur(entry, "escalate_after", t, i, w),
        zones=_names(entry, "zones", t, i, w),
        line=w.table_line(t, i),
    )


def _maintenance(entry: dict[str, Any], i: int, w: _Where) -> Maintenance:
    t = "maintenance"
    _check_keys(entry, _MAINT_KEYS, t, i, w)
    sid, zone = entry.get("sensor_id"), entry.get("zone")
    if (sid is None) == (zone is None):
        raise w.error(t, i, None, "sensor_id", "expected exactly one of 'sensor_id' or 'zone'")
    for key, v in (("sensor_id", sid), ("zone", zone)):
        if v is not None and not isinstance(v, str):
            raise w.error(t, i, None, key, f"expected a string, got {v!r}")
    bounds = []
    for key in ("start", "end"):
        if key not in entry:
            raise w.error(t, i, None, key, "missing")
        try:
            bounds.append(_ts_ms(entry[key]))
        except ValueError as exc:
            raise w.error(t, i, None, key, str(exc)) from None
    if bounds[1] <= bounds[0]:
        raise w.error(t, i, None, "end", "expected a time after 'start'")
    reason = entry.get("reason", "")
    if not isinstance(reason, str):
        raise w.error(t, i, None, "reason", f"expected a string, got {reason!r}")
    return Maintenance(bounds[0], bounds[1], sid, zone, _names(entry, "rules", t, i, w), reason)


__all__ = [
    "EngineConfig",
    "Maintenance",
    "Rule",
    "RuleSet",
    "ThresholdRule",
    "ZoneRule",
    "alert_id",
    "evaluate",
    "load_rules",
    "parse_duration_ms",
]
