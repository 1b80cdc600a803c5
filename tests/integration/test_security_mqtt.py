"""MQTT security against a real Mosquitto with a password file, no anonymous access and a TLS
listener whose certificate comes from a CA generated for this run."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from alerting.notifiers import MqttAlertSink
from connectors.kafka import client_config, consume_all, ensure_topics
from connectors.mqtt import MqttBridge, MqttConnectError, secure_client
from simulators.publish import PublishError, publish_mqtt
from streams.settings import KafkaSettings, MqttSettings
from tests.integration.harness import pipeline_env
from tests.integration.test_bridge import valid_readings, wait_for
from tests.integration.test_security_config import run_streams
from tests.services import SecureMosquitto, make_test_pki, run_secure_mosquitto
from tests.unit.alerting_sinks.records import make_alert

pytestmark = pytest.mark.integration

USER, PASSWORD = "bridge", "br1dge-pa55-9f2c"  # noqa: S105 - test credentials
ALERTS_USER, ALERTS_PASSWORD = "alerts", "al3rts-pa55-77d1"  # noqa: S105


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureMosquitto]:
    users = {USER: PASSWORD, ALERTS_USER: ALERTS_PASSWORD}
    with run_secure_mosquitto(tmp_path_factory.mktemp("secure-mq"), users) as m:
        yield m


def tls_settings(secure: SecureMosquitto, **over: object) -> MqttSettings:
    fields: dict[str, object] = {
        "host": "127.0.0.1",
        "port": secure.tls_port,
        "topic_root": f"sec{uuid.uuid4().hex[:8]}",
        "client_id": f"br-{uuid.uuid4().hex[:8]}",
        "username": USER,
        "password": SecretStr(PASSWORD),
        "tls_ca": secure.pki.ca,
    }
    fields.update(over)
    return MqttSettings(**fields)  # type: ignore[arg-type]


def kafka_settings(bootstrap: str) -> KafkaSettings:
    suffix = uuid.uuid4().hex[:12]
    k = KafkaSettings(bootstrap_servers=bootstrap, readings_topic=f"sec.r.{suffix}", dlq_topic=f"sec.d.{suffix}")
    ensure_topics(client_config(k), {k.readings_topic: 2, k.dlq_topic: 1})
    return k


def run_until_error(bridge: MqttBridge, timeout_s: float = 20.0) -> BaseException:
    """Run the bridge in a thread; it must stop by itself with an error within ``timeout_s``."""
    stop = threading.Event()
    box: list[BaseException] = []

    def target() -> None:
        try:
            bridge.run(stop)
        except BaseException as exc:  # inspected by the test
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        stop.set()
        thread.join(15)
        pytest.fail(f"the bridge kept running for {timeout_s} s instead of stopping with an error")
    assert box, "the bridge stopped without an error"
    return box[0]


def tls_publisher(secure: SecureMosquitto, settings: MqttSettings) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    secure_client(client, settings)
    client.connect("127.0.0.1", secure.tls_port)
    client.loop_start()
    return client


def test_bridge_and_publishers_authenticate_over_tls_and_readings_reach_kafka(
    secure: SecureMosquitto, bootstrap: str
) -> None:
    mqtt = tls_settings(secure)
    kafka = kafka_settings(bootstrap)
    readings = valid_readings(mqtt.topic_root, 60)
    bridge = MqttBridge(mqtt, kafka)
    stop = threading.Event()
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(bridge, stop, errors), daemon=True)
    thread.start()
    try:
        assert bridge.wait_ready(20), "bridge did not subscribe over TLS with username/password"
        # 1. A paho client secured like the bridge (connectors.mqtt.secure_client), over TLS.
        pub = tls_publisher(secure, mqtt)
        try:
            infos = [pub.publish(t, p, qos=1) for t, p, _, _ in readings[:30]]
            for info in infos:
                info.wait_for_publish(20)
        finally:
            pub.disconnect()
            pub.loop_stop()
        # 2. The simulator publisher secured from the same settings (TLS + password, as `simulate`
        #    and `replay` do), then with username/password on the plain listener (which needs them too).
        sent = publish_mqtt(
            [(t, p) for t, p, _, _ in readings[30:45]],
            host="127.0.0.1",
            port=secure.tls_port,
            client_id=f"sim-{uuid.uuid4().hex[:8]}",
            security=mqtt,
        )
        sent += publish_mqtt(
            [(t, p) for t, p, _, _ in readings[45:]],
            host="127.0.0.1",
            port=secure.port,
            client_id=f"sim-{uuid.uuid4().hex[:8]}",
            username=USER,
            password=PASSWORD,
        )
        assert sent == 30
        wait_for(lambda: bridge.counters.forwarded == 60, 30, "60 readings forwarded")
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    got = consume_all(client_config(kafka), kafka.readings_topic, timeout_s=3)
    assert sorted(m.value() for m in got) == sorted(p for _, p, _, _ in readings)


def _run(bridge: MqttBridge, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        bridge.run(stop)
    except BaseException as exc:
        errors.append(exc)


def test_alert_sink_publishes_over_tls_with_a_password(secure: SecureMosquitto) -> None:
    root = f"sec{uuid.uuid4().hex[:8]}/alerts"
    sub_settings = tls_settings(secure, username=ALERTS_USER, password=SecretStr(ALERTS_PASSWORD))
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
    secure_client(sub, sub_settings)
    got: list[str] = []
    subscribed, received = threading.Event(), threading.Event()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{root}/#", qos=1)
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    sub.on_message = lambda c, u, msg: (got.append(msg.topic), received.set())
    sub.connect("127.0.0.1", secure.tls_port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)

        async def main() -> None:
            sink = MqttAlertSink(
                "127.0.0.1",
                secure.tls_port,
                topic_root=root,
                username=ALERTS_USER,
                password=SecretStr(ALERTS_PASSWORD),
                tls_ca=secure.pki.ca,
            )
            try:
                await sink.send(make_alert("a-00000000000000b1", zone="futian", severity="critical"))
            finally:
                await sink.close()

        asyncio.run(main())
        assert received.wait(10)
        wait_for(lambda: f"{root}/futian/critical/a-00000000000000b1" in got, 10, "the alert's retained state")
    finally:
        sub.disconnect()
        sub.loop_stop()


def connack_of_anonymous(secure: SecureMosquitto, port: int) -> list[str]:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    if port == secure.tls_port:
        client.tls_set(ca_certs=str(secure.pki.ca))
    codes: list[str] = []
    done = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: (codes.append(str(rc)), done.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return codes


def test_anonymous_clients_are_refused(secure: SecureMosquitto, bootstrap: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    err = run_until_error(MqttBridge(tls_settings(secure, username=None, password=None), kafka))
    assert isinstance(err, MqttConnectError)
    assert str(err) == (
        f"mqtt broker 127.0.0.1:{secure.tls_port} refused the connection: Not authorized "
        "(without credentials; set URBAN_MQTT__USERNAME and URBAN_MQTT__PASSWORD)"
    )
    for port in (secure.port, secure.tls_port):  # plain and TLS listeners alike
        assert connack_of_anonymous(secure, port) == ["Not authorized"], port
    with pytest.raises(PublishError, match=f"mqtt broker 127.0.0.1:{secure.port}: connection refused"):
        publish_mqtt([("x/y", b"{}")], host="127.0.0.1", port=secure.port, client_id="sim-anon")


def test_wrong_password_is_refused_naming_the_broker_not_the_password(
    secure: SecureMosquitto, bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wr0ng-pa55-3e1d"  # noqa: S105
    caplog.set_level(logging.DEBUG)
    mqtt = tls_settings(secure, password=SecretStr(wrong))
    err = run_until_error(MqttBridge(mqtt, KafkaSettings(bootstrap_servers=bootstrap)))
    assert isinstance(err, MqttConnectError)
    text = str(err)
    assert f"mqtt broker 127.0.0.1:{secure.tls_port} refused the connection" in text
    assert "as user 'bridge'; check URBAN_MQTT__USERNAME and URBAN_MQTT__PASSWORD" in text
    assert wrong not in text and PASSWORD not in text
    assert wrong not in caplog.text and "refused the connection" in caplog.text


def test_untrusted_server_certificate_stops_the_bridge(
    secure: SecureMosquitto, bootstrap: str, tmp_path: Path
) -> None:
    other_ca = make_test_pki(tmp_path, "other").ca  # a CA that did not sign the broker's certificate
    mqtt = tls_settings(secure, tls_ca=other_ca)
    err = run_until_error(MqttBridge(mqtt, KafkaSettings(bootstrap_servers=bootstrap)))
    assert isinstance(err, MqttConnectError)
    assert str(err).startswith(f"mqtt broker 127.0.0.1:{secure.tls_port}: TLS certificate verification failed")
    assert "URBAN_MQTT__TLS_CA" in str(err) and PASSWORD not in str(err)


def test_bridge_command_exits_on_refused_credentials(
    secure: SecureMosquitto, bootstrap: str, tmp_path: Path
) -> None:
    wrong = "wr0ng-pa55-c1i-77ab"  # noqa: S105
    env = pipeline_env(
        tmp_path,
        bootstrap,
        URBAN_MQTT__PORT=str(secure.tls_port),
        URBAN_MQTT__USERNAME=USER,
        URBAN_MQTT__PASSWORD=wrong,
        URBAN_MQTT__TLS_CA=str(secure.pki.ca),
    )
    code, out = run_streams(env, "bridge")
    assert code == 2 and "Traceback" not in out, out[-3000:]
    assert f"mqtt broker 127.0.0.1:{secure.tls_port} refused the connection: Not authorized" in out, out[-3000:]
    assert wrong not in out
