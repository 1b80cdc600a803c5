"""The MQTT bridge without a broker: routing decisions, ordered acks, back-pressure, config."""

from __future__ import annotations

import logging
import threading
from typing import Any
from unittest.mock import MagicMock

import orjson
import paho.mqtt.client as paho
import pytest
from confluent_kafka import KafkaError, Producer

from connectors.kafka import client_config, producer_config
from connectors.mqtt import (
    BridgeCounters,
    BridgeDeliveryError,
    Forward,
    MqttBridge,
    route,
    subscription,
)
from streams.deadletter import DeadLetter
from streams.errors import ConfigError
from streams.frames import kafka_partition, split_frame
from streams.schema import encode_reading, format_ts
from streams.settings import KafkaSettings, MqttSettings, Settings

NOW = 1_800_000_000_000
TS = NOW - 5_000
SID, KIND, ZONE = "env-futian-0001", "environment", "futian"
TOPIC = f"city/{KIND}/{ZONE}/{SID}"


def good(**over: object) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(
        encode_reading(
            sensor_id=SID,
            kind=KIND,
            zone=ZONE,
            lat=22.54,
            lon=114.05,
            ts_ms=TS,
            metrics={"pm25": (35.5, "ug/m3")},
        )
    )
    doc.update(over)
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def headers(dl: DeadLetter) -> dict[str, bytes]:
    return dict(dl.headers)


# -- route() -------------------------------------------------------------------------------


def test_valid_reading_is_forwarded_with_original_bytes_key_and_event_time() -> None:
    # Odd spacing proves the bridge forwards the bytes it received, not a re-encoding.
    payload = b" " + dumps(good()) + b"\n"
    out = route(TOPIC, payload, NOW)
    assert out == Forward(key=SID.encode(), value=payload, timestamp_ms=TS)
    assert out.value is payload


def test_nested_topic_root() -> None:
    out = route(f"a/b/{KIND}/{ZONE}/{SID}", dumps(good()), NOW, topic_root="a/b")
    assert isinstance(out, Forward)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe{}", "bad_json"),
        (b"", "bad_json"),
        (b"[1,2]", "wrong_type"),
        (dumps({k: v for k, v in good().items() if k != "ts"}), "missing_field"),
        (dumps(good(extra=1)), "unknown_field"),
        (dumps(good(v=2)), "bad_version"),
        (dumps(good(sensor_id="bad id!")), "bad_id"),
        (dumps(good(zone="")), "bad_id"),
        (dumps(good(kind="weather")), "bad_kind"),
        (dumps(good(location={"lat": 91.0, "lon": 0.0})), "out_of_range"),
        (dumps(good(ts="2026-01-01T00:00:00")), "bad_timestamp"),
        (dumps(good(ts="1999-12-31T23:59:59Z")), "bad_timestamp"),
        (dumps(good(ts=format_ts(NOW + 25 * 3_600_000))), "bad_timestamp"),
        (dumps(good(metrics={})), "wrong_type"),
        (dumps(good(metrics={"PM25": {"value": 1, "unit": ""}})), "bad_metric"),
        (
            dumps(good(metrics={f"m{i}": {"value": i, "unit": ""} for i in range(65)})),
            "too_many_metrics",
        ),
        (dumps(good(metrics={"pm25": {"value": "high", "unit": ""}})), "wrong_type"),
        (dumps(good(metrics={"pm25": {"value": 1e16, "unit": ""}})), "out_of_range"),
        (b"{" + b" " * 70_000 + b"}", "oversize"),
    ],
)
def test_each_invalid_class_is_dead_lettered_with_its_reason(payload: bytes, reason: str) -> None:
    out = route(TOPIC, payload, NOW)
    assert isinstance(out, DeadLetter)
    assert out.reason == reason
    h = headers(out)
    assert h["urban.dlq.reason"] == reason.encode()
    assert h["urban.dlq.source"] == f"mqtt:{TOPIC}".encode()
    assert h["urban.dlq.at_ms"] == str(NOW).encode()
    assert out.value == payload
    assert out.key == SID.encode()  # taken from the topic when the payload is unusable


