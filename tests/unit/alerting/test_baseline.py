"""``baseline`` rules: a window against the sensor's own recent normal (ratio or delta)."""

from __future__ import annotations

from typing import Any

import pytest

from alerting.engine import AlertEngine, Track
from alerting.errors import RuleError
from alerting.rules import load_rules

W = 60_000

RATIO = """
[[rule]]
name = "speed_drop"
type = "baseline"
kind = "traffic"
metric = "speed"
field = "mean"
op = "<"
raise = 0.5
clear = 0.8
baseline = "10m"
warmup_windows = 3
"""


def agg(i: int, value: float, sid: str = "trf-1", metric: str = "speed", kind: str = "traffic") -> dict[str, Any]:
    return {
        "sensor_id": sid,
        "kind": kind,
        "zone": "z",
        "metric": metric,
        "unit": "km/h",
        "window": "tumbling",
        "size_ms": W,
        "start_ms": i * W,
        "end_ms": (i + 1) * W,
        "first_ts_ms": i * W,
        "mean": value,
        "min": value,
        "max": value,
        "count": 2,
    }


def run(text: str, values: list[float], **kw: Any) -> tuple[AlertEngine, list[tuple[int, str]]]:
    eng = AlertEngine(load_rules(text=text))
    out = []
    for i, v in enumerate(values):
        out += [(i, r["state"]) for r in eng.process([agg(i, v, **kw)], (i + 1) * W)]
    return eng, out


def test_ratio_below_baseline_raises_then_clears() -> None:
    eng, out = run(RATIO, [60, 61, 59, 60, 60, 20, 22, 55, 60])
    assert out == [(5, "raised"), (7, "cleared")]
    t = eng.tracks["speed_drop|trf-1"]
    assert t.base is not None and 59 < t.base[0] < 61  # the slow windows were not learned


def test_warm_up_and_gaps_are_not_judged() -> None:
    _, out = run(RATIO, [60, 10, 10])  # only 1..2 windows learned: still warming up
    assert out == []
    eng = AlertEngine(load_rules(text=RATIO))
    for i in range(5):
        eng.process([agg(i, 60)], (i + 1) * W)
    assert eng.process([agg(30, 10)], 31 * W) == []  # after a 25-minute gap the baseline starts over


def test_delta_mode_and_floor() -> None:
    delta = (
        RATIO.replace('op = "<"', 'op = ">"')
        .replace("raise = 0.5", "raise = 8.0")
        .replace("clear = 0.8", 'clear = 4.0\nmode = "delta"')
    )
    _, out = run(delta, [20, 21, 20, 20, 25, 31, 22])
    assert out == [(5, "raised"), (6, "cleared")]
    floor = (
        RATIO.replace('op = "<"', 'op = ">"')
        .replace("raise = 0.5", "raise = 2.0")
        .replace("clear = 0.8", "clear = 1.5\nbaseline_floor = 50.0")
    )
    _, out = run(floor, [3, 3, 3, 3, 9, 9, 120])  # 3 -> 9 people is not 3x a crowd of >= 50
    assert out == [(6, "raised")]


def test_accept_after_makes_a_lasting_shift_the_new_normal() -> None:
    text = RATIO.replace("warmup_windows = 3", 'warmup_windows = 3\naccept_after = "5m"')
    _, out = run(text, [60] * 5 + [20] * 40)
    assert out[0] == (5, "raised") and (out[-1][1] == "cleared")
    _, held = run(RATIO, [60] * 5 + [20] * 40)
    assert held == [(5, "raised")]


def test_state_round_trips_and_old_documents_load() -> None:
    eng, _ = run(RATIO, [60, 61, 59, 60])
    t = eng.tracks["speed_drop|trf-1"]
    assert Track.from_doc(t.to_doc()).base == t.base
    old = {k: v for k, v in t.to_doc().items() if k != "base"}  # written before baseline rules existed
    assert Track.from_doc(old).base is None


def test_message_names_value_and_ratio() -> None:
    eng = AlertEngine(load_rules(text=RATIO))
    recs = []
    for i, v in enumerate([60, 60, 60, 60, 15]):
        recs += eng.process([agg(i, v)], (i + 1) * W)
    assert "speed mean 15 km/h is 0.25 x its baseline (< 0.5)" in recs[0]["message"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('mode = "sideways"', "mode"),
        ('baseline = "0s"', "baseline"),  # replaces the 10m
        ("baseline_floor = -1", "baseline_floor"),
        ('accept_after = "0s"', "accept_after"),
        ("warmup_windows = 0", "warmup_windows"),  # replaces the 3
    ],
)
def test_bad_baseline_fields_are_rejected(extra: str, field: str) -> None:
    text = "\n".join(ln for ln in RATIO.splitlines() if not ln.startswith(field + " ="))
    with pytest.raises(RuleError, match=field):
        load_rules(text=text + "\n" + extra + "\n")


def test_baseline_fields_only_on_baseline_rules() -> None:
    text = "[[rule]]\nname = 'x'\nkind = 'iot'\nmetric = 'm'\nraise = 5\nbaseline = '10m'\n"
    with pytest.raises(RuleError, match="applies to type 'baseline' only"):
        load_rules(text=text)


def test_ratio_needs_a_positive_level() -> None:
    with pytest.raises(RuleError, match="positive ratio"):
        load_rules(text=RATIO.replace("raise = 0.5", "raise = 0.0").replace("clear = 0.8", "clear = 0.5"))
