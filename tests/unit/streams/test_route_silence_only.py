"""The alert router leaves out aggregates only silence rules want when another shows them the same.

``streams.alert_agents.to_route`` is what the routing agent sends the engine. Leaving out an
aggregate must change nothing: the engine fed the reduced batches gives the same alert records,
the same table state and the same newest-reading documents as the engine fed everything.
"""

from __future__ import annotations

from typing import Any

from alerting.engine import AlertEngine
from alerting.rules import load_rules
from streams.alert_agents import to_route
from tests.unit.alerting.conftest import T0, W, make_agg

RULES = """
[[rule]]
name = "silent"
type = "silence"
silent_for = "3m"

[[rule]]
name = "slow"
type = "threshold"
kind = "traffic"
metric = "speed"
field = "mean"
op = "<"
raise = 10
"""


def traffic(sid: str, i: int, speed: float, **over: Any) -> list[dict[str, Any]]:
    """One window of a traffic sensor: its three metrics from the same readings."""
    common = {"kind": "traffic", "zone": "futian", "unit": "", **over}
    return [make_agg(sid, i, v, metric=m, **common) for m, v in (("flow", 30.0), ("speed", speed), ("occupancy", 0.2))]


def batches() -> list[list[tuple[int, dict[str, Any]]]]:
    out = []
    for i in range(16):
        batch = []
        for n in range(1, 5):
            sid = f"trf-futian-{n:04d}"
            if n == 2 and 5 <= i < 10:  # silent for five windows
                continue
            speed = 5.0 if n == 3 and i in (7, 8) else 40.0  # an incident on sensor 3
            batch += [(0, a) for a in traffic(sid, i, speed)]
        # a sensor whose flow window came without its other metrics: nothing covers it
        if i == 12:
            batch.append((0, make_agg("trf-futian-0009", i, 30.0, metric="flow", kind="traffic", zone="futian")))
        out.append(batch)
    return out


def run(reduce: bool) -> tuple[list[dict[str, Any]], list[Any], list[Any], int]:
    eng = AlertEngine(load_rules(text=RULES))
    records, state, seen, skipped = [], [], [], 0
    for i, batch in enumerate(batches()):
        batch = [(src, dict(a)) for src, a in batch]
        if reduce:
            aggs, n = to_route(eng, batch)
            skipped += n
        else:
            aggs = [dict(a, src=src) for src, a in batch if eng.wants(a)]
        records += eng.process(aggs, T0 + (i + 1) * W + 6_000, partition=0)
        records += eng.tick(T0 + (i + 1) * W + 30_000)
        state += eng.take_state()
        seen += eng.take_seen()
    return records, state, seen, skipped


def test_leaving_out_covered_silence_only_aggregates_changes_nothing() -> None:
    full, reduced = run(reduce=False), run(reduce=True)
    assert reduced[:3] == full[:3]
    rules = sorted({(r["rule"], r["sensor_id"], r["state"]) for r in full[0]})
    assert ("silent", "trf-futian-0002", "raised") in rules and ("slow", "trf-futian-0003", "raised") in rules
    # flow and occupancy of every sensor window but the lone flow window are left out
    assert reduced[3] == 2 * (16 * 4 - 5)


def test_an_aggregate_not_covered_by_the_same_silence_rules_is_routed() -> None:
    flow_only = '\n[[rule]]\nname = "silent_flow"\ntype = "silence"\nmetric = "flow"\nsilent_for = "3m"\n'
    env_only = RULES.replace('name = "silent"', 'name = "silent"\nkind = "environment"')
    eng = AlertEngine(load_rules(text=env_only + flow_only))
    batch = [(0, a) for a in traffic("trf-futian-0001", 0, 40.0)]
    aggs, skipped = to_route(eng, batch)
    # speed is wanted by "slow" but seen by no silence rule; flow only by "silent_flow": routed
    assert [a["metric"] for a in aggs] == ["flow", "speed"] and skipped == 0
    assert all(a["src"] == 0 for a in aggs)
