"""``drift`` rules: a sensor's ratio to its zone peers moving steadily away from its long-run ratio."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from alerting.engine import AlertEngine
from alerting.errors import RuleError
from alerting.rules import load_rules

W = 60_000
T0 = 1_800_000_000_000 // 3_600_000 * 3_600_000  # on the hour: checkpoints every 15 min
LEVELS = {"iot-z-0": 3.0, "iot-z-1": 3.2, "iot-z-2": 2.8, "iot-z-3": 3.5}

DRIFT = """
[[rule]]
name = "pressure_drift"
type = "drift"
kind = "iot"
metric = "water_pressure"
raise = 1.1
accept_after = "6h"
"""

LEAK = """
[[rule]]
name = "pressure_drop"
type = "threshold"
kind = "iot"
metric = "water_pressure"
op = "<"
raise = 2.0
clear = 2.2
"""


def agg(i: int, sid: str, value: float, src: int | None = None) -> dict[str, Any]:
    start = T0 + i * W
    out: dict[str, Any] = {
        "sensor_id": sid, "kind": "iot", "zone": "z", "metric": "water_pressure", "unit": "bar",
        "window": "tumbling", "size_ms": W, "start_ms": start, "end_ms": start + W, "first_ts_ms": start,
        "mean": value, "min": value, "max": value, "count": 2, "std": 0.01,
    }
    if src is not None:
        out["src"] = src
    return out


def value(i: int, sid: str, effect: Any = None) -> float:
    """Level x a shared daily-like cycle x a little deterministic noise (x ``effect(i, sid)``)."""
    k = int(sid[-1])
    v = LEVELS[sid] * (1.0 + 0.1 * math.sin(2 * math.pi * i / 1440)) * (1.0 + 0.004 * math.sin(1.7 * i + k))
    return v * (effect(i, sid) if effect is not None else 1.0)


def windows(n: int, effect: Any = None, srcs: dict[str, int] | None = None) -> list[list[dict[str, Any]]]:
    return [
        [agg(i, sid, value(i, sid, effect), None if srcs is None else srcs[sid]) for sid in LEVELS] for i in range(n)
    ]


def run(text: str, batches: list[list[dict[str, Any]]]) -> tuple[AlertEngine, list[dict[str, Any]]]:
    eng = AlertEngine(load_rules(text=text))
    out: list[dict[str, Any]] = []
    for batch in batches:
        out += eng.process(batch, batch[0]["end_ms"])
    return eng, out


def drift_of(sid: str, first: int, last: int, severity: float) -> Any:
    def effect(i: int, s: str) -> float:
        if s != sid or not first <= i < last:
            return 1.0
        return 1.0 + severity * (i - first) / (last - first)

    return effect


def test_rule_defaults_and_validation() -> None:
    rule = load_rules(text=DRIFT).rules[0]
    assert (rule.category, rule.field, rule.baseline_ms, rule.warmup_windows) == ("maintenance", "mean", 7_200_000, 40)
    assert rule.clear_level == pytest.approx(1.1**0.5)
    assert (rule.smooth_ms, rule.step_ms, rule.steps, rule.min_peers, rule.settle) == (1_200_000, 900_000, 4, 2, 0.05)
    for extra, field in (
        ('raise = 0.9\n', "raise"), ('op = "<"\n', "op"), ('clear = 0.5\n', "clear"), ('steps = 1\n', "steps"),
        ('settle = 0\n', "settle"), ('mode = "delta"\n', "mode"), ('step = "0s"\n', "step"),
    ):
        text = DRIFT.replace("raise = 1.1\n", "") + extra if field == "raise" else DRIFT + extra
        with pytest.raises(RuleError, match=field):
            load_rules(text=text)
    with pytest.raises(RuleError, match="applies to type 'drift' only"):
        load_rules(text=LEAK + "steps = 3\n")
    with pytest.raises(RuleError, match="drift rules cannot be zone members"):
        load_rules(text=DRIFT + '[[zone_rule]]\nname = "zd"\nmembers = "pressure_drift"\nk = 2\nwithin = "5m"\n')


def test_steady_drift_of_one_sensor_raises_one_maintenance_alert() -> None:
    eng, out = run(DRIFT, windows(600, drift_of("iot-z-1", 240, 480, 0.4)))
    raised = [r for r in out if r["state"] == "raised"]
    assert [(r["rule"], r["sensor_id"], r["category"]) for r in raised] == [
        ("pressure_drift", "iot-z-1", "maintenance")
    ]
    at = (raised[0]["raised_ts_ms"] - T0) // W
    assert 240 < at < 480 and (at * W) % 900_000 == 0  # during the drift, at a checkpoint
    assert raised[0]["value"] > 1.1
    assert "ratio to the median of 3 zone peers" in raised[0]["message"]
    # back to its old ratio after the fault: cleared
    assert [r["state"] for r in out if r["alert_id"] == raised[0]["alert_id"]][-1] == "cleared"
    # state stays small and JSON-safe
    t = eng.tracks["pressure_drift|iot-z-1"]
    assert len(t.base or ()) <= 10 + 5
    orjson.dumps(t.to_doc())


def test_downward_drift_raises_too() -> None:
    _, out = run(DRIFT, windows(600, drift_of("iot-z-2", 240, 480, -0.3)))
    raised = [r for r in out if r["state"] == "raised"]
    assert [r["sensor_id"] for r in raised] == ["iot-z-2"] and raised[0]["value"] < 1 / 1.1


def test_zone_wide_change_step_and_spread_are_not_drift() -> None:
    def zone_wide(i: int, s: str) -> float:  # every peer at once (an incident, a rush hour)
        return 1.0 + 0.5 * min(1.0, max(0.0, (i - 240) / 120))

    def step(i: int, s: str) -> float:  # one sensor moves at once and stays (recalibration, relocation)
        return 1.3 if s == "iot-z-3" and i >= 240 else 1.0

    for effect in (None, zone_wide, step):
        _, out = run(DRIFT, windows(600, effect))
        assert out == [], effect


def test_no_drift_alert_while_an_incident_involves_the_sensor() -> None:
    # the drifting sensor is also in a (threshold) incident from the start of its drift
    def effect(i: int, s: str) -> float:
        if s != "iot-z-1" or i < 240:
            return 1.0
        return 0.5 * (1.0 + 0.2 * min(1.0, (i - 240) / 240))

    _, out = run(DRIFT + LEAK, windows(600, effect))
    assert {r["rule"] for r in out} == {"pressure_drop"}


def test_too_few_peers_are_not_judged() -> None:
    ws = windows(600, drift_of("iot-z-1", 240, 480, 0.4))
    batches = [[a for a in b if a["sensor_id"] in ("iot-z-0", "iot-z-1")] for b in ws]
    eng, out = run(DRIFT, batches)
    assert out == [] and "pressure_drift|iot-z-1" not in eng.tracks


def assert_same_alerts(batches: list[list[dict[str, Any]]], in_order: list[dict[str, Any]]) -> AlertEngine:
    """Feed ``batches`` one window apart (a tick when empty); the alerts must equal ``in_order``'s."""
    eng = AlertEngine(load_rules(text=DRIFT))
    lagged: list[dict[str, Any]] = []
    for i, batch in enumerate(batches):
        lagged += eng.process(batch, T0 + (i + 1) * W) if batch else eng.tick(T0 + (i + 1) * W)
    assert [(r["alert_id"], r["state"], r["ts_ms"]) for r in lagged] == [
        (r["alert_id"], r["state"], r["ts_ms"]) for r in in_order
    ]
    return eng


