"""Security settings: error messages name URBAN_ variables and hide secrets, secret files, and the
mapping of Kafka/MQTT security settings onto confluent-kafka, Faust/aiokafka and paho."""

from __future__ import annotations

import os
import shutil
import ssl
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import faust
import paho.mqtt.client as paho
import pytest
from confluent_kafka import Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from connectors.kafka import client_config, producer_config
from connectors.mqtt import MqttBridge, MqttConnectError, secure_client
from streams.app import broker_credentials
from streams.errors import ConfigError
from streams.settings import KafkaSettings, MqttSettings, Settings, secret_settings

SECRETS = {
    "URBAN_INFLUX__TOKEN": "influx-tok-7f3a9c",
    "URBAN_INFLUX__PASSWORD": "influx-pw-51be0",
    "URBAN_MQTT__PASSWORD": "mqtt-pw-c0ffee",
    "URBAN_KAFKA__SASL_PASSWORD": "sasl-pw-d00d1e",
    "URBAN_ALERTING__WEBHOOK_SECRET": "whsec-8e8e8e",
    "URBAN_ALERTING__BOARD_TOKEN": "board-tok-0123456789abcdef",
    "URBAN_ALERTING__CAP_SECRET": "cap-secret-42x",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean environment: no URBAN_ variable from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("URBAN_"):
            monkeypatch.delenv(name)
    return monkeypatch


def config_error(env: pytest.MonkeyPatch, **variables: str) -> str:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings()
    err = info.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)  # no pydantic text
    return str(info.value)


def assert_no_secret(text: str) -> None:
    leaked = [name for name, value in SECRETS.items() if value in text]
    assert not leaked, f"secret values of {leaked} appear in: {text}"


# -- error messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "needles"),
    [
        ({"URBAN_WINDOW__SIZE_MS": "abc"}, ["URBAN_WINDOW__SIZE_MS: Input should be a valid integer", "'abc'"]),
        ({"URBAN_KAFKA__PARTITIONS": "0"}, ["URBAN_KAFKA__PARTITIONS: Input should be greater than or equal to 1"]),
        ({"URBAN_MQTT__QOS": "7"}, ["URBAN_MQTT__QOS: Input should be 0, 1 or 2"]),
        ({"URBAN_KAFKA__SECURITY_PROTOCOL": "TLS"}, ["URBAN_KAFKA__SECURITY_PROTOCOL: Input should be 'PLAINTEXT'"]),
        ({"URBAN_LOG_LEVEL": "LOUD"}, ["URBAN_LOG_LEVEL"]),
        ({"URBAN_KAFKA": "not json"}, ["URBAN_KAFKA: cannot parse"]),
        ({"URBAN_KAFKA__SASL_PASWORD": "typo"}, ["URBAN_KAFKA__SASL_PASWORD: not a known setting"]),
        ({"URBAN_MQTT__PORT_FILE": "/etc/hosts"}, ["URBAN_MQTT__PORT_FILE: not a known setting (only secrets"]),
    ],
)
def test_bad_values_name_the_variable(env: pytest.MonkeyPatch, variables: dict[str, str], needles: list[str]) -> None:
    text = config_error(env, **variables)
    for needle in needles:
        assert needle in text
    assert "input_value" not in text and "pydantic.dev" not in text and "typo" not in text


