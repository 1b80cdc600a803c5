"""confluent-kafka helpers: client configs, topic creation, counting, draining and dead letters.

Every Kafka call made outside Faust goes through this module, so broker quirks are handled
in one place. Known quirks of Tansu 0.6.0 (the embedded Kafka-protocol broker):

* A metadata request that names an unknown topic auto-creates it with 4 partitions, so
  :func:`ensure_topics` and :func:`consume_all` read the metadata of *all* topics instead.
* ListOffsets (``get_watermark_offsets``, ``latest``) answers with the base offset of the
  partition's last record batch plus one, ignoring the batch's other records. Fetch responses
  carry the true high watermark, so :func:`topic_message_count` reads each partition's tail.
* A group ``subscribe()`` waits about half of ``session.timeout.ms`` for the first assignment
  (about 23 s with the defaults); :func:`consume_all` assigns partitions directly instead.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from streams.deadletter import DeadLetter
from streams.errors import UrbanSensingError
from streams.settings import DEFAULT_SASL_MECHANISM, KafkaSettings

logger = logging.getLogger(__name__)

#: Upper bound on records waiting in the producer's local queue; ``produce`` raises
#: ``BufferError`` beyond it and callers apply back-pressure instead of growing memory.
PRODUCER_QUEUE_MAX_MESSAGES: Final = 100_000
#: lz4 round-trips on Tansu 0.6.0 (checked by tests/integration/test_bridge.py).
PRODUCER_COMPRESSION: Final = "lz4"
# librdkafka's public name for the "reached end of partition" event is underscore-prefixed.
_PARTITION_EOF: Final = KafkaError._PARTITION_EOF  # noqa: SLF001


class KafkaTopicError(UrbanSensingError):
    """A topic is missing, could not be created or has the wrong partition count."""


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security settings shared by producers, consumers and admin clients.

    Args:
        kafka: the ``kafka`` settings section.

    Returns:
        A librdkafka config dict; optional security keys are present only when set. With a SASL
        protocol and no mechanism, ``PLAIN`` is set explicitly (librdkafka would pick GSSAPI,
        Faust PLAIN). The dict holds the SASL password in clear: never log it.

    >>> client_config(KafkaSettings(bootstrap_servers="k:9092"))
    {'bootstrap.servers': 'k:9092', 'security.protocol': 'PLAINTEXT'}
    """
    cfg: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism is not None or kafka.security_protocol.startswith("SASL"):
        cfg["sasl.mechanism"] = kafka.sasl_mechanism or DEFAULT_SASL_MECHANISM
    if kafka.sasl_username is not None:
        cfg["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password is not None:
        cfg["sasl.password"] = kafka.sasl_password.get_secret_value()
    if kafka.ssl_cafile is not None:
        cfg["ssl.ca.location"] = str(kafka.ssl_cafile)
    if kafka.ssl_certfile is not None:
        cfg["ssl.certificate.location"] = str(kafka.ssl_certfile)
    if kafka.ssl_keyfile is not None:
        cfg["ssl.key.location"] = str(kafka.ssl_keyfile)
    return cfg


def producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Durable producer settings: idempotent, ``acks=all``, lz4 batches, bounded local queue.

    >>> cfg = producer_config(KafkaSettings())
    >>> cfg["acks"], cfg["enable.idempotence"], cfg["compression.type"]
    ('all', True, 'lz4')
    """
    return {
        **client_config(kafka),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        # Same key -> partition mapping as the Java client and aiokafka (Faust), so a sensor
        # lands in the same partition whichever producer forwarded it.
        "partitioner": "murmur2_random",
        "compression.type": PRODUCER_COMPRESSION,
        "queue.buffering.max.messages": PRODUCER_QUEUE_MAX_MESSAGES,
    }


def _partition_counts(admin: AdminClient, timeout_s: float) -> dict[str, int]:
    # Ask for all topics: naming an unknown topic makes Tansu auto-create it.
    md = admin.list_topics(timeout=timeout_s)
    return {name: len(tm.partitions) for name, tm in md.topics.items() if tm.error is None}


def ensure_topics(
    kafka_cfg: Mapping[str, Any],
    topics: Mapping[str, int],
    timeout_s: float = 15,
    *,
    replication_factor: int = 1,
) -> None:
    """Create missing topics with the given partition counts; verify the existing ones.

    Args:
        kafka_cfg: a :func:`client_config` dict.
        topics: topic name to partition count.
        timeout_s: bound on each admin request.
        replication_factor: used for topics that are created.

    Raises:
        KafkaTopicError: a topic exists with a different partition count, or creation failed.
    """
    if not topics:
        return
    admin = AdminClient(dict(kafka_cfg))
    try:
        existing = _partition_counts(admin, timeout_s)
    except KafkaException as exc:
        msg = f"cannot read topic metadata from {kafka_cfg.get('bootstrap.servers')}: {exc}"
        raise KafkaTopicError(msg) from exc
    to_create = [
        NewTopic(name, num_partitions=n, replication_factor=replication_factor)
        for name, n in topics.items()
        if name not in existing
    ]
    raced: list[str] = []
    if to_create:
        futures = admin.create_topics(
            to_create, operation_timeout=timeout_s, request_timeout=timeout_s
        )
        for name, fut in futures.items():
            try:
                fut.result()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    raced.append(name)
                    continue
                msg = f"cannot create topic {name!r} with {topics[name]} partitions: {exc}"
                raise KafkaTopicError(msg) from exc
            logger.info("created topic topic=%s partitions=%d", name, topics[name])
    if raced:
        existing = _partition_counts(admin, timeout_s)
    for name, want in topics.items():
        if name in existing or name in raced:
            have = existing.get(name)
            if have != want:
                msg = f"topic {name!r}: expected {want} partitions, found {have}"
                raise KafkaTopicError(msg)


def topic_message_count(kafka_cfg: Mapping[str, Any], topic: str, timeout_s: float = 10) -> int:
    """Records retained in ``topic``: the sum of ``high - low`` watermarks over its partitions.

    The watermarks come from ``get_watermark_offsets``. Tansu 0.6.0 answers that request with
    the last batch's base offset plus one, so each non-empty partition is also read from
    ``high - 1`` to its end: the end offset in the fetch response is right on both Tansu and
    Kafka. That costs one small fetch per partition.

    Raises:
        KafkaTopicError: the topic does not exist.
    """
    consumer = Consumer(
        {
            **kafka_cfg,
            "group.id": f"urbansense-count-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        low: dict[int, int] = {}
        end: dict[int, int] = {}
        for p in _partitions(consumer, topic, timeout_s):
            lo, hi = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=timeout_s, cached=False
            )
            low[p], end[p] = lo, hi
        true = _read_tails(consumer, {(topic, p): end[p] for p in low if end[p] > low[p]}, timeout_s)
        for (_, p), e in true.items():
            end[p] = e
        return sum(max(0, end[p] - low[p]) for p in low)
    finally:
        consumer.close()


def true_end_offsets(
    kafka_cfg: Mapping[str, Any], reported: Mapping[tuple[str, int], int], timeout_s: float = 10
) -> dict[tuple[str, int], int]:
    """End offsets of ``(topic, partition)`` pairs, correcting the broker's reported ends.

    Tansu 0.6.0 reports a partition's end as its last batch's base offset plus one; reading from
    ``reported - 1`` to the end of the partition gives the true end (equal to ``reported`` on Kafka).
    """
    consumer = Consumer(
        {
            **kafka_cfg,
            "group.id": f"urbansense-ends-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        return {**reported, **_read_tails(consumer, {tp: e for tp, e in reported.items() if e > 0}, timeout_s)}
    finally:
        consumer.close()


def _read_tails(
    consumer: Consumer, ends: Mapping[tuple[str, int], int], timeout_s: float
) -> dict[tuple[str, int], int]:
    end = dict(ends)
    if not end:
        return end
    consumer.assign([TopicPartition(t, p, e - 1) for (t, p), e in end.items()])
    open_parts = set(end)
    deadline = time.monotonic() + timeout_s
    while open_parts and time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is None:
            continue
        topic, part, offset, err = msg.topic(), msg.partition(), msg.offset(), msg.error()
        if err is not None and err.code() != _PARTITION_EOF:
            raise KafkaException(err)
        if topic is None or part is None or offset is None:
            continue
        tp = (topic, part)
        if err is None:
            end[tp] = max(end[tp], offset + 1)
        else:  # end of partition: offset is the fetch response's high watermark
            end[tp] = max(end[tp], offset)
            open_parts.discard(tp)
    if open_parts:
        logger.warning("watermark tail read timed out partitions=%s", sorted(open_parts))
    return end


def _partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    md = consumer.list_topics(timeout=timeout_s)
    tm = md.topics.get(topic)
    if tm is None or tm.error is not None:
        msg = f"topic {topic!r} does not exist on {md.orig_broker_name}"
        raise KafkaTopicError(msg)
    return sorted(tm.partitions)


def consume_all(
    kafka_cfg: Mapping[str, Any],
    topic: str,
    *,
    expect: int | None = None,
    timeout_s: float,
) -> list[Message]:
    """Read ``topic`` from the beginning of every partition.

    Partitions are assigned directly (no group rebalance) to a consumer with a fresh uuid
    group id that never commits, so repeated calls see the same records.

    Args:
        kafka_cfg: a :func:`client_config` dict.
        topic: the topic to drain.
        expect: stop as soon as this many records were read (``None``: read until idle).
        timeout_s: stop after this long without a new record.

    Raises:
        KafkaTopicError: the topic does not exist.
        KafkaException: the consumer reported an error.
    """
    consumer = Consumer(
        {
            **kafka_cfg,
            "group.id": f"urbansense-drain-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    out: list[Message] = []
    try:
        parts = _partitions(consumer, topic, timeout_s)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        idle_deadline = time.monotonic() + timeout_s
        while expect is None or len(out) < expect:
            remaining = idle_deadline - time.monotonic()
            if remaining <= 0:
                break
            msg = consumer.poll(min(0.2, remaining))
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                raise KafkaException(err)
            out.append(msg)
            idle_deadline = time.monotonic() + timeout_s
        return out
    finally:
        consumer.close()


def produce_dead_letter(producer: Producer, topic: str, dl: DeadLetter, **kwargs: Any) -> None:
    """Enqueue ``dl`` on ``topic``: original bytes as value, context in headers.

    Extra ``kwargs`` (for example ``on_delivery``) are passed to ``Producer.produce``, which
    raises ``BufferError`` when the local queue is full; the caller decides how to wait.
    """
    producer.produce(topic, value=dl.value, key=dl.key, headers=list(dl.headers), **kwargs)
