"""Build the Faust application from :class:`~streams.settings.Settings` (no import-time effects)."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust

from streams.settings import DEFAULT_SASL_MECHANISM, KafkaSettings, Settings

logger = logging.getLogger(__name__)


def broker_credentials(kafka: KafkaSettings) -> faust.auth.Credentials | None:
    """Faust/aiokafka credentials matching :func:`connectors.kafka.client_config`.

    ``SSL``/``SASL_SSL`` get a verifying TLS context (system CAs, or ``ssl_cafile``; plus the
    client certificate for mutual TLS); ``SASL_*`` get username, password and mechanism
    (default ``PLAIN``, as for confluent-kafka). ``PLAINTEXT``: ``None``.
    """
    ctx: ssl.SSLContext | None = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
        if kafka.ssl_certfile is not None:
            ctx.load_cert_chain(str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism or DEFAULT_SASL_MECHANISM,
            ssl_context=ctx,
        )
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


def verify_end_offsets(kafka_cfg: dict[str, Any]) -> None:
    """Make Faust's changelog recovery read to the true end of each partition.

    Faust restores tables up to the end offsets the broker reports. Tansu 0.6.0 under-reports them
    (last batch's base offset + 1), which would leave the newest table updates unrestored. This
    wraps the aiokafka driver's end-offset lookup with :func:`connectors.kafka.true_end_offsets`
    (one small fetch per changelog partition at recovery; on Kafka it changes nothing).
    """
    import asyncio

    from faust.transport.drivers import aiokafka as driver

    from connectors.kafka import true_end_offsets

    cls = driver.AIOKafkaConsumerThread
    original = cls._highwaters  # noqa: SLF001
    if getattr(original, "urbansense_verified", False):
        return

    async def _highwaters(self: Any, partitions: Any) -> Any:
        reported = await original(self, partitions)
        fixed = await asyncio.to_thread(
            true_end_offsets, kafka_cfg, {(tp.topic, tp.partition): int(o or 0) for tp, o in reported.items()}
        )
        return {tp: max(int(o or 0), fixed[(tp.topic, tp.partition)]) for tp, o in reported.items()}

    _highwaters.urbansense_verified = True  # type: ignore[attr-defined]
    cls._highwaters = _highwaters  # type: ignore[method-assign]  # noqa: SLF001


async def persist(table: Any, partition: int, key: Any, value: Any, **serializers: Any) -> None:
    """Write one record to ``table``'s changelog now, so the next offset commit waits for it.

    Faust's ``Table.send_changelog`` queues the record in its producer buffer (``send_soon``).
    Before committing offsets Faust flushes that buffer, but ``ProducerBuffer.flush_atmost``
    returns as soon as no record leaves it for 0.1 s, and the commit goes ahead: on a loaded
    machine the offsets of a batch were committed while its state records were still queued,
    and a SIGKILL then lost them (a restart neither restored the state nor re-read the input).
    Awaiting ``Topic.send`` hands the record to the aiokafka producer, whose ``flush()`` the
    commit does wait for in full. ``serializers`` are ``key_serializer``/``value_serializer``
    overrides (default: the table's).
    """
    await table.changelog_topic.send(
        key=key,
        value=value,
        partition=partition,
        key_serializer=serializers.get("key_serializer", table.key_serializer),
        value_serializer=serializers.get("value_serializer", table.value_serializer),
        callback=table._on_changelog_sent,  # noqa: SLF001 - keeps Faust's persisted-offset bookkeeping
    )


def stash(table: Any, pending: dict[Any, tuple[int, Any]], docs: Iterable[tuple[int, Any, Any]]) -> None:
    """Put ``(partition, key, document)`` into ``table.data`` now and into ``pending`` for the commit.

    A ``None`` document deletes the key. :func:`persist_pending` writes what is pending.
    """
    data = table.data
    for partition, key, doc in docs:
        if doc is None:
            data.pop(key, None)
        else:
            data[key] = doc
        pending[key] = (partition, doc)


async def persist_pending(table: Any, pending: dict[Any, tuple[int, Any]]) -> None:
    """Write ``pending`` (key -> (partition, document)) to ``table``'s changelog, and empty it.

    Each key's current document in ``table.data`` is written, not the one queued: each write
    yields, and meanwhile a newer one may have been written (a window closed). Writing the stale
    one after it would leave the changelog behind the committed offsets. A newer document than
    the offsets being committed is safe: replayed input is recognised by offset (windows) or
    applied again to the same state (alerts). A key missing from ``table.data`` writes its queued
    document (``None`` deletes). On failure what was not written stays pending, and the error
    goes on (the offset commit fails with it).
    """
    items = list(pending.items())
    pending.clear()
    data = table.data
    for i, (key, (partition, value)) in enumerate(items):
        try:
            await persist(table, partition, key, data.get(key, value))
        except BaseException:
            for k2, v2 in items[i:]:
                pending.setdefault(k2, v2)
            raise


def flush_before_commit() -> None:
    """Make Faust await the hooks of :func:`before_commit` before it commits offsets.

    Faust's consumer picks the offsets to commit (those of acknowledged events), then flushes the
    producer and commits. The hook runs between the two: everything an acknowledged event changed
    is in the worker's pending state by then, and the hook writes it to the changelog, so a
    committed offset is never ahead of the state on the changelog. Installed once per process
    (a class-level wrap, as :func:`verify_end_offsets`); apps without hooks are unaffected.
    """
    from faust.transport.consumer import Consumer

    original = Consumer._commit_offsets  # noqa: SLF001
    if getattr(original, "urbansense_hooked", False):
        return

    async def _commit_offsets(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        for hook in getattr(self.app, "urbansense_before_commit", ()):
            await hook()
        return await original(self, offsets, start_new_transaction=start_new_transaction)

    _commit_offsets.urbansense_hooked = True  # type: ignore[attr-defined]
    Consumer._commit_offsets = _commit_offsets  # type: ignore[method-assign]  # noqa: SLF001


def before_commit(app: faust.App, hook: Callable[[], Awaitable[None]]) -> None:
    """Have ``hook`` awaited before each offset commit, after the hooks added before it.

    The stages that keep their table writes for the commit (the window state, the alert engine's
    state) each add one (:func:`flush_before_commit` runs them).
    """
    hooks = app.__dict__.setdefault("urbansense_before_commit", [])
    hooks.append(hook)


def track_produced_topics() -> None:
    """Keep the metadata of every topic the worker produces to (aiokafka forgets some).

    aiokafka's client refreshes metadata for the topics it tracks and replaces what it knew with
    the answer. A topic the producer first sent to while its metadata was already known (from the
    full fetch at start-up, or after Faust created it) is never tracked, so once any other topic is
    tracked the next refresh drops it: records already queued for it wait for a partition leader
    the producer never asks about again, until the next send to that topic tracks it or the batch
    expires (Faust's ``producer_request_timeout``, 20 min). During a rebalance nothing else is
    sent, and the revoke's producer flush waited there: the surviving worker never rejoined and
    its group stayed rebalancing (a CI run of ``tests/integration/test_faults_rebalance.py``; the
    stack dump showed the sender with only unknown-leader batches). Every topic sent to is tracked
    now; a topic not tracked yet is asked about at the next refresh. Installed once per process.
    """
    from aiokafka.client import AIOKafkaClient

    original = AIOKafkaClient._wait_on_metadata  # noqa: SLF001
    if getattr(original, "urbansense_hooked", False):
        return

    async def _wait_on_metadata(self: Any, topic: str) -> Any:
        if topic not in self._topics:  # noqa: SLF001
            self.add_topic(topic)
        return await original(self, topic)

    _wait_on_metadata.urbansense_hooked = True  # type: ignore[attr-defined]
    AIOKafkaClient._wait_on_metadata = _wait_on_metadata  # type: ignore[method-assign]  # noqa: SLF001


def fetch_max_wait() -> None:
    """Make the worker's consumer take its fetch wait from ``app.urbansense_fetch_max_wait_ms``.

    Faust builds the aiokafka consumer with ``fetch_max_wait_ms=1500``, hard-coded. Apache Kafka
    answers a fetch as soon as any of its partitions has data, so the wait only bounds idle
    polling there. Tansu answers only when the wait is over: every hop of the pipeline (readings,
    aggregates, the alert engine's input; all fetched by the one consumer) waited up to 1.5 s,
    0.48 s at the median, for a record already on the broker. Apps without the attribute keep
    Faust's wait. Installed once per process (a class-level wrap, as :func:`verify_end_offsets`).
    """
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    original = cls._create_worker_consumer  # noqa: SLF001
    if getattr(original, "urbansense_hooked", False):
        return

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait_ms = getattr(self.app, "urbansense_fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # noqa: SLF001 - handed to its Fetcher at start()
        return consumer

    _create_worker_consumer.urbansense_hooked = True  # type: ignore[attr-defined]
    cls._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]  # noqa: SLF001


def deliver_without_gaps() -> None:  # noqa: C901 - one wrapper, kept next to what it wraps
    """Make Faust's consumer hand each agent partition's records over without holes.

    Faust fetches a batch of records, then hands them to the agents one by one, and drops the
    rest of the batch when the flow stops (recovery, rebalance), when the consumer generation
    changes, or when a partition is not active yet; a delivery that is still waiting when the flow
    stops is cancelled but counted as read. It relies on seeking back to the committed offsets
    afterwards, which does nothing for a partition without a committed offset (a new group's
    sink topics), and a later record then shows up as a *gap*, which Faust treats as committable
    (it is meant for compacted topics and transaction markers; ours have neither). In
    ``tests/integration/test_recovery.py`` that lost a restarted worker 2-40 aggregates per
    partition on their way to the store, and readings that the windows had not counted.

    With this wrapper, for every partition of an agent's source topic, the next record handed
    over must be the one after the last one delivered: a record past it, or records of a batch
    that were fetched but not delivered, make the consumer seek back to the first missing offset
    and read them again (at-least-once: the agents already recognise redelivered records).
    When the :class:`Leveller` changes which partitions to read, the batch being delivered ends
    there and its undelivered records are read again: Faust hands over all that was prefetched as
    one batch, and delivering the rest of a backlog's batch took tens of seconds, during which a
    paused partition kept arriving (Faust delivers a partition whose channel was full regardless of
    pauses) and a resumed one got nothing. Seeks run on the consumer's own thread (Faust's call
    aiokafka's ``seek`` from the app's thread, waking the fetcher through the other loop's future).
    Installed once per process; changelog partitions (Faust's table recovery) are left alone.
    """
    from faust.transport.consumer import Consumer, ThreadDelegateConsumer

    original_getmany = Consumer.getmany
    if getattr(original_getmany, "urbansense_hooked", False):
        return
    original_wait = Consumer._wait_next_records  # noqa: SLF001
    original_perform_seek = Consumer.perform_seek
    original_seek = Consumer.seek
    original_revoked = Consumer.on_partitions_revoked

    def next_offsets(self: Any) -> dict[Any, int]:
        return self.__dict__.setdefault(_NEXT, {})

    async def rewind(self: Any, tp: Any, offset: int, why: str, routine: bool = False) -> None:
        if tp not in self.assignment():
            next_offsets(self).pop(tp, None)
            return
        # A batch ended early for the Leveller, or a paused partition whose fetched records Faust
        # skipped (they are read again on resume, streams.align): routine, not worth a warning.
        level = logging.DEBUG if routine or tp in self._paused_partitions else logging.WARNING  # noqa: SLF001
        logger.log(
            level, "consumer rewinds topic=%s partition=%d offset=%d reason=%s", tp.topic, tp.partition, offset, why
        )
        try:
            await self.seek(tp, offset)
        except Exception as exc:  # revoked meanwhile: the next owner starts from the committed offset.
            # Otherwise the next record past the expected offset makes the consumer try again.
            logger.warning(
                "consumer could not rewind topic=%s partition=%d offset=%d error=%r",
                tp.topic, tp.partition, offset, exc,
            )

    async def _wait_next_records(self: Any, timeout: float) -> Any:
        records, active = await original_wait(self, timeout)
        self._urbansense_fetched = records
        return records, active

    def cuttable(self: Any) -> bool:
        """Every record of the batch can be read again (none of a table's changelog, say)."""
        acking = self.app.topics.acks_enabled_for
        return all(acking(tp.topic) for tp in (self._urbansense_fetched or ()))

    async def getmany(self: Any, timeout: float) -> Any:
        self._urbansense_fetched = None
        expected = next_offsets(self)
        acking = self.app.topics.acks_enabled_for
        delivered: dict[Any, int] = {}
        rewound: set[Any] = set()
        cuts = self.__dict__.get(_CUTS, 0)
        cut = False
        batch = original_getmany(self, timeout)
        try:
            async for tp, message in batch:
                if self.__dict__.get(_CUTS, 0) != cuts:
                    # The partitions to read changed (Leveller): end the batch, whose undelivered
                    # records are read again below, rather than deliver the rest of it (it can hold
                    # all that was prefetched, tens of seconds of work) to the old choice.
                    cuts = self.__dict__.get(_CUTS, 0)
                    if cuttable(self):
                        cut = True
                        break
                if tp in rewound:
                    continue
                if not acking(tp.topic):
                    yield tp, message
                    continue
                want = expected.get(tp)
                if want is not None and message.offset > want:
                    rewound.add(tp)
                    await rewind(self, tp, want, f"records {want}..{message.offset - 1} were not delivered")
                    continue
                yield tp, message
                if self.flow_active and not self.suspend_flow.is_set():
                    expected[tp] = delivered[tp] = max(want or 0, message.offset + 1)
                else:  # the flow stopped while it was being delivered: it, and what the agents'
                    # queues held, may have been dropped; go back to what no agent acknowledged
                    rewound.add(tp)
                    await rewind(self, tp, safe_point(self, tp, message.offset), "flow stopped during delivery")
        finally:
            await batch.aclose()
            fetched = self._urbansense_fetched or {}
            self._urbansense_fetched = None
            for tp, records in fetched.items():
                if tp in rewound or not records or not acking(tp.topic):
                    continue
                upto = delivered.get(tp, expected.get(tp))
                missing = [r.offset for r in records if upto is None or r.offset >= upto]
                if missing:
                    first = min(missing)
                    if upto is not None and first > upto:
                        first = upto
                    why = f"{len(missing)} fetched records were not delivered"
                    await rewind(self, tp, first, why + (" (batch ended for levelling)" if cut else ""), routine=cut)

    def first_unacked(self: Any, tp: Any) -> int:
        acked = self._acked_index.get(tp) or ()  # noqa: SLF001 - acked, not yet committed
        offset = 0
        while offset in acked:
            offset += 1
        return offset

    def safe_point(self: Any, tp: Any, offset: int) -> int:
        committed = self._committed_offset.get(tp)  # noqa: SLF001
        return min(offset, committed if committed is not None else first_unacked(self, tp))

    async def perform_seek(self: Any) -> None:
        await original_perform_seek(self)
        expected = next_offsets(self)
        assigned = self.assignment()
        acking = self.app.topics.acks_enabled_for
        for tp in list(expected):
            if tp not in assigned:
                del expected[tp]
        for tp in sorted(assigned):
            if not acking(tp.topic):
                continue
            committed = self._committed_offset.get(tp)  # noqa: SLF001
            if committed is not None:
                # Faust sought there (aiokafka's seek_to_committed, not Consumer.seek): read on from
                # it. A newly assigned partition too: without an expected offset, whatever came
                # first was taken as the start, and records between it and the committed offset
                # were never read.
                if expected.get(tp) != committed:
                    logger.info("consumer reads on topic=%s partition=%d offset=%d (committed)",
                                tp.topic, tp.partition, committed)
                expected[tp] = committed
            elif tp in expected:
                # No committed offset, so Faust did not seek. Records handed to the agents'
                # queues but not taken were dropped with them (a recovery clears the queues):
                # go back to the first record no agent has acknowledged.
                await rewind(self, tp, first_unacked(self, tp), "no committed offset to seek back to")

    async def seek(self: Any, partition: Any, offset: int) -> None:
        await original_seek(self, partition, offset)
        next_offsets(self)[partition] = offset

    async def _seek_in_thread(self: Any, partition: Any, offset: int) -> None:
        # On the consumer's own thread: Faust calls aiokafka's seek from the app's thread, which
        # wakes the fetcher through a future of the other thread's event loop.
        await self._thread.call_thread(_seek_on_thread, self._thread, partition, offset)  # noqa: SLF001

    async def on_partitions_revoked(self: Any, revoked: Any) -> None:
        expected = next_offsets(self)
        for tp in revoked:
            expected.pop(tp, None)
        await original_revoked(self, revoked)

    getmany.urbansense_hooked = True  # type: ignore[attr-defined]
    Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign]  # noqa: SLF001
    Consumer.getmany = getmany  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
    Consumer.seek = seek  # type: ignore[method-assign]
    ThreadDelegateConsumer._seek = _seek_in_thread  # type: ignore[method-assign]  # noqa: SLF001
    Consumer.on_partitions_revoked = on_partitions_revoked  # type: ignore[method-assign]


def keep_assigned_events_on_resume(app: faust.App) -> None:
    """Make the end of a recovery keep the queued records of the partitions the worker still reads.

    Faust ends a recovery by resuming the stream partitions, seeking them to the committed offsets
    and then resuming the flow, which empties every agent's queue (``clear_on_resume``). Records
    fetched between the resume and the seek were delivered into those queues meanwhile, and Faust
    counts a delivered record as read: once the seek has set the read offset back, a delivery
    still under way when it returned sets it forward again, so the records read anew from the
    committed offset below it are dropped as already read, and the copies in the queue are the
    ones the flow's resume throws away. A survivor of a killed worker lost the first 40 records
    of a moved partition that way (``tests/integration/test_faults_rebalance.py``, 1 run in 8
    under load; 20 windows one or two readings short). Records of assigned partitions are
    queued in partition order and in the order their offsets will be read again, so processing
    them is safe (what is read again is recognised by offset); records of any other partition
    are still dropped, as Faust intends. The revocation's own explicit clear is unchanged.
    """
    fc = app.flow_control
    if getattr(fc, "urbansense_hooked", False):
        return

    def resume() -> None:
        fc._suspend.clear()  # noqa: SLF001 - mode's FlowControlEvent.resume without its clear()
        fc._resume.set()  # noqa: SLF001
        try:
            acking = app.topics.acks_enabled_for
            keep = {tp for tp in app.consumer.assignment() if acking(tp.topic)}
        except Exception:  # noqa: BLE001 - no consumer yet: nothing to keep
            keep = set()
        kept = dropped = 0
        for queue in list(fc._queues):  # noqa: SLF001
            items = queue._queue  # noqa: SLF001 - asyncio.Queue's deque, as FlowControlQueue.clear
            held = [i for i in items if getattr(getattr(i, "message", i), "tp", None) in keep]
            dropped += len(items) - len(held)
            kept += len(held)
            items.clear()
            items.extend(held)
        if kept:
            logger.info("flow resumed: kept %d queued records of assigned partitions, dropped %d", kept, dropped)

    fc.resume = resume  # type: ignore[method-assign]
    fc.urbansense_hooked = True  # type: ignore[attr-defined]


#: Consumer attributes of :func:`deliver_without_gaps`: the next offset expected per partition,
#: and how many times the partitions to read changed (:func:`end_batch`).
_NEXT, _CUTS = "_urbansense_next", "_urbansense_cuts"


def end_batch(consumer: Any) -> None:
    """The partitions to read changed: :func:`deliver_without_gaps` ends the batch it delivers."""
    consumer.__dict__[_CUTS] = consumer.__dict__.get(_CUTS, 0) + 1


async def _seek_on_thread(thread: Any, partition: Any, offset: int) -> None:
    thread._ensure_consumer().seek(partition, offset)  # noqa: SLF001


#: Exit code of a worker that stops because one of its streams stopped draining (EX_SOFTWARE).
EXIT_STREAM_STALLED = 70
_exit = os._exit  # replaced in tests


def report_stopped_drainers() -> None:
    """Log, with its error, a stream that stops draining its channel while the worker runs; exit.

    ``take_events`` (the agents' micro-batches) reads from a buffer that the stream's passive
    drainer task fills from the channel. Faust's drainer catches any exception, forwards it into the
    channel's queue (which nothing reads when ``take_events`` is used) and ends without a word; the
    channel's queue then fills and Faust's conductor blocks every delivery of the worker. A stall
    with exactly that picture is open (README, *Open problem: a stalled consumer*): this makes its
    cause show up in the log, and makes the worker exit (code :data:`EXIT_STREAM_STALLED`) so it is
    restarted instead of stalling. Installed once per process; shutdown is not reported.
    """
    from faust.streams import Stream

    original = Stream._passive_drainer  # noqa: SLF001
    if getattr(original, "urbansense_hooked", False):
        return

    async def _passive_drainer(self: Any, channel: Any, declare: bool = False) -> None:
        try:
            await original(self, channel, declare)
        finally:
            app = getattr(self, "app", None)
            if not (self.should_stop or getattr(app, "should_stop", False)):  # not a shutdown
                errors = getattr(getattr(channel, "queue", None), "_errors", None) or ()
                logger.error(
                    "stream stopped draining its channel; the agent reading it will stall channel=%s error=%r",
                    channel, errors[-1] if errors else None,
                )
                # Nothing restarts the drainer, and once the channel's queue is full the consumer
                # stops delivering to every agent: exit now, as a crash, rather than stall without
                # a sound. The supervisor (docker-compose: restart unless-stopped) starts the worker
                # again; offsets and window state come back from the broker (exactly-once results,
                # as after a SIGKILL: tests/integration/test_recovery.py). A graceful stop would
                # commit the offsets of a micro-batch Faust acknowledged unprocessed.
                logger.critical(
                    "worker exits to be restarted: a stalled stream would hold every partition exit_code=%d",
                    EXIT_STREAM_STALLED,
                )
                for handler in logging.getLogger().handlers:
                    handler.flush()
                _exit(EXIT_STREAM_STALLED)

    _passive_drainer.urbansense_hooked = True  # type: ignore[attr-defined]
    Stream._passive_drainer = _passive_drainer  # type: ignore[method-assign]  # noqa: SLF001


def consumer_state(app: faust.App, topic: str, partitions: Iterable[int]) -> dict[str, Any]:
    """What the worker's consumer knows of some partitions of a topic, for logs and the stats page.

    Per partition: Faust's view (active, paused, paused because a channel was full, last read
    and committed offsets, high-water mark), the next offset gap-free delivery expects, and the
    Kafka client's fetch position, pause and buffered fetch. Then whether the flow is on and, per
    agent, whether the drainer task of its stream runs (streams read in micro-batches, with
    ``take_events``, have one) and how full its channel is. Best effort:
    what cannot be read is reported as such (it reads Faust's and aiokafka's private state).
    """
    from faust.types import TP

    consumer: Any = app.consumer
    out: dict[str, Any] = {}
    try:
        from aiokafka.structs import TopicPartition

        client = consumer._thread._consumer  # noqa: SLF001
        assignment = client._subscription.subscription.assignment  # noqa: SLF001
        buffered = client._fetcher._records  # noqa: SLF001
        out["fetch_max_wait_ms"] = client._fetcher._fetch_max_wait_ms  # noqa: SLF001 - see fetch_max_wait()
    except Exception:  # noqa: BLE001 - not started, or a client without this state
        assignment = buffered = None
    per: dict[str, Any] = {}
    for p in partitions:
        tp = TP(topic, p)
        try:
            st: dict[str, Any] = {
                "active": tp in (consumer._active_partitions or ()),  # noqa: SLF001
                "paused": tp in consumer._paused_partitions,  # noqa: SLF001
                "paused_buffer_full": tp in consumer._buffered_partitions,  # noqa: SLF001
                "read_offset": consumer._read_offset.get(tp),  # noqa: SLF001
                "committed": consumer._committed_offset.get(tp),  # noqa: SLF001
                "expected": consumer.__dict__.get(_NEXT, {}).get(tp),
                "highwater": consumer.highwater(tp),
            }
            state = assignment.state_value(TopicPartition(topic, p)) if assignment is not None else None
            if state is not None:
                st["client_position"] = state.position if state.has_valid_position else None
                fetched = buffered.get(TopicPartition(topic, p)) if buffered is not None else None
                st["client_buffered"] = type(fetched).__name__ if fetched is not None else None
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not raise
            st = {"unreadable": repr(exc)}
        per[str(p)] = st
    out["partitions"] = per
    out["flow_active"] = getattr(consumer, "flow_active", None)
    agents = {}
    for name, agent in app.agents.items():
        for actor in list(getattr(agent, "_actors", ())):
            stream = getattr(actor, "stream", None)
            queue = getattr(getattr(stream, "channel", None), "queue", None)
            agents[name.rsplit(".", 1)[-1]] = {
                "drainer": getattr(stream, "_passive", None),  # False for a stream read without one
                "queued": queue.qsize() if queue is not None else None,
            }
    out["agents"] = agents
    return out

class Leveller:
    """Faust side of :mod:`streams.align` for one source topic: what the agent read, and the pauses.

    An agent reports each record it takes (:meth:`read`); :meth:`align`, given the agent's
    event-time frontier per partition, after each batch and on a timer, pauses the partitions
    read too far ahead of the slowest one with records waiting and resumes the others. Pausing
    goes through Faust's consumer (``pause_partitions``), which stops fetching the partition for
    every agent of the topic; records of it already fetched are read again on resume (see
    :func:`deliver_without_gaps`).
    """

    def __init__(self, app: faust.App, topic: str, max_skew_ms: int) -> None:
        from faust.types import TP

        from streams.align import Aligner

        self._tp = TP
        self.app, self.topic = app, topic
        self.aligner = Aligner(max_skew_ms)
        #: partition -> the offset after the last record read (kept over rebalances)
        self.read_to: dict[int, int] = {}

    def read(self, partition: int, offset: int) -> None:
        if offset >= self.read_to.get(partition, 0):
            self.read_to[partition] = offset + 1

    def assigned(self) -> set[int]:
        """This worker's partitions of the topic."""
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.topic}

    def backlogged(self, partition: int) -> bool:
        """Records wait in the log that this worker has not read yet (it is behind, not idle)."""
        tp = self._tp(self.topic, partition)
        try:
            hw = self.app.consumer.highwater(tp)
        except Exception:  # no fetch yet, or a consumer without the information
            return False
        # what this worker read, or where it starts: the committed offset (a restarted worker, or
        # one newly assigned the partition, has read nothing of it but has nothing before that to read)
        committed = getattr(self.app.consumer, "_committed_offset", {}).get(tp) or 0
        return hw is not None and max(self.read_to.get(partition, 0), committed) < hw

    def holds(self, partition: int) -> bool:
        """This worker is not reading the partition to its end, so its silence says nothing of the feed.

        True while records wait that it has not read (:meth:`backlogged`), while the partition is
        paused (levelling holds it, or Faust paused it for a full buffer: no fetch then updates
        the high-water mark, so new records go unseen), and before the first fetch says how far
        it goes. The idle flush must not move such a partition's event time to the wall clock:
        a paused partition of a replay did, and every record published to it afterwards was late
        (370 windows lost in a CI run of tests/integration/test_recovery.py).
        """
        if partition in self.aligner.paused:
            return True
        consumer: Any = self.app.consumer
        tp = self._tp(self.topic, partition)
        if tp in getattr(consumer, "_paused_partitions", ()) or tp in getattr(consumer, "_buffered_partitions", ()):
            return True
        try:
            if consumer.highwater(tp) is None:  # assigned, not fetched yet
                return True
        except Exception:  # noqa: BLE001 - a consumer without the information: the idle timeout decides
            return False
        return self.backlogged(partition)

    def align(self, now_ms: int, frontiers: dict[int, int | None]) -> None:
        """Decide the pauses again from each partition's event-time frontier (``None``: unknown)."""
        aligner = self.aligner
        if aligner.max_skew_ms <= 0 or self.app.rebalancing:
            return
        assigned = self.assigned()
        frontiers = {p: f for p, f in frontiers.items() if p in assigned}
        waiting = {p for p in assigned if self.backlogged(p)}
        was_stalled = aligner.stalled
        pause, resume = aligner.update(frontiers, waiting, now_ms)
        if aligner.stalled is not None and aligner.stalled != was_stalled:
            logger.warning(
                "partition has records waiting but made no progress for %d ms, no longer holding the "
                "others to it topic=%s partition=%d consumer=%s",
                aligner.stall_ms,
                self.topic,
                aligner.stalled,
                consumer_state(self.app, self.topic, [aligner.stalled]),
            )
        if pause or resume:
            logger.info(
                "levelling partitions topic=%s paused=%s resumed=%s frontiers_ms=%s waiting=%s",
                self.topic,
                sorted(pause),
                sorted(resume),
                dict(sorted(frontiers.items())),
                sorted(waiting),
            )
        consumer = self.app.consumer
        if pause or resume:  # the batch being delivered was fetched for the old choice
            end_batch(consumer)
        if resume:
            consumer.resume_partitions({self._tp(self.topic, p) for p in resume})
        if aligner.paused:  # every time: Faust's own flow control may have re-activated one
            consumer.pause_partitions({self._tp(self.topic, p) for p in aligner.paused})

    def forget(self) -> None:
        """The assignment changes: resume what was paused."""
        was = self.aligner.forget()
        if was:
            self.app.consumer.resume_partitions({self._tp(self.topic, p) for p in was})


def create_app(settings: Settings, **overrides: Any) -> faust.App:
    """A configured Faust app with the UrbanSense agents, tables and web views attached."""
    from streams.agents import attach  # agents need the app; keep the import local

    k = settings.kafka
    datadir = settings.data_dir / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    servers = ";".join(f"kafka://{s.strip()}" for s in k.bootstrap_servers.split(",") if s.strip())
    conf: dict[str, Any] = {
        "broker": servers,
        "store": "memory://",
        "topic_partitions": k.partitions,
        "topic_replication_factor": k.replication_factor,
        "topic_allow_declare": True,
        "producer_acks": -1,
        "consumer_auto_offset_reset": "earliest",
        "web_port": settings.web_port,
        "web_host": settings.web_host,
        "web_in_thread": False,
        "datadir": str(datadir),
        "autodiscover": False,
        "broker_session_timeout": k.session_timeout_ms / 1000.0,
        "broker_heartbeat_interval": min(3.0, k.session_timeout_ms / 4000.0),
        # offsets (and the window state before them) are committed on time; the count-based commit
        # is a backstop only (each stalls the fetch loop, and frequent ones defeat state coalescing)
        "broker_commit_every": 100_000,
        "broker_commit_interval": k.commit_interval_s,
        "stream_buffer_maxsize": 8192,
        "producer_max_batch_size": k.producer_batch_bytes,
        "table_standby_replicas": 0,
    }
    creds = broker_credentials(k)
    if creds is not None:
        conf["broker_credentials"] = creds
    conf.update(overrides)
    if k.verify_end_offsets:
        from connectors.kafka import client_config

        verify_end_offsets(client_config(k))
    flush_before_commit()
    track_produced_topics()
    fetch_max_wait()
    deliver_without_gaps()
    report_stopped_drainers()
    app = faust.App(settings.app_id, **conf)
    keep_assigned_events_on_resume(app)
    app.urbansense_fetch_max_wait_ms = k.fetch_max_wait_ms  # type: ignore[attr-defined]
    attach(app, settings)
    return app
