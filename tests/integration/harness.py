"""Run UrbanSense processes (worker, bridge) against the test services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: {needle!r} not seen in {timeout_s} s; log tail:\n{self.text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def pipeline_env(tmp: Path, bootstrap: str, **extra: str) -> dict[str, str]:
    """Environment for one isolated pipeline: fresh app id, topics, MQTT root and client ids."""
    tag = uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith("URBAN_")}
    env.update(
        {
            "URBAN_APP_ID": f"t-{tag}",
            "URBAN_DATA_DIR": str(tmp / "var"),
            "URBAN_STORE__PATH": str(tmp / "var" / "store.db"),
            "URBAN_WEB_PORT": str(free_port()),
            "URBAN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "URBAN_KAFKA__READINGS_TOPIC": f"t-{tag}.readings",
            "URBAN_KAFKA__AGGREGATES_TOPIC": f"t-{tag}.aggregates",
            "URBAN_KAFKA__ALERTS_TOPIC": f"t-{tag}.alerts",
            "URBAN_KAFKA__DLQ_TOPIC": f"t-{tag}.dlq",
            "URBAN_KAFKA__LATE_TOPIC": f"t-{tag}.late",
            "URBAN_MQTT__TOPIC_ROOT": f"city{tag}",
            "URBAN_MQTT__CLIENT_ID": f"bridge-{tag}",
            "URBAN_WINDOW__IDLE_TIMEOUT_MS": "2000",
            "URBAN_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def start(name: str, env: dict[str, str], tmp: Path, *args: str) -> Proc:
    log = tmp / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams", *args], env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT
        )
    return Proc(name, proc, log)


def start_worker(env: dict[str, str], tmp: Path, name: str = "worker") -> Proc:
    p = start(name, env, tmp, "worker", "-l", "info")
    p.wait_for("Worker ready", 90)
    return p


def start_bridge(env: dict[str, str], tmp: Path) -> Proc:
    p = start("bridge", env, tmp, "bridge")
    p.wait_for("mqtt subscribed", 30)
    return p


def stats(env: dict[str, str]) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{env['URBAN_WEB_PORT']}/urbansense/stats/", timeout=5) as r:  # noqa: S310
        return orjson.loads(r.read())


def kafka_cfg(env: dict[str, str]) -> dict[str, str]:
    return {"bootstrap.servers": env["URBAN_KAFKA__BOOTSTRAP_SERVERS"]}
