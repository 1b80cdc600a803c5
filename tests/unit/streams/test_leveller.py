"""The Faust side of levelling: which partitions it pauses, and which ones the idle flush must leave alone.

The consumer here is a stand-in with the attributes :class:`streams.app.Leveller` reads from
Faust's consumer (assignment, high-water marks, committed offsets, pauses); the pause decisions
themselves are :mod:`streams.align`'s (tests/unit/streams/test_align.py).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.app import Leveller

TOPIC = "readings"
MIN = 60_000


class Consumer:
    """What Leveller reads from Faust's consumer, for four partitions of one topic."""

    def __init__(self, highwater: dict[int, int | None]) -> None:
        self.hw = {TP(TOPIC, p): h for p, h in highwater.items()}
        self._committed_offset: dict[Any, int] = {}
        self._paused_partitions: set[Any] = set()
        self._buffered_partitions: set[Any] = set()

    def assignment(self) -> set[Any]:
        return set(self.hw)

    def highwater(self, tp: Any) -> int | None:
        if tp not in self.hw:
            raise AssertionError(f"{tp} is not assigned")  # as aiokafka: IllegalStateError
        return self.hw[tp]

    def pause_partitions(self, tps: set[Any]) -> None:
        self._paused_partitions |= set(tps)

    def resume_partitions(self, tps: set[Any]) -> None:
        self._paused_partitions -= set(tps)


def leveller(consumer: Consumer, skew_ms: int = 5 * MIN) -> Leveller:
    return Leveller(SimpleNamespace(consumer=consumer, rebalancing=False), TOPIC, skew_ms)  # type: ignore[arg-type]


def test_a_partition_read_to_its_end_and_running_is_idle() -> None:
    c = Consumer({0: 10, 1: 10})
    lv = leveller(c)
    lv.read(0, 9)
    lv.read(1, 4)
    assert not lv.holds(0)  # everything fetched was read: its silence is the feed's
    assert lv.holds(1)  # records 5..9 wait: the worker is behind, not idle


def test_a_partition_paused_for_levelling_is_held_though_nothing_known_waits() -> None:
    # partition 0 was read to the last high-water mark the broker reported, then paused because
    # partition 1 lags with records waiting: no fetch of 0 happens while it is paused, so records
    # published to it meanwhile are unseen, and the idle flush must not jump it to the wall clock
    c = Consumer({0: 10, 1: 100})
    lv = leveller(c)
    lv.read(0, 9)
    lv.read(1, 0)
    lv.align(0, {0: 30 * MIN, 1: 0})
    assert c._paused_partitions == {TP(TOPIC, 0)} and lv.aligner.paused == {0}
    assert not lv.backlogged(0)
    assert lv.holds(0)
    # partition 1 catches up: 0 resumes and, read to its end, is idle again
    lv.read(1, 99)
    lv.align(1000, {0: 30 * MIN, 1: 29 * MIN})
    assert c._paused_partitions == set() and lv.aligner.paused == set()
    assert not lv.holds(0)


def test_a_partition_faust_paused_or_not_fetched_yet_is_held() -> None:
    c = Consumer({0: 10, 1: None, 2: 10})
    lv = leveller(c, skew_ms=0)  # levelling off: Faust's own pauses still count
    lv.read(0, 9)
    lv.read(2, 9)
    assert lv.holds(1)  # assigned, no fetch yet: how far it goes is unknown
    assert not lv.backlogged(1)  # ... and it holds no one back in the aligner
    c._buffered_partitions.add(TP(TOPIC, 0))  # Faust paused it: an agent's buffer was full
    c._paused_partitions.add(TP(TOPIC, 2))
    assert lv.holds(0) and lv.holds(2)


def test_a_restarted_worker_starts_from_the_committed_offset() -> None:
    c = Consumer({0: 50, 1: 50})
    c._committed_offset = {TP(TOPIC, 0): 50, TP(TOPIC, 1): 20}
    lv = leveller(c)
    assert not lv.holds(0)  # nothing after the committed offset: idle
    assert lv.holds(1) and lv.backlogged(1)