@pytest.mark.parametrize("lag", [7, 90])
def test_event_time_order_does_not_depend_on_delivery(lag: int) -> None:
    srcs = {"iot-z-0": 0, "iot-z-1": 1, "iot-z-2": 0, "iot-z-3": 1}
    ws = windows(600, drift_of("iot-z-1", 240, 480, 0.4), srcs)
    _, in_order = run(DRIFT, ws)
    # source 1 delivers ``lag`` windows behind source 0 (a backlog consumed unevenly)
    late = []
    for i in range(len(ws) + lag):
        batch = [a for a in ws[i] if a["src"] == 0] if i < len(ws) else []
        batch += [a for a in ws[i - lag] if a["src"] == 1] if i >= lag else []
        late.append(batch)
    eng = assert_same_alerts(late, in_order)
    assert all(len(g.pending) <= lag + 1 for g in eng._gather.values())  # noqa: SLF001 - bounded gathering


def test_a_source_hours_behind_is_waited_for() -> None:
    """The broker run: a zone's source partitions reach the engine hours of event time apart."""
    srcs = {"iot-z-0": 0, "iot-z-1": 1, "iot-z-2": 0, "iot-z-3": 1}
    ws = windows(600, drift_of("iot-z-1", 240, 480, 0.4), srcs)
    _, in_order = run(DRIFT, ws)
    # source 1 falls behind one window per window delivered up to 300 windows (5 h), then keeps pace
    at = {j: j + min(j, 300) for j in range(len(ws))}
    late: list[list[dict[str, Any]]] = [[] for _ in range(max(at.values()) + 1)]
    for j, w in enumerate(ws):
        late[j] += [a for a in w if a["src"] == 0]
        late[at[j]] += [a for a in w if a["src"] == 1]
    assert_same_alerts(late, in_order)


