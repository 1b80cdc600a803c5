"""Replay recorded feeds over MQTT or Kafka with their original timing scaled by a factor.

Two recording formats are read:

* our JSON lines (as :func:`simulators.publish.write_jsonl` writes them): topics and payloads
  are replayed byte for byte (unless timestamps are shifted with ``start_ms``);
* CSV with a time column and a value column, such as the NAB files (``timestamp,value``):
  each row becomes a v1 reading of one sensor whose id, kind, zone, metric and unit are given
  by a :class:`CsvMapping`. Naive timestamps are taken as UTC.

Timing: a message with event time ``ts`` is sent ``(ts - first_ts) / speed`` seconds after the
first one (``speed=0``: as fast as possible). Event times that go backwards (out-of-order
recordings) are sent at once rather than waiting, so the schedule never runs backwards.

>>> now = [0.0]
>>> msgs = [("city/iot/futian/s1", b"", 1000), ("city/iot/futian/s1", b"", 3000)]
>>> out = list(paced(msgs, speed=2.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)))
>>> now[0]
1.0
"""

from __future__ import annotations

import csv
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from simulators.city import ZONES
from simulators.errors import ReplayError
from streams.errors import InvalidReading
from streams.schema import KINDS, encode_reading, format_ts, parse_ts

logger = logging.getLogger(__name__)

__all__ = ["CsvMapping", "paced", "read_recording", "replay"]

Message = tuple[str, bytes, int]
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
_TS_RE: Final = re.compile(rb'"ts":"([^"]{1,40})"')


@dataclass(frozen=True, slots=True)
class CsvMapping:
    """How CSV rows become readings.

    Attributes:
        sensor_id: id of the sensor (default: ``nab-<file stem>``).
        kind: sensor kind (``traffic``, ``environment``, ``crowd``, ``iot``).
        zone: district id; also the default location.
        metric: metric name (``[a-z][a-z0-9_]*``).
        unit: unit string.
        lat: latitude (default: the zone centre).
        lon: longitude (default: the zone centre).
        time_column: header of the time column.
        value_column: header of the value column.
    """

    sensor_id: str | None = None
    kind: str = "iot"
    zone: str = "futian"
    metric: str = "value"
    unit: str = ""
    lat: float | None = None
    lon: float | None = None
    time_column: str = "timestamp"
    value_column: str = "value"

    def __post_init__(self) -> None:
        problems = []
        if self.sensor_id is not None and not _ID_RE.fullmatch(self.sensor_id):
            problems.append(f"sensor_id: expected {_ID_RE.pattern}, got {self.sensor_id!r}")
        if self.kind not in KINDS:
            problems.append(f"kind: expected one of {sorted(KINDS)}, got {self.kind!r}")
        if not _ID_RE.fullmatch(self.zone):
            problems.append(f"zone: expected an id, got {self.zone!r}")
        if not _NAME_RE.fullmatch(self.metric):
            problems.append(f"metric: expected [a-z][a-z0-9_]{{0,63}}, got {self.metric!r}")
        if problems:
            msg = "csv mapping " + "; ".join(problems)
            raise ReplayError(msg)


def _csv_messages(path: Path, mapping: CsvMapping, topic_root: str) -> Iterator[Message]:
    sid = mapping.sensor_id or "nab-" + re.sub(r"[^A-Za-z0-9_.:\-]", "_", path.stem)[:120]
    centre = next((z for z in ZONES if z.zone_id == mapping.zone), None)
    lat = mapping.lat if mapping.lat is not None else (centre.lat if centre else 0.0)
    lon = mapping.lon if mapping.lon is not None else (centre.lon if centre else 0.0)
    topic = f"{topic_root}/{mapping.kind}/{mapping.zone}/{sid}"
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for col in (mapping.time_column, mapping.value_column):
            if col not in header:
                msg = f"{path}:1: expected a column {col!r}, got columns {header}"
                raise ReplayError(msg)
        for row in reader:
            line = reader.line_num
            ts_text, value_text = row[mapping.time_column], row[mapping.value_column]
            try:
                dt = datetime.fromisoformat(ts_text.strip().replace("Z", "+00:00"))
                value = float(value_text)
            except (ValueError, AttributeError):
                msg = f"{path}:{line}: expected an ISO time and a number, got {ts_text!r}, {value_text!r}"
                raise ReplayError(msg) from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ts_ms = round(dt.timestamp() * 1000)
            payload = encode_reading(
                sensor_id=sid,
                kind=mapping.kind,
                zone=mapping.zone,
                lat=lat,
                lon=lon,
                ts_ms=ts_ms,
                metrics={mapping.metric: (value, mapping.unit)},
            )
            yield topic, payload, ts_ms


