"""Publish simulated messages: to MQTT (paho-mqtt 2.x), to Kafka (confluent-kafka) or to a file.

Messages are ``(topic, payload)`` pairs as made by :meth:`simulators.generators.Batch.to_messages`
and :func:`simulators.malformed.malformed_corpus` (extra tuple elements are ignored), or
``(topic, payload, ts_ms)`` triples from :meth:`~simulators.generators.Batch.to_timed_messages`.
Kafka records carry the reading's event time as their timestamp: the third element when given,
otherwise the ``ts`` of the payload if it is a valid reading, otherwise the current time.

``rate_per_s=None`` publishes as fast as the broker acknowledges; a number paces messages
on a monotonic clock (injectable, like the sleep function, so pacing is testable).
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.errors import ConfigError, InvalidReading, UrbanSensingError
from streams.frames import MAX_FRAME_READINGS, Framer, encode_frame, kafka_partition
from streams.schema import parse_reading

logger = logging.getLogger(__name__)

__all__ = ["Pacer", "PublishError", "publish_kafka", "publish_mqtt", "read_jsonl", "write_jsonl", "write_lines"]

#: A message: ``(topic, payload)`` or ``(topic, payload, ts_ms)``.
Outgoing = tuple[str, bytes] | tuple[str, bytes, int] | tuple[Any, ...]

Clock = Callable[[], float]
Sleep = Callable[[float], None]

#: At most this much schedule debt (seconds) is caught up in a burst after a stall.
_MAX_BURST_S: Final = 1.0


class PublishError(UrbanSensingError):
    """A broker refused, lost or did not acknowledge messages in time."""


class Pacer:
    """Spaces calls to :meth:`wait` at ``1 / rate_per_s`` on a fixed schedule (no drift).

    ``rate_per_s=None`` never waits. After a stall, at most one second's worth of messages is
    sent in a burst to catch up.

    >>> t = [0.0]
    >>> p = Pacer(2.0, clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
    >>> for _ in range(5):
    ...     p.wait()
    >>> t[0]
    2.0
    """

    def __init__(self, rate_per_s: float | None, *, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
            msg = f"rate_per_s: expected a positive number or None, got {rate_per_s!r}"
            raise ConfigError(msg)
        self._interval = None if rate_per_s is None else 1.0 / rate_per_s
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        """Block until the next message may be sent."""
        if self._interval is None:
            return
        now = self._clock()
        if self._next is None:
            self._next = now
        elif now < self._next:
            self._sleep(self._next - now)
        else:
            self._next = max(self._next, now - _MAX_BURST_S)
        self._next += self._interval


def _split(message: Outgoing) -> tuple[str, bytes, int | None]:
    topic, payload = message[0], message[1]
    ts_ms = message[2] if len(message) > 2 and isinstance(message[2], int) else None
    return topic, payload, ts_ms


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------------------------
# MQTT


def publish_mqtt(
    messages: Iterable[Outgoing],
    *,
    host: str,
    port: int,
    client_id: str,
    qos: int = 1,
    username: str | None = None,
    password: str | None = None,
    security: Any = None,
    rate_per_s: float | None = None,
    max_inflight: int = 100,
    keepalive_s: int = 30,
    connect_timeout_s: float = 10.0,
    ack_timeout_s: float = 30.0,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> int:
    """Publish every message to an MQTT broker and wait until each one is acknowledged.

    At most ``max_inflight`` messages are unacknowledged at any time: the oldest is awaited
    before the next is sent. With ``qos=0`` "acknowledged" means written to the socket.

    Args:
        messages: ``(topic, payload[, ts_ms])`` tuples.
        host: broker host.
        port: broker port.
        client_id: MQTT client id.
        qos: 0, 1 or 2.
        username: optional user name.
        password: optional password (plain string; unwrap ``SecretStr`` at the entrypoint).
        security: :class:`~streams.settings.MqttSettings` whose credentials and TLS settings are
            applied (:func:`connectors.mqtt.secure_client`); overrides ``username``/``password``.
        rate_per_s: messages per second, or ``None`` for as fast as possible.
        max_inflight: bound of unacknowledged messages (>= 1).
        keepalive_s: MQTT keepalive.
        connect_timeout_s: how long to wait for CONNACK.
        ack_timeout_s: how long to wait for any one acknowledgement.
        clock: monotonic clock for pacing.
        sleep: sleep function for pacing.

    Returns:
        The number of messages published and acknowledged.

    Raises:
        ConfigError: invalid ``qos``, ``max_inflight`` or ``rate_per_s``.
        PublishError: connection refused or lost for good, or an acknowledgement timed out.
    """
    if qos not in (0, 1, 2):
        msg = f"publish_mqtt qos: expected 0, 1 or 2, got {qos!r}"
        raise ConfigError(msg)
    if max_inflight < 1:
        msg = f"publish_mqtt max_inflight: expected >= 1, got {max_inflight!r}"
        raise ConfigError(msg)
    pacer = Pacer(rate_per_s, clock=clock, sleep=sleep)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if security is not None:
        from connectors.mqtt import secure_client

        secure_client(client, security)
    elif username is not None:
        client.username_pw_set(username, password)
    client.max_inflight_messages_set(max_inflight)
    # Our window below is the real bound; paho's queue limit is a backstop with headroom.
    client.max_queued_messages_set(2 * max_inflight)

    cond = threading.Condition()
    acked: set[int] = set()
    connack: list[mqtt.ReasonCode] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: mqtt.ReasonCode, _p: object) -> None:
        with cond:
            connack.append(rc)
            cond.notify_all()
        logger.info("mqtt connected host=%s port=%d client_id=%s reason=%s", host, port, client_id, rc)

    def on_disconnect(_c: mqtt.Client, _u: object, _f: mqtt.DisconnectFlags, rc: mqtt.ReasonCode, _p: object) -> None:
        if rc.is_failure:
            logger.warning("mqtt disconnected host=%s port=%d reason=%s", host, port, rc)

    def on_publish(_c: mqtt.Client, _u: object, mid: int, rc: mqtt.ReasonCode, _p: object) -> None:
        with cond:
            acked.add(mid)
            cond.notify_all()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish

    try:
        client.connect(host, port, keepalive_s)
    except OSError as exc:
        msg = f"mqtt broker {host}:{port}: connect failed: {exc}"
        raise PublishError(msg) from exc
    client.loop_start()
    window: deque[int] = deque()
    debug = logger.isEnabledFor(logging.DEBUG)
    sent = 0

    def await_ack(mid: int) -> None:
        with cond:
            if not cond.wait_for(lambda: mid in acked, ack_timeout_s):
                msg = f"mqtt broker {host}:{port}: no acknowledgement for mid={mid} " f"within {ack_timeout_s} s"
                raise PublishError(msg)
            acked.discard(mid)

    try:
        with cond:
            if not cond.wait_for(lambda: bool(connack), connect_timeout_s):
                msg = f"mqtt broker {host}:{port}: no CONNACK within {connect_timeout_s} s"
                raise PublishError(msg)
            if connack[0].is_failure:
                msg = f"mqtt broker {host}:{port}: connection refused: {connack[0]}"
                raise PublishError(msg)
        for message in messages:
            topic, payload, _ = _split(message)
            pacer.wait()
            if len(window) >= max_inflight:
                await_ack(window.popleft())
            info = client.publish(topic, payload, qos=qos)
            # NO_CONN with qos > 0 means "queued until paho reconnects", not lost.
            if info.rc != mqtt.MQTT_ERR_SUCCESS and not (info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0):
                why = mqtt.error_string(info.rc)
                msg = f"mqtt broker {host}:{port}: publish to {topic!r} failed: {why}"
                raise PublishError(msg)
            window.append(info.mid)
            sent += 1
            if debug:
                logger.debug("mqtt publish topic=%s mid=%d bytes=%d", topic, info.mid, len(payload))
        while window:
            await_ack(window.popleft())
    finally:
        client.disconnect()
        client.loop_stop()
    logger.info("mqtt published host=%s port=%d count=%d qos=%d", host, port, sent, qos)
    return sent


# --------------------------------------------------------------------------------------------
# Kafka


def _partition_count(producer: Producer, topic: str) -> int:
    meta = producer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        why = meta.error if meta is not None else "unknown topic"
        msg = f"kafka topic {topic}: cannot frame readings without its partition count ({why}); create it first"
        raise PublishError(msg)
    return len(meta.partitions)


def _event_time_ms(payload: bytes, now_ms: int) -> int:
    try:
        return parse_reading(payload, now_ms=now_ms).ts_ms
    except InvalidReading:
        return now_ms


def publish_kafka(
    messages: Iterable[Outgoing],
    *,
    producer_config: dict[str, Any],
    topic: str,
    rate_per_s: float | None = None,
    flush_timeout_s: float = 30.0,
    now_ms: Callable[[], int] = _now_ms,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    frame: int = 1,
) -> int:
    """Produce every message to one Kafka topic and wait for all deliveries.

    The record key is the sensor id (the topic's last segment), the value the payload, and the
    record timestamp the reading's event time (see the module docstring). The producer runs
    with ``acks=all`` and ``enable.idempotence=true``.

    With ``frame`` > 1, consecutive messages of one event time that go to the same partition
    (the sensor id's, by murmur2 as Kafka's default partitioner) share a record: a frame of up to
    ``frame`` readings (:mod:`streams.frames`), with no key and that event time as its timestamp.
    The worker pays its per-record cost once per frame. A frame is sent when it is full or the
    event time moves on, so pacing still applies reading by reading.

    Args:
        messages: ``(mqtt_topic, payload[, ts_ms])`` tuples.
        producer_config: librdkafka settings (at least ``bootstrap.servers``).
        topic: the Kafka topic.
        rate_per_s: messages per second, or ``None`` for as fast as possible.
        flush_timeout_s: how long the final flush may take.
        now_ms: wall clock (epoch ms) used for payloads that are not valid readings.
        clock: monotonic clock for pacing.
        sleep: sleep function for pacing.
        producer_factory: builds the producer (tests inject a fake).
        frame: readings per record, at most (1: every message is a record of its own).

    Returns:
        The number of messages delivered (readings, framed or not).

    Raises:
        ConfigError: ``producer_config`` weakens ``acks`` or idempotence, or bad ``rate_per_s``.
        PublishError: a record failed or was still undelivered after the flush.
    """
    acks = str(producer_config.get("acks", "all")).lower()
    idempotent = str(producer_config.get("enable.idempotence", True)).lower()
    if acks not in {"all", "-1"} or idempotent not in {"true", "1"}:
        msg = (
            "publish_kafka producer_config: expected acks=all and enable.idempotence=true, "
            f"got acks={producer_config.get('acks')!r} "
            f"enable.idempotence={producer_config.get('enable.idempotence')!r}"
        )
        raise ConfigError(msg)
    if not 1 <= frame <= MAX_FRAME_READINGS:
        msg = f"publish_kafka frame: expected 1..{MAX_FRAME_READINGS} readings per record, got {frame}"
        raise ConfigError(msg)
    pacer = Pacer(rate_per_s, clock=clock, sleep=sleep)
    producer = producer_factory({**producer_config, "acks": "all", "enable.idempotence": True})

    errors: list[KafkaError] = []
    delivered = [0]

    def on_delivery(err: KafkaError | None, _msg: Message, n: int = 1) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered[0] += n

    def produce(value: bytes, key: bytes | None, ts_ms: int, partition: int = -1, n: int = 1) -> None:
        report = on_delivery if n == 1 else functools.partial(on_delivery, n=n)
        where = {} if partition < 0 else {"partition": partition}
        while True:
            try:
                producer.produce(topic, value=value, key=key, timestamp=ts_ms, on_delivery=report, **where)
                return
            except BufferError:
                producer.poll(0.1)  # local queue full: serve delivery reports, then retry
            except KafkaException as exc:
                msg = f"kafka topic {topic}: produce of key={key!r} failed: {exc}"
                raise PublishError(msg) from exc

    framer: Framer | None = None
    frame_ts = [0]
    if frame > 1:
        partitions = _partition_count(producer, topic)
        framer = Framer(lambda key: kafka_partition(key, partitions), frame)

    def send_frames(groups: Iterable[tuple[int, list[bytes]]]) -> None:
        for p, group in groups:
            produce(encode_frame(group), None, frame_ts[0], p, len(group))

    def fail_on_errors() -> None:
        if errors:
            msg = f"kafka topic {topic}: {len(errors)} record(s) failed, first: {errors[0]}"
            raise PublishError(msg)

    debug = logger.isEnabledFor(logging.DEBUG)
    sent = 0
    for message in messages:
        mqtt_topic, payload, ts_ms = _split(message)
        if ts_ms is None:
            ts_ms = _event_time_ms(payload, now_ms())
        key = mqtt_topic.rsplit("/", 1)[-1].encode()
        pacer.wait()
        if framer is None:
            produce(payload, key, ts_ms)
        else:
            if ts_ms != frame_ts[0]:  # a frame holds one event time
                send_frames(framer.drain())
                frame_ts[0] = ts_ms
            full = framer.add(key, payload)
            if full is not None:
                send_frames([full])
        producer.poll(0)
        fail_on_errors()
        sent += 1
        if debug:
            logger.debug("kafka produce topic=%s key=%s ts_ms=%d bytes=%d", topic, key, ts_ms, len(payload))
    if framer is not None:
        send_frames(framer.drain())
    remaining = producer.flush(flush_timeout_s)
    fail_on_errors()
    if remaining:
        msg = f"kafka topic {topic}: {remaining} of {sent} record(s) undelivered " f"after {flush_timeout_s} s"
        raise PublishError(msg)
    logger.info("kafka produced topic=%s count=%d", topic, delivered[0])
    return delivered[0]


# --------------------------------------------------------------------------------------------
# Files


def write_jsonl(messages: Iterable[Outgoing], path: str | Path) -> int:
    """Write messages as JSON lines; :func:`read_jsonl` reads them back byte for byte.

    Each line is ``{"topic": ..., "payload": <utf-8 text>}``, or ``"payload_b64"`` when the
    payload is not valid UTF-8, plus ``"ts_ms"`` for timed messages.

    Returns:
        The number of lines written.
    """
    count = 0
    with Path(path).open("wb") as fh:
        for message in messages:
            topic, payload, ts_ms = _split(message)
            line: dict[str, Any] = {"topic": topic}
            try:
                line["payload"] = payload.decode("utf-8")
            except UnicodeDecodeError:
                line["payload_b64"] = base64.b64encode(payload).decode("ascii")
            if ts_ms is not None:
                line["ts_ms"] = ts_ms
            fh.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
            count += 1
    logger.info("jsonl written path=%s count=%d", path, count)
    return count


def write_lines(
    ticks: Iterable[Sequence[str]], path: str | Path, *, header: str | None = None, flush_lines: int = 50_000
) -> int:
    """Write pre-encoded text lines (each ending in a newline), a list per tick, to ``path``.

    This is the fast file sink of :func:`simulators.feed.feed` (``fmt="jsonl"`` or ``"csv"``);
    the JSON lines it writes are the ones :func:`write_jsonl` writes for the same messages.

    Returns:
        The number of lines written, not counting ``header``.
    """
    count = 0
    pending: list[str] = []
    with Path(path).open("w", encoding="utf-8", newline="") as fh:
        if header is not None:
            fh.write(header)
        for lines in ticks:
            pending.extend(lines)
            if len(pending) >= flush_lines:
                fh.write("".join(pending))
                count += len(pending)
                pending.clear()
        fh.write("".join(pending))
        count += len(pending)
    logger.info("lines written path=%s count=%d", path, count)
    return count


def read_jsonl(path: str | Path) -> Iterator[tuple[str, bytes] | tuple[str, bytes, int]]:
    """Read messages written by :func:`write_jsonl`."""
    with Path(path).open("rb") as fh:
        for line in fh:
            doc = orjson.loads(line)
            text = doc.get("payload")
            payload = text.encode("utf-8") if text is not None else base64.b64decode(doc["payload_b64"])
            if "ts_ms" in doc:
                yield (doc["topic"], payload, int(doc["ts_ms"]))
            else:
                yield (doc["topic"], payload)
