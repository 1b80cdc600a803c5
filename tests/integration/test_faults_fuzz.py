"""Hostile input through the real bridge and worker: processed or dead-lettered, never lost.

A corpus of nasty payloads (truncated and invalid UTF-8, a 10 MB payload, deep nesting, NaN/inf,
huge and negative numbers, timestamps far in the past and future, unknown kinds, duplicate keys,
injection strings and line-protocol special characters in ids) plus a few hundred seeded random
and mutated payloads goes twice through the pipeline: over MQTT through the bridge, and straight
into the readings topic for the worker. Every message must end up processed by the worker (counted,
late or a recognised duplicate) or dead-lettered with a known reason and its original bytes (the
first 512 KiB plus the original size for the 10 MB one). The outcome of each message is predicted
with the pure validators (``connectors.mqtt.route``, ``streams.schema.parse_reading``) and the
dead-letter reasons must match. Afterwards the bridge and the worker are alive and process a normal
reading, and their RSS stayed bounded.

Mosquitto's default ``max_packet_size`` is unlimited, so the broker delivers the 10 MB payload and
the bridge dead-letters it (``oversize``); the Kafka path needs a producer allowing 16 MB records,
and the worker dead-letters it too.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from connectors.kafka import consume_all, producer_config
from connectors.mqtt import route
from simulators.publish import publish_mqtt
from streams.deadletter import DeadLetter
from streams.errors import InvalidReading
from streams.schema import MAX_PAYLOAD_BYTES, encode_reading, parse_reading
from streams.settings import KafkaSettings
from tests.integration.harness import kafka_cfg, pipeline_env, start_bridge, start_worker, stats, try_stats, wait_until
from tests.integration.test_faults_support import RssSampler, figures, rss_kb

pytestmark = [pytest.mark.integration, pytest.mark.faults]

REASONS = {
    "oversize", "bad_json", "wrong_type", "missing_field", "unknown_field", "bad_version", "bad_id", "bad_kind",
    "bad_timestamp", "non_finite", "out_of_range", "bad_metric", "too_many_metrics", "topic_mismatch",
    "cardinality_limit",
}
DLQ_MAX = 512 * 1024
SEED = 1207
SENSOR = "iot-futian-0001"


def iso(ts_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ms // 1000)) + f".{ts_ms % 1000:03d}Z"


def good(now_ms: int, sid: str = SENSOR, kind: str = "iot", value: object = 1.5, ts_ms: int | None = None) -> dict:
    doc = orjson.loads(encode_reading(sensor_id=SENSOR, kind="iot", zone="futian", lat=22.5, lon=114.0,
                                      ts_ms=now_ms - 30_000 if ts_ms is None else ts_ms,
                                      metrics={"power_kw": (1.0, "kW")}))
    return doc | {"sensor_id": sid, "kind": kind, "metrics": {"power_kw": {"value": value, "unit": "kW"}}}


def corpus(now_ms: int) -> list[bytes]:
    """The hand-written hostile cases, then seeded random and mutated payloads."""
    base = orjson.dumps(good(now_ms))
    docs = [
        b"", b"\x00", b"{", base[:-1], base[: len(base) // 2], b"\xff\xfe\xfd", b"\xed\xa0\x80",
        base.replace(b"futian", b"fu\xc3\x28an"), base.replace(b"power_kw", b"power\xffkw"),
        b"null", b"[]", b"42", b'"str"', b"true",
        b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"[" * 100_000,
        b'{"v":1,"pad":"' + b"x" * (10 * 1024 * 1024) + b'"}',  # 10 MB
        b" " * (MAX_PAYLOAD_BYTES + 1),
    ]
    for v in (b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e309", b"1e16", b"-1e15", b"1e15", b"-273.15",
              b"123456789012345678901234567890", b"-0", b"true", b'"1.5"', b"null", b"5e-324"):
        docs.append(base.replace(b"1.5", v))
    docs += [
        base.replace(b'"v":1', b'"v":1,"v":2'),
        base.replace(b'"kind":"iot"', b'"kind":"iot","kind":"traffic"'),
        base.replace(b'"sensor_id":"', b'"sensor_id":"x","sensor_id":"'),
        base[:-1] + b',"extra":1}',
    ]
    for sid in ["'; DROP TABLE window_agg;--", "<script>alert(1)</script>", "../../etc/passwd", "a\nb", "a\r\nb",
                "a b", "a,b=c", 'a"b', "a\\b", "a=b", "x" * 129, "", "\u202eevil", "a\x00b", "${jndi:ldap://x/a}",
                "s/+/#", "-leading", "iot-futian-\U0001f600"]:
        docs.append(orjson.dumps(good(now_ms, sid=sid)))
    for kind in ["weather", "", "IOT", "traffic\x00", "__proto__", "iot'--"]:
        docs.append(orjson.dumps(good(now_ms, kind=kind)))
    far_future = iso(now_ms + 25 * 3_600_000)
    for ts in ["1999-12-31T23:59:59.999Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.000Z", far_future,
               "2026-13-45T99:99:99Z", "2026-01-01T00:00:00+08:00", "yesterday", 17, None, "2000-01-01T00:00:00.001Z"]:
        d = good(now_ms)
        d["ts"] = ts
        docs.append(orjson.dumps(d))
    d = good(now_ms)
    d["metrics"] = {f"m{i}": {"value": i, "unit": ""} for i in range(65)}
    docs.append(orjson.dumps(d))
    d = good(now_ms)
    d["metrics"] = {"a,b=c d": {"value": 1, "unit": '"\\'}}
    docs.append(orjson.dumps(d))
    d = good(now_ms)
    d["location"] = {"lat": 91, "lon": 0}
    docs.append(orjson.dumps(d))
    rng = random.Random(SEED)
    for _ in range(150):  # random bytes
        docs.append(rng.randbytes(rng.randrange(0, 400)))
    for _ in range(200):  # mutated valid readings: flips, insertions, deletions, truncations
        b = bytearray(orjson.dumps(good(now_ms, value=rng.uniform(-1e3, 1e3))))
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(b))
            op = rng.randrange(4)
            if op == 0:
                b[i] = rng.randrange(256)
            elif op == 1:
                b.insert(i, rng.choice(b'{}[]",:\\\x00\xff0e-'))
            elif op == 2:
                del b[i]
            else:
                del b[i:]
                break
        docs.append(bytes(b))
    for _ in range(50):  # well-formed readings with random values
        docs.append(orjson.dumps(good(now_ms, value=rng.choice([rng.uniform(-1e15, 1e15), rng.randrange(-10, 10)]))))
    return docs


def mqtt_topic(root: str, payload: bytes) -> str:
    """The topic a publisher would use: from the payload's kind/zone/id when that makes a topic.

    Mosquitto disconnects a client whose topic holds a control character (U+0001..U+001F,
    U+007F..U+009F) as a malformed packet, and a ``/`` in an id adds topic levels the bridge does
    not subscribe to (nobody would receive it), so such payloads go to a plain topic (the bridge
    then dead-letters them as bad_id or topic_mismatch).
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and all(isinstance(doc.get(k), str) for k in ("kind", "zone", "sensor_id")):
        topic = f"{root}/{doc['kind']}/{doc['zone']}/{doc['sensor_id']}"
        levels = (doc["kind"], doc["zone"], doc["sensor_id"])
        bad = any("/" in v for v in levels) or any(c in "+#" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in topic)
        if not bad and len(topic.encode("utf-8", "replace")) < 60_000:
            try:
                topic.encode()
            except UnicodeEncodeError:
                pass
            else:
                return topic
    return f"{root}/iot/futian/{SENSOR}"


