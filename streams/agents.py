"""Faust wiring: topics, the window table, agents, the idle timer and the stats page.

Agents only move bytes between Kafka and :class:`~streams.pipeline.Pipeline`; they make no
decisions. Window state lives in the ``windows`` table (a changelog topic), written with the
source record's partition so a restarted or rebalanced worker restores exactly its partitions.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import faust
import orjson

import models as models_pkg
from connectors.buffer import BufferedSink, BufferFull, open_spool
from connectors.influx import open_sink
from connectors.lineprotocol import Point, aggregate_point, alert_point, zone_point
from models.stream import StreamScorer
from streams.alert_agents import URGENT_HEADERS, attach_alerting
from streams.api import register_api, register_retention
from streams.app import Leveller, before_commit, consumer_state, persist, persist_pending, stash
from streams.deadletter import dead_letter
from streams.engine import NO_WATERMARK, WindowDef, WindowSpec
from streams.errors import InvalidReading, SinkError
from streams.frames import RS, encode_frame, is_frame, kafka_partition, split_frame
from streams.metrics import register_metrics
from streams.pipeline import Output, Pipeline, Record
from streams.schema import parse_reading
from streams.settings import Settings
from streams.zones import ZoneRollup

logger = logging.getLogger(__name__)

READINGS_BATCH = 2000
#: Longest a readings batch waits to fill (s); see the windows agent.
READINGS_WITHIN_S = 0.05


def reading_chunks(records: list[Record], max_readings: int) -> list[list[Record]]:
    """``records`` in order, split so that each chunk holds at most ``max_readings`` readings.

    A frame counts as its readings (:mod:`streams.frames`) and is never split; a frame larger
    than ``max_readings`` is a chunk of its own.

    >>> from streams.frames import encode_frame
    >>> recs = [Record(0, i, encode_frame([b"{}"] * n)) for i, n in enumerate([3, 3, 1, 5])]
    >>> [[r.offset for r in c] for c in reading_chunks(recs, 4)]
    [[0], [1, 2], [3]]
    """
    chunks: list[list[Record]] = []
    chunk: list[Record] = []
    n = 0
    for r in records:
        k = r.value.count(RS) if is_frame(r.value) else 1
        if chunk and n + k > max_readings:
            chunks.append(chunk)
            chunk, n = [], 0
        chunk.append(r)
        n += k
    if chunk:
        chunks.append(chunk)
    return chunks
SINK_BATCH = 5000
#: Table records written between two turns given to the other agents (see ``emit``).
YIELD_EVERY = 2000
#: Sensors of a window close whose state documents are built in one step (see ``emit``): about
#: 0.025 s of CPU on our VMs, after which the other agents get a turn.
CLOSED_STATE_STEP = 250
#: Frames of at least this many bytes are decoded to points in a thread (see ``timeseries``).
THREAD_MIN_BYTES = 256 * 1024


def wall_ms() -> int:
    """The adapter's clock (the core never reads it)."""
    return time.time_ns() // 1_000_000


def _ts(ms: int) -> float:
    # Faust converts seconds back with int(ts * 1000.0); the half millisecond keeps it exact.
    return (ms + 0.5) / 1000.0


#: Counters of the time-series writer (connectors.buffer.BufferedSink.stats) on the stats page; the
#: first four are totals, the rest gauges of the current backlog.
_BUFFER_TOTALS = ("points_written", "write_failures", "spooled_points_total", "buffer_full_events")
_BUFFER_STATS = (*_BUFFER_TOTALS, "buffered_memory_points", "spool_batches", "spool_bytes")


def _buffer_full_alert(detail: str, now_ms: int) -> dict[str, Any]:
    """The maintenance alert raised when the time-series buffer is exhausted (consumption pauses)."""
    return {
        "v": 1,
        "alert_id": f"a-sink-buffer-full-{now_ms}",
        "seq": 0,
        "rule": "sink_buffer_full",
        "category": "maintenance",
        "severity": "critical",
        "state": "raised",
        "subject_type": "sink",
        "sensor_id": None,
        "zone": "",
        "kind": None,
        "metric": None,
        "value": 1.0,
        "threshold": 0.0,
        "message": f"time-series store unreachable and outage buffer full; consumption paused: {detail}",
        "raised_ts_ms": now_ms,
        "ts_ms": now_ms,
        "latency_ms": 0,
    }


