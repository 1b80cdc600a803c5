"""``alerting.urgency.Urgency``: which aggregates of a close go through the alert path first.

The pick only orders: the engine fed each close as two messages (the pick, then the rest) must
decide exactly what it decides fed the close in one, and the pick must hold the aggregates the
alerts come from.
"""

from __future__ import annotations

from typing import Any

import pytest

from alerting.engine import AlertEngine
from alerting.rules import load_rules
from alerting.urgency import Urgency
from tests.unit.alerting.conftest import make_agg

RULES = """
[[rule]]
name = "hot"
type = "threshold"
kind = "environment"
metric = "pm25"
field = "min"
op = ">"
raise = 150
clear = 120

[[rule]]
name = "crowd_rise"
type = "baseline"
kind = "crowd"
metric = "people"
field = "min"
raise = 1.6
clear = 1.3
baseline = "30m"
baseline_floor = 50
warmup_windows = 3

[[rule]]
name = "speed_stuck"
type = "stuck"
kind = "traffic"
metric = "speed"
category = "maintenance"

[[rule]]
name = "pressure_jump"
type = "jump"
kind = "iot"
metric = "water_pressure"
max_step = 1.0
category = "maintenance"

[[rule]]
name = "silent"
type = "silence"
silent_for = "5m"
"""


def crowd(sid: str, i: int, people: float) -> dict[str, Any]:
    return make_agg(sid, i, people, kind="crowd", metric="people", unit="count")


def urgency() -> Urgency:
    return Urgency(load_rules(text=RULES))


def ids(aggs: list[dict[str, Any]]) -> list[str]:
    return [a["sensor_id"] for a in aggs]


def test_threshold_is_judged_on_the_aggregate_alone() -> None:
    u = urgency()
    first, rest = u.split([make_agg("env-1", 0, 40.0), make_agg("env-2", 0, 160.0), make_agg("env-3", 0, 150.0)])
    assert ids(first) == ["env-2"]
    assert ids(rest) == ["env-1", "env-3"]


def test_baseline_is_judged_against_the_previous_window() -> None:
    u = urgency()
    assert u.split([crowd("crd-1", 0, 100.0), crowd("crd-2", 0, 100.0)]) == ([], [crowd("crd-1", 0, 100.0),
                                                                               crowd("crd-2", 0, 100.0)])
    # crd-1 rises 1.7 x (over the 1.6 of the rule), crd-2 1.5 x
    first, rest = u.split([crowd("crd-1", 1, 170.0), crowd("crd-2", 1, 150.0)])
    assert ids(first) == ["crd-1"] and ids(rest) == ["crd-2"]
    # the floor: 20 -> 60 people is 3 x, but over max(20, 50) only 1.2 x
    u.split([crowd("crd-3", 2, 20.0)])
    assert u.split([crowd("crd-3", 3, 60.0)])[0] == []
    # a gap longer than the baseline's time constant: no previous window to judge against
    u.split([crowd("crd-4", 0, 100.0)])
    assert u.split([crowd("crd-4", 40, 300.0)])[0] == []


def test_stuck_and_jump() -> None:
    u = urgency()
    stuck = make_agg("trf-1", 0, 42.0, kind="traffic", metric="speed", std=0.0)
    moving = make_agg("trf-2", 0, 42.0, kind="traffic", metric="speed", std=3.0)
    first, _ = u.split([stuck, moving])
    assert ids(first) == ["trf-1"]
    p0 = make_agg("iot-1", 0, 4.0, kind="iot", metric="water_pressure", first=4.0, last=4.0)
    u.split([p0])
    p1 = make_agg("iot-1", 1, 5.5, kind="iot", metric="water_pressure", first=5.5, last=5.5)  # a 1.5 step
    assert ids(u.split([p1])[0]) == ["iot-1"]