def predict_kafka(payload: bytes, now_ms: int) -> str:
    try:
        parse_reading(payload, now_ms=now_ms, max_bytes=MAX_PAYLOAD_BYTES)
    except InvalidReading as err:
        return err.reason
    return "valid"


def test_hostile_corpus_over_mqtt_and_kafka_is_processed_or_dead_lettered(
    tmp_path: Path, bootstrap: str, mosquitto: object
) -> None:
    t0 = time.monotonic()
    env = pipeline_env(tmp_path, bootstrap, URBAN_MQTT__PORT=str(mosquitto.port))  # type: ignore[attr-defined]
    root = env["URBAN_MQTT__TOPIC_ROOT"]
    topic = env["URBAN_KAFKA__READINGS_TOPIC"]
    now_ms = time.time_ns() // 1_000_000
    payloads = corpus(now_ms)
    over_mqtt = [(mqtt_topic(root, p), p) for p in payloads]
    predicted_mqtt = [route(t, p, now_ms, topic_root=root, max_payload_bytes=MAX_PAYLOAD_BYTES) for t, p in over_mqtt]
    mqtt_reasons = Counter(r.reason for r in predicted_mqtt if isinstance(r, DeadLetter))
    kafka_reasons = Counter(r for p in payloads if (r := predict_kafka(p, now_ms)) != "valid")
    forwarded = len(payloads) - sum(mqtt_reasons.values())
    assert forwarded > 50 and kafka_reasons["oversize"] >= 2, (forwarded, kafka_reasons)

    worker = start_worker(env, tmp_path)
    bridge = start_bridge(env, tmp_path)
    rss_w, rss_b = RssSampler(worker.proc.pid), RssSampler(bridge.proc.pid)
    try:
        wait_until(lambda: try_stats(env) is not None, 30, "the worker's stats page")
        base_w, base_b = rss_kb(worker.proc.pid), rss_kb(bridge.proc.pid)
        port = mosquitto.port  # type: ignore[attr-defined]
        sent = publish_mqtt(over_mqtt, host="127.0.0.1", port=port, client_id=f"fuzz-{root}", qos=1)
        assert sent == len(over_mqtt)
        pcfg = producer_config(KafkaSettings(bootstrap_servers=bootstrap))
        producer = Producer(pcfg | {"message.max.bytes": 16 << 20})
        errors: list[object] = []
        for i, p in enumerate(payloads):
            producer.produce(topic, value=p, key=f"fuzz-{i}".encode(),
                             on_delivery=lambda err, _m: errors.append(err) if err else None)
            producer.poll(0)
        assert producer.flush(60) == 0 and not errors, errors

        total = 2 * len(payloads)
        seen: dict[str, object] = {}

        def accounted() -> bool:
            s = try_stats(env) or {}
            n_readings = len(consume_all(kafka_cfg(env), topic, timeout_s=1))
            n_dlq = len(consume_all(kafka_cfg(env), env["URBAN_KAFKA__DLQ_TOPIC"], timeout_s=1))
            done = s.get("readings_counted", 0) + s.get("late", 0) + s.get("duplicates", 0)
            seen.update(readings_topic=n_readings, dlq_topic=n_dlq, stats=s)
            return n_readings == forwarded + len(payloads) and s.get("readings_in") == n_readings \
                and done + n_dlq == total

        try:
            wait_until(accounted, 120, "every message to be processed or dead-lettered", interval_s=2)
        except AssertionError as exc:
            expected = {"total": total, "forwarded": forwarded, "mqtt_dlq": sum(mqtt_reasons.values()),
                        "kafka_dlq": sum(kafka_reasons.values())}
            raise AssertionError(f"{exc}; expected {expected}, last seen {seen}") from None
        s = stats(env)

        # Still healthy: a normal reading over each path is counted.
        ok = encode_reading(sensor_id="iot-futian-0999", kind="iot", zone="futian", lat=22.5, lon=114.0,
                            ts_ms=time.time_ns() // 1_000_000, metrics={"power_kw": (2.0, "kW")})
        assert publish_mqtt([(f"{root}/iot/futian/iot-futian-0999", ok)], host="127.0.0.1", port=port,
                            client_id=f"fuzz2-{root}", qos=1) == 1
        producer.produce(topic, value=ok, key=b"iot-futian-0999")
        assert producer.flush(30) == 0
        wait_until(lambda: (try_stats(env) or {}).get("readings_counted", 0) == s["readings_counted"] + 2, 60,
                   "the normal readings after the corpus to be counted")
        assert worker.proc.poll() is None and bridge.proc.poll() is None
    finally:
        w_samples, b_samples = rss_w.stop(), rss_b.stop()
        bridge.stop()
        worker.stop()
    blog, wlog = bridge.text(), worker.text()
    assert "Traceback" not in blog and "mqtt message handling failed" not in blog, blog[-3000:]
    assert "Traceback" not in wlog, wlog[-3000:]

    # Dead letters: a known reason, the original bytes (a 512 KiB prefix when truncated) and size.
    dlq = consume_all(kafka_cfg(env), env["URBAN_KAFKA__DLQ_TOPIC"], timeout_s=3)
    sent_bytes = Counter(payloads)
    got_reasons: dict[str, Counter[str]] = {"mqtt": Counter(), "kafka": Counter()}
    by_size: dict[int, list[bytes]] = {}
    for p in payloads:
        by_size.setdefault(len(p), []).append(p)
    for m in dlq:
        h = {k: v for k, v in m.headers()}
        reason = h["urban.dlq.reason"].decode()
        assert reason in REASONS, reason
        size = int(h["urban.dlq.size"])
        if h["urban.dlq.truncated"] == b"1":
            assert len(m.value()) == DLQ_MAX < size
            assert any(p.startswith(m.value()) for p in by_size[size]), "truncated dead letter matches nothing sent"
        else:
            assert size == len(m.value()) and sent_bytes[m.value()] > 0, m.value()[:200]
        got_reasons[h["urban.dlq.source"].decode().split(":", 1)[0]][reason] += 1
    # The bridge dead-letters exactly what route() rejects; the worker what parse_reading rejects
    # (on the Kafka path), plus anything forwarded that only the stream can reject (none expected).
    assert got_reasons["mqtt"] == mqtt_reasons, (got_reasons["mqtt"], mqtt_reasons)
    assert got_reasons["kafka"] == kafka_reasons, (got_reasons["kafka"], kafka_reasons)
    assert s["dead_letters"] == sum(kafka_reasons.values())

    peak_w, peak_b = max(w_samples) / 1024, max(b_samples) / 1024
    growth_w, growth_b = peak_w - base_w / 1024, peak_b - base_b / 1024
    assert growth_w < 300 and growth_b < 300, (peak_w, base_w, peak_b, base_b)
    processed = s["readings_counted"] + s["late"] + s["duplicates"]
    lost = figures(
        "fuzz", 2 * len(payloads), processed, len(dlq), corpus=len(payloads),
        mqtt_dead_lettered=sum(mqtt_reasons.values()), kafka_dead_lettered=sum(kafka_reasons.values()),
        counted=s["readings_counted"], late=s["late"], duplicates=s["duplicates"],
        truncated_dead_letters=sum(1 for m in dlq if dict(m.headers())["urban.dlq.truncated"] == b"1"),
        worker_rss_mb=f"{base_w / 1024:.0f}->{peak_w:.0f}", bridge_rss_mb=f"{base_b / 1024:.0f}->{peak_b:.0f}",
        reasons=dict(sorted((got_reasons["mqtt"] + got_reasons["kafka"]).items())),
        elapsed_s=round(time.monotonic() - t0, 1),
    )
    assert lost == 0
