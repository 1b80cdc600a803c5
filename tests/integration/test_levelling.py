"""A backlog is read with its partitions kept level in event time, and nothing is lost to the pauses.

Hours of readings wait on the four readings partitions before the worker starts (a replay, or a
worker catching up). With ``MAX_PARTITION_SKEW_MS`` at one minute the worker keeps pausing the
partitions it has read ahead and resuming them (``streams.align``), on the readings topic and on
the aggregates topic the alert router and the time-series writer read. Every pause makes Faust
drop records already fetched for that partition, which the consumer must read again: the final
aggregates must still equal a numpy reference exactly, and the store (fed from the levelled
aggregates topic) must have received the windows of different partitions in near event-time order
(here: 17 min of spread with levelling, 70 min with it off).
"""

from __future__ import annotations

import logging
import re
import sqlite3
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
STEPS = 1_080  # 3 h at 10 s
INTERVAL_MS = 10_000


def write_order_spread_min(env: dict[str, str]) -> int:
    """The largest gap (minutes of event time) between the newest window stored and the 10th
    percentile of the sensors' newest windows, over the store's write order."""
    conn = sqlite3.connect(f"file:{env['URBAN_STORE__PATH']}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute('SELECT sensor_id, start_ms FROM "window_agg" ORDER BY rowid').fetchall()
    finally:
        conn.close()
    newest: dict[str, int] = {}
    worst = 0
    for i, (sid, start) in enumerate(rows):
        newest[sid] = max(newest.get(sid, start), start)
        if len(newest) == SENSORS and i % 200 == 0:
            v = sorted(newest.values())
            worst = max(worst, (v[-1] - v[len(v) // 10]) // 60_000)
    return worst


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
    aggregates, duplicates = dedupe_aggregates(
        consume_all(kafka_cfg(env), env["URBAN_KAFKA__AGGREGATES_TOPIC"], timeout_s=3)
    )
    assert_matches_reference(aggregates, reference, "aggregates topic")
    rows = store_window_rows(env)
    assert_matches_reference({(r["sensor_id"], r["metric"], r["start_ms"]): r for r in rows}, reference, "store")
    assert final["late"] == 0 and final["dead_letters"] == 0
    assert final["readings_counted"] == len(messages)

    # the partitions were levelled: pauses on both topics, and a bounded spread in write order
    readings, aggs = env["URBAN_KAFKA__READINGS_TOPIC"], env["URBAN_KAFKA__AGGREGATES_TOPIC"]
    paused_readings = len(re.findall(rf"levelling partitions topic={re.escape(readings)} paused=\[\d", log))
    paused_aggs = len(re.findall(rf"levelling partitions topic={re.escape(aggs)} paused=\[\d", log))
    assert paused_readings and paused_aggs and paused_seen, (paused_readings, paused_aggs, paused_seen)
    assert "no longer holding" not in log, log[-3000:]
    spread = write_order_spread_min(env)
    logger.warning(
        "levelling: readings=%d windows=%d level_decisions readings=%d aggregates=%d write_order_spread_min=%d "
        "re_emitted=%d elapsed_s=%.1f",
        len(messages), len(reference), paused_readings, paused_aggs, spread, duplicates, time.monotonic() - t0,
    )
    assert spread <= 30, f"windows reached the store up to {spread} min of event time apart"


def _settings(env: dict[str, str], settings_cls: type) -> object:
    """Settings as the worker will read them from ``env``."""
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env, clear=True):
        return settings_cls()