def _payload_ts(payload: bytes) -> int | None:
    m = _TS_RE.search(payload)
    if m is None:
        return None
    try:
        return parse_ts(m[1].decode("utf-8", "replace"), "replay")
    except InvalidReading:
        return None


def _jsonl_messages(path: Path, topic_root: str | None) -> Iterator[Message]:
    from simulators.publish import read_jsonl

    last = 0
    try:
        for n, message in enumerate(read_jsonl(path), 1):
            topic, payload = message[0], message[1]
            ts = message[2] if len(message) > 2 else _payload_ts(payload)
            if ts is None:
                ts = last  # an unreadable (malformed) payload keeps its place in the schedule
                if n == 1:
                    logger.warning("replay first message has no timestamp path=%s", path)
            last = ts
            if topic_root is not None:
                topic = topic_root + topic[topic.find("/") :] if "/" in topic else topic
            yield topic, payload, ts
    except (orjson.JSONDecodeError, KeyError, ValueError) as exc:
        msg = f"{path}: not a JSON-lines recording written by write_jsonl: {exc}"
        raise ReplayError(msg) from None


def read_recording(
    path: str | Path,
    *,
    fmt: Literal["auto", "jsonl", "csv"] = "auto",
    mapping: CsvMapping | None = None,
    topic_root: str | None = None,
    start_ms: int | None = None,
    limit: int | None = None,
) -> Iterator[Message]:
    """Messages ``(topic, payload, ts_ms)`` of a recording, in file order.

    Args:
        path: the file.
        fmt: ``jsonl``, ``csv``, or ``auto`` (by suffix: ``.csv`` is CSV, anything else JSONL).
        mapping: CSV only: how rows become readings (default :class:`CsvMapping`).
        topic_root: first topic segment to use (JSONL default: as recorded; CSV: ``city``).
        start_ms: shift every timestamp (payload ``ts`` and ``ts_ms``) so the first message is
            at this instant; payloads are then re-encoded (malformed ones are left alone).
        limit: stop after this many messages.

    Raises:
        ReplayError: unreadable file, missing columns or a bad row (naming file and line).
    """
    p = Path(path)
    if not p.is_file():
        msg = f"{p}: no such recording"
        raise ReplayError(msg)
    kind = fmt if fmt != "auto" else ("csv" if p.suffix.lower() == ".csv" else "jsonl")
    if kind == "csv":
        messages = _csv_messages(p, mapping or CsvMapping(), topic_root or "city")
    elif kind == "jsonl":
        messages = _jsonl_messages(p, topic_root)
    else:
        msg = f"replay fmt: expected auto, jsonl or csv, got {fmt!r}"
        raise ReplayError(msg)
    if start_ms is not None:
        messages = _shift(messages, start_ms)
    for n, m in enumerate(messages):
        if limit is not None and n >= limit:
            return
        yield m


