"""The worker's processing path as one pure object: raw bytes in, decisions out.

:class:`Pipeline` is what the Faust agents run for each micro-batch, and what benchmarks and
tests run without a broker. It validates, windows, closes windows and evaluates rules, and returns
everything to emit; the caller does all I/O. Time is injected (``now_ms``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from typing import Any

from alerting.rules import ThresholdRule, alert_id, evaluate
from streams.deadletter import DeadLetter, dead_letter
from streams.engine import DUPLICATE, NO_WATERMARK, Ahead, Late, PartitionWindows, WindowSpec, decoded
from streams.errors import InvalidReading
from streams.frames import MAX_FRAME_READINGS, dedupe_offset, is_frame, split_frame, well_formed
from streams.schema import MAX_PAYLOAD_BYTES, ReadingRows, parse_batch

logger = logging.getLogger(__name__)

#: Table key of a partition's event-time frontier: ``{"p": p, "max_ts_ms": frontier}``, plus
#: ``"ahead": {sensor_id: ts_ms}`` while a sensor is held ahead of it (see :mod:`streams.engine`).
WATERMARK_KEY = "__watermark__:{partition}"
#: Table keys of the anomaly scorer's state of a sensor: its baselines, and one per hour-of-week
#: season bucket (see :meth:`Pipeline._close`). A sensor id starts with a letter or a digit, so
#: neither collides with one.
SCORER_KEY = "__f__:{sensor_id}"
SEASON_KEY = "__fs__:{sensor_id}:{bucket}"
#: What the scorer's keys start with (:func:`str.startswith` takes the tuple).
SCORER_KEY_PREFIXES = ("__f__:", "__fs__:")
CARDINALITY_RULE = "cardinality_limit"
#: Dead-letter reason of a reading refused as too far ahead of its partition's frontier.
CLOCK_AHEAD = "clock_ahead"
#: Dead-letter reason of a frame holding more readings than its offsets can tell apart.
FRAME_TOO_LONG = "frame_too_long"


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed reading: where it came from and its bytes.

    A Kafka record holding a frame of readings (:mod:`streams.frames`) becomes one ``Record`` per
    reading, with the record's ``offset`` and the reading's ``index`` in the frame (-1: the record
    is a single reading).
    """

    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    topic: str = ""
    index: int = -1

    @property
    def source(self) -> str:
        """Where the reading came from, as dead letters and logs name it."""
        where = f"kafka:{self.topic}/{self.partition}@{self.offset}"
        return where if self.index < 0 else f"{where}#{self.index}"


