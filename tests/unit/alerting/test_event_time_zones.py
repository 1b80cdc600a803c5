"""Zone rules in event time (member alarms from several source partitions) and the spike rule."""

from __future__ import annotations

from typing import Any

from alerting.engine import AlertEngine
from alerting.rules import RuleSet, load_rules
from tests.unit.alerting.conftest import T0, W, make_agg

ZONE = """
[engine]
escalate_after = "0"
zone_hold = "3m"
[[rule]]
name = "pm25_high"
kind = "environment"
metric = "pm25"
raise = 150
clear = 120
[[zone_rule]]
name = "episode"
members = "pm25_high"
k = 2
within = "5m"
fold = "always"
"""


def rules(text: str) -> RuleSet:
    return load_rules("test.toml", text=text)


def feed(sid: str, src: int, levels: list[float]) -> list[dict[str, Any]]:
    return [make_agg(sid, i, v, src=src) for i, v in enumerate(levels)]


def deliver(eng: AlertEngine, batches: list[list[dict[str, Any]]], now: list[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for batch, t in zip(batches, now, strict=True):
        out += eng.process(batch, t)
    return out


def raised(recs: list[dict[str, Any]]) -> list[tuple[str, int, list[str]]]:
    return [(r["alert_id"], r["raised_ts_ms"], r["evidence"]["sensors"]) for r in recs if r["state"] == "raised"]


# Sensor a (source 0) is in alarm from window 4 on; b (source 1) from window 6 to 7, then clears.
A = feed("env-futian-0001", 0, [50] * 4 + [200] * 16)
B = feed("env-futian-0002", 1, [50] * 6 + [200] * 2 + [50] * 12)


def in_order() -> list[dict[str, Any]]:
    eng = AlertEngine(rules(ZONE))
    return deliver(eng, [[a, b] for a, b in zip(A, B, strict=True)], [a["end_ms"] for a in A])


def test_zone_incident_is_stamped_when_k_members_were_in_alarm() -> None:
    [(_, ts, sensors)] = raised(in_order())
    assert ts == T0 + 7 * W and sensors == ["env-futian-0001", "env-futian-0002"]


def test_a_source_running_ahead_does_not_move_the_zone_incident() -> None:
    # After the first window, source 0 is consumed 10 windows ahead of source 1 (a fast replay
    # read unevenly): sensor a's alarm runs on to window 14 before b's alarm at window 6 arrives.
    # Counted on arrival, the incident would be stamped with a's newest window; in event time it
    # is the same as in order. (A zone can wait only for sources it has heard from.)
    eng = AlertEngine(rules(ZONE))
    batches = [[A[0], B[0]], *[[A[i]] if i < 11 else [A[i], B[i - 10]] for i in range(1, len(A))]]
    batches += [[b] for b in B[10:]]
    now = [T0 + W + i * 1000 for i in range(len(batches))]  # a replay: a second of host time per batch
    out = deliver(eng, batches, now)
    assert raised(out) == raised(in_order())
    assert eng._held  # the last window waits: no source has delivered a later one yet
    # the host's progress marker: both sources have moved past the feed's last window
    end = max(a["end_ms"] for a in A + B)
    out += eng.progress({0: end + W, 1: end + W}, now[-1] + 1000, 0)
    assert raised(out) == raised(in_order())
    assert not eng._held  # everything applied once source 1 caught up


def test_members_recovered_longer_than_within_ago_in_event_time_do_not_count() -> None:
    # a alarms at windows 0-1 only; b alarms at window 9 (more than 5 min after a recovered),
    # but b's source delivers first: the pair must not make an incident.
    a = feed("env-futian-0001", 0, [200, 200] + [50] * 10)
    b = feed("env-futian-0002", 1, [50] * 9 + [200] * 3)
    eng = AlertEngine(rules(ZONE))
    out = deliver(eng, [[a[0], b[0]], b[1:], a[1:]], [T0 + W, T0 + W + 1000, T0 + W + 2000])
    assert raised(out) == []


def test_a_source_that_stopped_is_not_waited_for_longer_than_zone_hold() -> None:
    eng = AlertEngine(rules(ZONE))
    a = feed("env-futian-0001", 0, [50] * 3 + [200] * 3)
    b = feed("env-futian-0002", 1, [50] * 3 + [200] * 3)
    c = feed("env-futian-0003", 2, [50] * 3)  # source 2 delivers three windows, then stops
    out = deliver(eng, [c, a + b], [T0 + 3 * W, T0 + 3 * W + 10_000])
    assert raised(out) == []  # held: source 2 has not passed window 3
    assert raised(eng.tick(T0 + 3 * W + 179_000)) == []  # not yet 3 min (host time) since source 2
    [(_, ts, _)] = raised(eng.tick(T0 + 3 * W + 180_001))
    assert ts == T0 + 4 * W


def test_held_member_alarms_survive_a_restart() -> None:
    eng = AlertEngine(rules(ZONE))
    c = feed("env-futian-0003", 2, [50] * 3)
    a = feed("env-futian-0001", 0, [50] * 3 + [200] * 3)
    b = feed("env-futian-0002", 1, [50] * 3 + [200] * 3)
    deliver(eng, [c, a + b], [T0 + 3 * W, T0 + 3 * W + 10_000])
    docs = {k: d for _, k, d in eng.take_state()}
    fresh = AlertEngine(rules(ZONE))
    fresh.restore(docs.items(), 0, T0 + 4 * W)
    assert fresh.tracks["episode|zone:futian"].held
    # source 2 catches up (sources 0 and 1 are not known again until they deliver: not waited for)
    out = fresh.process(feed("env-futian-0003", 2, [50] * 6)[3:], T0 + 4 * W)
    assert [ts for _, ts, _ in raised(out)] == [T0 + 4 * W]


def test_a_zone_incident_held_open_does_not_fold_a_much_later_single() -> None:
    # after_raise: singles are published until the zone incident is raised. The incident raised at
    # window 2 ends at window 4, but source 2 lags, so its clear is still held when sensor a
    # alarms again at window 30: the engine cannot know the zone is open then, so a is published.
    eng = AlertEngine(rules(ZONE.replace('fold = "always"', 'fold = "after_raise"')))
    a = feed("env-futian-0001", 0, [50] * 2 + [200] * 2 + [50] * 26 + [200] * 2)
    b = feed("env-futian-0002", 1, [50] * 2 + [200] * 2 + [50] * 28)
    c = feed("env-futian-0003", 2, [50] * 32)
    first = deliver(eng, [[a[i], b[i], c[i]] for i in range(4)], [T0 + W + i * 1000 for i in range(4)])
    assert [(r["rule"], r["raised_ts_ms"]) for r in first if r["state"] == "raised"][-1] == ("episode", T0 + 3 * W)
    later = eng.process(a[4:] + b[4:], T0 + W + 5000)  # source 2 still at window 3
    assert [(r["rule"], r["sensor_id"], r["raised_ts_ms"]) for r in later if r["state"] == "raised"] == [
        ("pm25_high", "env-futian-0001", T0 + 31 * W)
    ]
    caught_up = eng.process(c[4:], T0 + W + 6000)
    assert [(r["rule"], r["state"], r["ts_ms"]) for r in caught_up if r["rule"] == "episode"] == [
        ("episode", "cleared", T0 + 5 * W)
    ]


SPIKE = """
[[rule]]
name = "people_spike"
type = "spike"
kind = "crowd"
metric = "people"
raise = 3.0
clear = 1.5
clear_windows = 5
baseline = "10m"
"""


def crowd(levels: list[tuple[float, float]]) -> list[dict[str, Any]]:
    return [
        make_agg("crd-futian-0001", i, lo, kind="crowd", metric="people", min=lo, max=hi, mean=(lo + hi) / 2)
        for i, (lo, hi) in enumerate(levels)
    ]


def test_spike_rule_flags_one_wild_window_but_not_a_lasting_jump() -> None:
    rs = rules(SPIKE)
    [rule] = rs.rules
    assert (rule.category, rule.field, rule.raise_level, rule.clear_level) == ("maintenance", "max", 3.0, 1.5)
    eng = AlertEngine(rs)
    normal = [(100.0, 104.0)] * 8
    out = eng.process(crowd([*normal, (101.0, 450.0), (100.0, 103.0), (100.0, 102.0)]), T0 + 11 * W)
    assert [(r["state"], r["raised_ts_ms"]) for r in out] == [("raised", T0 + 10 * W)]
    assert out[0]["value"] > 4 and "one window only" in out[0]["message"]
    surge = AlertEngine(rs)  # a jump within a window, 4 x for 10 minutes, then back: not a fault
    assert surge.process(crowd([*normal, (100.0, 400.0), *[(400.0, 420.0)] * 10, *normal]), T0 + 27 * W) == []
    bursts = AlertEngine(rs)  # spikes in consecutive windows: the level (min) stays
    out = bursts.process(crowd([*normal, (101.0, 450.0), (99.0, 470.0), (100.0, 103.0)]), T0 + 11 * W)
    assert [r["state"] for r in out] == ["raised"]


def test_spike_rule_takes_only_an_upward_ratio() -> None:
    for extra in ('op = "<"', 'mode = "delta"'):
        try:
            rules(SPIKE + extra + "\n")
        except Exception as exc:  # noqa: BLE001 - RuleError; the message is what matters
            assert "spike" in str(exc)
        else:
            raise AssertionError(extra)
