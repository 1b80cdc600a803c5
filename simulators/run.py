"""``urbansense simulate``: generate the city's feeds and publish them (entrypoint adapter)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from connectors.history import parse_duration
from connectors.kafka import producer_config
from simulators.city import build_city
from simulators.generators import Incident, generate
from simulators.malformed import malformed_corpus
from streams.schema import parse_ts
from streams.settings import Settings

logger = logging.getLogger(__name__)


def parse_start(text: str, now_ms: int) -> int:
    """``-1h`` (relative to now), ``now``, or an RFC 3339 UTC timestamp, in epoch ms."""
    text = text.strip()
    if text == "now":
        return now_ms
    if text.startswith("-"):
        return now_ms - parse_duration(text[1:])
    if text.startswith("+"):
        return now_ms + parse_duration(text[1:])
    return parse_ts(text, "--start")


def default_incidents(start_ms: int, span_ms: int) -> list[Incident]:
    """One incident of each kind, spread over the simulated span."""
    at = lambda f: start_ms + int(span_ms * f)  # noqa: E731
    ten = max(span_ms // 10, 60_000)
    return [
        Incident("traffic", "luohu", at(0.2), at(0.2) + ten, 5.0),
        Incident("crowd", "futian", at(0.4), at(0.4) + ten, 4.0),
        Incident("environment", "nanshan", at(0.6), at(0.6) + ten, 5.0),
        Incident("iot", "longgang", at(0.75), at(0.75) + ten, 3.0),
    ]


def run_simulation(
    settings: Settings,
    *,
    transport: str,
    sensors: int,
    interval: str,
    duration: str,
    start: str,
    speed: float,
    malformed_every: int,
    seed: int,
    out: str,
    stop: threading.Event,
) -> int:
    """Generate and publish; returns the number of messages published."""
    now_ms = time.time_ns() // 1_000_000
    interval_ms = parse_duration(interval)
    span_ms = parse_duration(duration)
    start_ms = parse_start(start, now_ms)
    steps = max(span_ms // interval_ms, 1)
    city = build_city(sensors, seed)
    root = settings.mqtt.topic_root
    bad = malformed_corpus(max(steps * sensors // malformed_every, 1), seed, now_ms) if malformed_every else []
    logger.info(
        "simulating sensors=%d steps=%d interval_ms=%d start_ms=%d speed=%s transport=%s",
        sensors,
        steps,
        interval_ms,
        start_ms,
        speed or "max",
        transport,
    )

    def messages() -> Iterator[tuple[str, bytes, int]]:
        t0 = time.monotonic()
        n = 0
        bad_i = 0
        batches = generate(
            city,
            start_ms=start_ms,
            interval_ms=interval_ms,
            steps=steps,
            seed=seed,
            incidents=default_incidents(start_ms, span_ms),
        )
        for k, batch in enumerate(batches):
            if stop.is_set():
                return
            if speed > 0:
                delay = t0 + k * interval_ms / 1000.0 / speed - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
            for topic, payload, ts in batch.to_timed_messages():
                yield (root + topic[4:] if root != "city" else topic), payload, ts
                n += 1
                if malformed_every and n % malformed_every == 0 and bad_i < len(bad):
                    topic_b, payload_b, _ = bad[bad_i]
                    bad_i += 1
                    yield (root + topic_b[4:] if root != "city" else topic_b), payload_b, now_ms

    if transport == "mqtt":
        from simulators.publish import publish_mqtt

        m = settings.mqtt
        return publish_mqtt(
            messages(),
            host=m.host,
            port=m.port,
            client_id=f"{m.client_id}-sim-{seed}",
            qos=m.qos,
            username=m.username,
            password=m.password.get_secret_value() if m.password else None,
        )
    if transport == "kafka":
        from simulators.publish import publish_kafka

        return publish_kafka(
            messages(), producer_config=producer_config(settings.kafka), topic=settings.kafka.readings_topic
        )
    from pathlib import Path

    from simulators.publish import write_jsonl

    return write_jsonl(messages(), Path(out))