def test_order_is_kept_and_several_windows_of_a_sensor_are_not_reordered() -> None:
    u = urgency()
    close = [make_agg(f"env-{n}", 0, 160.0 if n % 3 == 0 else 40.0) for n in range(10)]
    first, rest = u.split(close)
    assert ids(first) == ["env-0", "env-3", "env-6", "env-9"]
    assert ids(rest) == ["env-1", "env-2", "env-4", "env-5", "env-7", "env-8"]
    catch_up = [make_agg("env-1", 1, 40.0), make_agg("env-2", 1, 160.0), make_agg("env-1", 2, 160.0)]
    assert u.split(catch_up) == ([], catch_up)


def test_malformed_and_unruled_aggregates_stay_behind() -> None:
    u = urgency()
    broken = make_agg("env-1", 0, 160.0)
    del broken["min"]
    odd = make_agg("env-2", 0, 160.0, min="n/a")
    other = make_agg("env-3", 0, 900.0, metric="no2")  # no rule reads no2
    assert u.split([broken, odd, other]) == ([], [broken, odd, other])


def test_memory_is_bounded() -> None:
    u = Urgency(load_rules(text=RULES), max_sensors=100)
    for i in range(3):
        u.split([crowd(f"crd-{n}", i, 100.0) for n in range(150)])
        assert len(u.previous) <= 150
    u.split([crowd("crd-x", 4, 100.0)])
    assert len(u.previous) == 1  # over the bound: forgotten, then the new close remembered


def test_reload_changes_what_is_judged() -> None:
    u = urgency()
    hot = make_agg("env-1", 0, 160.0)
    assert ids(u.split([hot])[0]) == ["env-1"]
    u.set_rules(load_rules(text=RULES.replace("raise = 150", "raise = 170")))
    assert u.split([make_agg("env-1", 1, 160.0)])[0] == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_engine_decides_the_same_fed_the_pick_first(seed: int) -> None:
    """Default rules, a simulated city with incidents: each close to one engine in one message, to
    another as the pick and then the rest. Same records, same state; the alerts come with the pick."""
    from simulators import Incident, build_city, generate
    from streams.alert_agents import to_route
    from streams.engine import WindowSpec
    from streams.pipeline import Pipeline, Record

    city = build_city(240, seed=seed)
    start = 1_780_000_020_000
    zones = city.zone_ids()[:2]
    incidents = [Incident(kind, z, start + 300_000, start + 600_000, mag)
                 for z in zones for kind, mag in (("environment", 6.0), ("crowd", 3.0), ("iot", 4.0))]
    pipeline = Pipeline(WindowSpec(), ())
    whole, split = AlertEngine(load_rules(None)), AlertEngine(load_rules(None))
    u = Urgency(whole.rules)
    got_whole: list[dict[str, Any]] = []
    got_split: list[dict[str, Any]] = []
    raised_first = 0
    offsets = [0, 0]
    for batch in generate(city, start_ms=start, interval_ms=1000, steps=720, seed=seed, incidents=incidents):
        now = batch.ts_ms + 250
        records = []
        for topic, payload in batch.to_messages():
            sid = topic.rsplit("/", 1)[-1]
            p = len(sid) % 2
            records.append(Record(p, offsets[p], payload, sid.encode(), "t"))
            offsets[p] += 1
        out = pipeline.process(records, now)
        if not out.aggregates:
            continue
        first, rest = u.split(out.aggregates)
        assert sorted(map(id, first + rest)) == sorted(map(id, out.aggregates))
        got_whole += whole.process(to_route(whole, [(0, a) for a in out.aggregates])[0], now)
        early = split.process(to_route(split, [(0, a) for a in first])[0], now) if first else []
        raised_first += sum(r["state"] == "raised" for r in early)
        got_split += early + split.process(to_route(split, [(0, a) for a in rest])[0], now)
    key = lambda r: (r["alert_id"], r["state"], r["seq"])  # noqa: E731
    assert sorted(map(key, got_split)) == sorted(map(key, got_whole))
    assert sorted(map(str, split.take_state())) == sorted(map(str, whole.take_state()))
    raised = [r for r in got_whole if r["state"] == "raised" and r["category"] == "incident"]
    assert raised, "the incidents raise alerts"
    assert raised_first >= len(raised), (raised_first, len(raised))