def models_path(settings: Settings) -> Path:
    """The model artifacts folder: ``URBAN_MODELS__DIR``, or the packaged ``models/artifacts``."""
    return settings.models.dir or Path(models_pkg.__file__).parent / "artifacts"


def build_pipeline(settings: Settings) -> Pipeline:
    """The worker's processing path as ``settings`` configure it (windows, zones, cardinality
    guard, scorer): what the ``urbansense.windows`` agent runs, and what
    ``python -m benchmarks pipeline`` measures.

    Raises:
        ModelLoadError: models are enabled and an artifact cannot be loaded safely.
    """
    w = settings.window
    scorer = None
    if settings.models.enabled:
        scorer = StreamScorer.from_folder(models_path(settings), size_ms=w.size_ms)
    return Pipeline(
        WindowSpec(
            w.size_ms,
            w.allowed_lateness_ms,
            w.grace_ms,
            w.idle_timeout_ms,
            tuple(WindowDef.parse(x) for x in w.extra.split(",") if x.strip()),
            early_updates=w.early_updates,
        ),
        (),  # rules run in the stateful alert engine (streams.alert_agents), not per window here
        max_payload_bytes=settings.max_payload_bytes,
        zones=w.zones,
        max_sensors_per_partition=settings.max_sensors_per_partition,
        scorer=scorer,
    )


