"""Keep a worker's source partitions level in event time (pure; host time is injected).

A worker reads its partitions as fast as the broker hands them over, and nothing in Kafka or Faust
keeps them level in event time. Replaying the default evaluation scenario (a recorded day) on the
local broker, one readings partition was read 12-16 h of event time ahead of the other three.
Each partition's windows do not mind (each has its own watermark), but every stage that joins
partitions does: zone roll-ups and zone and drift rules wait for a zone's slowest source and hold
what the others sent, and what they cannot hold any longer is judged without the laggard (recall
0.70 in that run, 0.93 in one where the partitions happened to stay closer).

:class:`Aligner` decides which partitions to pause so that none is read more than ``max_skew_ms``
of event time ahead of the slowest partition that still has records waiting (Kafka Streams makes
the same choice per task by record timestamp). A partition with records waiting but none read yet
is the slowest of all: the others wait for its first records (the Kafka client hands a backlog
over partition by partition, and without this one partition was read to its end before another
had started). A partition with nothing waiting holds no one back
(a live feed, a quiet sensor group: the idle timeout is for those). A paused partition resumes once
it is within half the skew, so pausing does not flap. A laggard that makes no progress for
``stall_ms`` of host time while records wait stops holding the others: a stuck partition must not
stall the whole worker (:attr:`Aligner.stalled` names it, for a warning).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

#: The frontier of a partition with records waiting and none read yet: below every other.
NOT_STARTED = -(1 << 62)


@dataclass
class Aligner:
    """Which partitions to pause, from each partition's event-time frontier and what is waiting."""

    #: How far (ms of event time) a partition may be read ahead of the slowest waiting one; 0: off.
    max_skew_ms: int
    #: Host time (ms) a waiting laggard may make no progress before it stops holding the others.
    stall_ms: int = 30_000
    #: Partitions paused now.
    paused: set[int] = field(default_factory=set)
    #: The laggard that stopped holding the others (no progress for ``stall_ms``), if any.
    stalled: int | None = None
    _floor: tuple[int, int] | None = None  # (partition, frontier) of the slowest waiting partition
    _floor_since_ms: int = 0  # host time that floor was first seen

    def update(
        self, frontiers: Mapping[int, int | None], waiting: Collection[int], now_ms: int
    ) -> tuple[set[int], set[int]]:
        """Decide again; return the partitions to pause and those to resume (each possibly empty).

        ``frontiers`` maps each assigned partition to its event-time frontier (``None``: nothing
        read yet; such a partition is never paused, and while it has records waiting every other
        one is); ``waiting`` holds the partitions with records in the log that the worker has not
        read yet.
        """
        want: set[int] = set()
        floor = self._laggard(frontiers, waiting, now_ms)
        if floor is not None:
            for p, f in frontiers.items():
                if f is None:
                    continue
                limit = floor + (self.max_skew_ms // 2 if p in self.paused else self.max_skew_ms)
                if f > limit:
                    want.add(p)
        pause, resume = want - self.paused, self.paused - want
        self.paused = want
        return pause, resume

    def forget(self) -> set[int]:
        """Drop every pause (the assignment changed); return the partitions that were paused."""
        was, self.paused = self.paused, set()
        self._floor, self.stalled = None, None
        return was

    def _laggard(self, frontiers: Mapping[int, int | None], waiting: Collection[int], now_ms: int) -> int | None:
        """The frontier others are held to, or ``None`` (no skew bound, nothing waiting, or stalled)."""
        if self.max_skew_ms <= 0:
            return None
        known = [(f, p) for p in waiting if (f := frontiers.get(p)) is not None]
        not_started = sorted(p for p in waiting if frontiers.get(p) is None)
        if not_started:  # its first records come before anything else: every other one waits
            f, p = NOT_STARTED, not_started[0]
        elif known:
            f, p = min(known)
        else:
            self._floor, self.stalled = None, None
            return None
        if self._floor != (p, f):  # a new laggard, or the laggard moved on
            self._floor, self._floor_since_ms, self.stalled = (p, f), now_ms, None
            return f
        if now_ms - self._floor_since_ms >= self.stall_ms:
            self.stalled = p
            return None
        return f
