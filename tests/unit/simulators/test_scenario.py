from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from simulators.errors import ScenarioError
from simulators.events import FAULT_TYPES, INCIDENT_TYPES
from simulators.scenario import list_scenarios, load_scenario, parse_duration, parse_scenario

HEAD = 'start = "2026-06-01T00:00:00Z"\nduration = "6h"\ninterval = "1m"\n'
SENSORS = "[sensors]\ntraffic = 12\nenvironment = 6\ncrowd = 6\niot = 6\n"


def scenario(body: str = "", head: str = HEAD + SENSORS) -> str:
    return head + body


# --- the shipped default -------------------------------------------------------------------


def test_default_scenario_is_rich_enough() -> None:
    assert "default" in list_scenarios()
    s = load_scenario("default")
    assert s.duration_ms >= 24 * 3_600_000
    plan = s.plan()
    kinds = {e.kind for e in plan.incidents}
    assert kinds == {"traffic", "environment", "crowd", "iot"}
    assert {s.kind for s in plan.city.sensors} == kinds
    assert len(plan.incidents) + len(plan.faults) >= 40
    assert {e.type for e in plan.incidents} == set(INCIDENT_TYPES)
    assert {f.type for f in plan.faults} == set(FAULT_TYPES)
    truth = plan.truth()
    assert len({r["id"] for r in truth}) == len(truth)
    assert Counter(r["class"] for r in truth) == {"incident": len(plan.incidents), "fault": len(plan.faults)}


def test_default_faults_are_pure() -> None:
    plan = load_scenario("default").plan()
    for f in plan.faults:
        for e in plan.incidents:
            if f.sensor_id in e.windows:
                a, b = e.windows[f.sensor_id]
                assert b <= f.start_ms or f.end_ms <= a, (f.id, e.id)


def test_plan_is_deterministic_and_seeded() -> None:
    a = load_scenario("default").plan().truth()
    assert a == load_scenario("default").plan().truth()
    s = load_scenario("default")
    b = (
        parse_scenario(
            Path(__file__)
            .parents[3]
            .joinpath("simulators/scenarios/default.toml")
            .read_text()
            .replace("seed = 606", "seed = 607"),
            "x.toml",
        )
        .plan()
        .truth()
    )
    assert [r["id"] for r in a if r["id"].startswith("inc-00")] == [r["id"] for r in b if r["id"].startswith("inc-00")]
    assert a != b
    assert s.plan().city == s.plan().city


def test_minimal_scenario_defaults() -> None:
    s = parse_scenario(HEAD, "min.toml")
    assert s.name == "min"
    assert s.zones == ("futian", "luohu", "nanshan", "baoan", "longgang", "longhua")
    assert s.sensors == {"traffic": 6, "environment": 6, "crowd": 6, "iot": 6}
    assert s.interval_ms == 60_000
    plan = s.plan()
    assert plan.steps == 360 and plan.incidents == () and plan.faults == ()


def test_explicit_entries_resolve() -> None:
    body = """
[[incident]]
type = "accident"
zone = "luohu"
start = "1h"
duration = "40m"
severity = 0.9
id = "acc-1"

[[incident]]
type = "pollution"
zone = "futian"
start = "2026-06-01T02:00:00Z"
end = "2026-06-01T04:00:00Z"

[[fault]]
type = "clock_skew"
kind = "crowd"
zone = "nanshan"
start = "30m"
duration = "20m"
offset = "-5m"

[[weather]]
type = "rain"
zones = ["baoan"]
start = "3h"
duration = "1h"
"""
    plan = parse_scenario(scenario(body), "x.toml").plan()
    acc, pol = plan.incidents
    assert acc.id == "acc-1" and acc.start_ms == plan.start_ms + 3_600_000
    assert pol.id == "inc-002" and pol.start_ms == plan.start_ms + 2 * 3_600_000
    assert pol.severity == 0.8 and "luohu" in pol.zones
    (f,) = plan.faults
    assert (f.id, f.kind, f.zone, f.offset_ms) == ("flt-001", "crowd", "nanshan", -300_000)
    assert plan.weather[0].zones == ("baoan",)


