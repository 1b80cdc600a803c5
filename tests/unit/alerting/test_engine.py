from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from alerting.engine import AlertEngine
from alerting.rules import RuleSet, alert_id, load_rules
from tests.unit.alerting.conftest import T0, W, make_agg

PM25 = """
[engine]
cooldown = "5m"
escalate_after = "0"
[[rule]]
name = "pm25_high"
kind = "environment"
metric = "pm25"
op = ">"
raise = 150
clear = 120
for_windows = 2
severity = "warning"
"""


def rules(text: str = PM25, **kw: Any) -> RuleSet:
    return load_rules("test.toml", text=text, **kw)


def run(eng: AlertEngine, aggs: list[dict], now: int | None = None) -> list[dict]:
    return eng.process(aggs, now if now is not None else max(a["end_ms"] for a in aggs))


def states(recs: list[dict]) -> list[tuple[str, str]]:
    return [(r["state"], r["sensor_id"] or r["zone"]) for r in recs]


def test_threshold_min_duration_hysteresis_and_stable_id() -> None:
    eng = AlertEngine(rules())
    assert run(eng, [make_agg(i=0, value=200)]) == []  # one window is not enough (for_windows = 2)
    [raised] = run(eng, [make_agg(i=1, value=180)])
    assert raised["alert_id"] == alert_id("pm25_high", "env-futian-0001", T0)  # occurrence starts at window 0
    assert (raised["state"], raised["seq"], raised["category"], raised["subject_type"]) == (
        "raised", 1, "incident", "sensor")
    assert raised["first_reading_ts_ms"] == T0 + 1000 and raised["ts_ms"] == T0 + 2 * W
    assert raised["latency_ms"] == 2 * W - 1000
    assert raised["evidence"]["values"] == [200.0, 180.0]
    assert raised["evidence"]["windows"] == [[T0, T0 + W], [T0 + W, T0 + 2 * W]]
    assert raised["evidence"]["series"][-2:] == [[T0 + W, 200.0], [T0 + 2 * W, 180.0]]
    assert run(eng, [make_agg(i=2, value=130)]) == []  # between clear and raise: still active
    [cleared] = run(eng, [make_agg(i=3, value=110)])
    assert (cleared["alert_id"], cleared["state"], cleared["seq"]) == (raised["alert_id"], "cleared", 2)


def test_cooldown_reopens_the_same_alert_instead_of_a_new_one() -> None:
    eng = AlertEngine(rules())
    out = run(eng, [make_agg(i=i, value=v) for i, v in enumerate([200, 200, 100, 200, 200])])
    assert [r["state"] for r in out] == ["raised", "cleared", "raised"]
    assert len({r["alert_id"] for r in out}) == 1 and [r["seq"] for r in out] == [1, 2, 3]
    assert out[-1]["evidence"]["reopened"] == 1
    later = run(eng, [make_agg(i=i, value=v) for i, v in [(5, 100), (20, 200), (21, 200)]])
    assert [r["state"] for r in later] == ["cleared", "raised"]
    assert later[-1]["alert_id"] == alert_id("pm25_high", "env-futian-0001", T0 + 20 * W)  # after the cool-down


def test_redelivered_windows_are_ignored() -> None:
    eng = AlertEngine(rules())
    first = run(eng, [make_agg(i=i, value=200) for i in range(3)])
    assert run(eng, [make_agg(i=i, value=200) for i in range(3)]) == []
    assert eng.counters.duplicates == 3 and len(first) == 1


def test_state_survives_a_restart_via_table_documents() -> None:
    eng = AlertEngine(rules())
    [raised] = run(eng, [make_agg(i=i, value=200) for i in range(2)])
    table = {k: d for _, k, d in eng.take_state()}
    fresh = AlertEngine(rules())
    assert fresh.restore(table.items(), 0, T0 + 2 * W) == 1
    assert run(fresh, [make_agg(i=1, value=200)]) == []  # redelivered after the restart
    [cleared] = run(fresh, [make_agg(i=2, value=10)])
    assert (cleared["alert_id"], cleared["seq"], cleared["state"]) == (raised["alert_id"], 2, "cleared")
    assert fresh.restore(table.items(), 1, 0) == 0  # other partitions' documents are not ours


