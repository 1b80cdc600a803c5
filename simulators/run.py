"""``urbansense simulate`` and ``urbansense replay``: generate or replay feeds and publish them.

This is the entrypoint adapter: it reads :class:`~streams.settings.Settings`, paces the feed
and picks the sink (MQTT, Kafka, JSON lines or CSV). Everything it drives is pure and seeded.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import orjson

from connectors.history import parse_duration
from connectors.kafka import producer_config
from simulators.city import build_city
from simulators.encode import Format, csv_header
from simulators.feed import Plan, feed
from simulators.generators import Incident, generate
from simulators.malformed import malformed_corpus
from simulators.scenario import load_scenario
from streams.errors import ConfigError
from streams.schema import parse_ts
from streams.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Defaults of the plain (scenario-less) mode when the CLI leaves an option unset.
PLAIN_DEFAULTS = {"sensors": 200, "interval": "10s", "duration": "1h", "start": "-1h", "seed": 7}


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

    def at(f: float) -> int:
        return start_ms + int(span_ms * f)

    ten = max(span_ms // 10, 60_000)
    return [
        Incident("traffic", "luohu", at(0.2), at(0.2) + ten, 5.0),
        Incident("crowd", "futian", at(0.4), at(0.4) + ten, 4.0),
        Incident("environment", "nanshan", at(0.6), at(0.6) + ten, 5.0),
        Incident("iot", "longgang", at(0.75), at(0.75) + ten, 3.0),
    ]


class Progress:
    """A one-line progress report on stderr, rewritten at most every ``every_s`` seconds."""

    def __init__(
        self, label: str, total_ticks: int, *, enabled: bool, stream: TextIO | None = None, every_s: float = 0.5
    ) -> None:
        self._label = label
        self._total = max(total_ticks, 1)
        self._enabled = enabled
        self._stream = stream or sys.stderr
        self._every = every_s
        self._t0 = time.monotonic()
        self._last = 0.0
        self.ticks = 0
        self.messages = 0

    def update(self, ticks: int, messages: int) -> None:
        """Count ``ticks`` more ticks and ``messages`` more messages."""
        self.ticks += ticks
        self.messages += messages
        if self._enabled:
            now = time.monotonic()
            if now - self._last >= self._every:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        pct = 100.0 * self.ticks / self._total
        rate = self.messages / max(now - self._t0, 1e-9)
        width = 30
        filled = min(width, int(width * self.ticks / self._total))
        self._stream.write(
            f"\r{self._label} [{'#' * filled}{'.' * (width - filled)}] {pct:5.1f}% "
            f"{self.messages:,} msgs {rate:,.0f} msg/s"
        )
        self._stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()


def _paced_ticks(
    ticks: Iterable[T], *, interval_ms: int, speed: float, stop: threading.Event
) -> Iterator[tuple[int, T]]:
    """``(k, tick)``, released at ``k * interval / speed`` seconds (``speed <= 0``: at once)."""
    t0 = time.monotonic()
    for k, tick in enumerate(ticks):
        if stop.is_set():
            return
        if speed > 0:
            delay = t0 + k * interval_ms / 1000.0 / speed - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
        yield k, tick


def _sink(
    settings: Settings, transport: str, messages: Iterable[Any], *, seed: int, out: str, file_lines: bool = False
) -> int:
    if transport == "mqtt":
        from simulators.publish import publish_mqtt

        m = settings.mqtt
        return publish_mqtt(
            messages,
            host=m.host,
            port=m.port,
            client_id=f"{m.client_id}-sim-{seed}",
            qos=m.qos,
            security=m,  # username/password and TLS, as the bridge connects
        )
    if transport == "kafka":
        from simulators.publish import publish_kafka

        return publish_kafka(
            messages, producer_config=producer_config(settings.kafka), topic=settings.kafka.readings_topic,
            frame=settings.kafka.frame_size,
        )
    from simulators.publish import write_jsonl

    return write_jsonl(messages, Path(out))


def _check_transport(transport: str, fmt: str | None) -> None:
    if transport not in ("mqtt", "kafka", "file"):
        msg = f"--transport: expected mqtt, kafka or file, got {transport!r}"
        raise ConfigError(msg)
    if fmt not in (None, "jsonl", "csv"):
        msg = f"--format: expected jsonl or csv, got {fmt!r}"
        raise ConfigError(msg)


def run_simulation(
    settings: Settings,
    *,
    transport: str,
    sensors: int | None,
    interval: str | None,
    duration: str | None,
    start: str | None,
    speed: float,
    malformed_every: int,
    seed: int | None,
    out: str,
    stop: threading.Event,
    scenario: str | None = None,
    truth_out: str | None = None,
    fmt: str | None = None,
    progress: bool | None = None,
) -> int:
    """Generate and publish; returns the number of messages published.

    Without ``scenario`` this is the plain mode: ``sensors`` sensors round-robin over the six
    districts with one incident of each kind (``None`` options take :data:`PLAIN_DEFAULTS`).
    With ``scenario`` (a file or a shipped name) the scenario decides, and ``sensors``,
    ``interval``, ``duration``, ``start`` and ``seed`` override it when given; its ground truth
    is written to ``truth_out`` (default for the file transport: ``<out>.truth.jsonl``).

    Args:
        settings: configuration (MQTT and Kafka connection, topic names).
        transport: ``mqtt``, ``kafka`` or ``file``.
        sensors: number of sensors.
        interval: event-time step (``10s``).
        duration: simulated span (``24h``).
        start: ``now``, ``-1h`` or an RFC 3339 UTC instant.
        speed: N times real time; 0 as fast as possible.
        malformed_every: mix in one malformed message every N readings (0: none).
        seed: noise seed.
        out: output file of the file transport.
        stop: set it to stop early.
        scenario: scenario file or name.
        truth_out: ground-truth JSON-lines file.
        fmt: file transport format, ``jsonl`` or ``csv`` (default: by ``out``'s suffix).
        progress: draw a progress line on stderr (default: when stderr is a terminal).
    """
    _check_transport(transport, fmt)
    now_ms = time.time_ns() // 1_000_000
    show = sys.stderr.isatty() if progress is None else progress
    if scenario is None:
        return _run_plain(
            settings,
            transport=transport,
            sensors=PLAIN_DEFAULTS["sensors"] if sensors is None else sensors,  # type: ignore[arg-type]
            interval=interval or str(PLAIN_DEFAULTS["interval"]),
            duration=duration or str(PLAIN_DEFAULTS["duration"]),
            start=start or str(PLAIN_DEFAULTS["start"]),
            speed=speed,
            malformed_every=malformed_every,
            seed=PLAIN_DEFAULTS["seed"] if seed is None else seed,  # type: ignore[arg-type]
            out=out,
            stop=stop,
            now_ms=now_ms,
            show=show,
        )
    scn = load_scenario(scenario).with_overrides(
        start_ms=None if start is None else parse_start(start, now_ms),
        duration_ms=None if duration is None else parse_duration(duration),
        interval_ms=None if interval is None else parse_duration(interval),
        seed=seed,
        total_sensors=sensors,
    )
    plan = scn.plan()
    truth_path = truth_out or (str(Path(out).with_suffix("")) + ".truth.jsonl" if transport == "file" else None)
    if truth_path:
        n_truth = write_truth(plan, truth_path)
        logger.info("ground truth written path=%s records=%d", truth_path, n_truth)
    logger.info(
        "simulating scenario=%s sensors=%d steps=%d interval_ms=%d start_ms=%d incidents=%d faults=%d speed=%s "
        "transport=%s",
        plan.name,
        len(plan.city.sensors),
        plan.steps,
        plan.interval_ms,
        plan.start_ms,
        len(plan.incidents),
        len(plan.faults),
        speed or "max",
        transport,
    )
    return run_plan(
        settings,
        plan,
        transport=transport,
        speed=speed,
        malformed_every=malformed_every,
        out=out,
        stop=stop,
        fmt=fmt,
        show_progress=show,
        now_ms=now_ms,
    )


def write_truth(plan: Plan, path: str | Path) -> int:
    """Write ``plan``'s ground truth as JSON lines; returns the number of records."""
    records = plan.truth()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("wb") as fh:
        for r in records:
            fh.write(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE))
    return len(records)


