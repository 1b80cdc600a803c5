from __future__ import annotations

from pathlib import Path

import pytest

from alerting.errors import RuleError
from alerting.rules import ThresholdRule, alert_id, evaluate, load_rules


def agg(**over: object) -> dict:
    base = {
        "sensor_id": "env-futian-0001",
        "kind": "environment",
        "zone": "futian",
        "metric": "pm25",
        "unit": "ug/m3",
        "start_ms": 60_000,
        "end_ms": 120_000,
        "first_ts_ms": 61_000,
        "mean": 200.0,
        "max": 260.0,
    }
    base.update(over)
    return base


RULE = ThresholdRule("pm25_high", "environment", "pm25", ">", 150.0, "mean", "critical")


def test_crossing_raises_one_alert_with_stable_id() -> None:
    [a] = evaluate((RULE,), agg())
    assert a["alert_id"] == alert_id("pm25_high", "env-futian-0001", 60_000)
    assert (a["severity"], a["value"], a["threshold"], a["latency_ms"]) == ("critical", 200.0, 150.0, 59_000)
    assert evaluate((RULE,), agg()) == [a]  # redelivery: same id, same content


@pytest.mark.parametrize(
    ("over", "n"), [({"mean": 150.0}, 0), ({"kind": "traffic"}, 0), ({"metric": "pm10"}, 0), ({"mean": 150.0001}, 1)]
)
def test_only_matching_crossings(over: dict, n: int) -> None:
    assert len(evaluate((RULE,), agg(**over))) == n


def test_default_rules_load() -> None:
    rules = load_rules()
    assert {r.kind for r in rules} == {"environment", "traffic", "crowd", "iot"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[rule]]\nname='x'\nkind='iot'\nmetric='m'\nop='!'\nlevel=1\n", "field 'op'"),
        ("[[rule]]\nname='x'\nkind='iot'\nmetric='m'\nop='>'\n", "missing field 'level'"),
        ("[[rule]]\nname='x'\nkind='iot'\nmetric='m'\nop='>'\nlevel='high'\n", "field 'level'"),
        ("[[rule]]\nname='x'\nkind='iot'\nmetric='m'\nop='>'\nlevel=1\ncolour=2\n", "unknown field"),
        ("[[rule]\n", "invalid TOML"),
    ],
)
def test_bad_rule_files_name_file_and_field(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RuleError, match=needle) as info:
        load_rules(path)
    assert str(path) in str(info.value)
