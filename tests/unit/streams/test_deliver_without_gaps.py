"""The consumer wrapper of :func:`streams.app.deliver_without_gaps`, on Faust's own consumer code.

The consumer here is Faust's ``Consumer`` class with its transport methods stood in for (a fetch
returns the records a test gives it); ``getmany``, ``perform_seek`` and ``seek`` are Faust's with
the wrapper installed, as in a worker.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

from streams.app import deliver_without_gaps

READINGS = TP("readings", 0)


class Scheduler:
    def iterate(self, records: dict[Any, list[Any]]) -> Any:
        for tp, recs in records.items():
            for rec in recs:
                yield tp, rec


class StandIn(Consumer):
    """Faust's consumer over a scripted broker: ``fetches`` are the records of successive fetches."""

    def __init__(self, committed: dict[Any, int], fetches: list[dict[Any, list[int]]]) -> None:  # noqa: D107
        self.committed, self.fetches, self.sought = committed, fetches, []
        self.app = SimpleNamespace(
            client_only=False, consumer_generation_id=1,
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, hw: None),
        )
        self.scheduler = Scheduler()
        self.log = SimpleNamespace(dev=lambda *a, **k: None)
        self._stopped, self._crashed = asyncio.Event(), asyncio.Event()
        self.flow_active = True
        self.suspend_flow = asyncio.Event()
        self.not_waiting_next_records = asyncio.Event()
        self._active_partitions = None
        self._buffered_partitions: set[Any] = set()
        self._paused_partitions: set[Any] = set()
        self._read_offset: dict[Any, Any] = {}
        self._committed_offset: dict[Any, Any] = {}
        self._acked_index: dict[Any, Any] = {}

    # -- the transport, stood in for -------------------------------------------------------
    def assignment(self) -> set[Any]:
        return set(self.committed)

    def _set_active_tps(self, tps: set[Any]) -> set[Any]:
        return tps

    async def seek_to_committed(self) -> dict[Any, int]:
        return dict(self.committed)

    async def _seek(self, tp: Any, offset: int) -> None:
        self.sought.append((tp.partition, offset))

    async def _getmany(self, active_partitions: Any, timeout: float) -> dict[Any, list[Any]]:
        fetch = self.fetches.pop(0) if self.fetches else {}
        return {tp: [SimpleNamespace(offset=o) for o in offsets] for tp, offsets in fetch.items()}

    def _to_message(self, tp: Any, record: Any) -> Any:
        return SimpleNamespace(offset=record.offset, topic=tp.topic)

    def highwater(self, tp: Any) -> int:
        return 10**6

    _commit = _new_topicpartition = create_topic = earliest_offsets = highwaters = key_partition = None
    position = seek_wait = subscribe = topic_partitions = None


async def delivered(consumer: StandIn) -> list[int]:
    return [m.offset async for _, m in consumer.getmany(timeout=0.0)]


def test_a_newly_assigned_partition_is_read_from_its_committed_offset_not_from_the_first_record_fetched() -> None:
    """A worker that took a partition over (a rebalance) sought it to the committed offset, 10.

    If the first fetch still starts further on (here at 14), records 10..13 must be read again,
    not skipped: before, only partitions the consumer had read before were checked, and a
    survivor of a killed worker lost its last records of a batch in 1 of 8 looped rebalance tests.
    """
    deliver_without_gaps()

    async def go() -> tuple[list[int], list[int]]:
        c = StandIn({READINGS: 10}, [{READINGS: [14, 15]}, {READINGS: [10, 11, 12, 13, 14, 15]}])
        await c.perform_seek()
        first = await delivered(c)
        assert c.sought == [(0, 10)]  # rewound to the committed offset
        return first, await delivered(c)

    first, second = asyncio.run(go())
    assert first == []  # 14 is not the next record: nothing of that fetch is handed over
    assert second == [10, 11, 12, 13, 14, 15]


def test_records_from_the_committed_offset_on_are_handed_over_in_turn() -> None:
    deliver_without_gaps()

    async def go() -> tuple[list[int], list[int], list[Any]]:
        c = StandIn({READINGS: 10}, [{READINGS: [10, 11]}, {READINGS: [12]}])
        await c.perform_seek()
        return await delivered(c), await delivered(c), c.sought

    assert asyncio.run(go()) == ([10, 11], [12], [])


def test_the_end_of_a_recovery_keeps_the_queued_records_of_assigned_partitions() -> None:
    """Faust resumes the flow after seeking to the committed offsets, and mode's resume empties
    every agent queue. A delivery under way when the seek returned had set the read offset past
    what was queued, so the records read again below it were dropped as read, and the queued
    copies went with the clear: a rebalance survivor lost 40 records of a moved partition."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    from streams.app import keep_assigned_events_on_resume

    moved, revoked, changelog = TP("readings", 0), TP("readings", 1), TP("app-windows-changelog", 0)

    def event(tp: Any, offset: int) -> Any:
        return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))

    async def go() -> tuple[list[Any], list[Any], bool]:
        fc = FlowControlEvent()
        app = SimpleNamespace(
            flow_control=fc,
            topics=SimpleNamespace(acks_enabled_for=lambda topic: not topic.endswith("-changelog")),
            consumer=SimpleNamespace(assignment=lambda: {moved, changelog}),
        )
        keep_assigned_events_on_resume(app)
        agent, tables = FlowControlQueue(flow_control=fc, clear_on_resume=True), \
            FlowControlQueue(flow_control=fc, clear_on_resume=True)
        fc.suspend()
        for item in [event(moved, 1200), event(revoked, 7), event(moved, 1201), event(moved, 1202)]:
            agent.put_nowait(item)
        tables.put_nowait(event(changelog, 3))
        fc.resume()
        return ([(e.message.tp.partition, e.message.offset) for e in agent._queue],
                list(tables._queue), fc.is_active())

    kept, tables, active = asyncio.run(go())
    assert kept == [(0, 1200), (0, 1201), (0, 1202)]  # in order; the revoked partition's record dropped
    assert tables == []  # not an agent's source (acks off): cleared as Faust does
    assert active