def test_a_missing_peer_does_not_hold_the_zone_back() -> None:
    ws = windows(600, drift_of("iot-z-1", 240, 480, 0.4))
    ws = [[a for a in b if not (a["sensor_id"] == "iot-z-3" and 100 <= i < 130)] for i, b in enumerate(ws)]
    _, out = run(DRIFT, ws)
    assert [r["sensor_id"] for r in out if r["state"] == "raised"] == ["iot-z-1"]


def test_state_restored_mid_drift_gives_the_same_alerts() -> None:
    ws = windows(600, drift_of("iot-z-1", 240, 480, 0.4))
    _, whole = run(DRIFT, ws)
    first = AlertEngine(load_rules(text=DRIFT))
    out: list[dict[str, Any]] = []
    for batch in ws[:300]:
        out += first.process(batch, batch[0]["end_ms"])
    docs = [(k, orjson.loads(orjson.dumps(doc))) for _, k, doc in first.take_state() if doc is not None]
    second = AlertEngine(load_rules(text=DRIFT))
    second.restore(docs, 0, ws[300][0]["end_ms"])
    for batch in ws[300:]:
        out += second.process(batch, batch[0]["end_ms"])
    assert [(r["alert_id"], r["state"], r["ts_ms"]) for r in out] == [
        (r["alert_id"], r["state"], r["ts_ms"]) for r in whole
    ]


def test_a_window_a_source_delivers_in_pieces_is_judged_whole() -> None:
    """The broker run: one window of a source reaches the engine in several routed batches.

    The zone's window must wait until every source has delivered a later one; judged when each
    source's first piece came, it lost the peers still to come (the drifting sensor here) and the
    changing peer set kept the drift rules unsettled (0 of 3 drifts raised on the broker).
    """
    srcs = {"iot-z-0": 0, "iot-z-1": 0, "iot-z-2": 1, "iot-z-3": 1}
    ws = windows(600, drift_of("iot-z-1", 240, 480, 0.4), srcs)
    _, in_order = run(DRIFT, ws)
    assert [r["sensor_id"] for r in in_order if r["state"] == "raised"] == ["iot-z-1"]
    eng = AlertEngine(load_rules(text=DRIFT))
    pieces: list[dict[str, Any]] = []
    for w in ws:
        by_id = {a["sensor_id"]: a for a in w}
        for sid in ("iot-z-0", "iot-z-2", "iot-z-3", "iot-z-1"):  # each source's first piece, then the rest
            pieces += eng.process([by_id[sid]], by_id[sid]["end_ms"])
    assert [(r["alert_id"], r["state"], r["ts_ms"]) for r in pieces] == [
        (r["alert_id"], r["state"], r["ts_ms"]) for r in in_order
    ]


def test_recorded_engine_input_replays_to_the_same_alerts() -> None:
    """``simulators.evaluate.replay_engine_input``: a broker run's engine input, rescored offline."""
    from simulators.evaluate import replay_engine_input

    srcs = {"iot-z-0": 0, "iot-z-1": 0, "iot-z-2": 1, "iot-z-3": 1}
    ws = windows(600, drift_of("iot-z-1", 240, 480, 0.4), srcs)
    _, in_order = run(DRIFT, ws)
    recorded = [
        {"p": 0, "o": i, "ts": w[0]["end_ms"], "v": {"t": "aggs", "aggs": w}} for i, w in enumerate(ws)
    ]
    recorded.reverse()  # applied in broker-timestamp order, not file order
    out = replay_engine_input(recorded, load_rules(text=DRIFT))
    assert [(r["alert_id"], r["state"]) for r in out] == [(r["alert_id"], r["state"]) for r in in_order]
    assert any(r["state"] == "raised" for r in out)
