"""Threshold rules over closed window aggregates (pure).

A rule names a feed kind, a metric, an aggregate field (``mean``, ``max``, ...), a comparison and
a level. Each aggregate that crosses it yields one :class:`Alert` whose id is stable for the
(rule, sensor, window) occurrence, so redelivery and replays never duplicate it.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from alerting.errors import RuleError

Severity = Literal["info", "warning", "critical"]
Op = Literal[">", ">=", "<", "<="]
_FIELDS = frozenset({"mean", "min", "max", "sum", "count", "std", "first", "last"})


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """Raise when ``aggregate[field] <op> level`` for ``kind``/``metric``."""

    name: str
    kind: str
    metric: str
    op: Op
    level: float
    field: str = "mean"
    severity: Severity = "warning"

    def crossed(self, value: float) -> bool:
        """Whether ``value`` crosses the level."""
        op = self.op
        if op == ">":
            return value > self.level
        if op == ">=":
            return value >= self.level
        if op == "<":
            return value < self.level
        return value <= self.level


def alert_id(rule: str, subject: str, window_start_ms: int) -> str:
    """Stable alert id for one (rule, sensor or zone, window) occurrence.

    >>> alert_id("pm25_high", "env-futian-0001", 60000)
    'a-2f82c14509cd4f2f'
    """
    digest = hashlib.blake2b(f"{rule}\x1f{subject}\x1f{window_start_ms}".encode(), digest_size=8)
    return "a-" + digest.hexdigest()


def evaluate(rules: tuple[ThresholdRule, ...], agg: dict[str, Any]) -> list[dict[str, Any]]:
    """Alerts raised by one closed aggregate (usually zero).

    The alert's event time is the window end (the earliest it can be known); ``latency_ms`` is
    the event time from the window's first reading to that end.
    """
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


def load_rules(path: Path | None = None) -> tuple[ThresholdRule, ...]:
    """Load rules from a TOML file (the packaged defaults when ``path`` is None).

    Raises:
        RuleError: naming the file, the rule and the field that is wrong.
    """
    if path is None:
        text = resources.files("alerting").joinpath("default_rules.toml").read_text()
        where = "alerting/default_rules.toml"
    else:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            msg = f"rules file {where}: cannot read: {exc.strerror}"
            raise RuleError(msg) from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"rules file {where}: invalid TOML: {exc}"
        raise RuleError(msg) from exc
    entries = doc.get("rule", [])
    if not isinstance(entries, list):
        msg = f"rules file {where}: expected [[rule]] tables"
        raise RuleError(msg)
    rules = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        rules.append(_rule(entry, f"{where} rule #{i + 1}"))
        if rules[-1].name in names:
            msg = f"{where} rule #{i + 1}: duplicate name {rules[-1].name!r}"
            raise RuleError(msg)
        names.add(rules[-1].name)
    return tuple(rules)


def _rule(entry: dict[str, Any], where: str) -> ThresholdRule:
    known = {"name", "kind", "metric", "op", "level", "field", "severity"}
    unknown = sorted(set(entry) - known)
    if unknown:
        msg = f"{where}: unknown field(s) {unknown}"
        raise RuleError(msg)
    for req in ("name", "kind", "metric", "op", "level"):
        if req not in entry:
            msg = f"{where}: missing field '{req}'"
            raise RuleError(msg)
    if entry["op"] not in get_args(Op):
        msg = f"{where} field 'op': expected one of {list(get_args(Op))}, got {entry['op']!r}"
        raise RuleError(msg)
    severity = entry.get("severity", "warning")
    if severity not in get_args(Severity):
        msg = f"{where} field 'severity': expected one of {list(get_args(Severity))}, got {severity!r}"
        raise RuleError(msg)
    field = entry.get("field", "mean")
    if field not in _FIELDS:
        msg = f"{where} field 'field': expected one of {sorted(_FIELDS)}, got {field!r}"
        raise RuleError(msg)
    level = entry["level"]
    if isinstance(level, bool) or not isinstance(level, int | float):
        msg = f"{where} field 'level': expected a number, got {level!r}"
        raise RuleError(msg)
    return ThresholdRule(
        str(entry["name"]), str(entry["kind"]), str(entry["metric"]), entry["op"], float(level), field, severity
    )
