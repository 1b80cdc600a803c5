"""score_alerts: matching alerts to ground truth, precision/recall/delay, fault-caused incidents."""

from __future__ import annotations

from typing import Any

import pytest

from simulators.evaluate import format_table, score_alerts

W = 60_000


def inc(id_: str, type_: str, kind: str, zone: str, start: int, end: int, sensors=(), zones=None) -> dict[str, Any]:
    return {
        "id": id_,
        "class": "incident",
        "type": type_,
        "kind": kind,
        "zone": zone,
        "zones": list(zones or [zone]),
        "sensors": list(sensors),
        "start_ms": start * W,
        "end_ms": end * W,
        "severity": 0.8,
    }


def flt(id_: str, type_: str, kind: str, zone: str, sensor: str, start: int, end: int) -> dict[str, Any]:
    return {
        "id": id_,
        "class": "fault",
        "type": type_,
        "kind": kind,
        "zone": zone,
        "zones": [zone],
        "sensors": [sensor],
        "start_ms": start * W,
        "end_ms": end * W,
        "severity": 1.0,
    }


def alert(
    aid: str,
    at: int,
    *,
    kind: str | None,
    zone: str,
    sensor: str | None = None,
    category: str = "incident",
    seq: int = 0,
    sensors=(),
    rule: str = "r",
    state: str = "raised",
) -> dict[str, Any]:
    return {
        "alert_id": aid,
        "seq": seq,
        "rule": rule,
        "category": category,
        "severity": "warning",
        "state": state,
        "subject_type": "sensor" if sensor else "zone",
        "sensor_id": sensor,
        "zone": zone,
        "kind": kind,
        "metric": "m",
        "raised_ts_ms": at * W,
        "ts_ms": at * W,
        "evidence": {"sensors": list(sensors)},
    }


TRUTH = [
    inc("inc-1", "accident", "traffic", "luohu", 100, 140, sensors=["trf-luohu-0001", "trf-luohu-0002"]),
    inc(
        "inc-2",
        "pollution",
        "environment",
        "baoan",
        300,
        480,
        sensors=["env-baoan-0000", "env-nanshan-0000"],
        zones=["baoan", "nanshan"],
    ),
    inc("inc-3", "surge", "crowd", "futian", 600, 620, sensors=["crd-futian-0000"]),
    flt("flt-1", "stuck", "environment", "futian", "env-futian-0001", 120, 240),
    flt("flt-2", "spike", "crowd", "nanshan", "crd-nanshan-0000", 700, 760),
]


def test_perfect_detection() -> None:
    alerts = [
        alert("a1", 102, kind="traffic", zone="luohu", sensor="trf-luohu-0001"),
        alert("a2", 301, kind="environment", zone="baoan", sensors=["env-baoan-0000"]),
        alert("a3", 601, kind="crowd", zone="futian", sensor="crd-futian-0000"),
    ]
    r = score_alerts(TRUTH, alerts, W)
    assert (r["precision"], r["recall"], r["median_delay_windows"], r["fault_incident_alerts"]) == (1.0, 1.0, 1.0, 0)
    assert r["per_kind"]["traffic"] == {
        "alerts": 1,
        "true_alerts": 1,
        "precision": 1.0,
        "incidents": 1,
        "detected": 1,
        "recall": 1.0,
        "median_delay_windows": 2.0,
    }
    assert r["per_type"]["surge"]["median_delay_windows"] == 1.0
    assert r["missed"] == [] and r["false_alarms"] == []


@pytest.mark.parametrize(
    ("at", "matched"),
    [
        (99, True),  # one window before the start: tolerated (window boundaries)
        (98, False),  # earlier: not this incident
        (142, True),  # end + 2 windows: still the tail of the incident
        (143, False),
    ],
)
def test_time_tolerance(at: int, matched: bool) -> None:
    r = score_alerts(TRUTH, [alert("a", at, kind="traffic", zone="luohu", sensor="trf-luohu-0003")], W)
    assert r["recall"] == pytest.approx(1 / 3 if matched else 0.0, abs=1e-4)
    assert r["precision"] == (1.0 if matched else 0.0)


def test_early_alert_has_zero_delay_not_negative() -> None:
    r = score_alerts(TRUTH, [alert("a", 99, kind="traffic", zone="luohu", sensor="trf-luohu-0001")], W)
    assert r["median_delay_windows"] == 0.0


def test_sensor_overlap_matches_in_a_neighbour_zone_and_zone_match_without_sensor() -> None:
    alerts = [
        alert("a1", 350, kind="environment", zone="nanshan", sensor="env-nanshan-0000"),  # spread sensor
        alert("a2", 360, kind="environment", zone="nanshan", sensors=["env-nanshan-0003"]),  # zone of the episode
        alert("a3", 360, kind="environment", zone="longgang", sensor="env-longgang-0000"),  # elsewhere
    ]
    r = score_alerts(TRUTH, alerts, W)
    assert r["true_alerts"] == 2 and [a["alert_id"] for a in r["false_alarms"]] == ["a3"]
    assert r["per_kind"]["environment"]["precision"] == pytest.approx(2 / 3, abs=1e-4)