def run_plan(
    settings: Settings,
    plan: Plan,
    *,
    transport: str,
    speed: float,
    out: str,
    stop: threading.Event,
    malformed_every: int = 0,
    fmt: str | None = None,
    show_progress: bool = False,
    now_ms: int | None = None,
) -> int:
    """Publish a resolved plan (see :func:`run_simulation`); returns messages published."""
    _check_transport(transport, fmt)
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    root = settings.mqtt.topic_root
    bar = Progress(f"simulate {plan.name}", plan.steps, enabled=show_progress)
    bad = malformed_corpus(max(plan.readings // malformed_every, 1), plan.seed, now_ms) if malformed_every else []
    file_fmt: Format = "csv" if (fmt or Path(out).suffix.lower().lstrip(".")) == "csv" else "jsonl"
    text_sink = transport == "file" and not malformed_every
    try:
        if text_sink:
            from simulators.publish import write_lines

            Path(out).parent.mkdir(parents=True, exist_ok=True)

            def lines() -> Iterator[Sequence[str]]:
                for _, items in _paced_ticks(
                    feed(plan, file_fmt, topic_root=root),
                    interval_ms=plan.interval_ms,
                    speed=speed,
                    stop=stop,
                ):
                    bar.update(1, len(items))
                    yield items

            return write_lines(lines(), out, header=csv_header() if file_fmt == "csv" else None)
        if transport == "file" and file_fmt == "csv":
            msg = "--format csv: malformed messages cannot be written as CSV; use jsonl or --malformed-every 0"
            raise ConfigError(msg)

        def messages() -> Iterator[Any]:
            n = 0
            bad_i = 0
            for _, items in _paced_ticks(
                feed(plan, "message", topic_root=root), interval_ms=plan.interval_ms, speed=speed, stop=stop
            ):
                bar.update(1, len(items))
                for item in items:
                    yield item
                    n += 1
                    if malformed_every and n % malformed_every == 0 and bad_i < len(bad):
                        topic_b, payload_b, _ = bad[bad_i]
                        bad_i += 1
                        yield (root + topic_b[4:] if root != "city" else topic_b), payload_b, now_ms

        return _sink(settings, transport, messages(), seed=plan.seed, out=out)
    finally:
        bar.close()


def _run_plain(
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
    now_ms: int,
    show: bool,
) -> int:
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
    bar = Progress("simulate", steps, enabled=show)

    def messages() -> Iterator[tuple[str, bytes, int]]:
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
        for _, batch in _paced_ticks(batches, interval_ms=interval_ms, speed=speed, stop=stop):
            bar.update(1, len(batch))
            for topic, payload, ts in batch.to_timed_messages():
                yield (root + topic[4:] if root != "city" else topic), payload, ts
                n += 1
                if malformed_every and n % malformed_every == 0 and bad_i < len(bad):
                    topic_b, payload_b, _ = bad[bad_i]
                    bad_i += 1
                    yield (root + topic_b[4:] if root != "city" else topic_b), payload_b, now_ms

    try:
        return _sink(settings, transport, messages(), seed=seed, out=out)
    finally:
        bar.close()


def run_replay(
    settings: Settings,
    *,
    file: str,
    transport: str,
    speed: float,
    fmt: str,
    sensor: str | None,
    kind: str,
    zone: str,
    metric: str,
    unit: str,
    time_column: str,
    value_column: str,
    start: str | None,
    limit: int | None,
    stop: threading.Event,
) -> int:
    """Replay a recording (``urbansense replay``); returns messages published."""
    from simulators.replay import CsvMapping, replay

    now_ms = time.time_ns() // 1_000_000
    m = settings.mqtt
    mapping = CsvMapping(
        sensor_id=sensor,
        kind=kind,
        zone=zone,
        metric=metric,
        unit=unit,
        time_column=time_column,
        value_column=value_column,
    )
    return replay(
        file,
        transport=transport,  # type: ignore[arg-type]
        speed=speed,
        fmt=fmt,  # type: ignore[arg-type]
        mapping=mapping,
        topic_root=m.topic_root if fmt == "csv" or file.lower().endswith(".csv") else None,
        start_ms=None if start is None else parse_start(start, now_ms),
        limit=limit,
        mqtt={
            "host": m.host,
            "port": m.port,
            "client_id": f"{m.client_id}-replay",
            "qos": m.qos,
            "security": m,
        },
        kafka_config=producer_config(settings.kafka),
        kafka_topic=settings.kafka.readings_topic,
        kafka_frame=settings.kafka.frame_size,
        stop=stop,
    )
