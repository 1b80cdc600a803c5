from __future__ import annotations

from pathlib import Path

import pytest

from alerting.errors import RuleError
from alerting.rules import ThresholdRule, alert_id, evaluate, load_rules, parse_duration_ms


def agg(**over: object) -> dict:
    base = {
        "sensor_id": "env-futian-0001", "kind": "environment", "zone": "futian", "metric": "pm25",
        "unit": "ug/m3", "start_ms": 60_000, "end_ms": 120_000, "first_ts_ms": 61_000, "mean": 200.0, "max": 260.0,
    }
    base.update(over)
    return base


RULE = ThresholdRule("pm25_high", "environment", "pm25", ">", 150.0, "mean", "critical")


def test_stateless_crossing_raises_one_alert_with_stable_id() -> None:
    [a] = evaluate((RULE,), agg())
    assert a["alert_id"] == alert_id("pm25_high", "env-futian-0001", 60_000)
    assert (a["severity"], a["value"], a["threshold"], a["latency_ms"]) == ("critical", 200.0, 150.0, 59_000)
    assert evaluate((RULE,), agg()) == [a]


def test_default_rules_load_every_type() -> None:
    rs = load_rules()
    # No anomaly rule by default (a model score is evidence, not an incident; see the file's header).
    assert {r.type for r in rs.rules} == {
        "threshold", "baseline", "silence", "stuck", "out_of_range", "jump", "spike", "drift",
    }
    assert {z.members for z in rs.zone_rules} <= {r.name for r in rs.rules}
    assert not rs.warnings
    assert not load_rules(score_available=True).warnings
    surge = rs.rule("pm25_very_unhealthy")
    assert surge is not None and (surge.raise_level, surge.clear_level, surge.for_windows) == (150.0, 120.0, 2)


GOOD = "[[rule]]\nname = 'x'\nkind = 'iot'\nmetric = 'm'\nop = '>'\nraise = 5\nclear = 3\n"


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (GOOD.replace("op = '>'", "op = '!'"), 5, "field 'op': expected one of"),
        (GOOD.replace("raise = 5\n", ""), 1, "field 'raise': missing"),
        (GOOD.replace("raise = 5", "raise = 'high'"), 6, "field 'raise': expected a number"),
        (GOOD + "colour = 2\n", 8, "field 'colour': unknown field"),
        (GOOD.replace("clear = 3", "clear = 9"), 7, "field 'clear': expected <= raise level 5"),
        (GOOD + GOOD, 9, "field 'name': duplicate name 'x'"),
        (GOOD + "[[rule]]\nname = 'y'\ntype = 'silence'\n", 8, "rule #2 'y' field 'silent_for'"),
        (GOOD + "\n[[zone_rule]]\nname = 'z'\nmembers = 'nope'\nk = 2\nwithin = '5m'\n", 11, "field 'members'"),
        (GOOD + "\n[[zone_rule]]\nname = 'z'\nmembers = 'x'\nk = 2\n", 9, "field 'within'"),
        (GOOD + "[[maintenance]]\nzone = 'a'\nstart = 2026-01-01T00:00:00Z\nend = 2025-01-01T00:00:00Z\n", 11,
         "field 'end'"),
        (GOOD + "[[maintenance]]\nstart = 2026-01-01T00:00:00Z\nend = 2027-01-01T00:00:00Z\n", 8,
         "exactly one of 'sensor_id' or 'zone'"),
        ("[engine]\ncooldown = 'soon'\n" + GOOD, 2, "engine field 'cooldown'"),
        (GOOD + "for = '-3m'\n", 8, "field 'for'"),
    ],
)
def test_bad_rule_files_name_file_line_and_field(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RuleError, match=needle) as info:
        load_rules(path)
    assert str(info.value).startswith(f"{path}:{line}:"), str(info.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("[[rule]\n")
    with pytest.raises(RuleError, match="invalid TOML") as info:
        load_rules(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("value", "ms"), [(1, 1000), (0.5, 500), ("90s", 90_000), ("2h", 7_200_000), ("15", 15_000)])
def test_durations(value: object, ms: int) -> None:
    assert parse_duration_ms(value) == ms