def test_payload_limit_is_configurable() -> None:
    out = route(TOPIC, dumps(good()), NOW, max_payload_bytes=64)
    assert isinstance(out, DeadLetter) and out.reason == "oversize"


@pytest.mark.parametrize(
    "topic",
    [
        f"city/traffic/{ZONE}/{SID}",  # kind differs
        f"city/{KIND}/nanshan/{SID}",  # zone differs
        f"city/{KIND}/{ZONE}/env-futian-0002",  # sensor id differs
        f"town/{KIND}/{ZONE}/{SID}",  # another root
        f"city/{KIND}/{ZONE}",  # too few levels
        f"city/{KIND}/{ZONE}/{SID}/extra",  # too many levels
        f"city/{KIND}/{ZONE}/",  # empty sensor level
    ],
)
def test_topic_that_disagrees_with_payload_is_dead_lettered(topic: str) -> None:
    payload = dumps(good())
    out = route(topic, payload, NOW)
    assert isinstance(out, DeadLetter)
    assert out.reason == "topic_mismatch"
    assert out.value == payload
    assert out.key == SID.encode()  # the validated payload's sensor id
    h = headers(out)
    assert h["urban.dlq.reason"] == b"topic_mismatch"
    assert h["urban.dlq.source"] == f"mqtt:{topic}".encode()
    assert topic.encode() in h["urban.dlq.detail"]


def test_unusable_topic_and_payload_gives_no_key() -> None:
    out = route("city/x", b"{", NOW)
    assert isinstance(out, DeadLetter) and out.reason == "bad_json" and out.key is None


def test_subscription_filter() -> None:
    assert subscription("city") == "city/+/+/+"


# -- MqttBridge with mocked paho client and producer -----------------------------------------


def mqtt_settings(**over: Any) -> MqttSettings:
    return MqttSettings(**{"client_id": "bridge-test", **over})


def make_bridge(**over: Any) -> tuple[MqttBridge, MagicMock, MagicMock]:
    client = MagicMock(spec_set=paho.Client)
    producer = MagicMock(spec_set=Producer)
    producer.flush.return_value = 0
    bridge = MqttBridge(
        mqtt_settings(**over),
        KafkaSettings(readings_topic="r", dlq_topic="d"),
        producer=producer,
        client=client,
        clock=lambda: NOW,
    )
    return bridge, client, producer


def message(topic: str, payload: bytes, mid: int, qos: int = 1) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload = payload
    msg.qos = qos
    return msg


def deliver(producer: MagicMock, call_index: int, err: KafkaError | None = None) -> None:
    kwargs = producer.produce.call_args_list[call_index].kwargs
    record = MagicMock()
    record.topic.return_value = "r"
    kwargs["on_delivery"](err, record)


def test_bridge_does_not_connect_in_init_and_wires_callbacks() -> None:
    bridge, client, _ = make_bridge()
    client.connect.assert_not_called()
    client.connect_async.assert_not_called()
    assert client.on_message == bridge._on_message
    assert client.on_connect == bridge._on_connect


def test_valid_message_is_produced_and_acked_only_after_delivery() -> None:
    bridge, client, producer = make_bridge()
    payload = dumps(good())
    bridge._on_message(client, None, message(TOPIC, payload, mid=7))
    producer.produce.assert_called_once()
    args, kwargs = producer.produce.call_args
    assert args == ("r",)
    assert kwargs["key"] == SID.encode()
    assert kwargs["value"] == payload
    assert kwargs["timestamp"] == TS
    client.ack.assert_not_called()
    assert bridge.pending == 1
    deliver(producer, 0)
    client.ack.assert_called_once_with(7, 1)
    assert bridge.pending == 0
    assert bridge.counters == BridgeCounters(received=1, forwarded=1)


