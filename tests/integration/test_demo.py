"""``urbansense demo`` runs the whole pipeline, prints a summary and leaves no process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import ROOT
from tests.services import Service, free_port

pytestmark = pytest.mark.integration


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def run_demo(tmp: Path, mqtt_port: int) -> tuple[str, dict[str, int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("URBAN_")}
    marker = str(tmp / "var")
    env.update({"URBAN_DATA_DIR": marker, "URBAN_STORE__PATH": str(tmp / "var" / "store.db"),
                "URBAN_MQTT__PORT": str(mqtt_port), "PYTHONPATH": str(ROOT)})
    out = subprocess.run(
        [sys.executable, "-m", "streams", "demo", "--duration", "15", "--sensors", "40"],
        env=env, cwd=tmp, capture_output=True, text=True, timeout=180, check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    summary = {m[1]: int(m[2]) for m in re.finditer(r"^\s+(\w+)\s+(\d+)$", out.stdout, re.M)}
    assert processes_with(f"URBAN_DATA_DIR={marker}") == [], "demo left processes running"
    return text, summary


def test_demo_over_mqtt(tmp_path: Path, mosquitto: Service) -> None:
    text, s = run_demo(tmp_path, mosquitto.port)
    assert "simulators -> MQTT -> bridge -> Kafka" in text
    assert s["readings_in"] > 1000 and s["aggregates"] > 100 and s["dead_letters"] > 0
    assert s["aggregates_stored"] == s["aggregates"]
    hist = subprocess.run(
        [sys.executable, "-m", "streams", "history", "--sensor", "env-futian-0001", "--metric", "pm25",
         "--since", "6h", "--format", "csv"],
        env={**os.environ, "URBAN_STORE__PATH": str(tmp_path / "var" / "store.db"), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=True,
    )
    lines = hist.stdout.strip().splitlines()
    assert lines[0] == "time,time_ms,count,mean,min,max" and len(lines) > 5


def test_demo_without_mqtt_publishes_to_kafka(tmp_path: Path) -> None:
    text, s = run_demo(tmp_path, free_port())
    assert "simulators publish to Kafka directly" in text
    assert s["readings_in"] > 1000 and s["aggregates"] > 100