def attach(app: faust.App, settings: Settings) -> None:  # noqa: C901 - one place that wires it all
    """Declare the UrbanSense topics, table, agents, timer and web views on ``app``."""
    k = settings.kafka
    frame_size = k.frame_size  # aggregates per record on the aggregates topic (streams.frames)
    w = settings.window
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    readings = app.topic(k.readings_topic, partitions=k.partitions, **raw)
    aggregates = app.topic(k.aggregates_topic, partitions=k.partitions, **raw)
    alerts = app.topic(k.alerts_topic, partitions=k.partitions, **raw)
    dlq = app.topic(k.dlq_topic, partitions=k.partitions, **raw)
    late = app.topic(k.late_topic, partitions=k.partitions, **raw)
    zone_partials = app.topic(k.zone_partials_topic, partitions=k.partitions, **raw)
    zone_aggregates = app.topic(k.zone_aggregates_topic, partitions=k.partitions, **raw)
    zone_table = app.Table(
        "zones",
        partitions=k.partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        help="Open zone roll-up windows (partials per source partition) and source watermarks.",
    )
    rollups: dict[int, ZoneRollup] = {}
    zone_stats = {"msgs_in": 0, "msg_errors": 0}
    table = app.Table(
        "windows",
        partitions=k.partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        help="Open event-time windows per sensor, and each partition's watermark.",
    )
    pipeline = build_pipeline(settings)  # ModelLoadError stops start-up
    scorer = pipeline.scorer
    models_dir = models_path(settings)
    app.urbansense_pipeline = pipeline  # type: ignore[attr-defined]
    alerting = attach_alerting(app, settings, counters=pipeline.counters, score_available=scorer is not None)
    activity, urgency = alerting.activity, alerting.urgency
    register_api(app, settings)
    register_retention(app, settings)
    sink_stats = {"points_written": 0, "write_failures": 0, "buffer_full": 0}
    readings_level = Leveller(app, k.readings_topic, w.max_partition_skew_ms)
    pending_state: dict[str, tuple[int, Any]] = {}  # window-state key -> (partition, latest doc) to write
    buffered: list[BufferedSink] = []  # the timeseries agent's writer, for the flush timer and stats page

    async def emit(out: Output, *, settle: bool = True) -> None:
        for dl in out.dead_letters:
            await dlq.send(key=dl.key, value=dl.value, headers=dl.headers)
        for rec, info in out.late:
            headers = [
                ("urban.late.by_ms", str(info.late_by_ms).encode()),
                ("urban.late.watermark_ms", str(info.watermark_ms).encode()),
                ("urban.late.window_start_ms", str(info.window_start_ms).encode()),
                ("urban.late.source", rec.source.encode()),
            ]
            key = rec.key if rec.index < 0 else info.reading.sensor_id.encode()  # a frame has no one key
            await late.send(key=key, value=rec.value, headers=headers, timestamp=_ts(info.reading.ts_ms))
        if out.aggregates:
            activity.expect(len(out.aggregates))  # the alert path has this close's work coming
        # A live close's aggregates that may raise an alert go first (alerting.urgency): routing and
        # the engine take a close's 35,000 aggregates in the order sent, in 1-2 s of one core.
        urgent, rest = [], out.aggregates
        if out.aggregates and not activity.backlog:
            urgent, rest = urgency.split(out.aggregates)
        ts = _ts(out.aggregates[0]["start_ms"]) if out.aggregates else 0.0
        for group_aggs, headers in ((urgent, URGENT_HEADERS), (rest, None)):
            if not group_aggs:
                continue
            if frame_size > 1:
                # frames of one partition's aggregates (its sensors', by murmur2): the time-series and
                # alert-routing agents pay their per-record cost once per frame (streams.frames). Each
                # frame is encoded as soon as its aggregates are known: holding every aggregate's JSON
                # until the last frame (a window close of 10,000 sensors is 35,000 of them) cost more
                # in fresh memory than orjson took to write them (in-process: 1.07 s against 0.10 s).
                by_partition: dict[int, list[dict[str, Any]]] = {}
                for agg in group_aggs:
                    p = kafka_partition(agg["sensor_id"].encode(), k.partitions)
                    group = by_partition.get(p)
                    if group is None:
                        group = by_partition[p] = []
                    group.append(agg)
                for p, group in sorted(by_partition.items()):
                    for lo in range(0, len(group), frame_size):
                        frame = encode_frame(list(map(orjson.dumps, group[lo : lo + frame_size])))
                        await aggregates.send(value=frame, partition=p, timestamp=ts, headers=headers)
            else:
                for agg in group_aggs:
                    await aggregates.send(key=agg["sensor_id"].encode(), value=orjson.dumps(agg),
                                          timestamp=_ts(agg["start_ms"]), headers=headers)
            if headers is not None:
                await asyncio.sleep(0)  # the producer takes them before the rest is encoded
        for alert in out.alerts:
            logger.warning(
                "alert raised alert_id=%s rule=%s severity=%s sensor_id=%s zone=%s value=%s threshold=%s",
                alert["alert_id"],
                alert["rule"],
                alert["severity"],
                alert["sensor_id"],
                alert["zone"],
                alert["value"],
                alert["threshold"],
            )
            await alerts.send(key=alert["alert_id"].encode(), value=orjson.dumps(alert), timestamp=_ts(alert["ts_ms"]))
        for msg in out.zone_msgs:
            if msg["type"] == "marker":  # every zone partition must learn every source's watermark
                body = orjson.dumps(msg)
                for zp in range(k.partitions):
                    await zone_partials.send(key=b"", value=body, partition=zp)
            else:
                await zone_partials.send(key=msg["zone"].encode(), value=orjson.dumps(msg))
        # Each watermark, then the state of the sensors whose windows closed and the scorer's state
        # of those closures, go to the changelog now: a crash must not re-close (and re-emit) what
        # was emitted, nor keep a closed window without the baselines that scored it. The closures'
        # documents are built here once the alert path has had its turn with their aggregates
        # (AlertPathActivity.quiet: at most 2 s), CLOSED_STATE_STEP sensors at a time with a turn
        # for the other agents before each step. The other sensors' state waits for the next
        # offset commit (flush_state).
        data = table.data
        for partition, key, value in out.state:
            data[key] = value
            pending_state.pop(key, None)
            await persist(table, partition, key, value)
        if settle:
            await settle_closures()

    async def settle_closures() -> None:
        data = table.data
        if pipeline.closures_pending:
            await activity.quiet()
        while pipeline.closures_pending:
            await asyncio.sleep(0)
            for i, (partition, key, value) in enumerate(pipeline.closed_state(CLOSED_STATE_STEP), 1):
                if not i % YIELD_EVERY:
                    await asyncio.sleep(0)
                data[key] = value
                pending_state.pop(key, None)
                await persist(table, partition, key, value)

    def stash_state() -> None:
        """Take the documents the pipeline left for the commit (Pipeline.take_state) into the table."""
        stash(table, pending_state, pipeline.take_state())

    async def flush_state(defer: bool = True) -> None:
        """Write the pending window state (before each offset commit, and on revocation).

        Closures not written yet are built a step at a time, after the alert path's turn (the
        commit waits for it, ``defer``) as ``emit`` does: all at once they held the loop for up
        to 0.4 s in the middle of a close's alerts.
        """
        if defer and pipeline.closures_pending:
            await activity.quiet()
        while pipeline.closures_pending:
            stash(table, pending_state, pipeline.closed_state(CLOSED_STATE_STEP))
            await asyncio.sleep(0)
        stash_state()
        await persist_pending(table, pending_state)

    before_commit(app, flush_state)  # see streams.app

    @app.agent(readings, name="urbansense.windows")
    async def windows(stream: faust.StreamT) -> AsyncIterator[None]:
        # within: how long a batch waits to fill. The reading that moves the watermark past a window
        # waits that long too before the window closes (0.2 s here added 0.14-0.29 s to every alert).
        async for events in stream.take_events(READINGS_BATCH, within=READINGS_WITHIN_S):
            activity.backlog = len(events) >= READINGS_BATCH  # a full batch: catching up, nothing waits
            records = [Record(e.message.partition, e.message.offset, e.value, e.key, e.message.topic) for e in events]
            for r in records:
                readings_level.read(r.partition, r.offset)
            # Frames make a batch of records many more readings: processed at once they would hold
            # the event loop for seconds (no fetching, sending or committing meanwhile).
            for chunk in reading_chunks(records, READINGS_BATCH):
                out = pipeline.process(chunk, wall_ms(), table.data.items())
                # Live, the closures' documents wait while another partition's close is still to
                # come (its watermark-moving readings in a later chunk): built first (after the alert
                # path's quiet moment), they held that close and its alerts back 4 s in a traced
                # 10,000/s run. The commit builds them if no level moment comes first (flush_state).
                # Catching up, nothing waits for a quiet moment, and they are built at once.
                await emit(out, settle=activity.backlog or pipeline.closes_level)
                # Give the other agents a turn: an await that does not suspend (a send into a
                # producer batch with room) does not, and a backlog caught up after a window close
                # is many chunks; the alert path (routing, the engine) would wait behind all of them.
                await asyncio.sleep(0)
            align()
            yield None

    extra = [t.strip() for t in k.extra_source_topics.split(",") if t.strip()]
    if extra:
        native = app.topic(*extra, **raw)

        @app.agent(native, name="urbansense.kafka_ingest")
        async def kafka_ingest(stream: faust.StreamT) -> AsyncIterator[None]:
            """Validate a Kafka-native feed and forward it, keyed by sensor, to the readings topic."""
            async for event in stream.events():
                msg = event.message
                now = wall_ms()
                try:
                    reading = parse_reading(event.value, now_ms=now, max_bytes=settings.max_payload_bytes)
                except InvalidReading as err:
                    source = f"kafka:{msg.topic}/{msg.partition}@{msg.offset}"
                    logger.warning("dead-lettered reading source=%s reason=%s", source, err.reason)
                    dl = dead_letter(event.value, err, source=source, now_ms=now, key=event.key)
                    pipeline.counters.dead_letters += 1
                    await dlq.send(key=dl.key, value=dl.value, headers=dl.headers)
                else:
                    await readings.send(key=reading.sensor_id.encode(), value=event.value, timestamp=_ts(reading.ts_ms))
                yield None

    def rollup(partition: int) -> ZoneRollup:
        zr = rollups.get(partition)
        if zr is None:
            zr = rollups[partition] = ZoneRollup(k.partitions, w.grace_ms, w.idle_timeout_ms)
            for key, value in list(zone_table.data.items()):
                if isinstance(value, dict) and value.get("p") == partition:
                    if key.startswith("__marks__"):
                        zr.marks.update({int(s): int(m) for s, m in value["marks"].items()})
                    else:
                        zr.restore_window(value)
        return zr

    async def flush_zone(p: int, keys: set[Any]) -> None:
        """Close what the zone rollup of partition ``p`` can close; persist changed windows and marks."""
        zr = rollups[p]
        zr.tick(wall_ms())
        done, closed_keys = zr.close()
        for agg in done:
            await zone_aggregates.send(
                key=agg["zone"].encode(), value=orjson.dumps(agg), timestamp=_ts(agg["start_ms"])
            )
        for key in keys | set(closed_keys):
            name = "|".join(map(str, key))
            doc = zr.window_state(key)
            if doc is None:
                zone_table.data.pop(name, None)
                await persist(zone_table, p, name, None, value_serializer="raw")
            else:
                doc["p"] = p
                zone_table.data[name] = doc
                await persist(zone_table, p, name, doc)
        marks = {"p": p, "marks": {str(s): m for s, m in zr.marks.items()}}
        zone_table.data[f"__marks__:{p}"] = marks
        await persist(zone_table, p, f"__marks__:{p}", marks)

    @app.agent(zone_partials, name="urbansense.zones")
    async def zones(stream: faust.StreamT) -> AsyncIterator[None]:
        """Merge per-partition partials into zone windows; close them on every source's watermark."""
        async for events in stream.take_events(READINGS_BATCH, within=0.2):
            touched: dict[int, set[Any]] = {}
            for e in events:
                p = e.message.partition
                zr = rollup(p)
                touched.setdefault(p, set())
                zone_stats["msgs_in"] += 1
                try:
                    key = zr.add(orjson.loads(e.value))
                except Exception:
                    # Our own windows stage wrote it, so this is a bug, not bad input: say so and go
                    # on with the batch (an exception here would lose the batch's markers with it,
                    # and a zone waiting on them would never close).
                    zone_stats["msg_errors"] += 1
                    logger.exception("zone partial not applied partition=%d offset=%d", p, e.message.offset)
                    continue
                if key is not None:
                    touched[p].add(key)
            for p, keys in touched.items():
                await flush_zone(p, keys)
            yield None

    sink_topics = app.topic(k.aggregates_topic, k.alerts_topic, k.zone_aggregates_topic, **raw)

    @app.agent(sink_topics, name="urbansense.timeseries")
    async def timeseries(stream: faust.StreamT) -> AsyncIterator[None]:
        """Write aggregates and alerts to the time-series store, acknowledging after each write.

        During a store outage the batches go to a bounded memory buffer, then a bounded disk spool
        (connectors.buffer); when both are full the agent holds its batch and stops pulling
        (back-pressure), says so (ERROR log, ``buffer_full`` on the stats page, one alert record).
        """
        i = settings.influx
        sink = BufferedSink(
            open_sink(settings),
            open_spool(settings.data_dir / "spool", settings.app_id, i.spool_max_bytes),
            memory_points=i.buffer_memory_points,
        )
        buffered.append(sink)
        try:
            async for events in stream.take_events(SINK_BATCH, within=0.5):
                values = [(e.message.topic, e.value) for e in events]
                if sum(len(v) for _, v in values) < THREAD_MIN_BYTES:
                    points = points_of(values)
                else:  # a window close's frames: decoding them would hold up the loop (and the alert path)
                    await activity.quiet()  # and in a thread they still take the GIL from it half the time
                    points = await asyncio.to_thread(points_of, values)
                delay = 1.0
                alerted = False
                while True:  # never drop: hold the batch (and the offsets) until it is written or buffered
                    try:
                        await sink.write(points)
                        break
                    except BufferFull as exc:
                        points = points[exc.taken :]  # the head is buffered; hold only the rest
                        if not points:
                            break
                        sink_stats["buffer_full"] += 1
                        if not alerted:
                            alerted = True
                            await alerts.send(
                                key=b"sink_buffer_full", value=orjson.dumps(_buffer_full_alert(str(exc), wall_ms()))
                            )
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                    except SinkError as exc:
                        sink_stats["write_failures"] += 1
                        logger.error(
                            "time-series write failed points=%d retry_in_s=%.0f error=%s", len(points), delay, exc
                        )
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 30.0)
                yield None
        finally:
            buffered.remove(sink)
            await sink.close()
            for f in _BUFFER_TOTALS:  # keep the totals of a restarted agent
                sink_stats[f] = sink_stats.get(f, 0) + sink.stats[f]

    def points_of(values: list[tuple[str, bytes]]) -> list[Point]:
        points: list[Point] = []
        for topic, value in values:
            if topic == k.alerts_topic:
                points.append(alert_point(orjson.loads(value)))
            elif topic == k.zone_aggregates_topic:
                points.append(zone_point(orjson.loads(value)))
            else:  # one aggregate, or a frame of them
                points += [aggregate_point(orjson.loads(raw)) for raw in split_frame(value)]
        return points

    @app.timer(interval=1.0)
    async def timeseries_flush() -> None:
        """Replay the outage backlog when no new batch arrives to trigger it."""
        for sink in list(buffered):
            await sink.flush()

    def align() -> None:
        """Keep the readings partitions level in event time (streams.align)."""
        frontiers = {
            p: (pw.max_ts_ms if pw.max_ts_ms != NO_WATERMARK else None) for p, pw in pipeline.partitions.items()
        }
        readings_level.align(wall_ms(), frontiers)

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        stash_state()  # what the pipeline holds in memory only; written with the next commit
        readings_level.forget()
        pipeline.forget()
        rollups.clear()

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        # before the new owners restore from the changelog (the rebalance waits for this)
        await flush_state(defer=False)
        await app.producer.flush()
        readings_level.forget()
        pipeline.forget()
        rollups.clear()

    holds = readings_level.holds

    @app.timer(interval=1.0)
    async def idle_tick() -> None:
        recovery = app.tables.recovery
        # Faust never clears Recovery.completed; only app.rebalancing covers assignment -> restore
        # (building a newly assigned partition from a table not yet restored lost its windows).
        if app.rebalancing or not recovery.completed.is_set():
            return
        if any(b.full for b in buffered):
            # Our own back-pressure (store down, buffers full) holds the stream: partitions we are
            # not reading are not idle, or a replayed feed would jump to the wall clock and go late.
            now = wall_ms()
            for pw in pipeline.partitions.values():
                pw.hold_idle(now)
            return
        for tp in app.consumer.assignment():
            if tp.topic == k.readings_topic and tp.partition not in pipeline.partitions:
                pipeline.partition(tp.partition, table.data.items())
        now = wall_ms()
        for p, pw in pipeline.partitions.items():
            if holds(p):  # a slow or paused consumer is not an idle feed: no jump to the wall clock
                pw.hold_idle(now)
        await emit(pipeline.tick(now))
        align()
        for tp in app.consumer.assignment():
            # after a rebalance the rollups are rebuilt from the table here too, not only when the
            # next partial arrives: windows restored after the last partial must still close
            if tp.topic == k.zone_partials_topic:
                rollup(tp.partition)
        for p, zr in list(rollups.items()):
            # sources that never reported (the idle fallback), or restored windows already passed
            if zr.partials and (len(zr.marks) < zr.sources or zr.closable()):
                await flush_zone(p, set())

    if scorer is not None:

        @app.timer(interval=settings.models.reload_interval_s)
        async def model_reload() -> None:
            """Hot swap: pick up a newer model version dropped into the models folder."""
            await asyncio.to_thread(scorer.reload, models_dir)

    def writer_stats() -> dict[str, int]:
        fields = {*sink_stats, *_BUFFER_STATS}
        return {f: sink_stats.get(f, 0) + sum(b.stats.get(f, 0) for b in buffered) for f in fields}

    def metric_stats() -> dict[str, Any]:
        """Read at every scrape: writer, zone stage and model figures beside the pipeline counters."""
        return {
            **writer_stats(),
            "zone_windows_open": sum(len(zr.partials) for zr in rollups.values()),
            **({f"model_version_{k}": v for k, v in scorer.versions().items()} if scorer is not None else {}),
        }

    app.urbansense_metrics = register_metrics(app, pipeline, metric_stats)  # type: ignore[attr-defined]

    def readings_consumer() -> dict[str, Any]:
        try:
            assigned = sorted(readings_level.assigned())
        except Exception as exc:  # noqa: BLE001 - the consumer is not started yet (or stopping)
            return {"unreadable": repr(exc)}
        return consumer_state(app, k.readings_topic, assigned)

    @app.page("/urbansense/stats/")
    async def stats(web_: Any, request: Any) -> Any:
        c = pipeline.counters
        body = {
            "readings_in": c.readings_in,
            "readings_counted": c.readings_counted,
            "dead_letters": c.dead_letters,
            "late": c.late,
            "duplicates": c.duplicates,
            "aggregates": c.aggregates,
            "alerts": c.alerts,
            "open_windows": sum(pw.open_windows for pw in pipeline.partitions.values()),
            "watermarks_ms": {str(p): pw.watermark_ms for p, pw in pipeline.partitions.items()},
            "partitions_paused_for_skew": sorted(readings_level.aligner.paused),
            "rebalancing": bool(app.rebalancing),
            "readings_consumer": readings_consumer(),
            "zone_windows_open": sum(len(zr.partials) for zr in rollups.values()),
            "model_versions": scorer.versions() if scorer is not None else {},
            "zone_source_watermarks_ms": {str(p): zr.marks for p, zr in rollups.items()},
            "zone_msgs_in": zone_stats["msgs_in"],
            "zone_msg_errors": zone_stats["msg_errors"],
            **writer_stats(),
            "gc": {"threshold": list(gc.get_threshold()),
                   "collections": [g["collections"] for g in gc.get_stats()]},
        }
        return web_.json(body)
