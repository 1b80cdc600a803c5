"""Secrets never leak: a real worker and bridge run with every URBAN_ secret set, then every log line
and every HTTP page they served is searched for the secret values.

The bridge talks to a Mosquitto that refuses anonymous clients, over TLS with a test CA, with its
password read from a secrets file (``URBAN_MQTT__PASSWORD_FILE``); the worker writes to InfluxDB
with a password; the board, webhook and CAP secrets are set. Tansu 0.6.0 cannot authenticate
SASL users on its in-memory storage, so the Kafka SASL password gets its own run, where the worker
fails to authenticate and must say so without revealing the password.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.city import build_city
from simulators.generators import generate
from simulators.malformed import malformed_corpus
from simulators.publish import publish_mqtt
from tests.integration.harness import pipeline_env, start_bridge, start_worker, try_stats, wait_until
from tests.integration.test_e2e import influx_rows
from tests.integration.test_security_config import run_streams
from tests.services import SecureMosquitto, Service, free_port, run_secure_mosquitto

pytestmark = pytest.mark.integration

USER = "bridge"
SECRETS = {  # each at least 16 characters (the board, webhook and CAP sinks insist) and unique
    "URBAN_INFLUX__TOKEN": "influx-tok-5e1f0c9a2b7d",
    "URBAN_INFLUX__PASSWORD": "influx-pw-77aa3b1f60c2",
    "URBAN_MQTT__PASSWORD": "mqtt-pw-9c4e2d81a5f3",
    "URBAN_ALERTING__WEBHOOK_SECRET": "whsec-3f9a0b7e21c84d",
    "URBAN_ALERTING__CAP_SECRET": "capsec-b81d44e0f7a29c",
    "URBAN_ALERTING__BOARD_TOKEN": "board-tok-6d2f8a1c0e9b4f37",
    "URBAN_KAFKA__SASL_PASSWORD": "sasl-pw-0a7c5e3d19b6e2",
}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureMosquitto]:
    with run_secure_mosquitto(tmp_path_factory.mktemp("secrets-mq"), {USER: SECRETS["URBAN_MQTT__PASSWORD"]}) as m:
        yield m


def leaks(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


def fetch(url: str) -> str:
    """The body of a GET, error pages included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback test URL
            return resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.read().decode("utf-8", "replace")


