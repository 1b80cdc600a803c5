"""Alerting over the real brokers: MQTT -> bridge -> Kafka -> worker (windows -> alert engine) -> alerts topic.

A live feed (readings stamped with the wall clock, published over Mosquitto every second) has
two zones. In ``futian`` 30 of 40 sensors cross the PM2.5 threshold within 8 s (a pollution
episode); ``nanshan`` stays clean. The rule file folds per-sensor alerts into a k-of-n zone rule,
so the alerts topic must carry exactly ONE incident (the futian zone incident; raised, then
possibly updated as more sensors join, all under one alert id) and no per-sensor alerts, within
the configured latency. The test measures, for every sensor in the incident, the time from its
first over-threshold reading (event time) to the record that first lists it being readable on
the alerts topic, and prints p50/p99.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from simulators.publish import publish_mqtt
from streams.schema import encode_reading
from tests.integration.harness import pipeline_env, start_bridge, start_worker, try_stats, wait_until
from tests.services import Service

pytestmark = pytest.mark.integration

WINDOW_MS = 2_000
LATENESS_MS = 500
#: Configured latency budget (event time of the first triggering reading -> alert readable on Kafka):
#: one window to fill, the lateness, and a few seconds for two Kafka hops on Tansu.
MAX_LATENCY_MS = WINDOW_MS + LATENESS_MS + 6_000
SECONDS = 24
INCIDENT_AT_S = 8
RULES = """
[engine]
cooldown = "1m"
zone_rate_limit = 50
global_rate_limit = 200
escalate_after = "0"

[[rule]]
name = "pm25_high"
kind = "environment"
metric = "pm25"
field = "mean"
op = ">"
raise = 150
clear = 100
severity = "warning"

[[zone_rule]]
name = "pollution_episode"
members = "pm25_high"
k = 5
within = "1m"
severity = "critical"
fold = "always"
"""


def _watch(bootstrap: str, topic: str, stop: threading.Event, seen: list[tuple[float, dict]]) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watch-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        parts = []
        while not parts and not stop.is_set():
            md = c.list_topics(topic, timeout=5).topics.get(topic)
            parts = [TopicPartition(topic, p, 0) for p in (md.partitions if md and not md.error else {})]
            if not parts:
                time.sleep(0.2)
        c.assign(parts)
        while not stop.is_set():
            m = c.poll(0.05)
            if m is not None and not m.error():
                seen.append((time.time(), orjson.loads(m.value())))
    finally:
        c.close()


def test_zone_incident_is_one_alert_not_a_storm(tmp_path: Path, bootstrap: str, mosquitto: Service) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    env = pipeline_env(
        tmp_path, bootstrap,
        URBAN_MQTT__PORT=str(mosquitto.port),
        URBAN_ALERTING__RULES_FILE=str(rules),
        URBAN_WINDOW__SIZE_MS=str(WINDOW_MS),
        URBAN_WINDOW__ALLOWED_LATENESS_MS=str(LATENESS_MS),
        URBAN_KAFKA__PARTITIONS="4",
    )
    root = env["URBAN_MQTT__TOPIC_ROOT"]
    sensors = [(f"env-futian-{i:04d}", "futian") for i in range(40)] + [
        (f"env-nanshan-{i:04d}", "nanshan") for i in range(20)]
    hot = {sid for sid, _ in sensors[:30]}
    hot_from = {sid: INCIDENT_AT_S + i % 8 for i, (sid, _) in enumerate(sensors[:30])}  # sensors join over 8 s
    first_hot_ts: dict[str, int] = {}
    worker = start_worker(env, tmp_path)
    bridge = start_bridge(env, tmp_path)
    stop = threading.Event()
    seen: list[tuple[float, dict]] = []
    watcher = threading.Thread(target=_watch, args=(bootstrap, env["URBAN_KAFKA__ALERTS_TOPIC"], stop, seen))
    watcher.start()
    try:
        rng = np.random.default_rng(7)
        t_start = time.time()
        for step in range(SECONDS):
            now_ms = time.time_ns() // 1_000_000
            msgs = []
            for sid, zone in sensors:
                incident = sid in hot and step >= hot_from[sid]
                value = float(300 + rng.normal(0, 10) if incident else 40 + rng.normal(0, 5))
                if incident:
                    first_hot_ts.setdefault(sid, now_ms)
                payload = encode_reading(sensor_id=sid, kind="environment", zone=zone, lat=22.54, lon=114.05,
                                         ts_ms=now_ms, metrics={"pm25": (round(value, 1), "ug/m3")})
                msgs.append((f"{root}/environment/{zone}/{sid}", payload))
            publish_mqtt(msgs, host="127.0.0.1", port=mosquitto.port, client_id=f"pub-{uuid.uuid4().hex[:8]}")
            time.sleep(max(0.0, t_start + step + 1 - time.time()))

        def incident_complete() -> bool:
            return any(set(doc["evidence"].get("sensors") or ()) >= hot for _, doc in seen)

        wait_until(incident_complete, 30, "the zone incident listing all 30 sensors")
        time.sleep(3.0)  # anything else (a storm) would arrive now
        stats = try_stats(env)
    finally:
        stop.set()
        watcher.join(10)
        bridge.stop()
        worker.stop()

    docs = [d for _, d in seen]
    incidents = {d["alert_id"] for d in docs if d["category"] == "incident"}
    assert len(incidents) == 1, f"expected one incident, got {[(d['rule'], d['zone'], d['sensor_id']) for d in docs]}"
    assert not [d for d in docs if d["subject_type"] == "sensor"], "per-sensor alerts leaked (a storm)"
    assert not [d for d in docs if d["zone"] == "nanshan"]
    zone = [d for d in docs if d["alert_id"] in incidents]
    assert [d["state"] for d in zone][0] == "raised" and {d["state"] for d in zone} <= {"raised", "updated"}
    assert [d["seq"] for d in zone] == list(range(1, len(zone) + 1))
    z = zone[0]
    assert (z["rule"], z["zone"], z["severity"], z["subject_type"], z["sensor_id"]) == (
        "pollution_episode", "futian", "critical", "zone", None)
    assert set(zone[-1]["evidence"]["sensors"]) == hot and z["evidence"]["n"] >= 5
    assert z["latency_ms"] == z["ts_ms"] - z["first_reading_ts_ms"]
    # Event time: the zone rule holds once k sensors are hot; the alert is stamped with the end of
    # the window that completed it. The k-th hot sensor's window ends at most one window after its
    # reading (two if publishing jitter puts three readings, one still clean, into that window).
    kth = sorted(first_hot_ts.values())[4]
    assert kth < z["ts_ms"] <= kth + 2 * WINDOW_MS, (z["ts_ms"], kth)

    # Per-sensor detection latency: first over-threshold reading (event time) -> the first record
    # listing the sensor is readable on the alerts topic (wall clock).
    latencies = []
    for sid in hot:
        got = next(t for t, d in seen if sid in (d["evidence"].get("sensors") or ()))
        latencies.append(got * 1000 - first_hot_ts[sid])
    p50, p99 = np.percentile(latencies, [50, 99])
    print(  # noqa: T201 - the measured numbers are part of the test's report
        f"\nalert latency (first triggering reading -> alert on Kafka) n={len(latencies)} p50={p50:.0f} ms "
        f"p99={p99:.0f} ms; alert event-time latency_ms={z['latency_ms']}; records={len(zone)}; stats={stats}"
    )
    assert p99 <= MAX_LATENCY_MS, f"p99 {p99:.0f} ms over the configured {MAX_LATENCY_MS} ms"