def test_invalid_message_goes_to_dlq_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    bridge, client, producer = make_bridge()
    with caplog.at_level(logging.WARNING, logger="connectors.mqtt"):
        bridge._on_message(client, None, message(TOPIC, b"{oops", mid=3))
    args, kwargs = producer.produce.call_args
    assert args == ("d",)
    assert kwargs["value"] == b"{oops"
    assert dict(kwargs["headers"])["urban.dlq.reason"] == b"bad_json"
    assert f"dead-lettered reading source=mqtt:{TOPIC} reason=bad_json" in caplog.text
    deliver(producer, 0)
    client.ack.assert_called_once_with(3, 1)
    assert bridge.counters == BridgeCounters(received=1, dead_lettered=1)


def test_acks_go_out_in_arrival_order() -> None:
    bridge, client, producer = make_bridge()
    for mid in (1, 2, 3):
        bridge._on_message(client, None, message(TOPIC, dumps(good()), mid=mid))
    deliver(producer, 2)
    deliver(producer, 1)
    client.ack.assert_not_called()
    deliver(producer, 0)
    assert [c.args for c in client.ack.call_args_list] == [(1, 1), (2, 1), (3, 1)]


def test_failed_delivery_is_never_acked_and_stops_run() -> None:
    bridge, client, producer = make_bridge()
    bridge._on_message(client, None, message(TOPIC, dumps(good()), mid=1))
    bridge._on_message(client, None, message(TOPIC, dumps(good()), mid=2))
    deliver(producer, 0, KafkaError(KafkaError._MSG_TIMED_OUT))
    deliver(producer, 1)
    assert [c.args for c in client.ack.call_args_list] == [(2, 1)]
    assert bridge.counters.errors == 1
    with pytest.raises(BridgeDeliveryError, match="kafka delivery failed"):
        bridge.run(threading.Event())
    producer.flush.assert_called_once()
    client.disconnect.assert_called_once()
    client.loop_stop.assert_called_once()


def test_full_producer_queue_applies_back_pressure_instead_of_dropping() -> None:
    bridge, client, producer = make_bridge()
    producer.produce.side_effect = [BufferError("full"), BufferError("full"), None]
    bridge._on_message(client, None, message(TOPIC, dumps(good()), mid=1))
    assert producer.produce.call_count == 3
    assert producer.poll.call_count == 2
    deliver(producer, 2)
    client.ack.assert_called_once_with(1, 1)


def test_messages_arriving_while_closing_are_left_unacked() -> None:
    bridge, client, producer = make_bridge()
    bridge.close()
    bridge._on_message(client, None, message(TOPIC, dumps(good()), mid=1))
    producer.produce.assert_not_called()
    client.ack.assert_not_called()
    assert bridge.counters == BridgeCounters()


def test_handler_exception_is_counted_not_raised() -> None:
    bridge, client, producer = make_bridge()
    producer.produce.side_effect = RuntimeError("boom")
    bridge._on_message(client, None, message(TOPIC, dumps(good()), mid=1))
    assert bridge.counters.errors == 1


def test_on_connect_resubscribes_and_drops_acks_of_the_old_connection() -> None:
    bridge, client, producer = make_bridge(qos=1, topic_root="town")
    topic = f"town/{KIND}/{ZONE}/{SID}"
    bridge._on_message(client, None, message(topic, dumps(good()), mid=1))
    ok = MagicMock(is_failure=False)
    bridge._on_connect(client, None, paho.ConnectFlags(session_present=True), ok, None)
    client.subscribe.assert_called_once_with("town/+/+/+", qos=1)
    deliver(producer, 0)
    client.ack.assert_not_called()  # mid 1 belongs to the old connection; the broker redelivers
    assert bridge.pending == 0


def test_refused_connection_does_not_subscribe() -> None:
    bridge, client, _ = make_bridge()
    bridge._on_connect(client, None, paho.ConnectFlags(False), MagicMock(is_failure=True), None)
    client.subscribe.assert_not_called()