ZONE = PM25.replace('for_windows = 2', 'for_windows = 1') + """
[[zone_rule]]
name = "episode"
members = "pm25_high"
k = 3
within = "10m"
severity = "critical"
fold = "always"
"""


def test_zone_incident_folds_the_storm_into_one_alert() -> None:
    eng = AlertEngine(rules(ZONE))
    quiet = [make_agg(f"env-futian-{s:04d}", 0, 50) for s in range(10)]
    assert run(eng, quiet) == []
    storm = [make_agg(f"env-futian-{s:04d}", 1, 200 + s) for s in range(8)]
    out = run(eng, storm)
    assert [(r["rule"], r["state"], r["subject_type"]) for r in out] == [("episode", "raised", "zone")]
    z = out[0]
    assert z["sensor_id"] is None and z["zone"] == "futian" and z["severity"] == "critical"
    assert z["evidence"]["sensors"] == sorted(a["sensor_id"] for a in storm)
    assert (z["value"], z["threshold"], z["evidence"]["n"]) == (8.0, 3.0, 10)
    assert z["alert_id"] == alert_id("episode", "zone:futian", T0 + W)
    more = run(eng, [make_agg(f"env-futian-{s:04d}", 2, 200 + s) for s in range(10)])
    assert [(r["alert_id"], r["state"]) for r in more] == [(z["alert_id"], "updated")]
    done = run(eng, [make_agg(f"env-futian-{s:04d}", 3, 10) for s in range(10)])
    assert [(r["alert_id"], r["state"]) for r in done] == [(z["alert_id"], "cleared")]


def test_after_raise_fold_publishes_singles_until_the_zone_incident() -> None:
    eng = AlertEngine(rules(ZONE.replace('fold = "always"', 'fold = "after_raise"')))
    out = run(eng, [make_agg(f"env-futian-{s:04d}", 1, 200) for s in range(2)])
    assert [r["rule"] for r in out] == ["pm25_high", "pm25_high"]
    out = run(eng, [make_agg(f"env-futian-{s:04d}", 1, 200) for s in range(2, 6)])
    assert [(r["rule"], r["state"]) for r in out] == [("episode", "raised"), ("episode", "updated")]
    assert out[0]["evidence"]["sensors"] == [f"env-futian-{s:04d}" for s in range(3)]
    assert len(out[1]["evidence"]["sensors"]) == 6


def test_rate_limit_emits_one_summary() -> None:
    text = PM25.replace("[engine]", "[engine]\nzone_rate_limit = 3\nglobal_rate_limit = 50").replace(
        "for_windows = 2", "for_windows = 1")
    eng = AlertEngine(rules(text))
    out = run(eng, [make_agg(f"env-futian-{s:04d}", 0, 200) for s in range(10)])
    raised = [r for r in out if r["rule"] == "pm25_high"]
    summary = [r for r in out if r["category"] == "summary"]
    assert len(raised) == 3 and eng.counters.rate_limited == 7
    assert {r["alert_id"] for r in summary} == {alert_id("rate_limit", "zone:futian", T0 + W)}
    assert [r["state"] for r in summary] == ["raised", "updated"] and summary[-1]["value"] == 7.0
    assert "7 held back" in summary[-1]["message"]
    cleared = eng.tick(T0 + W + 61_000)
    assert [(r["rule"], r["state"]) for r in cleared] == [("rate_limit", "cleared")]


def test_maintenance_window_suppresses_and_records() -> None:
    text = PM25 + f'\n[[maintenance]]\nsensor_id = "env-futian-0001"\nstart = {T0}\nend = {T0 + 10 * W}\n'
    eng = AlertEngine(rules(text))
    out = run(eng, [make_agg(i=i, value=200) for i in range(2)] + [make_agg("env-futian-0002", i, 200) for i in (0, 1)])
    assert states(out) == [("suppressed", "env-futian-0001"), ("raised", "env-futian-0002")]
    [cl] = run(eng, [make_agg(i=2, value=10)])
    assert (cl["state"], cl["alert_id"]) == ("cleared", out[0]["alert_id"])


