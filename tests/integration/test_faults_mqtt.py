"""MQTT broker restarted mid-stream: the bridge reconnects and resubscribes; nothing is lost.

A private Mosquitto (persistence on) is stopped while a publisher is sending and a new one is
started on the same port with the same persistence directory. The publisher is a persistent
QoS 1 paho session that queues while disconnected and resends on reconnect; the bridge's session
is persistent too (clean_session=False, stable client id, manual acks after Kafka delivery). Every
reading must reach Kafka once and be counted exactly once in the window aggregates (the numpy
reference): the QoS 1 redeliveries the restart causes are recognised by the bridge. The bridge
forwards in frames of up to ``FRAME`` readings (streams.frames; test_bridge and test_e2e cover one
reading per record), so a message is acknowledged only once its whole frame is confirmed.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from connectors.kafka import consume_all
from streams.frames import split_frame
from tests.integration.harness import (
    kafka_cfg,
    numpy_reference,
    pipeline_env,
    start_bridge,
    start_worker,
    stats,
    store_window_rows,
    wait_until,
)
from tests.integration.test_faults_support import WINDOW_MS, feed, figures
from tests.integration.test_recovery import settled
from tests.services import run_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FRAME = 50

# Started as root, Mosquitto drops to the 'mosquitto' user, which cannot write the persistence file
# into pytest's 0700 temporary directory (and the session would silently not survive the restart).
MOSQ_CONF = "user root\n" if os.geteuid() == 0 else ""


class QueueingPublisher:
    """Persistent QoS 1 publisher: paho queues while disconnected and resends unacked on reconnect."""

    def __init__(self, port: int, client_id: str) -> None:
        self.acked: set[int] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.max_inflight_messages_set(50)
        self.client.max_queued_messages_set(0)  # unbounded queue while the broker is away (test data is finite)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_publish = self._on_publish
        self.client.connect(host="127.0.0.1", port=port, keepalive=5)
        self.client.loop_start()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        with self._lock:
            self.acked.add(mid)

    def publish(self, topic: str, payload: bytes) -> int:
        return self.client.publish(topic, payload, qos=1).mid

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_broker_restart_loses_nothing(tmp_path: Path, bootstrap: str) -> None:
    t0 = time.monotonic()
    messages = feed(60, 60, seed=41)  # 3,600 readings, 5 minutes of event time
    reference = numpy_reference((p for _, p, _ in messages), WINDOW_MS)
    with contextlib.ExitStack() as stack:
        mosq = stack.enter_context(run_mosquitto(tmp_path, MOSQ_CONF))
        port = mosq.port
        # The feed is an hour in the past: the idle flush (which moves a silent partition's watermark
        # to the wall clock) must not fire during the outage, or the rest would be late.
        env = pipeline_env(tmp_path, bootstrap, URBAN_MQTT__PORT=str(port), URBAN_WINDOW__IDLE_TIMEOUT_MS="20000",
                           URBAN_KAFKA__FRAME_SIZE=str(FRAME))
        root = env["URBAN_MQTT__TOPIC_ROOT"]
        worker = start_worker(env, tmp_path)
        stack.callback(worker.stop)
        bridge = start_bridge(env, tmp_path)
        stack.callback(bridge.stop)
        pub = QueueingPublisher(port, f"pub-{root}")
        stack.callback(pub.close)
        mids: list[int] = []
        restarted_at = len(messages) // 3
        for i, (topic, payload, _) in enumerate(messages):
            mids.append(pub.publish(root + topic[4:], payload))
            if i == restarted_at:
                mosq.stop()  # SIGTERM: Mosquitto saves its persistence file
                t_down = time.monotonic()
            if i == restarted_at + 200:  # keep publishing into the outage (queued by the publisher)
                while time.monotonic() - t_down < 5:
                    time.sleep(0.1)
                mosq = stack.enter_context(run_mosquitto(tmp_path, MOSQ_CONF, port=port))
            if i % 200 == 0:
                time.sleep(0.05)
        wait_until(lambda: pub.acked >= set(mids), 90, "the publisher's every message to be acknowledged")
        bridge.wait_for("mqtt connection lost", 5)
        wait_until(lambda: bridge.text().count("mqtt subscribed") >= 2, 60, "the bridge to resubscribe")
        wait_until(settled(env), 150, "the worker to close and store every window")
        s = stats(env)
        bridge.stop()  # SIGTERM: the bridge logs its counters as it stops
        blog = bridge.text()

    records = consume_all(kafka_cfg(env), env["URBAN_KAFKA__READINGS_TOPIC"], timeout_s=3)
    readings = [r for m in records for r in split_frame(m.value())]
    distinct = set(readings)
    assert distinct == {p for _, p, _ in messages}, "a reading published around the restart never reached Kafka"
    assert "session_present=True" in blog, "the bridge's persistent session must survive the restart"
    # QoS 1 is at least once: what was in flight when the broker stopped comes again after the
    # restart (from the broker with the DUP flag, from the publisher without). A forwarded copy would
    # be a new Kafka record the worker's offset dedupe cannot recognise, counted twice. The bridge
    # recognises those copies by content (connectors.mqtt) and acknowledges them without forwarding:
    # every reading reaches Kafka once and is counted once.
    stopped = re.search(r"mqtt bridge stopped received=(\d+) forwarded=(\d+) dead_lettered=(\d+) "
                        r"redelivered=(\d+)", blog)
    assert stopped, blog[-2000:]
    received, forwarded, _, redelivered = map(int, stopped.groups())
    copies = len(readings) - len(distinct)
    assert copies == 0, f"{copies} redelivered copies were forwarded to Kafka again"
    assert forwarded == len(messages) and received == forwarded + redelivered
    rows = store_window_rows(env)
    got = {(r["sensor_id"], r["metric"], r["start_ms"]): r for r in rows}
    assert set(got) == set(reference)
    wrong = [(k, got[k]["count"], ref["count"]) for k, ref in reference.items() if got[k]["count"] != ref["count"]]
    assert not wrong, f"{len(wrong)} windows counted readings lost or twice, e.g. {wrong[:3]}"
    assert s["readings_in"] == len(readings) == s["readings_counted"]
    assert s["late"] == 0 and s["duplicates"] == 0
    assert len(records) < len(readings), "the bridge was to forward frames"
    lost = figures(
        "mqtt_broker_restart", len(messages), s["readings_counted"], s["dead_letters"],
        kafka_records=len(records), readings_in_records=len(readings), frame_readings=FRAME,
        mqtt_received=received, mqtt_redelivered_skipped=redelivered,
        copies_forwarded=copies, windows=len(reference), elapsed_s=round(time.monotonic() - t0, 1),
    )
    assert lost == 0
