"""``evaluate_offline``: a short scenario through the worker's cores in-process, scored."""

from __future__ import annotations

import pytest

from alerting.rules import load_rules
from simulators.evaluate import evaluate_offline, offline_aggregates, offline_alerts
from simulators.scenario import parse_scenario
from streams.frames import kafka_partition

SCENARIO = parse_scenario(
    """
name = "offline-short"
zones = ["futian", "luohu"]
start = "2026-06-01T00:00:00Z"
duration = "2h"
interval = "30s"
seed = 5

[sensors]
traffic = 8
environment = 4
crowd = 4
iot = 4

[[incident]]
type = "surge"
zone = "futian"
start = "40m"
duration = "20m"
severity = 1.0

[[incident]]
type = "outage"
zone = "luohu"
start = "1h10m"
duration = "20m"
severity = 1.0

[[fault]]
type = "spike"
kind = "crowd"
zone = "luohu"
start = "30m"
duration = "40m"
severity = 1.0
probability = 0.3

[[fault]]
type = "duplicate"
kind = "traffic"
zone = "luohu"
start = "50m"
duration = "30m"
""",
    "offline-short.toml",
)


@pytest.fixture(scope="module")
def aggregates() -> list[dict]:
    aggs, counters = offline_aggregates(SCENARIO.plan())
    assert counters["readings_in"] == 20 * 240 + 60 + 20  # the feed, the duplicates, the end marks
    return aggs


def test_partitions_as_the_producers() -> None:
    assert kafka_partition(b"crd-baoan-0075", 4) == 0
    assert {kafka_partition(f"s-{i}".encode(), 4) for i in range(50)} == {0, 1, 2, 3}


def test_every_window_closes_once_with_its_source_partition(aggregates: list[dict]) -> None:
    keys = [(a["sensor_id"], a["metric"], a["start_ms"]) for a in aggregates]
    assert len(keys) == len(set(keys))
    plan = SCENARIO.plan()
    assert max(a["end_ms"] for a in aggregates) == plan.end_ms  # the end marks closed the last window
    assert all(a["src"] == kafka_partition(a["sensor_id"].encode(), 4) for a in aggregates)


def test_default_rules_detect_the_incidents_and_not_the_faults(aggregates: list[dict]) -> None:
    report = evaluate_offline(SCENARIO, models=False, aggregates=aggregates)
    assert report["mode"] == "offline"
    assert report["recall"] == 1.0
    assert report["precision"] == 1.0
    assert report["fault_incident_alerts"] == 0
    assert report["median_delay_windows"] <= 2
    assert report["fault_types"]["duplicate"]["maintenance_detected"] == 1


def test_alert_stage_is_deterministic(aggregates: list[dict]) -> None:
    rules = load_rules()
    assert offline_alerts(aggregates, rules) == offline_alerts(list(reversed(aggregates)), rules)


def test_spike_fault_surfaces_as_maintenance(aggregates: list[dict]) -> None:
    report = evaluate_offline(SCENARIO, models=False, aggregates=aggregates)
    assert report["fault_types"]["spike"]["maintenance_detected"] == 1
    assert report["fault_incident_alerts"] == 0


def test_sources_consumed_unevenly_raise_the_same_incidents(aggregates: list[dict]) -> None:
    # A worker reading source partitions at different speeds (the broker run's disorder): zone
    # rules decide in event time, so the incident alerts and their event times do not change.
    rules = load_rules()

    def incidents(records: list[dict]) -> list[tuple[str, int]]:
        raised = (r for r in records if r["category"] == "incident" and r["state"] == "raised")
        return sorted((r["alert_id"], r["raised_ts_ms"]) for r in raised)

    in_order = incidents(offline_alerts(aggregates, rules))
    assert in_order
    assert incidents(offline_alerts(aggregates, rules, source_lag_ms={1: 300_000, 3: 600_000})) == in_order
