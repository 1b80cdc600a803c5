"""Event-time results do not depend on how fast the input arrives.

One fixed list of readings (with out-of-order readings inside the allowed lateness and late
readings beyond it) is published to three fresh pipelines: as fast as possible, paced, and in
bursts separated by pauses shorter than the idle timeout. One producer publishes the same keys in
the same order each time, so every readings partition sees the same sequence (the watermark is
per partition). The aggregates topic (per key, sorted by window) and the late topic (values and
``urban.late.*`` headers) must be byte-identical across the three runs.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from connectors.kafka import consume_all, producer_config
from simulators.city import build_city
from simulators.generators import generate
from simulators.publish import publish_kafka
from streams.settings import KafkaSettings
from tests.integration.harness import (
    Proc,
    kafka_cfg,
    numpy_reference,
    pipeline_env,
    start,
    try_stats,
    wait_until,
)

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000
LATENESS_MS = 5_000
IDLE_TIMEOUT_MS = 10_000
SENSORS = 40
STEPS = 60
INTERVAL_MS = 5_000
BURSTS = 3
PAUSE_S = 2.5  # well below the idle timeout: pauses must not flush windows

Message = tuple[str, bytes, int]


def build_input() -> tuple[list[Message], int, int]:
    """The fixed input: in step order, with some readings swapped and some held back.

    Returns the messages, how many readings are out of order (within the lateness) and how
    many are late (held back by 20 steps = 100 s, beyond the lateness and past their window).
    """
    now_ms = time.time_ns() // 1_000_000
    start_ms = (now_ms - 3_600_000) // WINDOW_MS * WINDOW_MS + 3_000
    city = build_city(SENSORS, seed=31)
    feed = generate(city, start_ms=start_ms, interval_ms=INTERVAL_MS, steps=STEPS, seed=31)
    steps: list[list[Message | None]] = [list(b.to_timed_messages()) for b in feed]
    rng = random.Random(31)
    swapped = 0
    for k in range(0, STEPS - 1, 2):  # a sensor's reading of step k arrives after its step k+1 one
        for i in rng.sample(range(SENSORS), 4):
            steps[k][i], steps[k + 1][i] = steps[k + 1][i], steps[k][i]
            swapped += 1
    held: dict[int, list[Message]] = defaultdict(list)
    late = 0
    for k in range(5, STEPS - 25, 7):  # held back 20 steps: its window has closed by then
        for i in rng.sample(range(SENSORS), 2):
            m = steps[k][i]
            assert m is not None
            held[k + 20].append(m)
            steps[k][i] = None
            late += 1
    messages: list[Message] = []
    for k, batch in enumerate(steps):
        messages += [m for m in batch if m is not None]
        messages += held.pop(k, [])
    assert not held
    return messages, swapped, late


def late_view(msg: object) -> tuple[bytes | None, bytes, dict[str, bytes], int]:
    h = dict(msg.headers() or [])  # type: ignore[attr-defined]
    source = h.pop("urban.late.source").decode()
    # kafka:<topic>/<partition>@<offset>: the topic name differs per run, the rest must not.
    where = source.rsplit("/", 1)[1]
    h["urban.late.source"] = where.encode()
    return msg.key(), msg.value(), h, msg.partition()  # type: ignore[attr-defined]


def test_same_results_fast_paced_and_bursty(tmp_path: Path, bootstrap: str) -> None:
    t0 = time.monotonic()
    messages, swapped, planted_late = build_input()
    n = len(messages)
    assert n == SENSORS * STEPS and swapped > 0 and planted_late > 0

    speeds = ("fast", "paced", "bursts")
    envs = {
        speed: pipeline_env(
            tmp_path / speed,
            bootstrap,
            URBAN_WINDOW__ALLOWED_LATENESS_MS=str(LATENESS_MS),
            URBAN_WINDOW__IDLE_TIMEOUT_MS=str(IDLE_TIMEOUT_MS),
        )
        for speed in speeds
    }
    workers: list[Proc] = []
    try:
        for speed in speeds:  # start all three, then wait: the group joins overlap
            (tmp_path / speed).mkdir()
            workers.append(start(f"worker-{speed}", envs[speed], tmp_path / speed, "worker", "-l", "info"))
        for w in workers:
            w.wait_for("Worker ready", 90)
        pcfg = producer_config(KafkaSettings(bootstrap_servers=bootstrap))

        def publish(speed: str, msgs: list[Message], rate: float | None = None) -> None:
            topic = envs[speed]["URBAN_KAFKA__READINGS_TOPIC"]
            assert publish_kafka(msgs, producer_config=pcfg, topic=topic, rate_per_s=rate) == len(msgs)

        publish("fast", messages)
        publish("paced", messages, rate=2000)
        size = -(-n // BURSTS)
        for b in range(BURSTS):
            if b:
                time.sleep(PAUSE_S)
            publish("bursts", messages[b * size : (b + 1) * size])

        def done(speed: str) -> bool:
            s = try_stats(envs[speed])
            if not s:
                return False
            return s["readings_in"] == n and s["open_windows"] == 0 and s["points_written"] >= s["aggregates"]

        # The last windows close on the idle flush (10 s after the last reading).
        wait_until(lambda: all(done(s) for s in speeds), 60, "all three pipelines to close every window")
        final = {speed: try_stats(envs[speed]) for speed in speeds}
    finally:
        for w in workers:
            w.stop()

    aggregates: dict[str, dict[bytes, list[bytes]]] = {}
    late: dict[str, list[tuple]] = {}
    for speed in speeds:
        env = envs[speed]
        s = final[speed]
        assert s is not None
        assert s["late"] == planted_late, (speed, s)
        assert s["readings_counted"] == n - planted_late and s["duplicates"] == 0 and s["dead_letters"] == 0
        msgs = consume_all(kafka_cfg(env), env["URBAN_KAFKA__AGGREGATES_TOPIC"], expect=s["aggregates"], timeout_s=10)
        assert len(msgs) == s["aggregates"]
        per_key: dict[bytes, list[bytes]] = defaultdict(list)
        for m in msgs:
            per_key[m.key()].append(m.value())
        for values in per_key.values():
            values.sort(key=lambda v: (lambda d: (d["sensor_id"], d["metric"], d["start_ms"]))(orjson.loads(v)))
        aggregates[speed] = dict(per_key)
        lmsgs = consume_all(kafka_cfg(env), env["URBAN_KAFKA__LATE_TOPIC"], expect=planted_late, timeout_s=10)
        late[speed] = sorted(late_view(m) for m in lmsgs)
        assert len(late[speed]) == planted_late, speed

    assert aggregates["paced"] == aggregates["fast"]
    assert aggregates["bursts"] == aggregates["fast"]
    assert late["paced"] == late["fast"]
    assert late["bursts"] == late["fast"]

    # And the (common) result is right: the numpy reference over the readings that were not late.
    late_values = {v for _, v, _, _ in late["fast"]}
    assert all(int(h["urban.late.by_ms"]) > 0 for _, _, h, _ in late["fast"])
    reference = numpy_reference((p for _, p, _ in messages if p not in late_values), WINDOW_MS)
    got = {}
    for values in aggregates["fast"].values():
        for v in values:
            d = orjson.loads(v)
            got[(d["sensor_id"], d["metric"], d["start_ms"])] = d
    assert set(got) == set(reference)
    for key, ref in reference.items():
        g = got[key]
        assert (g["count"], g["min"], g["max"], g["first"], g["last"]) == (
            ref["count"],
            ref["min"],
            ref["max"],
            ref["first"],
            ref["last"],
        ), key
        assert abs(g["mean"] - ref["mean"]) <= 1e-9 * max(1.0, abs(ref["mean"])), key
    logger.warning(
        "replay speeds: readings=%d out_of_order=%d late=%d aggregates=%d elapsed_s=%.1f",
        n,
        swapped,
        planted_late,
        sum(len(v) for v in aggregates["fast"].values()),
        time.monotonic() - t0,
    )