def test_kind_must_agree() -> None:
    # A crowd alert in luohu during the accident does not detect the accident.
    r = score_alerts(TRUTH, [alert("a", 110, kind="crowd", zone="luohu", sensor="crd-luohu-0000")], W)
    assert r["recall"] == 0.0 and r["precision"] == 0.0 and r["per_kind"]["crowd"]["alerts"] == 1


def test_lifecycle_records_count_once_and_first_record_is_used() -> None:
    alerts = [
        alert("a1", 130, kind="traffic", zone="luohu", sensor="trf-luohu-0001", seq=1, state="cleared"),
        alert("a1", 104, kind="traffic", zone="luohu", sensor="trf-luohu-0001", seq=0),
        alert("a1", 120, kind="traffic", zone="luohu", sensor="trf-luohu-0001", seq=2, state="escalated"),
    ]
    r = score_alerts(TRUTH, alerts, W)
    assert r["incident_alerts"] == 1 and r["median_delay_windows"] == 4.0


def test_first_matching_alert_sets_the_delay_and_extra_alerts_are_true_positives() -> None:
    alerts = [
        alert("late", 110, kind="traffic", zone="luohu", sensor="trf-luohu-0002"),
        alert("early", 103, kind="traffic", zone="luohu", sensor="trf-luohu-0001"),
    ]
    r = score_alerts(TRUTH, alerts, W)
    assert r["per_type"]["accident"]["median_delay_windows"] == 3.0 and r["precision"] == 1.0


def test_fault_caused_incident_alert() -> None:
    alerts = [
        # a zone incident whose evidence is only the stuck sensor
        alert("z1", 150, kind="environment", zone="futian", sensors=["env-futian-0001"]),
        # the spiking crowd sensor alone
        alert("s1", 710, kind="crowd", zone="nanshan", sensor="crd-nanshan-0000"),
        # an unrelated false alarm: not counted as fault-caused
        alert("x", 150, kind="environment", zone="futian", sensor="env-futian-0002"),
        # the fault as a maintenance alert: the right way; not an incident alert at all
        alert("m1", 200, kind="environment", zone="futian", sensor="env-futian-0001", category="maintenance"),
    ]
    r = score_alerts(TRUTH, alerts, W)
    assert r["fault_incident_alerts"] == 2
    assert {a["alert_id"] for a in r["fault_incident_alert_list"]} == {"z1", "s1"}
    assert r["fault_incident_alert_list"][0]["faults"] in (["flt-1"], ["flt-2"])
    assert len(r["false_alarms"]) == 3 and r["maintenance_alerts"] == 1
    assert r["fault_types"] == {
        "stuck": {"faults": 1, "maintenance_detected": 1},
        "spike": {"faults": 1, "maintenance_detected": 0},
    }


def test_alert_overlapping_an_incident_and_a_fault_is_not_fault_caused() -> None:
    truth = [
        inc("i", "pollution", "environment", "futian", 100, 200, sensors=["env-futian-0000"]),
        flt("f", "stuck", "environment", "futian", "env-futian-0001", 100, 200),
    ]
    r = score_alerts(truth, [alert("a", 150, kind="environment", zone="futian", sensor="env-futian-0001")], W)
    assert r["fault_incident_alerts"] == 0 and r["precision"] == 1.0


def test_silence_alert_without_kind_matches_a_dropout() -> None:
    truth = [flt("f", "dropout", "traffic", "longhua", "trf-longhua-0002", 100, 145)]
    r = score_alerts(
        truth, [alert("m", 111, kind=None, zone="longhua", sensor="trf-longhua-0002", category="maintenance")], W
    )
    assert r["fault_types"]["dropout"]["maintenance_detected"] == 1


def test_summaries_are_ignored_and_empty_inputs_give_none() -> None:
    r = score_alerts([], [alert("s", 5, kind=None, zone="*", category="summary")], W)
    assert (r["precision"], r["recall"], r["median_delay_windows"], r["fault_incident_alerts"]) == (None, None, None, 0)
    assert r["per_kind"] == {} and r["incident_alerts"] == 0


def test_missed_incidents_are_listed() -> None:
    r = score_alerts(TRUTH, [], W)
    assert [m["id"] for m in r["missed"]] == ["inc-1", "inc-2", "inc-3"] and r["recall"] == 0.0
    assert r["precision"] is None


def test_bad_window() -> None:
    with pytest.raises(ValueError, match="window_ms"):
        score_alerts(TRUTH, [], 0)


def test_table_lists_every_kind_and_type() -> None:
    text = format_table(score_alerts(TRUTH, [alert("a", 102, kind="traffic", zone="luohu", sensor="x")], W))
    for word in ("traffic", "environment", "crowd", "accident", "pollution", "surge", "stuck", "ALL"):
        assert word in text