def _shift(messages: Iterator[Message], start_ms: int) -> Iterator[Message]:
    delta: int | None = None
    for topic, payload, ts in messages:
        if delta is None:
            delta = start_ms - ts
        new_ts = ts + delta
        try:
            doc = orjson.loads(payload)
            if not isinstance(doc, dict) or not isinstance(doc.get("ts"), str):
                raise ValueError("no ts")  # noqa: TRY301 - same handling as a parse failure
            parse_ts(doc["ts"], "replay")
            doc["ts"] = format_ts(new_ts)
            payload = orjson.dumps(doc)
        except (ValueError, InvalidReading):
            pass  # malformed on purpose: replay it unchanged
        yield topic, payload, new_ts


def paced(
    messages: Iterable[Message],
    *,
    speed: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
) -> Iterator[Message]:
    """Release each message ``(ts - first_ts) / speed`` seconds after the first (0: no waiting).

    Stops early (without error) once ``stop`` is set.
    """
    if not (speed >= 0):
        msg = f"replay speed: expected >= 0 (0: as fast as possible), got {speed!r}"
        raise ReplayError(msg)
    t0: float | None = None
    first = high = 0
    for m in messages:
        if stop is not None and stop.is_set():
            return
        ts = m[2]
        if t0 is None:
            t0, first, high = clock(), ts, ts
        elif speed > 0 and ts > high:
            high = ts
            delay = t0 + (high - first) / 1000.0 / speed - clock()
            if delay > 0:
                if stop is not None:
                    if stop.wait(delay):
                        return
                else:
                    sleep(delay)
        yield m


def replay(
    path: str | Path,
    *,
    transport: Literal["mqtt", "kafka"],
    speed: float = 1.0,
    fmt: Literal["auto", "jsonl", "csv"] = "auto",
    mapping: CsvMapping | None = None,
    topic_root: str | None = None,
    start_ms: int | None = None,
    limit: int | None = None,
    mqtt: dict[str, Any] | None = None,
    kafka_config: dict[str, Any] | None = None,
    kafka_topic: str = "urban.readings.v1",
    stop: threading.Event | None = None,
    kafka_frame: int = 1,
) -> int:
    """Replay a recording over MQTT or Kafka; returns the number of messages published.

    Args:
        path: JSON-lines or CSV recording (see :func:`read_recording`).
        transport: ``mqtt`` or ``kafka``.
        speed: time scale: ``1`` is the original pace, ``1000`` a thousand times faster, ``0``
            as fast as possible.
        fmt: see :func:`read_recording`.
        mapping: see :func:`read_recording`.
        topic_root: see :func:`read_recording`.
        start_ms: see :func:`read_recording`.
        limit: see :func:`read_recording`.
        mqtt: keyword arguments of :func:`simulators.publish.publish_mqtt` (``host``, ``port``,
            ``client_id``, ``qos``, ...).
        kafka_config: librdkafka producer settings (at least ``bootstrap.servers``).
        kafka_topic: Kafka topic; records are keyed by sensor id and stamped with event time.
        kafka_frame: readings per Kafka record (:func:`~simulators.publish.publish_kafka`).
        stop: set it to stop early.

    Raises:
        ReplayError: bad recording or options.
        PublishError: the broker failed.
    """
    from simulators.publish import publish_kafka, publish_mqtt

    messages = paced(
        read_recording(path, fmt=fmt, mapping=mapping, topic_root=topic_root, start_ms=start_ms, limit=limit),
        speed=speed,
        stop=stop,
    )
    logger.info("replay start path=%s transport=%s speed=%s", path, transport, speed or "max")
    if transport == "mqtt":
        options = {"host": "127.0.0.1", "port": 1883, "client_id": "urbansense-replay", **(mqtt or {})}
        n = publish_mqtt(messages, **options)
    elif transport == "kafka":
        if not kafka_config:
            msg = "replay kafka_config: expected producer settings with bootstrap.servers, got none"
            raise ReplayError(msg)
        n = publish_kafka(messages, producer_config=kafka_config, topic=kafka_topic, frame=kafka_frame)
    else:
        msg = f"replay transport: expected mqtt or kafka, got {transport!r}"
        raise ReplayError(msg)
    logger.info("replay done path=%s count=%d", path, n)
    return n