def test_escalation_ack_and_clear_commands() -> None:
    eng = AlertEngine(rules(PM25.replace('escalate_after = "0"', 'escalate_after = "10m"')))
    [r] = run(eng, [make_agg(i=i, value=200) for i in range(2)])
    now = r["ts_ms"]
    assert eng.tick(now + 9 * W) == []
    [esc] = eng.tick(now + 10 * W)
    assert (esc["state"], esc["severity"], esc["escalation_level"]) == ("escalated", "critical", 1)
    cmd = {"action": "ack", "alert_id": r["alert_id"], "by": "op1", "token_ok": True}
    assert eng.command({**cmd, "token_ok": False}, now) == []
    [ack] = eng.command(cmd, now + 11 * W)
    assert (ack["state"], ack["acked_by"], ack["seq"]) == ("acknowledged", "op1", 3)
    assert eng.command(cmd, now + 11 * W) == []  # idempotent
    assert eng.tick(now + 100 * W) == []  # acknowledged alerts do not escalate
    [cl] = eng.command({**cmd, "action": "clear"}, now + 12 * W)
    assert cl["state"] == "cleared"
    assert run(eng, [make_agg(i=i, value=200) for i in (2, 3)]) == []  # latched until the value recovers
    assert eng.command({**cmd, "alert_id": "a-unknown"}, now) == []


QUALITY = """
[[rule]]
name = "silent"
type = "silence"
kind = "environment"
silent_for = "5m"
[[rule]]
name = "stuck"
type = "stuck"
metric = "pm25"
stuck_windows = 3
[[rule]]
name = "range"
type = "out_of_range"
metric = "pm25"
low = 0
high = 1000
[[rule]]
name = "jump"
type = "jump"
metric = "pm25"
max_step = 50
"""


def test_data_quality_rules_raise_maintenance_alerts() -> None:
    eng = AlertEngine(rules(QUALITY))
    out = run(eng, [make_agg(i=i, value=20, std=0.0) for i in range(3)])
    assert [(r["rule"], r["category"]) for r in out] == [("stuck", "maintenance")]
    out = run(eng, [make_agg(i=3, value=20, min=-5.0)])
    assert [(r["rule"], r["state"]) for r in out] == [("stuck", "cleared"), ("range", "raised")]
    assert out[1]["value"] == -5.0 and out[1]["threshold"] == 0.0
    out = run(eng, [make_agg(i=4, value=500, first=500.0)])
    assert [(r["rule"], r["state"], r["category"]) for r in out] == [
        ("range", "cleared", "maintenance"), ("jump", "raised", "maintenance")]


def test_silence_fires_on_the_event_clock_and_clears_on_data() -> None:
    eng = AlertEngine(rules(QUALITY))
    run(eng, [make_agg(i=0, value=20), make_agg("env-futian-0002", 0, 20)])
    last = T0 + 51_000
    run(eng, [make_agg("env-futian-0002", i, 20) for i in range(1, 5)], now=T0 + 5 * W)
    assert eng.tick(T0 + 5 * W) == []
    [s] = run(eng, [make_agg("env-futian-0002", 6, 20)], now=T0 + 7 * W)
    assert (s["rule"], s["sensor_id"], s["category"], s["first_reading_ts_ms"]) == (
        "silent", "env-futian-0001", "maintenance", last)
    assert s["alert_id"] == alert_id("silent", "env-futian-0001", last + 5 * W)
    [c] = run(eng, [make_agg(i=7, value=20)], now=T0 + 8 * W)
    assert (c["alert_id"], c["state"]) == (s["alert_id"], "cleared")


