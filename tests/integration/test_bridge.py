"""The MQTT -> Kafka bridge against a real Mosquitto and a real Tansu Kafka-protocol broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Message, Producer
from paho.mqtt.enums import CallbackAPIVersion

from connectors.kafka import (
    KafkaTopicError,
    client_config,
    consume_all,
    ensure_topics,
    producer_config,
    topic_message_count,
)
from connectors.mqtt import MqttBridge
from streams.schema import encode_reading, format_ts
from streams.settings import KafkaSettings, MqttSettings
from tests.services import Service

pytestmark = pytest.mark.integration

KINDS = ("traffic", "environment", "crowd", "iot")
ZONES = ("futian", "nanshan", "luohu")
METRIC = {"traffic": "speed", "environment": "pm25", "crowd": "count", "iot": "power_kw"}
T0 = 1_780_000_000_000  # 2026-05-28, before "now" on any machine running this


def value(m: Message) -> bytes:
    v = m.value()
    assert isinstance(v, bytes)
    return v


def headers(m: Message) -> dict[str, bytes]:
    raw = m.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    return {k: v for k, v in pairs if isinstance(v, bytes)}


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def valid_readings(root: str, n: int) -> list[tuple[str, bytes, str, int]]:
    """``n`` readings from 40 sensors: (topic, payload, sensor_id, ts_ms), distinct timestamps."""
    out = []
    for i in range(n):
        kind, zone = KINDS[i % 4], ZONES[i % 3]
        sid = f"{kind[:3]}-{zone}-{i % 40:04d}"
        ts_ms = T0 + i * 1000
        payload = encode_reading(
            sensor_id=sid,
            kind=kind,
            zone=zone,
            lat=22.5 + (i % 7) / 100,
            lon=114.0,
            ts_ms=ts_ms,
            metrics={METRIC[kind]: (float(i % 97), "u")},
        )
        out.append((f"{root}/{kind}/{zone}/{sid}", payload, sid, ts_ms))
    return out


def malformed(root: str) -> list[tuple[str, bytes, str]]:
    """20 bad messages: (topic, payload, expected reason)."""

    def doc(**over: Any) -> dict[str, Any]:
        d: dict[str, Any] = orjson.loads(
            encode_reading(
                sensor_id="env-futian-9999",
                kind="environment",
                zone="futian",
                lat=22.5,
                lon=114.0,
                ts_ms=T0,
                metrics={"pm25": (12.0, "ug/m3")},
            )
        )
        d.update(over)
        return d

    topic = f"{root}/environment/futian/env-futian-9999"
    cases: list[tuple[str, bytes, str]] = [
        (topic, b"{not json", "bad_json"),
        (topic, b"\xff\xfe\x00garbage", "bad_json"),
        (topic, b"", "bad_json"),
        (topic, b"[1, 2, 3]", "wrong_type"),
        (topic, orjson.dumps({k: v for k, v in doc().items() if k != "ts"}), "missing_field"),
        (topic, orjson.dumps({k: v for k, v in doc().items() if k != "metrics"}), "missing_field"),
        (topic, orjson.dumps(doc(extra=True)), "unknown_field"),
        (topic, orjson.dumps(doc(v=2)), "bad_version"),
        (topic, orjson.dumps(doc(kind="weather")), "bad_kind"),
        (topic, orjson.dumps(doc(sensor_id="no spaces allowed")), "bad_id"),
        (topic, orjson.dumps(doc(location={"lat": 123.0, "lon": 0.0})), "out_of_range"),
        (topic, orjson.dumps(doc(ts="2026-01-01T00:00:00")), "bad_timestamp"),
        (topic, orjson.dumps(doc(ts=format_ts(4_102_444_800_000))), "bad_timestamp"),  # 2100
        (topic, orjson.dumps(doc(metrics={})), "wrong_type"),
        (topic, orjson.dumps(doc(metrics={"PM25": {"value": 1, "unit": ""}})), "bad_metric"),
        (topic, b"{" + b" " * (70 * 1024) + b"}", "oversize"),
        (f"{root}/traffic/futian/env-futian-9999", orjson.dumps(doc()), "topic_mismatch"),
        (f"{root}/environment/nanshan/env-futian-9999", orjson.dumps(doc()), "topic_mismatch"),
        (f"{root}/environment/futian/env-futian-0001", orjson.dumps(doc()), "topic_mismatch"),
        (topic, orjson.dumps(doc(metrics={"pm25": {"value": "high", "unit": ""}})), "wrong_type"),
    ]
    assert len(cases) == 20
    return cases


@pytest.fixture
def topics(bootstrap: str) -> tuple[str, str]:
    """Fresh readings and DLQ topics, created explicitly (Tansu would auto-create 4 partitions)."""
    suffix = uuid.uuid4().hex[:12]
    readings, dlq = f"it.readings.{suffix}", f"it.dlq.{suffix}"
    ensure_topics({"bootstrap.servers": bootstrap}, {readings: 3, dlq: 2})
    return readings, dlq


def make_settings(
    mosquitto: Service, bootstrap: str, topics: tuple[str, str], *, root: str, client_id: str
) -> tuple[MqttSettings, KafkaSettings]:
    mqtt = MqttSettings(host="127.0.0.1", port=mosquitto.port, topic_root=root, client_id=client_id)
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap, readings_topic=topics[0], dlq_topic=topics[1]
    )
    return mqtt, kafka


class Running:
    """A bridge running in a thread; ``stop()`` returns what ``run`` raised, if anything."""

    def __init__(self, bridge: MqttBridge) -> None:
        self.bridge = bridge
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="bridge-under-test", daemon=True)
        self.thread.start()
        if not bridge.wait_ready(15):
            self.stop()
            pytest.fail("bridge did not subscribe within 15 s")

    def _run(self) -> None:
        try:
            self.bridge.run(self.stop_event)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "bridge did not stop within 30 s"
        if self.error is not None:
            raise self.error


@pytest.fixture
def publisher(mosquitto: Service) -> Iterator[paho.Client]:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def publish_all(client: paho.Client, messages: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published()


def test_bridge_forwards_valid_readings_exactly_once_and_dead_letters_the_rest(
    mosquitto: Service, bootstrap: str, topics: tuple[str, str], publisher: paho.Client
) -> None:
    root = f"it{uuid.uuid4().hex[:8]}"
    mqtt, kafka = make_settings(mosquitto, bootstrap, topics, root=root, client_id=f"br-{root}")
    good = valid_readings(root, 1000)
    bad = malformed(root)
    running = Running(MqttBridge(mqtt, kafka))
    try:
        # Interleave the bad ones so they share in-flight windows with the good ones.
        msgs: list[tuple[str, bytes]] = [(t, p) for t, p, _, _ in good]
        for i, (t, p, _) in enumerate(bad):
            msgs.insert(i * 50, (t, p))
        publish_all(publisher, msgs)
        bridge = running.bridge
        wait_for(
            lambda: bridge.counters.forwarded == 1000 and bridge.counters.dead_lettered == 20,
            60,
            "1,000 forwarded and 20 dead-lettered deliveries",
        )
        wait_for(lambda: bridge.pending == 0, 10, "every MQTT message to be acknowledged")
    finally:
        running.stop()
    c = running.bridge.counters
    assert (c.received, c.forwarded, c.dead_lettered, c.errors) == (1020, 1000, 20, 0)

    cfg = client_config(kafka)
    records = consume_all(cfg, topics[0], timeout_s=3)  # read until idle: duplicates would show
    assert len(records) == 1000
    by_value: dict[bytes, Message] = {value(m): m for m in records}
    assert len(by_value) == 1000
    partition_of: dict[str, int] = {}
    for _topic, payload, sid, ts_ms in good:
        m = by_value[payload]  # value is the original bytes
        assert m.key() == sid.encode()
        assert m.timestamp() == (TIMESTAMP_CREATE_TIME, ts_ms)
        assert partition_of.setdefault(sid, m.partition() or 0) == m.partition()  # keyed by sensor

    dead = consume_all(cfg, topics[1], timeout_s=3)
    assert len(dead) == 20
    got = sorted(
        (headers(m)["urban.dlq.source"], value(m), headers(m)["urban.dlq.reason"]) for m in dead
    )
    want = sorted((f"mqtt:{t}".encode(), p, reason.encode()) for t, p, reason in bad)
    assert got == want

    # Clean shutdown acknowledged everything: the persistent session has nothing to redeliver.
    again = Running(MqttBridge(mqtt, kafka))
    time.sleep(1.5)
    again.stop()
    assert again.bridge.counters.received == 0


class _BlackHoleProducer:
    """Accepts records and never reports delivery, as if Kafka were unreachable."""

    def __init__(self) -> None:
        self.queued = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.queued += 1

    def poll(self, timeout: float = 0) -> int:
        time.sleep(min(timeout, 0.05))
        return 0

    def flush(self, timeout: float = 0) -> int:
        return self.queued


def test_unconfirmed_messages_are_redelivered_to_the_next_session(
    mosquitto: Service, bootstrap: str, topics: tuple[str, str], publisher: paho.Client
) -> None:
    root = f"it{uuid.uuid4().hex[:8]}"
    client_id = f"br-{root}"
    mqtt, kafka = make_settings(mosquitto, bootstrap, topics, root=root, client_id=client_id)
    readings = valid_readings(root, 80)

    # First session: Kafka never confirms, so nothing is acknowledged.
    first = Running(MqttBridge(mqtt, kafka, producer=_BlackHoleProducer()))  # type: ignore[arg-type]
    publish_all(publisher, [(t, p) for t, p, _, _ in readings[:50]])
    wait_for(lambda: first.bridge.counters.received == 50, 20, "50 messages at the first bridge")
    first.stop()
    assert first.bridge.counters.forwarded == 0

    # While no bridge runs, the broker queues for the persistent session.
    publish_all(publisher, [(t, p) for t, p, _, _ in readings[50:]])

    second = Running(MqttBridge(mqtt, kafka))
    try:
        wait_for(lambda: second.bridge.counters.forwarded >= 80, 30, "80 forwarded readings")
        wait_for(lambda: second.bridge.pending == 0, 10, "acknowledgements")
    finally:
        second.stop()
    records = consume_all(client_config(kafka), topics[0], timeout_s=2)
    assert sorted(value(m) for m in records) == sorted(p for _, p, _, _ in readings)


def test_ensure_topics_creates_partitions_and_rejects_a_mismatch(bootstrap: str) -> None:
    cfg = {"bootstrap.servers": bootstrap}
    a, b = f"it.ensure.{uuid.uuid4().hex}", f"it.ensure.{uuid.uuid4().hex}"
    ensure_topics(cfg, {a: 3, b: 1})
    ensure_topics(cfg, {a: 3, b: 1})  # idempotent
    c = Consumer({**cfg, "group.id": "x"})
    try:
        md = c.list_topics(timeout=10)
        assert len(md.topics[a].partitions) == 3
        assert len(md.topics[b].partitions) == 1
    finally:
        c.close()
    with pytest.raises(KafkaTopicError, match=rf"topic '{a}': expected 5 partitions, found 3"):
        ensure_topics(cfg, {a: 5})


def test_missing_topic_is_reported_not_auto_created(bootstrap: str) -> None:
    cfg = {"bootstrap.servers": bootstrap}
    name = f"it.absent.{uuid.uuid4().hex}"
    with pytest.raises(KafkaTopicError, match="does not exist"):
        consume_all(cfg, name, timeout_s=1)
    with pytest.raises(KafkaTopicError, match="does not exist"):
        topic_message_count(cfg, name)
    ensure_topics(cfg, {name: 2})  # would fail with "found 4" had a lookup auto-created it


def test_producer_config_lz4_round_trips_and_message_count_is_exact(bootstrap: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    topic = f"it.lz4.{uuid.uuid4().hex}"
    ensure_topics(client_config(kafka), {topic: 3})
    producer = Producer(producer_config(kafka))
    errors: list[Any] = []
    sent = {}
    for i in range(500):
        payload = orjson.dumps({"i": i, "pad": "x" * (i % 300)})
        sent[payload] = (f"k{i % 17}".encode(), T0 + i)
        producer.produce(
            topic,
            value=payload,
            key=f"k{i % 17}".encode(),
            timestamp=T0 + i,
            headers=[("h", str(i).encode())],
            on_delivery=lambda err, _m: errors.append(err) if err else None,
        )
    assert producer.flush(15) == 0
    assert errors == []
    got = consume_all(client_config(kafka), topic, expect=500, timeout_s=5)
    assert len(got) == 500
    for m in got:
        key, ts = sent[value(m)]
        assert m.key() == key and m.timestamp() == (TIMESTAMP_CREATE_TIME, ts)
        assert headers(m)["h"] == str(orjson.loads(value(m))["i"]).encode()
    # Tansu's ListOffsets undercounts multi-record batches; the helper must not.
    assert topic_message_count(client_config(kafka), topic) == 500