def test_overrides_scale_sensors_and_move_start() -> None:
    s = parse_scenario(scenario("[random]\nincidents = 3\nfaults = 3\n"), "x.toml")
    big = s.with_overrides(total_sensors=3000, start_ms=1_800_000_000_000)
    assert big.total_sensors == 3000
    plan = big.plan()
    assert len(plan.city.sensors) == 3000 and plan.start_ms == 1_800_000_000_000
    assert all(plan.start_ms <= e.start_ms < plan.end_ms for e in plan.incidents)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEAD + "colour = 3\n", "x.toml:4: colour: unknown field"),
        (
            scenario("colour = 3\n"),
            "x.toml:9: sensors.colour: unknown field (allowed: crowd, environment, iot, traffic)",
        ),
        ('start = "2026-06-01T00:00:00Z"\n', "x.toml: duration: required field is missing"),
        ('start = "2026-06-01T00:00:00"\nduration = "1h"\n', "x.toml:1: start: expected an RFC 3339"),
        ('start = "2026-06-01T00:00:00Z"\nduration = "45 minutes"\n', "x.toml:2: duration: expected a duration"),
        ('start = "2026-06-01T00:00:00Z"\nduration = 3\n', "x.toml:2: duration: expected a duration string"),
        (HEAD + 'zones = ["futian", "gotham"]\n', "x.toml:4: zones: expected distinct zone ids"),
        (HEAD + "[sensors]\ntraffic = -1\n", "x.toml:5: sensors.traffic: expected a count"),
        (HEAD + "[sensors]\ntraffic = true\n", "x.toml:5: sensors.traffic: expected int"),
        (HEAD + "[sensors]\nbicycles = 3\n", "x.toml:5: sensors.bicycles: unknown field"),
        (HEAD + "[sensors]\ntraffic = 0\n", "x.toml:4: sensors: expected at least one sensor"),
        (HEAD + "duration = 1\n", "invalid TOML"),
        (
            scenario('[[incident]]\ntype = "meteor"\nzone = "futian"\nstart = "1h"\nduration = "1h"\n'),
            "x.toml:10: incident[0].type: expected one of",
        ),
        (
            scenario(
                '[[incident]]\ntype = "accident"\nzone = "futian"\nstart = "1h"\nduration = "1h"\nseverity = 1.5\n'
            ),
            "x.toml:14: incident[0].severity: expected a number with 0.0 < x <= 1.0, got 1.5",
        ),
        (
            scenario('[[incident]]\ntype = "accident"\nzone = "futian"\nstart = "1h"\n'),
            "incident[0].duration: expected exactly one of 'duration' and 'end'",
        ),
        (
            scenario(
                '[[incident]]\ntype = "accident"\nzone = "futian"\nstart = "1h"\nduration = "1h"\n'
                '[[incident]]\ntype = "surge"\nzone = "luohu"\nstart = "2h"\nend = "1h"\n'
            ),
            "x.toml:18: incident[1].end: expected end after start",
        ),
        (
            scenario('[[fault]]\ntype = "stuck"\nstart = "1h"\nduration = "1h"\n'),
            "x.toml:9: fault[0].sensor: expected 'sensor' (an id) or 'kind' and 'zone'",
        ),
        (
            scenario('[[fault]]\ntype = "clock_skew"\nkind = "iot"\nzone = "futian"\nstart = "1h"\nduration = "1h"\n'),
            "fault[0].offset: clock_skew needs an offset",
        ),
        (
            scenario('[[fault]]\ntype = "stuck"\nsensor = "x-1"\nstart = "1h"\nduration = "1h"\n'),
            "x.toml:11: fault[0].sensor: expected a sensor id",
        ),
        (scenario('[[weather]]\ntype = "snow"\nstart = "1h"\nduration = "1h"\n'), "x.toml:10: weather[0].type"),
        (scenario('[random]\nincidents = "many"\n'), "x.toml:10: random.incidents: expected int"),
    ],
)
def test_bad_files_are_rejected_with_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "x.toml")
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '[[incident]]\ntype = "accident"\nzone = "futian"\nstart = "5h30m"\nduration = "1h"\n',
            "x.toml:9: incident[0]: expected a window within the simulated span [0, 360 min), got [330, 390) min",
        ),
        (
            '[[fault]]\ntype = "stuck"\nkind = "iot"\nzone = "futian"\nindex = 5\nstart = "1h"\nduration = "1h"\n',
            "x.toml:9: fault[0]: index: zone 'futian' has 1 iot sensor(s), got index 5",
        ),
        (
            '[[fault]]\ntype = "drift"\nsensor = "iot-futian-0099"\nstart = "1h"\nduration = "1h"\n',
            "fault[0]: fault flt-001: sensor: expected a sensor id of the city",
        ),
        (
            '[[fault]]\ntype = "drift"\nkind = "iot"\nzone = "futian"\nmetric = "pm25"\n'
            'start = "1h"\nduration = "1h"\n',
            "metric: expected one of ['water_pressure', 'power_load', 'drain_level']",
        ),
        ("[random]\nincidents = 500\n", "x.toml: random: random incidents: could not place"),
    ],
)
def test_entries_that_do_not_fit_the_city_are_rejected_at_plan(body: str, expected: str) -> None:
    s = parse_scenario(scenario(body), "x.toml")
    with pytest.raises(ScenarioError, match="x.toml") as info:
        s.plan()
    assert expected in str(info.value)


def test_load_scenario_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"expected a .toml file or one of \['default'"):
        load_scenario("nonexistent")
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    path = tmp_path / "mine.toml"
    path.write_text(HEAD)
    assert load_scenario(path).name == "mine"
    assert load_scenario(str(path)).source == str(path)


@pytest.mark.parametrize(("text", "ms"), [("250ms", 250), ("1h30m", 5_400_000), ("2d", 172_800_000), ("90s", 90_000)])
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "1", "1 h", "-5m", "0s", "1y", "h1"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