def expand_frames(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """Each reading of the framed records as a record of its own; frames too long to index apart.

    Returns the readings (frames expanded in place, in order) and the frames over
    :data:`~streams.frames.MAX_FRAME_READINGS` readings, which are dead-lettered whole.
    """
    out: list[Record] = []
    too_long: list[Record] = []
    for rec in records:
        if not is_frame(rec.value) or not well_formed(rec.value):  # a reading (bad ones are dead-lettered as such)
            out.append(rec)
            continue
        parts = split_frame(rec.value)
        if len(parts) > MAX_FRAME_READINGS:
            too_long.append(rec)
            continue
        p, off, key, topic = rec.partition, rec.offset, rec.key, rec.topic
        out += [Record(p, off, part, key, topic, i) for i, part in enumerate(parts)]
    return out, too_long


@dataclass(slots=True)
class Output:
    """What one batch produced."""

    aggregates: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    late: list[tuple[Record, Late]] = field(default_factory=list)
    #: Table writes: ``(partition, key, value)``, here each touched partition's watermark document.
    #: The sensors' documents (window state, and the scorer's) come from
    #: :meth:`Pipeline.closed_state` and :meth:`Pipeline.take_state`, in the same form: a value is
    #: a JSON document, a sensor's possibly already encoded (an ``orjson.Fragment``: the table's
    #: orjson serializer writes it as is, and :func:`streams.engine.decoded` gives the dict).
    state: list[tuple[int, str, Any]] = field(default_factory=list)
    #: Zone partials and watermark markers for the zone roll-up stage.
    zone_msgs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Counters:
    """Running totals, exported on the worker's stats page."""

    readings_in: int = 0
    readings_counted: int = 0
    dead_letters: int = 0
    late: int = 0
    duplicates: int = 0
    aggregates: int = 0
    alerts: int = 0
    #: Readings dead-lettered because their partition already tracks ``max_sensors_per_partition`` ids.
    cardinality_limited: int = 0
    #: Readings more than ``max_ahead_ms`` ahead of their partition's frontier that did not move it
    #: (no other sensor as far ahead): windowed, their windows close when the frontier gets there.
    held_ahead: int = 0
    #: Held readings beyond ``ahead_horizon_ms``: dead-lettered (:data:`CLOCK_AHEAD`), also in ``dead_letters``.
    refused_ahead: int = 0


class Pipeline:
    """Validation, event-time windows and threshold rules for the partitions of one worker."""

    def __init__(
        self,
        spec: WindowSpec,
        rules: tuple[ThresholdRule, ...],
        *,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        zones: bool = False,
        max_sensors_per_partition: int | None = None,
        scorer: Any = None,
    ) -> None:
        if max_sensors_per_partition is not None and max_sensors_per_partition < 1:
            msg = f"max_sensors_per_partition: expected >= 1 or None, got {max_sensors_per_partition}"
            raise ValueError(msg)
        self.zones = zones
        self.max_sensors_per_partition = max_sensors_per_partition
        self._cardinality_alerted: set[int] = set()
        #: Optional :class:`models.stream.StreamScorer` (duck-typed: the core does not import models).
        self.scorer = scorer
        self.spec = spec
        self.rules = rules
        self.max_payload_bytes = max_payload_bytes
        self.partitions: dict[int, PartitionWindows] = {}
        self.counters = Counters()
        #: closures whose documents :meth:`closed_state` has not built yet: (partition, aggregates by sensor)
        self._closures: deque[tuple[int, dict[str, list[dict[str, Any]]]]] = deque()
        #: partition -> its newest watermark document not given yet. It goes to the changelog after
        #: the documents of the closures it implies (see :meth:`_give_marks`).
        self._marks: dict[int, dict[str, Any]] = {}

    def forget(self) -> None:
        """Drop in-memory state (after a rebalance); it is restored lazily from the table."""
        self.partitions.clear()
        self._closures.clear()
        self._marks.clear()
        if self.scorer is not None:
            self.scorer.forget()

    def partition(self, partition: int, table: Iterable[tuple[str, Any]] = ()) -> PartitionWindows:
        """The state of ``partition``, restored from ``table`` items on first use.

        The scorer's documents (:data:`SCORER_KEY`, :data:`SEASON_KEY`) go to the scorer, or are
        skipped without one; a table written before they existed restores a cold scorer.
        """
        pw = self.partitions.get(partition)
        if pw is None:
            pw = self.partitions[partition] = PartitionWindows(self.spec, partition)
            wm_key = WATERMARK_KEY.format(partition=partition)
            n_scorer = 0
            for key, item in table:
                value = decoded(item)  # this worker's own writes may still be encoded
                if not isinstance(value, dict) or value.get("p") != partition:
                    continue
                if key == wm_key:
                    pw.restore_watermark(int(value["max_ts_ms"]), value.get("ahead"))
                elif key.startswith(SCORER_KEY_PREFIXES):
                    if self.scorer is not None:
                        self._restore_scorer(key, value)
                        n_scorer += 1
                else:
                    pw.restore(key, value)
            if pw.sensors:
                offsets = [m.offset for m in pw.sensors.values()]
                logger.info(
                    "restored window state partition=%d sensors=%d open_windows=%d watermark_ms=%d scorer_docs=%d "
                    "offsets=%d..%d",
                    partition,
                    len(pw.sensors),
                    pw.open_windows,
                    pw.watermark_ms,
                    n_scorer,
                    min(offsets),
                    max(offsets),
                )
                logger.debug("restored sensor offsets partition=%d offsets=%s", partition,
                             {sid: m.offset for sid, m in pw.sensors.items()})
        return pw

    def _restore_scorer(self, key: str, doc: dict[str, Any]) -> None:
        """Hand one scorer document of the table to the scorer (keys: :data:`SCORER_KEY`, :data:`SEASON_KEY`)."""
        series, season = SCORER_KEY_PREFIXES
        if key.startswith(series):
            self.scorer.restore_series(key.removeprefix(series), doc)
        else:
            sensor_id, _, bucket = key.removeprefix(season).rpartition(":")  # a sensor id may hold ':'
            self.scorer.restore_season(sensor_id, int(bucket), doc)

    def process(
        self,
        records: Iterable[Record],
        now_ms: int,
        table: Iterable[tuple[str, Any]] | None = None,
    ) -> Output:
        """Apply a micro-batch of records; close the windows it completes."""
        out = Output()
        c = self.counters
        recs = records if isinstance(records, list) else list(records)
        too_long: list[Record] = []
        if any(is_frame(r.value) for r in recs):
            recs, too_long = expand_frames(recs)
        c.readings_in += len(recs) + len(too_long)
        groups: dict[int, list[int]] = {}  # input positions per partition
        for i, rec in enumerate(recs):
            group = groups.get(rec.partition)
            if group is None:
                group = groups[rec.partition] = []
            group.append(i)
        dls: list[tuple[int, DeadLetter]] = [
            (-1, self._dead_letter(r, InvalidReading(FRAME_TOO_LONG, (
                f"frame of {len(split_frame(r.value))} readings: expected at most {MAX_FRAME_READINGS}")), now_ms))
            for r in too_long
        ]
        by_partition: dict[int, tuple[list[Record], ReadingRows]] = {}
        at: dict[int, list[int]] = {}
        for p, idx in groups.items():
            precs = recs if len(groups) == 1 else [recs[i] for i in idx]
            at[p] = idx
            rows, errors = parse_batch([r.value for r in precs], now_ms=now_ms, max_bytes=self.max_payload_bytes)
            dls += [(idx[i], self._dead_letter(precs[i], err, now_ms)) for i, err in errors]
            if len(rows):
                by_partition[p] = (precs, rows)
        if self.max_sensors_per_partition is not None and by_partition:
            self._admit_all(by_partition, at, dls, now_ms, table, out)
        if len(groups) > 1:
            dls.sort(key=lambda x: x[0])  # input order
        out.dead_letters = [dl for _, dl in dls]
        for p in sorted(by_partition):
            precs, prows = by_partition[p]
            pw = self.partitions.get(p) or self.partition(p, table or ())
            held, ahead = pw.held_ahead, set(pw.ahead)
            results = pw.add_rows(prows, [dedupe_offset(precs[i].offset, max(precs[i].index, 0)) for i in prows.index],
                                  now_ms)
            n_dup = n_late = n_refused = 0
            worst: Late | None = None
            for k, result in enumerate(results if results.count(None) < len(results) else ()):
                if result is None:
                    continue
                if result == DUPLICATE:
                    n_dup += 1
                elif isinstance(result, Late):
                    n_late += 1
                    if worst is None or result.late_by_ms > worst.late_by_ms:
                        worst = result
                    out.late.append((precs[prows.index[k]], result))
                elif isinstance(result, Ahead):
                    n_refused += 1
                    out.dead_letters.append(self._refused(precs[prows.index[k]], result, now_ms))
            if pw.held_ahead != held or pw.ahead or ahead:
                self._note_ahead(pw, pw.held_ahead - held, ahead)
            if worst is not None:  # one line per partition and batch, not one per reading (a skewed clock is many)
                logger.warning(
                    "late readings partition=%d count=%d max_late_by_ms=%d sensor_id=%s watermark_ms=%d",
                    p, n_late, worst.late_by_ms, worst.reading.sensor_id, worst.watermark_ms,
                )
            c.duplicates += n_dup
            c.late += n_late
            c.readings_counted += len(results) - n_dup - n_late - n_refused
        for p in sorted(by_partition):
            self._close(self.partitions[p], out)
        self._give_marks(out.state)
        return out

    def _refused(self, rec: Record, info: Ahead, now_ms: int) -> DeadLetter:
        """The dead letter of a reading too far ahead of its partition's frontier (see :class:`Ahead`)."""
        c = self.counters
        c.dead_letters += 1
        c.refused_ahead += 1
        r = info.reading
        detail = (
            f"reading sensor_id={r.sensor_id} ts_ms={r.ts_ms}: expected at most {self.spec.ahead_horizon_ms} ms "
            f"ahead of partition {rec.partition}'s event-time frontier {info.frontier_ms} while no other sensor "
            f"is that far ahead, got {info.ahead_by_ms} ms ahead"
        )
        source = rec.source
        logger.warning("dead-lettered reading source=%s reason=%s sensor_id=%s", source, CLOCK_AHEAD, r.sensor_id)
        return dead_letter(rec.value, InvalidReading(CLOCK_AHEAD, detail), source=source, now_ms=now_ms, key=rec.key)

    def _note_ahead(self, pw: PartitionWindows, held: int, before: set[str]) -> None:
        """Count readings held ahead; log sensors as they get ahead of the frontier and back."""
        self.counters.held_ahead += held
        now = pw.sensors_ahead()
        for sid in sorted(now.keys() - before):
            logger.warning(
                "sensor clock ahead partition=%d sensor_id=%s ahead_ms=%d frontier_ms=%d",
                pw.partition, sid, now[sid], pw.max_ts_ms,
            )
        for sid in sorted(before - now.keys()):
            logger.info(
                "sensor no longer ahead partition=%d sensor_id=%s frontier_ms=%d", pw.partition, sid, pw.max_ts_ms
            )

    def _admit_all(
        self,
        by_partition: dict[int, tuple[list[Record], ReadingRows]],
        at: dict[int, list[int]],
        dls: list[tuple[int, DeadLetter]],
        now_ms: int,
        table: Iterable[tuple[str, Any]] | None,
        out: Output,
    ) -> None:
        """Apply :meth:`_admit` to every row in input order; drop the refused rows from ``by_partition``."""
        for p, (_, rows) in by_partition.items():
            pw = self.partitions.get(p) or self.partition(p, table or ())
            known = pw.sensors
            if not all(ident[0] in known for ident in rows.ident):
                break
        else:
            return  # every sensor of the batch is tracked already (the steady state): nothing to judge
        order = sorted((at[p][i], p, k) for p, (_, rows) in by_partition.items() for k, i in enumerate(rows.index))
        admitted: dict[int, set[str]] = {}  # new sensor ids let in by this batch, per partition
        refused: dict[int, set[int]] = {}
        for g, p, k in order:
            precs, rows = by_partition[p]
            dl = self._admit(precs[rows.index[k]], rows.reading(k), admitted, now_ms, table, out)
            if dl is not None:
                dls.append((g, dl))
                refused.setdefault(p, set()).add(k)
        for p, ks in refused.items():
            precs, rows = by_partition[p]
            if len(ks) == len(rows):
                del by_partition[p]
            else:
                by_partition[p] = (precs, rows.take([k for k in range(len(rows)) if k not in ks]))
        dls.sort(key=lambda x: x[0])

    def _dead_letter(self, rec: Record, err: InvalidReading, now_ms: int) -> DeadLetter:
        self.counters.dead_letters += 1
        source = rec.source
        logger.warning("dead-lettered reading source=%s reason=%s", source, err.reason)
        return dead_letter(rec.value, err, source=source, now_ms=now_ms, key=rec.key)

    def _admit(
        self,
        rec: Record,
        reading: Any,
        admitted: dict[int, set[str]],
        now_ms: int,
        table: Iterable[tuple[str, Any]] | None,
        out: Output,
    ) -> DeadLetter | None:
        """Cardinality guard: a new sensor id beyond the partition's limit is dead-lettered, never tracked."""
        limit = self.max_sensors_per_partition or 0
        p = rec.partition
        pw = self.partitions.get(p) or self.partition(p, table or ())
        new = admitted.setdefault(p, set())
        sid = reading.sensor_id
        if sid in pw.sensors or sid in new:
            return None
        if len(pw.sensors) + len(new) < limit:
            new.add(sid)
            return None
        c = self.counters
        c.dead_letters += 1
        c.cardinality_limited += 1
        source = rec.source
        detail = (
            f"reading sensor_id={sid}: partition {p} already tracks {len(pw.sensors) + len(new)} sensor ids, "
            f"expected at most {limit} (URBAN_MAX_SENSORS_PER_PARTITION)"
        )
        logger.warning("dead-lettered reading source=%s reason=%s sensor_id=%s", source, CARDINALITY_RULE, sid)
        if p not in self._cardinality_alerted:
            self._cardinality_alerted.add(p)
            out.alerts.append(self._cardinality_alert(p, reading, limit, len(pw.sensors) + len(new), now_ms))
            c.alerts += 1
        err = InvalidReading(CARDINALITY_RULE, detail)
        return dead_letter(rec.value, err, source=source, now_ms=now_ms, key=rec.key)

    @staticmethod
    def _cardinality_alert(partition: int, reading: Any, limit: int, tracked: int, now_ms: int) -> dict[str, Any]:
        """One maintenance alert per partition (stable id: a replay does not duplicate it)."""
        message = (
            f"input partition {partition} reached the limit of {limit} sensor ids; readings of new ids "
            f"(first: {reading.sensor_id} in {reading.zone}) are dead-lettered with reason {CARDINALITY_RULE}"
        )
        logger.error("cardinality limit reached partition=%d limit=%d tracked=%d", partition, limit, tracked)
        return {
            "v": 1,
            "alert_id": alert_id(CARDINALITY_RULE, f"partition:{partition}", 0),
            "seq": 0,
            "rule": CARDINALITY_RULE,
            "category": "maintenance",
            "severity": "warning",
            "state": "raised",
            "subject_type": "partition",
            "sensor_id": reading.sensor_id,
            "zone": reading.zone,
            "kind": reading.kind,
            "metric": None,
            "value": float(tracked),
            "threshold": float(limit),
            "message": message,
            "window_start_ms": now_ms,
            "window_end_ms": now_ms,
            "raised_ts_ms": now_ms,
            "ts_ms": now_ms,
            "latency_ms": 0,
        }

    @property
    def closures_pending(self) -> bool:
        """Whether :meth:`closed_state` has documents to give."""
        return bool(self._closures)

    @property
    def closes_level(self) -> bool:
        """Whether every partition's watermark has closed the same windows (those of the smallest hop).

        Partitions move together (``streams.align``), but the readings that take each of them past
        a window end arrive in different batches: until the last of them has, the other
        partitions' closes are still to come, and the caller should not yet spend its time on the
        closures' documents (``streams.agents``).

        >>> Pipeline(WindowSpec(), ()).closes_level  # no partition yet
        True
        """
        step = min(w.hop_ms for w in self.spec.windows)
        grace = self.spec.grace_ms
        ends = {(pw.watermark_ms - grace) // step for pw in self.partitions.values() if pw.watermark_ms != NO_WATERMARK}
        return len(ends) <= 1

    def closed_state(self, max_sensors: int = 0) -> list[tuple[int, str, Any]]:
        """``(partition, key, document)`` of the next sensors whose windows closed; ``[]`` when none are left.

        Per sensor, its scorer documents (:data:`SCORER_KEY`, :data:`SEASON_KEY`) come before its
        window state, so a window state that made it to the changelog implies the baselines that
        scored it did. ``max_sensors`` (0: all) bounds one call's work: a close of 10,000 sensors
        is built in steps, and the caller can let other work run between them. These must reach
        the changelog promptly (see ``streams.agents.emit``): a restart must not close again what
        was emitted. The call that gives the last of them also gives the watermark documents held
        back for them (:meth:`_give_marks`).
        """
        out = self._closure_docs(max_sensors)
        self._give_marks(out)
        return out

    def _closure_docs(self, max_sensors: int) -> list[tuple[int, str, Any]]:
        out: list[tuple[int, str, Any]] = []
        done = 0
        while self._closures and (not max_sensors or done < max_sensors):
            p, by_sensor = self._closures[0]
            take = len(by_sensor) if not max_sensors else min(len(by_sensor), max_sensors - done)
            if take == len(by_sensor):
                self._closures.popleft()
                chunk = by_sensor
            else:
                chunk = {sid: by_sensor.pop(sid) for sid in list(islice(by_sensor, take))}
            done += take
            if self.scorer is not None:
                for sid, bucket, doc in self.scorer.state_docs(list(chain.from_iterable(chunk.values()))):
                    if bucket is None:
                        key = SCORER_KEY.format(sensor_id=sid)
                    else:
                        key = SEASON_KEY.format(sensor_id=sid, bucket=bucket)
                    out.append((p, key, {"p": p, **doc}))
            pw = self.partitions.get(p)
            if pw is not None:
                held = [sid for sid in chunk if sid in pw.sensors]
                pw.dirty.difference_update(held)
                docs = pw.sensor_states(held, encoded=True)
                out.extend(zip(repeat(p), docs, docs.values()))
        return out

    def take_state(self) -> list[tuple[int, str, Any]]:
        """``(partition, key, document)`` of every sensor whose state changed since its last document.

        First what :meth:`closed_state` has not given yet, then the window state of sensors whose
        windows did not close: :meth:`process` leaves those for this call, and the caller writes
        them before it commits the offsets of the readings they hold (``streams.agents.flush_state``),
        once per commit rather than once per batch. A document newer than the offsets committed is
        safe: readings delivered again are recognised by offset.
        """
        out = self._closure_docs(0)
        for p in sorted(self.partitions):
            docs = self.partitions[p].take_dirty(encoded=True)
            out.extend(zip(repeat(p), docs, docs.values()))
        self._give_marks(out)  # the watermarks last
        return out

    def tick(self, now_ms: int) -> Output:
        """Advance idle partitions' watermarks by the clock and close what that completes."""
        out = Output()
        for p in sorted(self.partitions):
            pw = self.partitions[p]
            if pw.idle_advance(now_ms):
                self._close(pw, out)
        self._give_marks(out.state)
        return out

    def mark(self, pw: PartitionWindows, out: Output, *, force: bool = False, watermark_ms: int | None = None) -> None:
        """Announce the partition's watermark to the zone stage when it crossed a window boundary."""
        wm = pw.watermark_ms if watermark_ms is None else watermark_ms
        if wm == NO_WATERMARK or wm <= pw.marked_ms:
            return
        step = min(w.hop_ms for w in self.spec.windows)
        if force or wm // step != pw.marked_ms // step or pw.marked_ms == NO_WATERMARK:
            pw.marked_ms = wm
            out.zone_msgs.append({"type": "marker", "src": pw.partition, "watermark_ms": wm})

    def _close(self, pw: PartitionWindows, out: Output) -> None:
        before = len(out.zone_msgs)
        closed = pw.close_ready(out.zone_msgs if self.zones else None)
        if self.zones:
            self.mark(pw, out, force=len(out.zone_msgs) > before)
        early = pw.early_records()
        if early:
            out.aggregates.extend(early)
        p = pw.partition
        if closed and self.scorer is not None:
            self.scorer.score(closed)
        if closed:
            out.aggregates.extend(closed)
            self.counters.aggregates += len(closed)
            if self.rules:  # a worker's rules run in the alert engine (streams.alert_agents)
                for agg in closed:
                    alerts = evaluate(self.rules, agg)
                    if alerts:
                        out.alerts.extend(alerts)
                        self.counters.alerts += len(alerts)
            # The closure's documents (the scorer's state, then the window state of its sensors)
            # are built by closed_state(), which the caller runs after it has sent the aggregates:
            # building them is a third of a close's CPU, and the alert path should not wait for it.
            by_sensor: dict[str, list[dict[str, Any]]] = {}
            for agg in closed:
                group = by_sensor.get(agg["sensor_id"])
                if group is None:
                    group = by_sensor[agg["sensor_id"]] = []
                group.append(agg)
            self._closures.append((p, by_sensor))
        wm_doc: dict[str, Any] = {"p": p, "max_ts_ms": pw.max_ts_ms}
        if pw.ahead:
            wm_doc["ahead"] = dict(pw.ahead)
        self._marks[p] = wm_doc

    def _give_marks(self, out: list[tuple[int, str, Any]]) -> None:
        """Append the pending watermark documents to ``out``, once no closure's documents are left.

        A restored watermark says which windows are closed: a reading delivered again for one of
        them is late unless its sensor's document already counts it (by offset). So a watermark
        must not reach the changelog before the window state of the sensors whose windows it
        closed. It did (it went with the batch, their documents after the alert path's turn), and
        a worker killed in between left its successor a watermark newer than those sensors'
        state: 272 readings delivered again were taken for late ones in one rebalance test run.
        """
        if not self._closures and self._marks:
            out.extend((p, WATERMARK_KEY.format(partition=p), doc) for p, doc in sorted(self._marks.items()))
            self._marks.clear()
