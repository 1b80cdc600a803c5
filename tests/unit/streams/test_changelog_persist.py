"""Why table state is written with :func:`streams.app.persist`, not ``Table.send_changelog``.

Faust commits offsets after ``producer.flush()``, whose first step drains the ``send_soon``
buffer that ``send_changelog`` uses. That drain returns while a record is still on its way to the
Kafka client (taken off the queue, not yet handed over) and gives up after 0.1 s without
progress. A batch's offsets could so be committed before its state records left the process; a
SIGKILL then lost them (found as one reading missing in the crash-recovery test, once in a few CI
runs). This pins that upstream behaviour, checks that ``persist`` hands the record straight to
the changelog topic with the table's serializers and bookkeeping callback, and that Faust's offset
commit awaits the worker's pending window state first (``streams.app.flush_before_commit``).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.producer import ProducerBuffer

from streams.app import persist


class StalledBuffer(ProducerBuffer):
    """A send_soon buffer whose hand-over to the Kafka client takes as long as the test says."""

    def __init__(self, release: asyncio.Event) -> None:
        super().__init__()
        self.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
        self.release = release
        self.handed_over = 0

    async def _send_pending(self, fut: Any) -> None:
        await self.release.wait()
        self.handed_over += 1


def test_faust_buffer_flush_returns_before_its_records_are_handed_over() -> None:
    async def scenario() -> int:
        release = asyncio.Event()
        buf = StalledBuffer(release)
        await buf.start()
        for _ in range(3):
            buf.put(object())  # type: ignore[arg-type]
        await asyncio.wait_for(buf.flush(), timeout=5)  # what a commit awaits: it returns ...
        handed_over = buf.handed_over
        release.set()
        while buf.handed_over < 3:
            await asyncio.sleep(0.01)
        await buf.stop()
        return handed_over

    # ... with none of the three records handed over. If Faust ever waits here, persist() could
    # go back to send_changelog.
    assert asyncio.run(scenario()) == 0


def test_persist_sends_to_the_changelog_with_the_tables_serializers() -> None:
    sent: list[dict[str, Any]] = []

    class Topic:
        async def send(self, **kwargs: Any) -> None:
            sent.append(kwargs)

    def on_sent(fut: Any) -> None:  # the table's persisted-offset bookkeeping
        return None

    table = SimpleNamespace(
        changelog_topic=Topic(), key_serializer="json", value_serializer="json", _on_changelog_sent=on_sent
    )
    asyncio.run(persist(table, 3, "s-1", {"o": 7}))
    asyncio.run(persist(table, 1, "zone|x", None, value_serializer="raw"))
    assert sent == [
        {"key": "s-1", "value": {"o": 7}, "partition": 3, "key_serializer": "json", "value_serializer": "json",
         "callback": on_sent},
        {"key": "zone|x", "value": None, "partition": 1, "key_serializer": "json", "value_serializer": "raw",
         "callback": on_sent},
    ]


def test_commit_waits_for_the_before_commit_hook() -> None:
    """Offsets are committed only after the worker's pending window state was written."""
    from faust.transport.consumer import Consumer

    from streams.app import flush_before_commit

    calls: list[str] = []

    async def fake_commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        calls.append(f"commit {sorted(offsets.items())}")
        return True

    async def hook() -> None:
        await asyncio.sleep(0.01)  # a real hook awaits sends
        calls.append("state written")

    saved = Consumer._commit_offsets
    Consumer._commit_offsets = fake_commit  # type: ignore[method-assign]
    try:
        flush_before_commit()
        with_hook = SimpleNamespace(app=SimpleNamespace(urbansense_before_commit=[hook]))
        without = SimpleNamespace(app=SimpleNamespace())
        assert asyncio.run(Consumer._commit_offsets(with_hook, {"tp": 7}))  # type: ignore[arg-type]
        assert asyncio.run(Consumer._commit_offsets(without, {"tp": 8}))  # type: ignore[arg-type]
        flush_before_commit()  # idempotent: wraps once
        asyncio.run(Consumer._commit_offsets(with_hook, {"tp": 9}))  # type: ignore[arg-type]
    finally:
        Consumer._commit_offsets = saved  # type: ignore[method-assign]
    assert calls == ["state written", "commit [('tp', 7)]", "commit [('tp', 8)]", "state written",
                     "commit [('tp', 9)]"]