def test_every_problem_is_reported_at_once_without_secrets(env: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        env.setenv(name, value)
    # The first three are invalid; the whole-model check (Influx token) sees raw input in pydantic.
    text = config_error(
        env,
        URBAN_WINDOW__SIZE_MS="abc",
        URBAN_KAFKA__PARTITIONS="0",
        URBAN_MQTT__PORT="99999",
        URBAN_KAFKA__SASL_PASWORD=SECRETS["URBAN_KAFKA__SASL_PASSWORD"],  # a typo'd secret variable
    )
    assert text.startswith("4 problems:")
    for var in ("URBAN_WINDOW__SIZE_MS", "URBAN_KAFKA__PARTITIONS", "URBAN_MQTT__PORT", "URBAN_KAFKA__SASL_PASWORD"):
        assert var in text
    assert_no_secret(text)


def test_cross_field_errors_hide_every_secret(env: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        env.setenv(name, value)
    env.delenv("URBAN_INFLUX__TOKEN")
    text = config_error(env, URBAN_INFLUX__URL="http://influx:8086")
    assert "URBAN_INFLUX__TOKEN is required" in text
    assert "URBAN_MQTT__PASSWORD is set without URBAN_MQTT__USERNAME" in text
    assert "URBAN_KAFKA__SASL_PASSWORD is set but URBAN_KAFKA__SECURITY_PROTOCOL=PLAINTEXT" in text
    assert_no_secret(text)


def test_secret_values_never_in_repr(env: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        env.setenv(name, value)
    env.setenv("URBAN_MQTT__USERNAME", "bridge")
    env.setenv("URBAN_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    env.setenv("URBAN_KAFKA__SASL_USERNAME", "svc")
    s = Settings()
    assert_no_secret(repr(s) + str(s) + repr(s.model_dump()))
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == SECRETS["URBAN_KAFKA__SASL_PASSWORD"]


def test_every_secret_setting_is_known() -> None:
    assert set(secret_settings()) == {
        ("kafka", "sasl_password"),
        ("mqtt", "password"),
        ("influx", "token"),
        ("influx", "password"),
        ("alerting", "board_token"),
        ("alerting", "webhook_secret"),
        ("alerting", "cap_secret"),
    }


# -- secrets from files -----------------------------------------------------------------------


def test_secret_from_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = tmp_path / "influx_token"
    token.write_text("tok-from-file\n")
    env.setenv("URBAN_INFLUX__URL", "http://influx:8086")
    env.setenv("URBAN_INFLUX__TOKEN_FILE", str(token))
    s = Settings()
    assert s.influx.token is not None and s.influx.token.get_secret_value() == "tok-from-file"


def test_secret_file_errors_name_the_variable(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert config_error(env, URBAN_MQTT__PASSWORD_FILE=str(tmp_path / "nope")) == (
        f"URBAN_MQTT__PASSWORD_FILE: cannot read secret file '{tmp_path / 'nope'}': No such file or directory"
    )
    (tmp_path / "empty").write_text("")
    assert "is empty" in config_error(env, URBAN_MQTT__PASSWORD_FILE=str(tmp_path / "empty"))
    (tmp_path / "pw").write_text(SECRETS["URBAN_MQTT__PASSWORD"])
    text = config_error(env, URBAN_MQTT__PASSWORD_FILE=str(tmp_path / "pw"), URBAN_MQTT__PASSWORD="x")  # noqa: S106
    assert text == "URBAN_MQTT__PASSWORD and URBAN_MQTT__PASSWORD_FILE are both set; set only one"


# -- Kafka: validation and mapping onto both clients -----------------------------------------


@pytest.mark.parametrize(
    ("variables", "needle"),
    [
        ({"URBAN_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "URBAN_KAFKA__SASL_USERNAME is required"),
        (
            {"URBAN_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT", "URBAN_KAFKA__SASL_USERNAME": "u"},
            "URBAN_KAFKA__SASL_PASSWORD is required",
        ),
        ({"URBAN_KAFKA__SASL_USERNAME": "u"}, "URBAN_KAFKA__SASL_USERNAME is set but"),
        ({"URBAN_KAFKA__SSL_CAFILE": "/etc/hosts"}, "URBAN_KAFKA__SSL_CAFILE is set but"),
        (
            {"URBAN_KAFKA__SECURITY_PROTOCOL": "SSL", "URBAN_KAFKA__SSL_CAFILE": "/no/ca.pem"},
            "URBAN_KAFKA__SSL_CAFILE: file '/no/ca.pem' does not exist",
        ),
        (
            {"URBAN_KAFKA__SECURITY_PROTOCOL": "SSL", "URBAN_KAFKA__SSL_CERTFILE": "/etc/hosts"},
            "URBAN_KAFKA__SSL_CERTFILE and URBAN_KAFKA__SSL_KEYFILE must be set together",
        ),
        ({"URBAN_MQTT__TOPIC_ROOT": "city/#"}, "URBAN_MQTT__TOPIC_ROOT"),
        ({"URBAN_MQTT__TLS_CERT": "/etc/hosts"}, "URBAN_MQTT__TLS_CERT and URBAN_MQTT__TLS_KEY must be set together"),
        ({"URBAN_MQTT__TLS_CA": "/no/ca.pem"}, "URBAN_MQTT__TLS_CA: file '/no/ca.pem' does not exist"),
    ],
)
def test_inconsistent_security_settings_are_rejected(
    env: pytest.MonkeyPatch, variables: dict[str, str], needle: str
) -> None:
    assert needle in config_error(env, **variables)


@pytest.mark.parametrize(
    ("protocol", "extra", "expected"),
    [
        ("PLAINTEXT", {}, {}),
        ("SSL", {"ssl_cafile": "/etc/ca.pem"}, {"ssl.ca.location": "/etc/ca.pem"}),
        (
            "SSL",
            {"ssl_certfile": "/etc/c.pem", "ssl_keyfile": "/etc/k.pem"},
            {"ssl.certificate.location": "/etc/c.pem", "ssl.key.location": "/etc/k.pem"},
        ),
        (
            "SASL_PLAINTEXT",
            {"sasl_username": "svc", "sasl_password": "pw"},
            {"sasl.mechanism": "PLAIN", "sasl.username": "svc", "sasl.password": "pw"},
        ),
        (
            "SASL_SSL",
            {"sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "svc", "sasl_password": "pw"},
            {"sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "svc", "sasl.password": "pw"},
        ),
    ],
)
def test_client_config_keys(protocol: str, extra: dict[str, Any], expected: dict[str, str]) -> None:
    k = KafkaSettings(bootstrap_servers="b:9093", security_protocol=protocol, **extra)  # type: ignore[arg-type]
    assert client_config(k) == {"bootstrap.servers": "b:9093", "security.protocol": protocol, **expected}
    prod = producer_config(k)
    assert {key: prod[key] for key in client_config(k)} == client_config(k)
    if protocol.startswith("SASL"):
        Producer(prod)  # librdkafka accepts the keys (SASL_SSL needs its own CA store, also fine here)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.services import make_test_pki, missing

    if shutil.which("openssl") is None:
        missing("the openssl CLI (to make a test CA)")  # fails under CI=true, skips elsewhere

    return make_test_pki(tmp_path_factory.mktemp("pki"))


def test_faust_credentials_sasl_ssl(pki: Any) -> None:
    k = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="s3cret",  # type: ignore[arg-type]  # noqa: S106
        ssl_cafile=pki.ca,
    )
    creds = broker_credentials(k)
    assert isinstance(creds, faust.SASLCredentials)
    assert "s3cret" not in repr(creds)
    auth = credentials_to_aiokafka_auth(creds)  # exactly what Faust hands to aiokafka
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("svc", "s3cret")
    ctx = auth["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "UrbanSense test CA pki"),),)]


def test_faust_credentials_per_protocol(pki: Any) -> None:
    assert broker_credentials(KafkaSettings()) is None
    plain = broker_credentials(
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p")  # type: ignore[arg-type]  # noqa: S106
    )
    auth = credentials_to_aiokafka_auth(plain)
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["ssl_context"]) == ("SASL_PLAINTEXT", "PLAIN", None)
    tls = broker_credentials(KafkaSettings(security_protocol="SSL", ssl_cafile=pki.ca))
    assert isinstance(tls, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(tls)
    assert auth["security_protocol"] == "SSL" and auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    # Mutual TLS: the client certificate is loaded into the context (a bad pair would raise here).
    mtls = broker_credentials(KafkaSettings(security_protocol="SSL", ssl_certfile=pki.cert, ssl_keyfile=pki.key))
    assert isinstance(mtls, faust.SSLCredentials)


# -- MQTT clients -----------------------------------------------------------------------------


def test_secure_client_sets_credentials_and_verifying_tls(pki: Any) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    secure_client(client, MqttSettings(username="bridge", password="pw", tls_ca=pki.ca))  # type: ignore[arg-type]  # noqa: S106
    assert (client._username, client._password) == (b"bridge", b"pw")
    ctx = client._ssl_context
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    system = paho.Client(paho.CallbackAPIVersion.VERSION2)
    secure_client(system, MqttSettings(tls=True))
    assert system._ssl_context is not None and system._ssl_context.verify_mode == ssl.CERT_REQUIRED
    plain = paho.Client(paho.CallbackAPIVersion.VERSION2)
    secure_client(plain, MqttSettings())
    assert plain._ssl_context is None and plain._username is None


def test_unloadable_tls_file_names_the_variables(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="URBAN_MQTT__TLS_CA"):
        secure_client(paho.Client(paho.CallbackAPIVersion.VERSION2), MqttSettings(tls_ca=bad))


def _bridge(**mqtt: Any) -> tuple[MqttBridge, MagicMock]:
    client = MagicMock(spec_set=paho.Client)
    producer = MagicMock(spec_set=Producer)
    producer.flush.return_value = 0
    bridge = MqttBridge(MqttSettings(host="mq.example", port=8883, **mqtt), KafkaSettings(), producer=producer,
                        client=client)
    return bridge, client


@pytest.mark.parametrize(
    ("reason", "user", "needle"),
    [
        ("Bad user name or password", "bridge", "as user 'bridge'; check URBAN_MQTT__USERNAME and URBAN_MQTT__"),
        ("Not authorized", "bridge", "Not authorized (as user 'bridge'"),
        ("Not authorized", None, "without credentials; set URBAN_MQTT__USERNAME"),
    ],
)
def test_refused_credentials_stop_the_bridge_naming_the_broker(reason: str, user: str | None, needle: str) -> None:
    import threading

    bridge, client = _bridge(username=user, password="hunter2-pw" if user else None)
    bridge._on_connect(client, None, paho.ConnectFlags(False), ReasonCode(PacketTypes.CONNACK, reason), None)
    client.disconnect.assert_called_once()  # no retrying with the same credentials
    with pytest.raises(MqttConnectError) as info:
        bridge.run(threading.Event())
    text = str(info.value)
    assert text.startswith("mqtt broker mq.example:8883 refused the connection")
    assert needle in text and "hunter2-pw" not in text


def test_transient_refusal_keeps_retrying() -> None:
    bridge, client = _bridge()
    bridge._on_connect(client, None, paho.ConnectFlags(False), ReasonCode(PacketTypes.CONNACK, "Server unavailable"),
                       None)
    assert bridge._fatal is None
    client.disconnect.assert_not_called()


def test_certificate_failure_stops_the_bridge_other_errors_retry() -> None:
    bridge, _ = _bridge()
    bridge._on_connect_error(ConnectionRefusedError(111, "Connection refused"))
    assert bridge._fatal is None
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = "unable to get local issuer certificate"
    bridge._on_connect_error(err)
    assert bridge._fatal is not None
    assert str(bridge._fatal) == (
        "mqtt broker mq.example:8883: TLS certificate verification failed: unable to get local issuer certificate "
        "(check URBAN_MQTT__TLS_CA and that URBAN_MQTT__HOST matches the certificate)"
    )
