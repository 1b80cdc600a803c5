"""A bad configuration stops ``python -m streams worker``/``bridge`` before anything is applied:
non-zero exit, one line per problem naming the URBAN_ variable, no traceback, no secret values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, pipeline_env
from tests.services import free_port

pytestmark = pytest.mark.integration

SECRETS = {
    "URBAN_INFLUX__TOKEN": "influx-tok-c3d9e1f7a2b4",
    "URBAN_MQTT__USERNAME": "bridge",
    "URBAN_MQTT__PASSWORD": "mqtt-pw-4b8f0e2a6c1d",
    "URBAN_ALERTING__WEBHOOK_URL": "http://127.0.0.1:9/hook",
    "URBAN_ALERTING__WEBHOOK_SECRET": "whsec-1e7c9a3f5b2d8e",
    "URBAN_ALERTING__BOARD_TOKEN": "board-tok-8a2c4e6f0b1d3f5a",
}


def run_streams(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run ``python -m streams <args>`` to completion: exit code and everything it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def run(tmp_path: Path, command: str, **env_over: str) -> tuple[int, str]:
    # Nothing listens on the broker port: a run that got past the configuration would say so.
    env = pipeline_env(tmp_path, f"127.0.0.1:{free_port()}", **SECRETS)
    env.update(env_over)
    return run_streams(env, command)


@pytest.mark.parametrize("command", ["worker", "bridge"])
@pytest.mark.parametrize(
    ("env_over", "needles"),
    [
        ({"URBAN_WINDOW__SIZE_MS": "abc"}, ["URBAN_WINDOW__SIZE_MS: Input should be a valid integer"]),
        ({"URBAN_KAFKA__PARTITIONS": "0"}, ["URBAN_KAFKA__PARTITIONS: Input should be greater than or equal to 1"]),
        (
            {"URBAN_WINDOW__SIZE_MS": "abc", "URBAN_KAFKA__PARTITIONS": "0", "URBAN_MQTT__PORT": "70000"},
            ["3 problems:", "URBAN_WINDOW__SIZE_MS", "URBAN_KAFKA__PARTITIONS", "URBAN_MQTT__PORT"],
        ),
        (
            {"URBAN_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "URBAN_KAFKA__SASL_USERNAME": "svc"},
            ["URBAN_KAFKA__SASL_PASSWORD is required with URBAN_KAFKA__SECURITY_PROTOCOL=SASL_SSL"],
        ),
        ({"URBAN_MQTT__TOPIC_ROOT": "city/#"}, ["URBAN_MQTT__TOPIC_ROOT: expected a topic prefix without wildcards"]),
        ({"URBAN_MQTT__TLS_CA": "/nonexistent/ca.pem"}, ["URBAN_MQTT__TLS_CA: file '/nonexistent/ca.pem' does not"]),
        ({"URBAN_INFLUX__TOKEN_FILE": "/nonexistent/token"}, ["URBAN_INFLUX__TOKEN_FILE"]),
        ({"URBAN_KAFKA__SASL_PASWORD": "typo-" + SECRETS["URBAN_MQTT__PASSWORD"]}, ["URBAN_KAFKA__SASL_PASWORD"]),
    ],
)
def test_bad_configuration_is_rejected_clearly(
    tmp_path: Path, command: str, env_over: dict[str, str], needles: list[str]
) -> None:
    code, out = run(tmp_path, command, **env_over)
    assert code != 0, out[-2000:]
    assert out.startswith("urbansense: invalid configuration: "), out[-2000:]
    for needle in needles:
        assert needle in out, out
    assert "Traceback" not in out and "pydantic" not in out
    leaked = [name for name, value in SECRETS.items() if name != "URBAN_MQTT__USERNAME" and value in out]
    assert not leaked, f"{leaked} shown in: {out}"
    # Never half-applied: nothing was created (create_app makes the data dir; topics come after it).
    assert not (tmp_path / "var").exists()