def test_wait_ready_follows_suback_and_disconnect() -> None:
    bridge, client, _ = make_bridge()
    assert not bridge.wait_ready(0)
    bridge._on_subscribe(client, None, 1, [MagicMock(is_failure=False)], None)
    assert bridge.wait_ready(0)
    bridge._on_disconnect(client, None, None, MagicMock(), None)
    assert not bridge.wait_ready(0)


def test_run_connects_and_close_flushes_then_disconnects() -> None:
    bridge, client, producer = make_bridge(host="mqtt.example", port=8883, keepalive_s=15)
    stop = threading.Event()
    stop.set()
    bridge.run(stop)
    client.connect_async.assert_called_once_with("mqtt.example", 8883, keepalive=15)
    client.loop_start.assert_called_once()
    producer.flush.assert_called_once()
    client.disconnect.assert_called_once()
    bridge.close()  # idempotent
    producer.flush.assert_called_once()


def test_real_paho_client_is_persistent_with_manual_acks_and_backoff() -> None:
    m = mqtt_settings(username="u", password="p")  # type: ignore[arg-type]  # noqa: S106
    bridge = MqttBridge(m, KafkaSettings(), producer=MagicMock(spec_set=Producer))
    client = bridge._client
    assert client._client_id == b"bridge-test"
    assert client._clean_session is False
    assert client._manual_ack is True
    assert client._protocol == paho.MQTTv311
    assert (client._reconnect_min_delay, client._reconnect_max_delay) == (1, 30)
    assert (client._username, client._password) == (b"u", b"p")


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"topic_root": "city/#"}, "TOPIC_ROOT"),
        ({"topic_root": "city/+"}, "TOPIC_ROOT"),
        ({"topic_root": ""}, "TOPIC_ROOT"),
        ({"tls_cert": "/tmp/c.pem"}, "TLS_KEY"),
    ],
)
def test_bad_config_is_rejected_in_init(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        make_bridge(**over)


def test_from_settings_uses_sections_and_payload_limit() -> None:
    s = Settings(
        mqtt=mqtt_settings(topic_root="town"),
        kafka=KafkaSettings(readings_topic="rr", dlq_topic="dd"),
        max_payload_bytes=300,
    )
    bridge = MqttBridge.from_settings(s, clock=lambda: NOW)
    out = bridge.route(f"town/{KIND}/{ZONE}/{SID}", b"{" + b" " * 400 + b"}", NOW)
    assert isinstance(out, DeadLetter) and out.reason == "oversize"
    assert bridge._readings_topic == "rr" and bridge._dlq_topic == "dd"


# -- connectors.kafka configs ----------------------------------------------------------------


def test_client_config_passes_security_settings_through() -> None:
    k = KafkaSettings(
        bootstrap_servers="b1:9093,b2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="s3cret",  # type: ignore[arg-type]  # noqa: S106
        ssl_cafile="/etc/ca.pem",  # type: ignore[arg-type]
    )
    assert client_config(k) == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem",
    }


def test_producer_config_is_durable_and_bounded() -> None:
    cfg = producer_config(KafkaSettings())
    assert cfg["acks"] == "all"
    assert cfg["enable.idempotence"] is True
    assert cfg["linger.ms"] == 5
    assert cfg["compression.type"] == "lz4"
    assert 0 < cfg["queue.buffering.max.messages"] <= 1_000_000
    Producer(cfg)  # librdkafka accepts every key (no connection is made until produce/poll)


# -- QoS 1 redeliveries (the worker's offset dedupe cannot see them: Kafka gives a copy a new offset)


def redelivery_bridge(memory: int = 100) -> tuple[MqttBridge, MagicMock, MagicMock, list[int]]:
    client = MagicMock(spec_set=paho.Client)
    producer = MagicMock(spec_set=Producer)
    now = [NOW]
    bridge = MqttBridge(mqtt_settings(), KafkaSettings(readings_topic="r", dlq_topic="d"), producer=producer,
                        client=client, clock=lambda: now[0], redelivery_memory=memory, redelivery_grace_s=30)
    return bridge, client, producer, now


