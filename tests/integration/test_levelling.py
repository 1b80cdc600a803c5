"""A backlog is read with its partitions kept level in event time, and nothing is lost to the pauses.

Hours of readings wait on the four readings partitions before the worker starts (a replay, or a
worker catching up). With ``MAX_PARTITION_SKEW_MS`` at one minute the worker keeps pausing the
readings partitions it has read ahead and resuming them (``streams.align``). Every pause makes
Faust drop records already fetched for that partition, which the consumer must read again: the
final aggregates must still equal a numpy reference exactly.

At this scale the readings partitions stay level without it too (the windows of different
partitions were emitted at most 1 min of event time apart either way), so this test shows that
pausing loses and repeats nothing; what levelling buys on a large backlog is shown by the broker
evaluation (`urbansense evaluate`, README), where partitions drifted 12-16 h apart without it.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from connectors.kafka import consume_all, producer_config
from simulators.city import build_city
from simulators.generators import generate
from simulators.publish import publish_kafka
from streams.settings import KafkaSettings
from tests.integration.harness import (
    assert_matches_reference,
    dedupe_aggregates,
    kafka_cfg,
    numpy_reference,
    pipeline_env,
    start_worker,
    store_window_rows,
    try_stats,
    wait_until,
)

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000
SKEW_MS = 60_000
SENSORS = 40
STEPS = 720  # 2 h at 10 s
INTERVAL_MS = 10_000


def test_a_backlog_is_read_level_and_exactly(tmp_path: Path, bootstrap: str) -> None:
    t0 = time.monotonic()
    env = pipeline_env(tmp_path, bootstrap, URBAN_WINDOW__MAX_PARTITION_SKEW_MS=str(SKEW_MS))
    now_ms = time.time_ns() // 1_000_000
    start_ms = (now_ms - 6 * 3_600_000) // WINDOW_MS * WINDOW_MS + 4_000
    city = build_city(SENSORS, seed=41)
    messages = [m for b in generate(city, start_ms=start_ms, interval_ms=INTERVAL_MS, steps=STEPS, seed=41)
                for m in b.to_timed_messages()]
    assert len(messages) == SENSORS * STEPS
    reference = numpy_reference((p for _, p, _ in messages), WINDOW_MS)
    pcfg = producer_config(KafkaSettings(bootstrap_servers=bootstrap))
    # the whole backlog waits before the worker starts (topics created with the table's partitions)
    from connectors.kafka import ensure_topics
    from streams.cli import source_topics
    from streams.settings import Settings

    ensure_topics(kafka_cfg(env), source_topics(_settings(env, Settings)))
    assert publish_kafka(messages, producer_config=pcfg, topic=env["URBAN_KAFKA__READINGS_TOPIC"]) == len(messages)

    worker = start_worker(env, tmp_path)
    try:
        paused_seen: set[int] = set()

        def done() -> bool:
            s = try_stats(env)
            if not s:
                return False
            paused_seen.update(s["partitions_paused_for_skew"])
            return (
                s["readings_in"] >= len(messages) and s["open_windows"] == 0
                and s["points_written"] >= s["aggregates"] and len(store_window_rows(env)) >= len(reference)
            )

        wait_until(done, 240, "the worker to read the backlog and store every window", interval_s=0.1)
        final = try_stats(env)
        log = worker.text()
    finally:
        worker.stop()
    assert final is not None

    # nothing lost or counted twice, with the pauses and the re-reads they cause
    msgs = consume_all(kafka_cfg(env), env["URBAN_KAFKA__AGGREGATES_TOPIC"], timeout_s=3)
    aggregates, duplicates = dedupe_aggregates(msgs)
    assert_matches_reference(aggregates, reference, "aggregates topic")
    rows = store_window_rows(env)
    assert_matches_reference({(r["sensor_id"], r["metric"], r["start_ms"]): r for r in rows}, reference, "store")
    assert final["late"] == 0 and final["dead_letters"] == 0
    assert final["readings_counted"] == len(messages)

    # the readings partitions were paused and resumed, and no laggard stalled
    readings = env["URBAN_KAFKA__READINGS_TOPIC"]
    paused = len(re.findall(rf"levelling partitions topic={re.escape(readings)} paused=\[\d", log))
    assert paused and paused_seen, (paused, paused_seen)
    assert "no longer holding" not in log, log[-3000:]
    logger.warning(
        "levelling: readings=%d windows=%d pauses=%d re_emitted=%d elapsed_s=%.1f",
        len(messages), len(reference), paused, duplicates, time.monotonic() - t0,
    )


def _settings(env: dict[str, str], settings_cls: type) -> object:
    """Settings as the worker will read them from ``env``."""
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env, clear=True):
        return settings_cls()
