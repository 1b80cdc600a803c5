"""Replay recorded feeds (a NAB CSV, our JSON lines) over Kafka and MQTT with scaled timing."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from simulators.city import plan_city
from simulators.events import make_fault
from simulators.feed import Plan, feed
from simulators.publish import write_lines
from simulators.replay import CsvMapping, read_recording, replay
from streams.schema import parse_reading
from tests.services import Service

pytestmark = pytest.mark.integration

NAB = Path("/work/shared/benchmarks/nab/data/realTraffic/TravelTime_387.csv")


def nab_csv(tmp_path: Path) -> Path:
    if NAB.exists():
        return NAB
    path = tmp_path / "TravelTime_387.csv"  # the first rows of the NAB file
    rows = [
        "2015-07-10 14:24:00,564",
        "2015-07-10 14:38:00,730",
        "2015-07-10 14:48:00,770",
        "2015-07-10 15:03:00,910",
        "2015-07-10 15:22:00,1026",
        "2015-07-10 15:41:00,943",
    ]
    path.write_text("timestamp,value\n" + "\n".join(rows * 30) + "\n")
    return path


def new_topic(bootstrap: str) -> str:
    topic = f"it-replay-{uuid.uuid4().hex}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)]).values():
        fut.result(30)
    return topic


def consume(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, bytes, int, int]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"it-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    records: list[tuple[bytes, bytes, int, int]] = []
    deadline = time.monotonic() + 60
    try:
        while len(records) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            ts_type, ts = msg.timestamp()
            assert ts_type == TIMESTAMP_CREATE_TIME
            records.append((msg.key(), msg.value(), ts, msg.partition()))
        time.sleep(0.5)
        extra = consumer.poll(0.5)
        assert extra is None, "more records than replayed"
    finally:
        consumer.close()
    return records


def test_replay_nab_csv_over_kafka_with_scaled_timing(bootstrap: str, tmp_path: Path) -> None:
    path = nab_csv(tmp_path)
    mapping = CsvMapping(sensor_id="trf-nab-387", kind="traffic", zone="luohu", metric="travel_time", unit="s")
    expected = list(read_recording(path, mapping=mapping, limit=150))
    span_s = (expected[-1][2] - expected[0][2]) / 1000.0
    speed = span_s / 2.0  # about two seconds of replay
    topic = new_topic(bootstrap)
    t0 = time.monotonic()
    n = replay(
        path,
        transport="kafka",
        speed=speed,
        mapping=mapping,
        limit=150,
        kafka_config={"bootstrap.servers": bootstrap},
        kafka_topic=topic,
    )
    elapsed = time.monotonic() - t0
    assert n == 150
    assert 2.0 * 0.9 <= elapsed <= 2.0 + 3.0, elapsed  # scaled timing honoured (plus flush time)
    records = consume(bootstrap, topic, n)
    assert len(records) == 150
    assert {k for k, _, _, _ in records} == {b"trf-nab-387"} and len({p for *_, p in records}) == 1
    assert [(v, ts) for _, v, ts, _ in records] == [(p, ts) for _, p, ts in expected]  # order per key
    for _, value, ts, _ in records:
        assert parse_reading(value, now_ms=int(time.time() * 1000)).ts_ms == ts


def test_replay_jsonl_over_kafka_keeps_order_per_key_and_event_time(bootstrap: str, tmp_path: Path) -> None:
    city = plan_city(["futian", "luohu"], {"traffic": 4, "environment": 2, "crowd": 2, "iot": 2}, seed=1)
    start_ms = (time.time_ns() // 60_000_000_000 - 120) * 60_000
    dup = make_fault(city, "flt-001", "duplicate", city.sensors[0].sensor_id, start_ms + 30_000, start_ms + 60_000)
    plan = Plan(city, start_ms=start_ms, interval_ms=10_000, steps=30, seed=3, faults=(dup,))
    path = tmp_path / "feed.jsonl"
    count = write_lines(feed(plan, "jsonl"), path)
    assert count == 300 + 3
    expected = list(read_recording(path))
    topic = new_topic(bootstrap)
    t0 = time.monotonic()
    n = replay(path, transport="kafka", speed=150.0, kafka_config={"bootstrap.servers": bootstrap}, kafka_topic=topic)
    elapsed = time.monotonic() - t0
    assert n == count
    assert 290 / 150 * 0.9 <= elapsed <= 290 / 150 + 3.0, elapsed
    records = consume(bootstrap, topic, n)
    assert len(records) == n
    for key in {k for k, _, _, _ in records}:
        got = [(v, ts) for k, v, ts, _ in records if k == key]
        want = [(p, ts) for t, p, ts in expected if t.rsplit("/", 1)[1].encode() == key]
        assert got == want
        assert [ts for _, ts in got] == sorted(ts for _, ts in got)
        assert len({p for k, _, _, p in records if k == key}) == 1


def test_replay_nab_csv_over_mqtt_paces_arrivals(mosquitto: Service, tmp_path: Path) -> None:
    path = nab_csv(tmp_path)
    root = f"it-{uuid.uuid4().hex[:10]}"
    expected = list(read_recording(path, topic_root=root, limit=40))
    span_s = (expected[-1][2] - expected[0][2]) / 1000.0
    speed = span_s / 2.0
    got: list[tuple[float, bytes]] = []
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append((time.monotonic(), msg.payload))

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{root}-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_connect = lambda c, *_: c.subscribe(f"{root}/#", qos=1)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        n = replay(
            path,
            transport="mqtt",
            speed=speed,
            topic_root=root,
            limit=40,
            mqtt={"port": mosquitto.port, "client_id": f"{root}-pub"},
        )
        assert n == 40
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(got) < 40:
            time.sleep(0.05)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert [p for _, p in got] == [p for _, p, _ in expected]
    first_wall, first_ts = got[0][0], expected[0][2]
    for (wall, _), (_, _, ts) in zip(got, expected, strict=True):
        assert abs((wall - first_wall) - (ts - first_ts) / 1000.0 / speed) < 0.35