def resent(payload: bytes, mid: int) -> paho.MQTTMessage:
    """The broker's redelivery of a message (DUP flag set)."""
    msg = message(TOPIC, payload, mid)
    msg.dup = True
    return msg


def connect(bridge: MqttBridge, client: MagicMock) -> None:
    bridge._on_connect(client, None, paho.ConnectFlags(session_present=True), MagicMock(is_failure=False), None)


def test_a_dup_flagged_redelivery_of_a_confirmed_message_is_acked_not_forwarded() -> None:
    bridge, client, producer, _ = redelivery_bridge()
    connect(bridge, client)
    payload = dumps(good())
    bridge._on_message(client, None, message(TOPIC, payload, mid=1))
    deliver(producer, 0)
    bridge._on_message(client, None, resent(payload, mid=2))
    assert producer.produce.call_count == 1
    assert [c.args for c in client.ack.call_args_list] == [(1, 1), (2, 1)]
    assert bridge.counters == BridgeCounters(received=2, forwarded=1, redelivered=1)


def test_an_identical_message_is_forwarded_outside_a_redelivery() -> None:
    # a sensor sending the same reading twice is a fault the rules must see (readings per window)
    bridge, client, producer, _ = redelivery_bridge()
    connect(bridge, client)
    payload = dumps(good())
    bridge._on_message(client, None, message(TOPIC, payload, mid=1))
    deliver(producer, 0)
    bridge._on_message(client, None, message(TOPIC, payload, mid=2))
    assert producer.produce.call_count == 2
    assert bridge.counters.redelivered == 0


def test_after_a_reconnect_resent_copies_are_skipped_until_the_grace_ends() -> None:
    bridge, client, producer, now = redelivery_bridge()
    connect(bridge, client)
    first, second = dumps(good()), dumps(good(ts_ms=TS + 1_000))
    bridge._on_message(client, None, message(TOPIC, first, mid=1))
    bridge._on_message(client, None, message(TOPIC, second, mid=2))
    deliver(producer, 0)
    deliver(producer, 1)
    now[0] += 60_000
    connect(bridge, client)  # the broker came back; a publisher resends without the DUP flag
    bridge._on_message(client, None, message(TOPIC, first, mid=1))
    assert producer.produce.call_count == 2
    now[0] += 30_001
    bridge._on_message(client, None, message(TOPIC, second, mid=2))
    assert producer.produce.call_count == 3  # past the grace: a sensor's own duplicate again
    assert bridge.counters.redelivered == 1


def test_a_redelivery_of_a_message_not_yet_confirmed_is_forwarded() -> None:
    # acking the copy while the first record could still fail would lose the reading
    bridge, client, producer, _ = redelivery_bridge()
    connect(bridge, client)
    payload = dumps(good())
    bridge._on_message(client, None, message(TOPIC, payload, mid=1))
    bridge._on_message(client, None, resent(payload, mid=1))
    assert producer.produce.call_count == 2
    assert bridge.counters.redelivered == 0


def test_a_skipped_redelivery_is_acked_in_arrival_order() -> None:
    bridge, client, producer, _ = redelivery_bridge()
    connect(bridge, client)
    old = dumps(good())
    bridge._on_message(client, None, message(TOPIC, old, mid=1))
    deliver(producer, 0)
    bridge._on_message(client, None, message(TOPIC, dumps(good(ts_ms=TS + 2_000)), mid=2))
    bridge._on_message(client, None, resent(old, mid=3))
    assert [c.args for c in client.ack.call_args_list] == [(1, 1)]  # mid 3 waits for mid 2
    deliver(producer, 1)
    assert [c.args for c in client.ack.call_args_list] == [(1, 1), (2, 1), (3, 1)]