def test_a_gap_that_arrives_in_one_batch_is_still_silence() -> None:
    """A backlog or a fast replay delivers the windows before a dropout and the first ones after it
    in one batch: the sensor reads again before any silence check runs. The gap in its data is
    the silence; it is raised (with the alert id the event clock would have given) and cleared."""
    eng = AlertEngine(rules(QUALITY))
    sid = "env-futian-0001"
    batch = [make_agg(sid, i, 20) for i in range(3)] + [make_agg(sid, i, 20) for i in range(10, 13)]
    out = run(eng, batch, now=T0 + 1000 * W)
    last = T0 + 2 * W + 51_000
    assert [(r["rule"], r["sensor_id"], r["state"]) for r in out] == [
        ("silent", sid, "raised"), ("silent", sid, "cleared")]
    assert out[0]["alert_id"] == out[1]["alert_id"] == alert_id("silent", sid, last + 5 * W)
    assert out[0]["first_reading_ts_ms"] == last
    assert out[0]["ts_ms"] == T0 + 10 * W + 1_000  # known at the first reading after the gap
    assert out[0]["latency_ms"] == T0 + 10 * W + 1_000 - (last + 5 * W)
    # the same feed, window by window with the clock judging as it goes, gives the same alert id
    eng2 = AlertEngine(rules(QUALITY))
    other = "env-futian-0002"
    ids = []
    for i in range(13):
        batch = [make_agg(other, i, 20)] + ([make_agg(sid, i, 20)] if i < 3 or i >= 10 else [])
        ids += [(r["sensor_id"], r["state"], r["alert_id"]) for r in run(eng2, batch, now=T0 + (i + 1) * W)]
    assert ids == [(sid, "raised", out[0]["alert_id"]), (sid, "cleared", out[0]["alert_id"])]
    # a gap of exactly the silence limit is no silence (only "more than silent_for" is)
    eng3 = AlertEngine(rules(QUALITY))
    spaced = [make_agg(sid, 0, 20), make_agg(sid, 5, 20, first_ts_ms=T0 + 51_000 + 5 * W)]
    assert run(eng3, spaced, now=T0 + 1000 * W) == []


def test_a_replay_does_not_look_silent() -> None:
    eng = AlertEngine(rules(QUALITY))
    wall = T0 + 1000 * W  # replaying data from long ago
    for i in range(20):
        assert run(eng, [make_agg(i=i, value=20)], now=wall + i * 10) == []
        assert eng.tick(wall + i * 10 + 5) == []


def test_a_lagging_source_does_not_make_its_sensors_look_silent() -> None:
    """Source partitions consumed unevenly (a backlog): each sensor is judged on its own source's clock."""
    eng = AlertEngine(rules(QUALITY))
    ahead, behind = "env-futian-0002", "env-futian-0001"
    run(eng, [{**make_agg(i=0, value=20), "src": 1}, {**make_agg(ahead, 0, 20), "src": 0}])
    # source 0 runs 20 windows ahead; source 1 has not been consumed further yet
    out = run(eng, [{**make_agg(ahead, i, 20), "src": 0} for i in range(1, 20)], now=T0 + W)
    assert out == [] and eng.tick(T0 + W) == []
    # source 1 catches up: sensor 0001 did report all along, nothing to say
    assert run(eng, [{**make_agg(i=i, value=20), "src": 1} for i in range(1, 20)], now=T0 + W) == []
    # now source 1 moves on without sensor 0001 (another sensor of source 1 reports): silent
    other = "env-futian-0003"
    out = run(eng, [{**make_agg(other, i, 20), "src": 1} for i in range(20, 27)], now=T0 + W)
    assert [(r["rule"], r["sensor_id"], r["state"]) for r in out] == [("silent", behind, "raised")]
    assert out[0]["ts_ms"] - out[0]["first_reading_ts_ms"] >= 5 * W