def test_worker_and_bridge_never_show_secrets(
    tmp_path: Path, bootstrap: str, secure: SecureMosquitto, influxd: Service
) -> None:
    pw_file = tmp_path / "secrets" / "mqtt_password"
    pw_file.parent.mkdir()
    pw_file.write_text(SECRETS["URBAN_MQTT__PASSWORD"] + "\n")
    pw_file.chmod(0o600)
    db = f"sec_{uuid.uuid4().hex[:8]}"
    env = pipeline_env(
        tmp_path,
        bootstrap,
        URBAN_LOG_LEVEL="DEBUG",
        URBAN_MQTT__HOST="127.0.0.1",
        URBAN_MQTT__PORT=str(secure.tls_port),
        URBAN_MQTT__USERNAME=USER,
        URBAN_MQTT__PASSWORD_FILE=str(pw_file),
        URBAN_MQTT__TLS_CA=str(secure.pki.ca),
        URBAN_INFLUX__URL=f"http://127.0.0.1:{influxd.port}",
        URBAN_INFLUX__VERSION="1",
        URBAN_INFLUX__DATABASE=db,
        URBAN_INFLUX__USERNAME="urban",
        URBAN_INFLUX__PASSWORD=SECRETS["URBAN_INFLUX__PASSWORD"],
        URBAN_INFLUX__TOKEN=SECRETS["URBAN_INFLUX__TOKEN"],
        URBAN_ALERTING__BOARD_TOKEN=SECRETS["URBAN_ALERTING__BOARD_TOKEN"],
        URBAN_ALERTING__MQTT_ALERTS="true",
        # Nothing listens there: any alert makes the sinks fail and log, which must not leak either.
        URBAN_ALERTING__WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hook",
        URBAN_ALERTING__WEBHOOK_SECRET=SECRETS["URBAN_ALERTING__WEBHOOK_SECRET"],
        URBAN_ALERTING__CAP_URL=f"http://127.0.0.1:{free_port()}/cap",
        URBAN_ALERTING__CAP_SECRET=SECRETS["URBAN_ALERTING__CAP_SECRET"],
    )
    root = env["URBAN_MQTT__TOPIC_ROOT"]
    now_ms = time.time_ns() // 1_000_000
    start_ms = (now_ms - 1_800_000) // 60_000 * 60_000
    city = build_city(24, seed=3)
    good = [
        (root + t[4:], p)
        for b in generate(city, start_ms=start_ms, interval_ms=10_000, steps=30, seed=3)
        for t, p, _ in b.to_timed_messages()
    ]
    bad = [(root + t[4:], p) for t, p, _ in malformed_corpus(10, seed=2, now_ms=now_ms)]
    port = env["URBAN_WEB_PORT"]

    worker = start_worker(env, tmp_path)
    procs = [worker]
    pages: dict[str, str] = {}
    try:
        procs.append(start_bridge(env, tmp_path))  # "mqtt subscribed": TLS + password from the file worked
        sent = publish_mqtt(
            good + bad,
            host="127.0.0.1",
            port=secure.port,  # the plain listener of the same broker also requires the password
            client_id=f"pub-{db}",
            username=USER,
            password=SECRETS["URBAN_MQTT__PASSWORD"],
        )
        assert sent == len(good) + len(bad)
        wait_until(
            lambda: (s := try_stats(env)) is not None and s["readings_in"] >= len(good) and s["aggregates"] > 0,
            120,
            "the worker to count every reading and emit aggregates",
        )
        base = f"http://127.0.0.1:{port}"
        for path in (
            "/urbansense/stats/",
            "/urbansense/alerting/",
            "/metrics",
            "/board/",
            "/board/api/alerts",
            "/board/static/board.js",
            "/api/v1/alerts?since=2h",
            "/api/v1/series?metric=pm25&since=2h",
        ):
            pages[path] = fetch(base + path)
        # The worker wrote to InfluxDB (with its user and password), so that path ran too.
        wait_until(lambda: bool(influx_rows(influxd.port, db)), 60, "window aggregates in InfluxDB")
    finally:
        for p in reversed(procs):
            p.stop()
    logs = {p.name: p.text() for p in procs}
    assert "mqtt subscribed" in logs["bridge"]
    assert '"readings_in"' in pages["/urbansense/stats/"]
    assert "<html" in pages["/board/"].lower(), pages["/board/"][:300]  # the board is mounted (token set)
    for name, text in [*logs.items(), *pages.items()]:
        assert not leaks(text), f"{name} shows the values of {leaks(text)}"
    # Nothing else the processes wrote (their data dir: spool, tables, store) holds a secret either.
    for path in Path(env["URBAN_DATA_DIR"]).rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert not leaks(path.read_bytes().decode("utf-8", "replace")), path


def test_kafka_sasl_failure_names_the_broker_not_the_password(tmp_path: Path, bootstrap: str) -> None:
    env = pipeline_env(
        tmp_path,
        bootstrap,
        URBAN_LOG_LEVEL="DEBUG",
        URBAN_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
        URBAN_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
        URBAN_KAFKA__SASL_USERNAME="urban",
        URBAN_KAFKA__SASL_PASSWORD=SECRETS["URBAN_KAFKA__SASL_PASSWORD"],
    )
    code, out = run_streams(env, "worker", "-l", "debug")
    assert code != 0, out[-3000:]
    assert f"cannot read topic metadata from {bootstrap}" in out, out[-3000:]
    assert "SASL" in out  # librdkafka says why
    assert not leaks(out), out[-3000:]