def test_the_redelivery_memory_is_bounded() -> None:
    bridge, client, producer, _ = redelivery_bridge(memory=2)
    connect(bridge, client)
    payloads = [dumps(good(ts_ms=TS + 1_000 * v)) for v in range(3)]
    for i, p in enumerate(payloads):
        bridge._on_message(client, None, message(TOPIC, p, mid=i + 1))
        deliver(producer, i)
    assert len(bridge._recent.order) == 2
    bridge._on_message(client, None, resent(payloads[0], mid=9))  # forgotten: forwarded again (at least once)
    assert producer.produce.call_count == 4
    bridge._on_message(client, None, resent(payloads[2], mid=10))
    assert producer.produce.call_count == 4


# -- frames (streams.frames): readings of one partition share a record


def framing_bridge(frame: int = 3) -> tuple[MqttBridge, MagicMock, MagicMock]:
    client = MagicMock(spec_set=paho.Client)
    producer = MagicMock(spec_set=Producer)
    producer.flush.return_value = 0
    producer.list_topics.return_value.topics = {"r": MagicMock(error=None, partitions={0: None, 1: None})}
    bridge = MqttBridge(mqtt_settings(), KafkaSettings(readings_topic="r", dlq_topic="d"), producer=producer,
                        client=client, clock=lambda: NOW, frame_readings=frame, frame_linger_ms=0)
    bridge._check_partitions()
    return bridge, client, producer


def sensor_message(sid: str, ts: int, mid: int) -> paho.MQTTMessage:
    return message(f"city/{KIND}/{ZONE}/{sid}", dumps(good(sensor_id=sid, ts=format_ts(ts))), mid)


def test_readings_of_one_partition_go_as_one_frame_acked_in_order_after_delivery() -> None:
    bridge, client, producer = framing_bridge(frame=3)
    sids = [f"env-futian-{i:04d}" for i in range(40)]
    same = [s for s in sids if kafka_partition(s.encode(), 2) == 0][:3]
    for mid, sid in enumerate(same, start=1):
        bridge._on_message(client, None, sensor_message(sid, TS + mid, mid))
    producer.produce.assert_called_once()
    kwargs = producer.produce.call_args.kwargs
    assert kwargs["partition"] == 0 and "key" not in kwargs
    assert [orjson.loads(p)["sensor_id"] for p in split_frame(kwargs["value"])] == same
    client.ack.assert_not_called()
    kwargs["on_delivery"](None, MagicMock())
    assert [c.args for c in client.ack.call_args_list] == [(1, 1), (2, 1), (3, 1)]
    assert bridge.counters == BridgeCounters(received=3, forwarded=3)


def test_a_partly_filled_frame_goes_after_the_linger_and_on_close() -> None:
    bridge, client, producer = framing_bridge(frame=100)
    bridge._on_message(client, None, sensor_message("env-futian-0001", TS, 1))
    bridge._on_message(client, None, message(TOPIC, b"{oops", mid=2))  # dead letters are never framed
    assert [c.args[0] for c in producer.produce.call_args_list] == ["d"]
    bridge.flush_frames(started_before=0.0)  # not yet lingered long enough
    assert producer.produce.call_count == 1
    bridge.close()
    assert [c.args[0] for c in producer.produce.call_args_list] == ["d", "r"]
    assert len(split_frame(producer.produce.call_args.kwargs["value"])) == 1


def test_readings_go_one_per_record_until_the_partition_count_is_known() -> None:
    bridge, client, producer = framing_bridge(frame=3)
    bridge._partitions = None
    bridge._on_message(client, None, sensor_message("env-futian-0001", TS, 1))
    assert producer.produce.call_args.kwargs["key"] == b"env-futian-0001"


def test_a_failed_frame_leaves_every_message_in_it_unacked() -> None:
    bridge, client, producer = framing_bridge(frame=2)
    sids = [s for s in (f"env-futian-{i:04d}" for i in range(40)) if kafka_partition(s.encode(), 2) == 1][:2]
    for mid, sid in enumerate(sids, start=1):
        bridge._on_message(client, None, sensor_message(sid, TS, mid))
    producer.produce.call_args.kwargs["on_delivery"](KafkaError(KafkaError._MSG_TIMED_OUT), MagicMock())
    client.ack.assert_not_called()
    assert bridge.counters.errors == 2