def test_rate_of_change_and_anomaly_without_score() -> None:
    text = """
[[rule]]
name = "roc"
type = "rate_of_change"
metric = "pm25"
raise = 1.0
clear = 0.1
[[rule]]
name = "odd"
type = "anomaly"
metric = "pm25"
raise = 0.9
"""
    eng = AlertEngine(rules(text))
    out = run(eng, [make_agg(i=0, value=10), make_agg(i=1, value=100)])  # +90 per 60 s = 1.5/s
    assert [(r["rule"], r["value"]) for r in out] == [("roc", 1.5)]
    assert eng.counters.missing_score == 2
    out = run(eng, [make_agg(i=2, value=100, score=0.95, model_version="v3")])
    assert [(r["rule"], r["evidence"]["score"], r["evidence"]["model_version"]) for r in out] == [
        ("roc", None, None), ("odd", 0.95, "v3")]


def test_hot_reload_keeps_the_old_rules_on_a_bad_file(tmp_path: Path) -> None:
    from streams.alert_agents import Alerting

    path = tmp_path / "rules.toml"
    path.write_text(PM25)
    eng = AlertEngine(load_rules(path))
    handle = Alerting(eng, path, False)
    [r] = run(eng, [make_agg(i=i, value=200) for i in range(2)])
    path.write_text(PM25.replace("raise = 150", "raise = 'very high'"))
    os.utime(path, ns=(1, 10**18))
    assert handle.check_reload(T0) == [] and handle.stats["rule_reload_errors"] == 1
    assert eng.rules.rules[0].raise_level == 150
    path.write_text(PM25.replace("raise = 150", "raise = 160").replace("pm25_high", "pm25_higher"))
    os.utime(path, ns=(1, 2 * 10**18))
    out = handle.check_reload(T0 + 3 * W)
    assert eng.rules.rules[0].raise_level == 160 and handle.stats["rule_reloads"] == 1
    assert [(x["alert_id"], x["state"]) for x in out] == [(r["alert_id"], "cleared")]  # its rule is gone


def test_unwanted_aggregates_are_not_routed() -> None:
    eng = AlertEngine(rules())
    assert eng.wants(make_agg()) and not eng.wants(make_agg(metric="pm10"))
    assert not eng.wants(make_agg(window="hopping"))


def test_the_rules_an_aggregate_gets_follow_zone_and_sensor_filters_and_reloads() -> None:
    """``_applicable`` remembers per (kind, metric, window, size), and per zone and sensor too once a
    rule filters on them: what it gives is what ``Rule.applies`` says, aggregate by aggregate."""
    text = PM25 + """
[[rule]]
name = "pm25_nanshan"
kind = "environment"
metric = "pm25"
zones = ["nanshan"]
op = ">"
raise = 100
clear = 90
[[rule]]
name = "pm25_one"
metric = "pm25"
sensors = ["env-futian-0002"]
op = ">"
raise = 50
clear = 40
"""
    eng = AlertEngine(rules(text))
    aggs = [make_agg(sid, zone=zone, **over) for sid in ("env-futian-0001", "env-futian-0002")
            for zone in ("futian", "nanshan") for over in ({}, {"size_ms": 2 * W}, {"metric": "pm10"})]
    for agg in aggs * 2:  # the second time from the memo
        rules_now, silence = eng._applicable(agg)
        want = [r for r in eng.rules.rules if r.type != "silence" and r.applies(agg)]
        assert sorted(r.name for r in rules_now) == sorted(r.name for r in want)
        assert silence == ()
    assert {r.name for r in eng._applicable(make_agg("env-futian-0002", zone="nanshan"))[0]} == {
        "pm25_high", "pm25_nanshan", "pm25_one"}
    # a reload forgets what was remembered under the old rules
    eng.set_rules(rules(), T0)
    assert [r.name for r in eng._applicable(make_agg("env-futian-0002", zone="nanshan"))[0]] == ["pm25_high"]


@pytest.mark.parametrize("n", [1, 50])
def test_engine_state_documents_are_json_safe(n: int) -> None:
    import orjson

    eng = AlertEngine(rules(ZONE))
    run(eng, [make_agg(f"env-futian-{s:04d}", 1, 200) for s in range(n)])
    docs = eng.take_state()
    assert docs and orjson.loads(orjson.dumps([d for _, _, d in docs]))
