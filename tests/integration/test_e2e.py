"""The whole pipeline over real services: MQTT -> bridge -> Kafka -> Faust worker -> InfluxDB 1.6.7.

Readings of all four kinds (>= 5,000) plus 100 malformed messages are published over MQTT. The
window aggregates that land in InfluxDB must equal a reference computed independently with
numpy from the same readings (count, min, max exactly; mean to 1e-9), and every malformed
message must reach the dead-letter topic with its reason and original bytes.
"""

from __future__ import annotations

import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest

from connectors.kafka import consume_all
from simulators.city import build_city
from simulators.generators import generate
from simulators.malformed import malformed_corpus
from simulators.publish import publish_mqtt
from tests.integration.harness import kafka_cfg, pipeline_env, start_bridge, start_worker, stats
from tests.services import Service

pytestmark = pytest.mark.integration

WINDOW_MS = 60_000


def influx_rows(port: int, db: str, measurement: str = "window_agg") -> list[dict]:
    q = urllib.parse.urlencode({"db": db, "epoch": "ms", "q": f"SELECT * FROM {measurement}"})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/query?{q}", timeout=10) as r:  # noqa: S310
        doc = orjson.loads(r.read())
    rows: list[dict] = []
    for series in doc["results"][0].get("series", []):
        cols = series["columns"]
        rows += [dict(zip(cols, v, strict=True)) for v in series["values"]]
    return rows


def test_mqtt_to_influx_equals_numpy_reference(
    tmp_path: Path, bootstrap: str, mosquitto: Service, influxd: Service
) -> None:
    db = f"e2e_{int(time.time())}"
    env = pipeline_env(
        tmp_path,
        bootstrap,
        URBAN_MQTT__PORT=str(mosquitto.port),
        URBAN_INFLUX__URL=f"http://127.0.0.1:{influxd.port}",
        URBAN_INFLUX__VERSION="1",
        URBAN_INFLUX__DATABASE=db,
        URBAN_KAFKA__FETCH_MAX_WAIT_MS="120",
        URBAN_GC_YOUNG_THRESHOLD="40000",
    )
    root = env["URBAN_MQTT__TOPIC_ROOT"]
    now_ms = time.time_ns() // 1_000_000
    start_ms = (now_ms - 3_600_000) // WINDOW_MS * WINDOW_MS + 7_000  # windows straddle ticks
    city = build_city(96, seed=11)
    good = [
        m
        for b in generate(city, start_ms=start_ms, interval_ms=10_000, steps=60, seed=11)
        for m in b.to_timed_messages()
    ]
    assert len(good) >= 5000 and {t.split("/")[1] for t, _, _ in good} == {"traffic", "environment", "crowd", "iot"}
    bad = malformed_corpus(100, seed=5, now_ms=now_ms)
    messages: list[tuple[str, bytes]] = []
    step = len(good) // len(bad)
    for i, (topic, payload, _) in enumerate(good):
        messages.append((root + topic[4:], payload))
        if i % step == step - 1 and len(messages) - i - 1 < len(bad):
            t, p, _ = bad[len(messages) - i - 1]
            messages.append((root + t[4:], p))
    assert len(messages) == len(good) + len(bad)

    # Reference, computed with numpy from the readings as generated (not from anything the pipeline wrote).
    groups: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    zone_groups: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
    for _, payload, ts in good:
        doc = orjson.loads(payload)
        for metric, entry in doc["metrics"].items():
            groups[(doc["sensor_id"], metric, ts - ts % WINDOW_MS)].append(entry["value"])
            zone_groups[(doc["zone"], doc["kind"], metric, ts - ts % WINDOW_MS)].append(entry["value"])
    reference = {k: np.asarray(v, dtype=np.float64) for k, v in groups.items()}
    expected_pairs = sum(len(v) for v in reference.values())

    worker = start_worker(env, tmp_path)
    try:
        bridge = start_bridge(env, tmp_path)
    except BaseException:
        worker.stop()
        raise
    try:
        sent = publish_mqtt(messages, host="127.0.0.1", port=mosquitto.port, client_id=f"pub-{db}", qos=1)
        assert sent == len(messages)
        deadline = time.monotonic() + 150
        rows: list[dict] = []
        zone_rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = influx_rows(influxd.port, db)
            zone_rows = influx_rows(influxd.port, db, "zone_agg")
            # (a query racing a write can see a point without its fields yet: count those as 0)
            done = sum(r.get("count") or 0 for r in rows), sum(r.get("count") or 0 for r in zone_rows)
            if min(done) >= expected_pairs:
                break
            time.sleep(1.0)
        s = stats(env)
        with urllib.request.urlopen(f"http://127.0.0.1:{env['URBAN_WEB_PORT']}/metrics", timeout=10) as resp:
            prom = resp.read().decode()
    finally:
        bridge.stop()
        worker.stop()
    worker_log = worker.text()

    # The consumer's fetch wait is ours, not Faust's hard-coded 1,500 ms (streams.app.fetch_max_wait)
    assert s["readings_consumer"]["fetch_max_wait_ms"] == 120, s["readings_consumer"]
    # ... and so is the collector's young-generation threshold (URBAN_GC_YOUNG_THRESHOLD, streams.cli)
    assert s["gc"]["threshold"][0] == 40_000, s["gc"]

    # The Prometheus page reports the same counters as the stats page (Prometheus text format).
    prom_values = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in prom.splitlines() if ln and ln[0] != "#"}
    assert prom_values["urbansense_readings_in_total"] >= s["readings_in"] > 0
    assert prom_values["urbansense_dead_letters_total"] >= s["dead_letters"]
    assert "urbansense_points_written" in prom_values and 'urbansense_consumer_lag{' in prom

    got = {(r["sensor_id"], r["metric"], r["time"]): r for r in rows}
    assert set(got) == set(reference), f"{len(set(reference) - set(got))} windows missing"
    for key, values in reference.items():
        r = got[key]
        assert r["count"] == len(values), key
        assert r["min"] == values.min() and r["max"] == values.max(), key
        assert abs(r["mean"] - values.mean()) <= 1e-9 * max(1.0, abs(values.mean())), key
        assert r["window"] == "tumbling" and r["window_size_ms"] == str(WINDOW_MS)
    assert sum(r["count"] for r in rows) == expected_pairs  # nothing lost, nothing counted twice

    # Zone roll-ups: merged across partitions from partial states, equal to numpy over the zone's readings.
    zgot = {(r["zone"], r["kind"], r["metric"], r["time"]): r for r in zone_rows}
    zone_lines = [ln for ln in worker_log.splitlines() if "zone" in ln.lower() or "ERROR" in ln or "WARN" in ln]
    assert set(zgot) == set(zone_groups), (s, zone_lines[-40:], worker_log[-3000:])
    for key, vals in zone_groups.items():
        arr, r = np.asarray(vals), zgot[key]
        assert r["count"] == len(arr) and r["min"] == arr.min() and r["max"] == arr.max(), key
        assert abs(r["mean"] - arr.mean()) <= 1e-9 * max(1.0, abs(arr.mean())), key

    dlq = consume_all(kafka_cfg(env), env["URBAN_KAFKA__DLQ_TOPIC"], expect=len(bad), timeout_s=20)
    assert len(dlq) == len(bad)
    by_payload = Counter((m.value(), dict(m.headers())["urban.dlq.reason"].decode()) for m in dlq)
    assert by_payload == Counter((p[: 512 * 1024], reason) for _, p, reason in bad)
    assert s["late"] == 0 and s["readings_counted"] == len(good)
