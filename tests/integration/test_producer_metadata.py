"""The worker's producer keeps the metadata of every topic it sends to (streams.app.track_produced_topics).

aiokafka's client refreshes metadata only for the topics it tracks and forgets the rest. A topic
first sent to while its metadata was known from an earlier full fetch is never tracked, so the
first send to a new topic made it forget that one, and a record already queued for it then waited
for a partition leader nobody asked about (until Faust's 20 min batch expiry). In a worker that
surfaced as a rebalance that never finished: the revoke's producer flush waited on such a record.
Here, against the real broker: a record is queued for a known topic, a new topic is sent to, and
the flush must still complete.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from connectors.kafka import ensure_topics
from streams.app import track_produced_topics

pytestmark = pytest.mark.integration


def test_a_record_queued_for_a_known_topic_is_delivered_after_a_new_topic_is_sent_to(bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    known, new = f"md-{tag}-known", f"md-{tag}-new"
    cfg = {"bootstrap.servers": bootstrap}
    ensure_topics(cfg, {known: 4})
    track_produced_topics()

    async def run() -> tuple[set[int] | None, bool]:
        # linger: the record for `known` is still queued when `new` is first sent to
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1000)
        await producer.start()
        try:
            await producer.send_and_wait(known, b"first", partition=3)  # metadata from the start-up fetch
            queued = await producer.send(known, b"queued", partition=2)
            ensure_topics(cfg, {new: 4})
            await producer.send_and_wait(new, b"other", partition=1)  # tracks `new`, refreshes metadata
            await producer.client.force_metadata_update()
            parts = producer.client.cluster.partitions_for_topic(known)
            try:
                await asyncio.wait_for(producer.flush(), 15)
            except TimeoutError:
                return parts, False
            return parts, queued.done() and queued.exception() is None
        finally:
            await asyncio.wait_for(producer.stop(), 30)

    parts, delivered = asyncio.run(run())
    assert parts == {0, 1, 2, 3}, f"the producer forgot topic {known}'s partitions: {parts}"
    assert delivered, f"the record queued for {known} was not delivered within 15 s"
