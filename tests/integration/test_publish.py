from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from simulators.city import build_city
from simulators.generators import generate
from simulators.malformed import malformed_corpus
from simulators.publish import publish_kafka, publish_mqtt
from tests.services import Service

pytestmark = pytest.mark.integration


def recent_ms() -> int:
    """A whole minute an hour ago: payload timestamps must not be in the future to be valid."""
    return (time.time_ns() // 60_000_000_000 - 60) * 60_000


def readings(
    n_sensors: int = 50, steps: int = 10, seed: int = 1, start_ms: int = 0
) -> list[tuple[str, bytes, int]]:
    city = build_city(n_sensors, seed=seed)
    return [
        m
        for b in generate(
            city, start_ms=start_ms or recent_ms(), interval_ms=1000, steps=steps, seed=seed
        )
        for m in b.to_timed_messages()
    ]


def test_mqtt_subscriber_receives_every_reading_exactly_once(mosquitto: Service) -> None:
    root = f"it-{uuid.uuid4().hex[:12]}"
    messages = [(f"{root}/{t}", p) for t, p, _ in readings()]
    assert len(messages) == 500
    got: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append((msg.topic, msg.payload))

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{root}-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_connect = lambda c, *_: c.subscribe(f"{root}/#", qos=1)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        n = publish_mqtt(
            messages,
            host="127.0.0.1",
            port=mosquitto.port,
            client_id=f"{root}-pub",
            qos=1,
            max_inflight=20,
        )
        assert n == 500
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with lock:
                if len(got) >= len(messages):
                    break
            time.sleep(0.05)
        time.sleep(0.3)  # would expose duplicates
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert Counter(got) == Counter(messages)


def test_mqtt_paced_publish(mosquitto: Service) -> None:
    messages = [(f"it-{uuid.uuid4().hex[:8]}/{t}", p) for t, p, _ in readings(10, 3)]
    t0 = time.monotonic()
    n = publish_mqtt(
        messages,
        host="127.0.0.1",
        port=mosquitto.port,
        client_id=uuid.uuid4().hex,
        rate_per_s=100.0,
    )
    assert n == 30
    assert time.monotonic() - t0 >= 0.28


def test_kafka_records_keyed_by_sensor_with_event_time(bootstrap: str) -> None:
    topic = f"it-sim-{uuid.uuid4().hex}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics(
        [NewTopic(topic, num_partitions=4, replication_factor=1)]
    ).values():
        fut.result(30)

    timed = readings(20, 10)
    start_ms = recent_ms()
    plain = [(t, p) for t, p, _ in readings(8, 3, seed=2, start_ms=start_ms)]  # ts from payload
    bad = malformed_corpus(18, seed=1, now_ms=int(time.time() * 1000))
    messages: list[Any] = [*timed, *plain, *[(t, p) for t, p, _ in bad]]
    expected_ts = [m[2] for m in timed] + [start_ms + k * 1000 for k in range(3) for _ in range(8)]

    before_ms = int(time.time() * 1000)
    n = publish_kafka(messages, producer_config={"bootstrap.servers": bootstrap}, topic=topic)
    after_ms = int(time.time() * 1000)
    assert n == len(messages) == 200 + 24 + 18

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"it-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # Tansu completes the first group join after about half the session timeout.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    records: list[tuple[bytes, bytes, int, int]] = []
    deadline = time.monotonic() + 60
    try:
        while len(records) < len(messages) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            ts_type, ts = msg.timestamp()
            assert ts_type == TIMESTAMP_CREATE_TIME
            records.append((msg.key(), msg.value(), ts, msg.partition()))
    finally:
        consumer.close()

    assert len(records) == len(messages)
    by_value = {value: (key, ts) for key, value, ts, _ in records}
    for m, ts in zip(messages[: len(expected_ts)], expected_ts, strict=True):
        assert by_value[m[1]] == (m[0].rsplit("/", 1)[1].encode(), ts)
    for t, p, _ in bad:
        key, ts = by_value[p]
        assert key == t.rsplit("/", 1)[1].encode()
        assert before_ms <= ts <= after_ms
    # One key always lands on one partition.
    partitions: dict[bytes, set[int]] = {}
    for key, _, _, part in records:
        partitions.setdefault(key, set()).add(part)
    assert all(len(p) == 1 for p in partitions.values())
    assert len({part for _, _, _, part in records}) > 1
