"""Partitions read too far ahead in event time are paused, and the reading never deadlocks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.align import Aligner

MIN = 60_000


def test_a_partition_too_far_ahead_is_paused_until_within_half_the_skew() -> None:
    a = Aligner(max_skew_ms=10 * MIN)
    assert a.update({0: 0, 1: 11 * MIN}, waiting={0, 1}, now_ms=0) == ({1}, set())
    # still paused at 6 min ahead (more than half the skew), resumed at 5
    assert a.update({0: 5 * MIN, 1: 11 * MIN}, waiting={0, 1}, now_ms=1) == (set(), set())
    assert a.update({0: 6 * MIN, 1: 11 * MIN}, waiting={0, 1}, now_ms=2) == (set(), {1})
    assert a.paused == set()


def test_a_partition_with_nothing_waiting_holds_no_one_back() -> None:
    a = Aligner(max_skew_ms=10 * MIN)
    # partition 0 is far behind but has read everything in its log (a quiet or live feed)
    assert a.update({0: 0, 1: 60 * MIN}, waiting={1}, now_ms=0) == (set(), set())


def test_a_partition_not_started_holds_every_other_one_until_its_first_records() -> None:
    a = Aligner(max_skew_ms=10 * MIN)
    # partition 0 has records waiting and none read: 1 and 2 wait (0 is never paused)
    assert a.update({0: None, 1: 0, 2: 60 * MIN}, waiting={0, 1, 2}, now_ms=0) == ({1, 2}, set())
    # its first record: the usual rule (2 is too far ahead of 0, 1 is not)
    assert a.update({0: MIN, 1: 0, 2: 60 * MIN}, waiting={0, 1, 2}, now_ms=1) == (set(), {1})
    # a partition not started with nothing waiting holds no one
    b = Aligner(max_skew_ms=10 * MIN)
    assert b.update({0: None, 1: 60 * MIN}, waiting={1}, now_ms=0) == (set(), set())
    # and one that never delivers stops holding the others after the stall time
    c = Aligner(max_skew_ms=10 * MIN, stall_ms=30_000)
    assert c.update({0: None, 1: 0}, waiting={0, 1}, now_ms=0) == ({1}, set())
    assert c.update({0: None, 1: 0}, waiting={0, 1}, now_ms=30_000) == (set(), {1})
    assert c.stalled == 0


def test_off_when_the_skew_is_zero() -> None:
    a = Aligner(max_skew_ms=0)
    assert a.update({0: 0, 1: 600 * MIN}, waiting={0, 1}, now_ms=0) == (set(), set())


def test_a_stuck_laggard_stops_holding_the_others() -> None:
    a = Aligner(max_skew_ms=10 * MIN, stall_ms=30_000)
    assert a.update({0: 0, 1: 20 * MIN}, waiting={0, 1}, now_ms=0) == ({1}, set())
    assert a.update({0: 0, 1: 20 * MIN}, waiting={0, 1}, now_ms=29_999) == (set(), set())
    assert a.stalled is None
    assert a.update({0: 0, 1: 20 * MIN}, waiting={0, 1}, now_ms=30_000) == (set(), {1})
    assert a.stalled == 0
    # once it moves again it holds the others again, from a fresh stall clock
    assert a.update({0: MIN, 1: 20 * MIN}, waiting={0, 1}, now_ms=31_000) == ({1}, set())
    assert a.stalled is None


def test_forget_returns_what_was_paused() -> None:
    a = Aligner(max_skew_ms=MIN)
    a.update({0: 0, 1: 5 * MIN, 2: 9 * MIN}, waiting={0, 1, 2}, now_ms=0)
    assert a.forget() == {1, 2}
    assert a.paused == set()


@settings(max_examples=300, deadline=None)
@given(
    logs=st.lists(
        st.lists(st.integers(0, 5 * MIN), min_size=0, max_size=40), min_size=1, max_size=5
    ),
    picks=st.lists(st.integers(0, 1_000), min_size=200, max_size=200),
    skew=st.integers(1, 20 * MIN),
)
def test_any_reading_order_stays_within_the_skew_and_reads_everything(
    logs: list[list[int]], picks: list[int], skew: int
) -> None:
    """An adversarial fetcher picks which unpaused partition's next record comes next.

    Each partition's log is in event-time order (the steps between its records are drawn). After
    every decision, no unpaused partition is more than the skew ahead of the slowest partition that
    still has records waiting (or has been read at all, while one with records waiting has not
    started), and some unpaused partition always has a record to read until every
    log is read (the pauses never deadlock).
    """
    times = [list(_cumulative(steps)) for steps in logs]
    pos = [0] * len(times)
    frontier: dict[int, int | None] = dict.fromkeys(range(len(times)))
    a = Aligner(max_skew_ms=skew)
    for i in range(10_000):
        waiting = {p for p in range(len(times)) if pos[p] < len(times[p])}
        a.update(frontier, waiting, now_ms=i)
        known = [frontier[p] for p in waiting if frontier[p] is not None]
        if any(frontier[p] is None for p in waiting):  # one not started: every other one waits
            assert all(frontier[p] is None for p in range(len(times)) if p not in a.paused), a.paused
        elif known:
            floor = min(known)  # type: ignore[type-var]
            for p in range(len(times)):
                f = frontier[p]
                if p not in a.paused and f is not None:
                    assert f <= floor + skew, (p, f, floor, skew)
        readable = sorted(waiting - a.paused)
        if not waiting:
            break
        assert readable, f"deadlock: waiting {waiting}, paused {a.paused}"
        p = readable[picks[i % len(picks)] % len(readable)]
        frontier[p] = times[p][pos[p]]
        pos[p] += 1
    assert all(pos[p] == len(times[p]) for p in range(len(times)))


def _cumulative(steps: list[int]) -> list[int]:
    out, t = [], 0
    for s in steps:
        t += s
        out.append(t)
    return out
