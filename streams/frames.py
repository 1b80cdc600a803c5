"""Framed readings: many readings in one Kafka record.

A Faust worker pays a fixed cost per Kafka record (fetch, conductor, stream, acknowledgement),
about ten times what our processing path costs per reading, and a broker serves records, not
bytes, at a bounded rate. A producer that has many readings for one partition at once (the
simulator, a replay, a gateway) can put them in one record: a *frame*, an RFC 7464 JSON text
sequence, each reading's bytes preceded by the record separator ``0x1E`` and followed by a line
feed. A single reading is a record of its own, as before: valid JSON never starts with ``0x1E``
(and never holds it raw: JSON strings escape control characters), so both kinds share the readings
topic and every consumer tells them apart by the first byte.

Each reading of a frame is validated, windowed and dead-lettered (with its own bytes) on its own.
Redelivered readings are recognised per sensor by :func:`dedupe_offset`, the record's offset and
the reading's index in its frame. All the readings of a frame must belong on the partition the
frame is produced to (the one the sensor id key would pick); :class:`Framer` groups them so.

>>> frame = encode_frame([b'{"a":1}', b'{"b":2}'])
>>> frame
b'\\x1e{"a":1}\\n\\x1e{"b":2}\\n'
>>> split_frame(frame)
[b'{"a":1}', b'{"b":2}']
>>> split_frame(b'{"a":1}')
[b'{"a":1}']
>>> dedupe_offset(7, 0) < dedupe_offset(7, 1) < dedupe_offset(8, 0)
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Final

RS: Final = b"\x1e"
#: bits of :func:`dedupe_offset` that hold a reading's index in its frame
INDEX_BITS: Final = 16
#: readings one frame may hold; a longer frame is dead-lettered whole (reason ``frame_too_long``)
MAX_FRAME_READINGS: Final = 1 << INDEX_BITS


def encode_frame(payloads: Iterable[bytes]) -> bytes:
    """One record value holding ``payloads`` (each a reading's JSON bytes).

    >>> encode_frame([]), encode_frame([b""])
    (b'', b'\\x1e\\n')
    """
    parts = payloads if isinstance(payloads, list) else list(payloads)
    if not parts:
        return b""
    return RS + b"\n\x1e".join(parts) + b"\n"


def is_frame(value: bytes) -> bool:
    """Whether a record value is a frame (else it is one reading)."""
    return value[:1] == RS


def split_frame(value: bytes) -> list[bytes]:
    """The readings of a record value: a frame's elements, or the value itself."""
    if value[:1] != RS:
        return [value]
    parts = value.split(RS)
    return [p[:-1] if p[-1:] == b"\n" else p for p in parts[1:]]


def well_formed(value: bytes) -> bool:
    """Whether a frame's every element is followed by its line feed (RFC 7464).

    Anything else that starts with ``0x1E`` (hostile or corrupt bytes) is taken as one reading,
    so it is dead-lettered whole with its original bytes instead of being cut into pieces.
    """
    return value[-1:] == b"\n" and value.count(RS) == value.count(b"\n" + RS) + 1


def dedupe_offset(offset: int, index: int) -> int:
    """The position of a frame's ``index``-th reading in its partition, ordered as delivered."""
    return (offset << INDEX_BITS) | index


class Framer:
    """Group ``(key, payload)`` readings into per-partition frames of at most ``max_readings``.

    Readings keep their order within each partition (so each sensor's keep theirs). :meth:`add`
    returns a partition's frame once it is full; :meth:`drain` returns what the others hold
    (a paced producer drains at each tick, so nothing waits longer than that), or with
    ``started_before`` only the frames whose first reading came by then (``clock`` time; a
    lingering producer such as the MQTT bridge). A payload may be any object (the bridge keeps
    each reading's pending acknowledgement with it).

    >>> f = Framer(lambda key: len(key) % 2, 2)
    >>> f.add(b"a", b"1"), f.add(b"bb", b"2"), f.add(b"c", b"3")
    (None, None, (1, [b'1', b'3']))
    >>> f.drain()
    [(0, [b'2'])]
    """

    __slots__ = ("clock", "groups", "max_readings", "partition_of", "started")

    def __init__(self, partition_of: Callable[[bytes], int], max_readings: int,
                 clock: Callable[[], float] | None = None) -> None:
        if not 1 <= max_readings <= MAX_FRAME_READINGS:
            msg = f"max_readings: expected 1..{MAX_FRAME_READINGS}, got {max_readings}"
            raise ValueError(msg)
        self.partition_of = partition_of
        self.max_readings = max_readings
        self.clock = clock
        self.groups: dict[int, list[Any]] = {}
        self.started: dict[int, float] = {}  # partition -> clock time of its group's first payload

    def add(self, key: bytes, payload: Any) -> tuple[int, list[Any]] | None:
        p = self.partition_of(key)
        group = self.groups.get(p)
        if group is None:
            group = self.groups[p] = []
            if self.clock is not None:
                self.started[p] = self.clock()
        group.append(payload)
        if len(group) < self.max_readings:
            return None
        del self.groups[p]
        self.started.pop(p, None)
        return p, group

    def drain(self, started_before: float | None = None) -> list[tuple[int, list[Any]]]:
        if started_before is None:
            due = sorted(self.groups)
        else:
            due = sorted(p for p, t in self.started.items() if t <= started_before)
        out = [(p, self.groups.pop(p)) for p in due]
        for p in due:
            self.started.pop(p, None)
        return out


@functools.lru_cache(maxsize=1 << 18)
def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition the producers pick for ``key`` (murmur2, as Kafka's Java client and aiokafka).

    Remembered per key (the keys are sensor ids): aiokafka's murmur2 is pure Python, 7 µs a call,
    and a window close frames every sensor's aggregates at once.

    >>> kafka_partition(b"crd-baoan-0075", 4)
    0
    """
    from aiokafka.partitioner import murmur2

    return int(murmur2(key) & 0x7FFFFFFF) % partitions


__all__ = ["INDEX_BITS", "MAX_FRAME_READINGS", "RS", "dedupe_offset", "encode_frame", "Framer",
           "is_frame", "kafka_partition", "split_frame"]
