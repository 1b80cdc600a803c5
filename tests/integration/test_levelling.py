"""A backlog is read with its partitions kept level in event time, and nothing is lost to the pauses.

Hours of readings wait on the four readings partitions before the worker starts (a replay, or a
worker catching up). With ``MAX_PARTITION_SKEW_MS`` at one minute the worker keeps pausing the
readings partitions it has read ahead and resuming them (``streams.align``). Every pause makes
Faust drop records already fetched for that partition, which the consumer must read again: the
final aggregates must still equal a numpy reference exactly.

One partition's sensors join the feed late: its backlog is one reading each, far ahead of the
others, so it is paused with nothing left to read while the others catch up, and the rest of its
readings arrive while it is paused. A paused partition is not an idle feed: the idle flush (2 s here) used
to move its event time to the wall clock, and every record it received afterwards was late.

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
from streams.frames import kafka_partition
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
PARTITIONS = 4  # the readings topic's (the settings' default)


def partition_of(mqtt_topic: str) -> int:
    """The readings partition the producers pick for a sensor (the key is its id)."""
    return kafka_partition(mqtt_topic.rsplit("/", 1)[-1].encode(), PARTITIONS)


def test_a_backlog_is_read_level_and_exactly(tmp_path: Path, bootstrap: str) -> None:
    t0 = time.monotonic()
    env = pipeline_env(tmp_path, bootstrap, URBAN_WINDOW__MAX_PARTITION_SKEW_MS=str(SKEW_MS))
    now_ms = time.time_ns() // 1_000_000
    start_ms = (now_ms - 6 * 3_600_000) // WINDOW_MS * WINDOW_MS + 4_000
    city = build_city(SENSORS, seed=41)
    generated = [m for b in generate(city, start_ms=start_ms, interval_ms=INTERVAL_MS, steps=STEPS, seed=41)
                 for m in b.to_timed_messages()]
    assert len(generated) == SENSORS * STEPS
    # the late joiners' partition: one reading each 20 min before the end (published first, so it
    # comes in the first fetch and is read whole), 1 h 40 min of event time ahead of the others
    late_joiners = partition_of(generated[0][0])
    joined_ms = max(ts for _, _, ts in generated) - 20 * 60_000
    rest_ms = joined_ms + INTERVAL_MS
    joining = [m for m in generated if partition_of(m[0]) == late_joiners and joined_ms <= m[2] < rest_ms]
    others = [m for m in generated if partition_of(m[0]) != late_joiners]
    rest = [m for m in generated if partition_of(m[0]) == late_joiners and m[2] >= rest_ms]
    messages = joining + others + rest
    reference = numpy_reference((p for _, p, _ in messages), WINDOW_MS)
    pcfg = producer_config(KafkaSettings(bootstrap_servers=bootstrap))
    # the whole backlog waits before the worker starts (topics created with the table's partitions)
    from connectors.kafka import ensure_topics
    from streams.cli import source_topics
    from streams.settings import Settings

    ensure_topics(kafka_cfg(env), source_topics(_settings(env, Settings)))
    readings = env["URBAN_KAFKA__READINGS_TOPIC"]
    for part in (joining, others):
        assert publish_kafka(part, producer_config=pcfg, topic=readings) == len(part)

    worker = start_worker(env, tmp_path)
    try:
        paused_seen: set[int] = set()

        def late_joiners_paused() -> bool:
            # paused with everything published to it read: nothing known waits there
            s = try_stats(env)
            if not s or late_joiners not in s["partitions_paused_for_skew"]:
                return False
            c = s["readings_consumer"]["partitions"][str(late_joiners)]
            return c.get("highwater") is not None and (c.get("read_offset") or -1) + 1 >= c["highwater"]

        wait_until(late_joiners_paused, 60, f"partition {late_joiners} to be read and paused", interval_s=0.05)
        time.sleep(3.0)  # longer than the idle timeout, while the others catch up
        assert late_joiners in try_stats(env)["partitions_paused_for_skew"], "resumed too early for this test"
        assert publish_kafka(rest, producer_config=pcfg, topic=readings) == len(rest)

        def done() -> bool:
            s = try_stats(env)
            if not s:
                return False
            paused_seen.update(s["partitions_paused_for_skew"])
            if s["late"]:  # lost already: fail on what is missing now, not after the timeout
                return True
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

    # the late joiners were on the partition this test put them on
    on = {m.partition() for m in consume_all(kafka_cfg(env), readings, timeout_s=3)
          if partition_of(m.key().decode()) == late_joiners}
    assert on == {late_joiners}, on

    # the readings partitions were paused and resumed, and no laggard stalled
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
