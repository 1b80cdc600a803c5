"""Alert records shaped like the rule engine's, for the sink and board tests."""

from __future__ import annotations

from typing import Any

T0_MS = 1_795_927_920_000  # 2026-11-29T04:52:00Z

STATES = ("raised", "updated", "escalated", "acknowledged", "cleared", "suppressed")
SEVERITIES = ("info", "warning", "critical")
KINDS = ("traffic", "environment", "crowd", "iot")


def make_alert(alert_id: str = "a-2f82c14509cd4f2f", seq: int = 1, **overrides: Any) -> dict[str, Any]:
    """A complete alert record (a sensor incident); ``overrides`` replace fields."""
    rec: dict[str, Any] = {
        "v": 1,
        "alert_id": alert_id,
        "seq": seq,
        "rule": "pm25_very_unhealthy",
        "category": "incident",
        "severity": "critical",
        "state": "raised",
        "subject_type": "sensor",
        "sensor_id": "env-nanshan-0005",
        "zone": "nanshan",
        "kind": "environment",
        "metric": "pm25",
        "value": 182.4,
        "threshold": 150.0,
        "message": "environment sensor env-nanshan-0005 in nanshan: pm25 mean 182.4 > 150 ug/m3",
        "evidence": {
            "values": [151.2, 166.0, 182.4],
            "windows": [[T0_MS - 180_000, T0_MS - 120_000], [T0_MS - 120_000, T0_MS - 60_000], [T0_MS - 60_000, T0_MS]],
            "score": None,
            "model_version": None,
            "series": [[T0_MS - 180_000 + i * 10_000, 120.0 + i * 3.5] for i in range(18)],
            "sensors": ["env-nanshan-0005"],
        },
        "first_reading_ts_ms": T0_MS - 175_000,
        "raised_ts_ms": T0_MS,
        "ts_ms": T0_MS + (seq - 1) * 1000,
        "latency_ms": 175_000,
        "acked_by": None,
        "escalation_level": 0,
    }
    rec.update(overrides)
    return rec


def zone_alert(alert_id: str = "a-zone00000000001", seq: int = 1, **overrides: Any) -> dict[str, Any]:
    """A zone incident (k of n sensors of a zone in alarm)."""
    base = make_alert(
        alert_id,
        seq,
        rule="crowd_surge_zone",
        subject_type="zone",
        sensor_id=None,
        zone="futian",
        kind="crowd",
        metric="density",
        value=5.1,
        threshold=4.0,
        severity="warning",
        message="crowd surge in futian: 4 of 6 sensors above 4 persons/m2",
    )
    base["evidence"]["sensors"] = [f"crd-futian-000{i}" for i in range(4)]
    base.update(overrides)
    return base
