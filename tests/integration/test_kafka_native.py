"""A Kafka-native feed: readings and malformed messages produced straight to an extra source topic.

The worker runs with ``URBAN_KAFKA__EXTRA_SOURCE_TOPICS`` naming a fresh 4-partition topic. Valid
readings (keys absent, arbitrary or the sensor id) are validated, re-keyed by sensor and windowed:
their aggregates must equal a numpy reference. Malformed messages must land in the dead-letter
topic with their original bytes and key, their reason and ``urban.dlq.source`` =
``kafka:<native topic>/<partition>@<offset>`` of the record that was produced.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaError, Message, Producer

from connectors.kafka import client_config, consume_all, ensure_topics, producer_config
from simulators.city import build_city
from simulators.generators import generate
from simulators.malformed import malformed_corpus
from streams.settings import KafkaSettings
from tests.integration.harness import (
    assert_matches_reference,
    dedupe_aggregates,
    kafka_cfg,
    numpy_reference,
    pipeline_env,
    start_worker,
    try_stats,
    wait_until,
)

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000
SENSORS = 96
STEPS = 24
INTERVAL_MS = 5_000
MALFORMED = 60


def test_native_topic_readings_aggregated_and_malformed_dead_lettered(tmp_path: Path, bootstrap: str) -> None:
    t0 = time.monotonic()
    native = f"t-native-{uuid.uuid4().hex[:10]}"
    # Records of one sensor arrive through 4 native partitions, so the forwarded order is not
    # event-time order: a lateness above the feed's 2-minute span keeps every reading on time
    # (the idle flush closes the windows).
    env = pipeline_env(
        tmp_path, bootstrap, URBAN_KAFKA__EXTRA_SOURCE_TOPICS=native, URBAN_WINDOW__ALLOWED_LATENESS_MS="600000"
    )
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    ensure_topics(client_config(kafka), {native: 4})

    now_ms = time.time_ns() // 1_000_000
    start_ms = (now_ms - 3_600_000) // WINDOW_MS * WINDOW_MS + 11_000
    city = build_city(SENSORS, seed=41)
    good = [
        m
        for b in generate(city, start_ms=start_ms, interval_ms=INTERVAL_MS, steps=STEPS, seed=41)
        for m in b.to_timed_messages()
    ]
    assert {t.split("/")[1] for t, _, _ in good} == {"traffic", "environment", "crowd", "iot"}
    bad = malformed_corpus(MALFORMED, seed=9, now_ms=now_ms)
    reference = numpy_reference((p for _, p, _ in good), WINDOW_MS)
    expected_pairs = sum(r["count"] for r in reference.values())

    # (key, value, timestamp, expected reason or None); keys absent, arbitrary or the sensor id.
    records: list[tuple[bytes | None, bytes, int, str | None]] = []
    step = len(good) // len(bad)
    for i, (topic, payload, ts) in enumerate(good):
        key = [None, f"feed-{i % 7}".encode(), topic.rsplit("/", 1)[1].encode()][i % 3]
        records.append((key, payload, ts, None))
        if i % step == step - 1 and i // step < len(bad):
            _, bp, reason = bad[i // step]
            records.append((None if i % 2 else b"\x00\xffodd key", bp, now_ms, reason))
    assert sum(r[3] is not None for r in records) == len(bad)

    worker = start_worker(env, tmp_path)
    try:
        producer = Producer(producer_config(kafka))
        delivered: dict[int, tuple[int, int]] = {}
        errors: list[KafkaError] = []

        def on_delivery(idx: int) -> object:
            def cb(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    errors.append(err)
                else:
                    delivered[idx] = (msg.partition(), msg.offset())

            return cb

        for idx, (key, value, ts, _) in enumerate(records):
            producer.produce(native, value=value, key=key, timestamp=ts, on_delivery=on_delivery(idx))
            producer.poll(0)
        assert producer.flush(30) == 0 and not errors, errors[:3]
        assert len(delivered) == len(records)
        assert len({p for p, _ in delivered.values()}) == 4  # the feed really spans the partitions

        def done() -> bool:
            s = try_stats(env)
            if not s:
                return False
            return (
                s["readings_counted"] >= len(good)
                and s["dead_letters"] >= len(bad)
                and s["open_windows"] == 0
                and s["points_written"] >= s["aggregates"] > 0
            )

        wait_until(done, 60, "the worker to forward, window, close and store everything")
        s = try_stats(env)
    finally:
        worker.stop()
    assert s is not None
    assert s["readings_counted"] == len(good) and s["dead_letters"] == len(bad), s
    assert s["late"] == 0 and s["duplicates"] == 0, s

    cfg = kafka_cfg(env)
    forwarded = consume_all(cfg, env["URBAN_KAFKA__READINGS_TOPIC"], expect=len(good), timeout_s=10)
    assert Counter((m.key(), m.value()) for m in forwarded) == Counter(
        (t.rsplit("/", 1)[1].encode(), p) for t, p, _ in good
    )
    assert all(m.timestamp()[1] == orjson_ts(m.value()) for m in forwarded)

    aggs, dups = dedupe_aggregates(consume_all(cfg, env["URBAN_KAFKA__AGGREGATES_TOPIC"], timeout_s=3))
    assert dups == 0
    assert_matches_reference(aggs, reference, "aggregates topic")
    assert sum(a["count"] for a in aggs.values()) == expected_pairs

    dlq = consume_all(cfg, env["URBAN_KAFKA__DLQ_TOPIC"], expect=len(bad), timeout_s=10)
    got = Counter(
        (
            m.key(),
            m.value(),
            dict(m.headers())["urban.dlq.reason"].decode(),
            dict(m.headers())["urban.dlq.source"].decode(),
        )
        for m in dlq
    )
    want = Counter(
        (key, value[: 512 * 1024], reason, f"kafka:{native}/{delivered[idx][0]}@{delivered[idx][1]}")
        for idx, (key, value, _, reason) in enumerate(records)
        if reason is not None
    )
    assert got == want
    logger.warning(
        "kafka native: readings=%d malformed=%d windows=%d reasons=%s elapsed_s=%.1f",
        len(good),
        len(bad),
        len(reference),
        dict(Counter(r for _, _, r in bad)),
        time.monotonic() - t0,
    )


def orjson_ts(payload: bytes) -> int:
    """The event time of a reading (epoch ms)."""
    from streams.schema import parse_ts

    return parse_ts(orjson.loads(payload)["ts"], "ts")
