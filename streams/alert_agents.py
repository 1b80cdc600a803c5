"""Faust wiring of the alert engine: routing, the ``alerts`` table, commands, timer, sinks, board.

Data flow (the engine is pure; these agents only move bytes)::

    aggregates topic ─► urbansense.alerting.route ─► <app_id>-alerting-input (partition of the zone key)
    control topic ────► urbansense.alerting.control ─► every partition of the same topic
    <app_id>-alerting-input ─► urbansense.alerting (AlertEngine) ─► alerts topic (key = alert id)
                                         │                           ├─► sinks (MQTT, webhook, CAP)
                                         └─► table "alerts"          └─► live board (SSE)

Aggregates are re-keyed by zone so that every sensor of a zone, its zone incidents and their
state (the ``alerts`` table, one changelogged document per (rule, subject)) live in one
partition: k-of-n zone rules stay exact with any number of workers. Operator commands carry
only an alert id, so they are broadcast to every partition; only the owner applies them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import faust
import orjson

from alerting.engine import AlertEngine
from alerting.errors import RuleError
from alerting.rules import load_rules
from alerting.urgency import Urgency
from streams.app import before_commit, persist_pending, stash
from streams.frames import kafka_partition, split_frame
from streams.settings import Settings

logger = logging.getLogger(__name__)

ROUTE_BATCH = 2000
#: header of an aggregates frame the windows stage sent ahead of its close (alerting.urgency)
URGENT_HEADER = "urban.urgent"
#: the headers the windows stage sends urgent frames with
URGENT_HEADERS = [(URGENT_HEADER, b"1")]
RELOAD_INTERVAL_S = 2.0


def wall_ms() -> int:
    """The adapter's clock (the engine never reads it)."""
    return time.time_ns() // 1_000_000


def _ts(ms: int) -> float:
    return (ms + 0.5) / 1000.0


def to_route(engine: AlertEngine, batch: list[tuple[int, dict[str, Any]]]) -> tuple[list[dict[str, Any]], int]:
    """The aggregates of one batch (``(source partition, aggregate)``, in order) the engine must get, each
    with its ``src``; and how many it need not get.

    Those no rule wants are left out, and so is one that only silence rules want when another
    aggregate of the batch, routed anyway, shows them the same (:func:`_silence_view`): processed,
    it would change nothing. Of a close of 10,000 sensors (35,000 aggregates) with the default
    rules, 20,000 need not be re-encoded, sent, decoded and stepped through.
    """
    wanted: list[tuple[int, dict[str, Any], bool, tuple[str, ...]]] = []
    covered: set[tuple[Any, ...]] = set()
    for src, agg in batch:
        other, silence = engine.interest(agg)
        if other or silence:
            wanted.append((src, agg, other, silence))
            if other and silence:
                covered.add(_silence_view(src, agg, silence))
    out: list[dict[str, Any]] = []
    for src, agg, other, silence in wanted:
        if not other and _silence_view(src, agg, silence) in covered:
            continue
        agg["src"] = src  # the source partition: its own event clock judges the silence of its sensors
        out.append(agg)
    return out, len(wanted) - len(out)


def _silence_view(src: int, agg: dict[str, Any], rules: tuple[str, ...]) -> tuple[Any, ...]:
    """All the silence ``rules`` read of an aggregate (``AlertEngine.process``, ``_seen``): of two with
    the same view, the second does nothing."""
    return (src, agg["sensor_id"], agg["zone"], agg["kind"], agg.get("end_ms"), agg.get("first_ts_ms"),
            agg.get("last_ts_ms"), rules)


def decode_routed(records: Iterable[tuple[int, Any, bytes]]) -> tuple[
        list[tuple[int, dict[str, Any]]], list[tuple[int, dict[str, Any]]], dict[int, int]]:
    """The aggregates of a batch of aggregates-topic records ``(partition, headers, value)``:
    ``(urgent, rest, ends)``, each aggregate with its source partition, and each source's newest
    window end.

    A live close's urgent frames (:mod:`alerting.urgency`) are routed first, in messages of their
    own, unless the batch holds an earlier frame of their partition that is not urgent: a sensor's
    windows keep their order on their way to the engine.

    >>> u, r, ends = decode_routed([(0, None, b'{"end_ms": 5}'), (1, [("urban.urgent", b"1")], b'{"end_ms": 7}'),
    ...                             (0, [("urban.urgent", b"1")], b'{"end_ms": 7}')])
    >>> u, r, ends
    ([(1, {'end_ms': 7})], [(0, {'end_ms': 5}), (0, {'end_ms': 7})], {0: 7, 1: 7})
    """
    first: list[tuple[int, dict[str, Any]]] = []
    rest: list[tuple[int, dict[str, Any]]] = []
    ends: dict[int, int] = {}
    behind: set[int] = set()  # source partitions with a frame that is not urgent so far
    for src, headers, value in records:
        if src not in behind and is_urgent(headers):
            into = first
        else:
            behind.add(src)
            into = rest
        for raw in split_frame(value):  # one aggregate, or a frame of them
            agg = orjson.loads(raw)
            end = agg.get("end_ms")
            if isinstance(end, int) and end > ends.get(src, -1):
                ends[src] = end
            into.append((src, agg))
    return first, rest, ends


def is_urgent(headers: Any) -> bool:
    """Whether a record's headers (a list of pairs or a mapping) mark an urgent frame.

    >>> is_urgent([("urban.urgent", b"1")]), is_urgent({"urban.urgent": b"1"}), is_urgent(None), is_urgent([])
    (True, True, False, False)
    """
    if not headers:
        return False
    items = headers.items() if isinstance(headers, dict) else headers
    return any(k == URGENT_HEADER for k, _ in items)


def control_topic_for(alerts_topic: str) -> str:
    """The operator command topic that goes with an alerts topic.

    >>> control_topic_for("urban.alerts.v1"), control_topic_for("t-1.alerts")
    ('urban.alerts.control.v1', 't-1.alerts.control')
    """
    if alerts_topic.endswith(".v1"):
        return alerts_topic[:-3] + ".control.v1"
    return alerts_topic + ".control"


class AlertPathActivity:
    """When this worker's alert path last had work, so that work that can wait lets it go first.

    A window close of 10,000 sensors sends 35,000 aggregates through routing and the engine, and
    with them comes work no alert waits for: the closures' state documents and the time-series
    points. On one event loop (and one GIL) they took turns with the alert path, and its last
    alerts came seconds after the first. The windows stage, the routing and the engine
    :meth:`touch` this when they handle aggregates; the deferrable work awaits :meth:`quiet`
    first: until the alert path has had nothing to do for ``quiet_s``, at most ``max_wait_s``.

    A close's aggregates reach the router over the broker in pieces (20 MB of them, one producer
    batch per partition per request), with pauses longer than ``quiet_s`` between them: the work
    that waited started in such a pause, half the close still on its way, and held the router
    back (0.7 s in a traced 10,000/s run, whose last alerts came 2.8 s after the watermark). So
    the windows stage also counts what it sent (:meth:`expect`) and the router what it received
    (:meth:`arrived`): while some are on their way the alert path is not quiet. The router that
    reads them is this worker's (Faust assigns the readings and aggregates topics, which have the
    same partitions, together, and an aggregate goes to its sensor's partition); should the counts
    not meet, ``max_wait_s`` still ends the wait, and the count starts again from nothing.

    While the input has a backlog (a replay or a catch-up, set by the windows stage) nothing
    waits: there throughput is what counts, and the alert path is never quiet.
    """

    def __init__(self, quiet_s: float = 0.15, max_wait_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.last = -math.inf
        self.backlog = False
        self.in_flight = 0  # aggregates sent by the windows stage, not yet at the router
        self.waited_s = 0.0  # total, for the stats page
        self.gave_up = 0  # waits ended by max_wait_s with aggregates still counted in flight

    def touch(self) -> None:
        """The alert path has work now."""
        self.last = self.clock()

    def expect(self, n: int) -> None:
        """The windows stage sent ``n`` aggregates: the alert path has them coming."""
        self.in_flight += n
        self.touch()

    def arrived(self, n: int) -> None:
        """The router received ``n`` aggregates."""
        self.in_flight = max(0, self.in_flight - n)
        self.touch()

    def wait_s(self, started: float) -> float:
        """How much longer a wait that started at ``started`` should go on (0: not at all)."""
        if self.backlog:
            return 0.0
        now = self.clock()
        left = self.max_wait_s - (now - started)
        if self.in_flight:
            return max(0.0, min(self.quiet_s, left))
        return max(0.0, min(self.quiet_s - (now - self.last), left))

    async def quiet(self) -> None:
        """Wait until the alert path has been idle for ``quiet_s`` (at most ``max_wait_s``)."""
        started = self.clock()
        while (delay := self.wait_s(started)) > 0:
            await asyncio.sleep(delay)
        if self.in_flight and not self.backlog:
            self.gave_up += 1
            self.in_flight = 0  # counts that do not meet must not hold every later wait
        self.waited_s += self.clock() - started


class Alerting:
    """Handle returned by :func:`attach_alerting` (engine, counters, sinks, board, rule reloads)."""

    def __init__(self, engine: AlertEngine, rules_file: Path | None, score_available: bool) -> None:
        self.engine = engine
        #: picks the aggregates of a live close that go through the alert path first
        self.urgency = Urgency(engine.rules)
        self.rules_file = rules_file
        self.score_available = score_available
        self.sinks: list[Any] = []
        self.board: Any = None
        self.stats: dict[str, int] = {"alert_records": 0, "sink_failures": 0, "rule_reloads": 0,
                                      "rule_reload_errors": 0, "commands_in": 0, "commands_rejected": 0,
                                      "silence_only_not_routed": 0, "urgent_routed": 0}
        self._mtime: float | None = _mtime(rules_file)
        self.publish: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None
        self.activity = AlertPathActivity()

    def check_reload(self, now_ms: int) -> list[dict[str, Any]]:
        """Reload the rules file if its mtime changed; a bad file is logged and the old rules stay."""
        path = self.rules_file
        if path is None:
            return []
        mtime = _mtime(path)
        if mtime is None or mtime == self._mtime:
            return []
        self._mtime = mtime
        try:
            rules = load_rules(path, score_available=self.score_available)
        except RuleError as exc:
            self.stats["rule_reload_errors"] += 1
            logger.error("rules reload rejected, keeping the rules in force file=%s error=%s", path, exc)  # noqa: TRY400
            return []
        self.stats["rule_reloads"] += 1
        logger.info("rules reloaded file=%s rules=%d zone_rules=%d maintenance=%d", path, len(rules.rules),
                    len(rules.zone_rules), len(rules.maintenance))
        self.urgency.set_rules(rules)
        return self.engine.set_rules(rules, now_ms)


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return None


def default_sinks(settings: Settings) -> list[Any]:
    """Sinks configured in ``settings.alerting`` (fields are optional until the lead adds them).

    Recognised: ``mqtt_alerts`` (bool; uses ``settings.mqtt``), ``webhook_url`` + ``webhook_secret``,
    ``cap_url`` + ``cap_secret``.
    """
    a = settings.alerting
    sinks: list[Any] = []
    try:
        from alerting import notifiers
    except ImportError:  # pragma: no cover - the sinks package is optional
        return sinks
    if getattr(a, "mqtt_alerts", False):
        m = settings.mqtt
        sinks.append(notifiers.MqttAlertSink(
            m.host, m.port, topic_root=f"{m.topic_root}/alerts", username=m.username, password=m.password,
            tls_ca=m.tls_ca, tls_cert=m.tls_cert, tls_key=m.tls_key,
        ))
    if getattr(a, "webhook_url", None) and getattr(a, "webhook_secret", None):
        sinks.append(notifiers.WebhookSink(a.webhook_url, a.webhook_secret))
    if getattr(a, "cap_url", None) and getattr(a, "cap_secret", None):
        from alerting.cap import CapSink

        sinks.append(CapSink(a.cap_url, a.cap_secret, sender=getattr(a, "cap_sender", "urbansense")))
    return sinks


def board_origins(settings: Settings) -> list[str] | None:
    """``URBAN_ALERTING__BOARD_ALLOWED_ORIGINS`` as a list; ``None`` (the board's own origin) when empty.

    >>> from streams.settings import AlertingSettings, Settings
    >>> board_origins(Settings(alerting=AlertingSettings(board_allowed_origins=" https://ops.example, ")))
    ['https://ops.example']
    """
    raw = getattr(settings.alerting, "board_allowed_origins", "") or ""
    return [o.strip().rstrip("/") for o in raw.split(",") if o.strip()] or None


def attach_alerting(  # noqa: C901 - one place that wires it all
    app: faust.App,
    settings: Settings,
    *,
    aggregates_topic: str | None = None,
    alerts_topic: str | None = None,
    control_topic: str | None = None,
    counters: Any = None,
    sinks: Sequence[Any] | None = None,
    board: Any = None,
    score_available: bool = False,
) -> Alerting:
    """Declare the alerting topics, table, agents and timer on ``app``.

    Args:
        app: the Faust app.
        settings: loads the rules from ``settings.alerting.rules_file`` (packaged defaults if unset).
        aggregates_topic: closed-window aggregates (default ``settings.kafka.aggregates_topic``).
        alerts_topic: where alert records go (default ``settings.kafka.alerts_topic``).
        control_topic: operator commands (default :func:`control_topic_for` the alerts topic).
        counters: an object with an ``alerts`` attribute to count published records (the stats page's).
        sinks: objects with ``async send(alert)`` / ``async close()``; default :func:`default_sinks`.
        board: an ``AlertBoard``-like object (``publish``, ``mount``, ``on_action``); default: one
            built when ``settings.alerting.board_token`` exists.
        score_available: whether aggregates carry anomaly scores (silences the loader's warning).

    Raises:
        RuleError: the rules file is invalid (the worker does not start).
    """
    k = settings.kafka
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    rules_file = settings.alerting.rules_file
    rules = load_rules(rules_file, score_available=score_available)
    logger.info("alert rules loaded source=%s rules=%d zone_rules=%d maintenance=%d", rules.source,
                len(rules.rules), len(rules.zone_rules), len(rules.maintenance))
    engine = AlertEngine(rules)
    handle = Alerting(engine, rules_file, score_available)
    handle.sinks = list(default_sinks(settings) if sinks is None else sinks)

    aggs_name = aggregates_topic or k.aggregates_topic
    alerts_name = alerts_topic or k.alerts_topic
    control_name = control_topic or getattr(settings.alerting, "control_topic", None) or control_topic_for(alerts_name)
    aggs_in = app.topic(aggs_name, partitions=k.partitions, **raw)
    alerts_out = app.topic(alerts_name, partitions=k.partitions, **raw)
    control = app.topic(control_name, partitions=k.partitions, **raw)
    routed = app.topic(f"{settings.app_id}-alerting-input", partitions=k.partitions, **raw)
    table = app.Table(
        "alerts",
        partitions=k.partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        help="Alert engine state: one document per (rule, sensor or zone).",
    )
    restored: set[int] = set()
    pending_state: dict[str, tuple[int, dict[str, Any] | None]] = {}  # key -> (partition, doc) to write

    async def send_command(action: str, alert_id: str, by: str) -> None:
        doc = {"action": action, "alert_id": alert_id, "by": by, "token_ok": True}
        await control.send(key=alert_id.encode(), value=orjson.dumps(doc))

    if board is None and getattr(settings.alerting, "board_token", None):
        from alerting.board import AlertBoard

        board = AlertBoard(
            settings.alerting.board_token, on_action=send_command, allowed_origins=board_origins(settings)
        )
    if board is not None:
        if getattr(board, "on_action", None) is None:
            board.on_action = send_command
        try:
            board.mount(app.web.web_app, "/board")
        except Exception:  # a board that cannot mount must not stop alerting
            logger.exception("alert board could not be mounted")
            board = None
    handle.board = board

    def ensure(partition: int) -> None:
        if partition not in restored:
            restored.add(partition)
            n = engine.restore(table.data.items(), partition, wall_ms())
            if n:
                logger.info("restored alert state partition=%d tracks=%d", partition, n)

    def stash_state() -> None:
        """Take the engine's table changes into the table; they go to the changelog at the commit.

        Written per batch, they held the engine for seconds after a window close of 10,000
        sensors (a changelog record per track it touched, behind the close's aggregates in the
        producer), and the next batch's alerts waited for them: the offset commit that must not
        get ahead of them is what needs them (:func:`flush_state`, as ``streams.agents`` does
        with the window state). A crash before the commit replays the batch onto the state
        before it, and the records it publishes again are the same (stable ids and sequences).
        """
        stash(table, pending_state, engine.take_state())

    async def flush_state(defer: bool = True) -> None:
        """Write the engine's pending table changes (before each offset commit, and on revocation).

        A commit (``defer``) waits for the alert path's quiet moment (:class:`AlertPathActivity`).
        """
        if defer and (pending_state or engine.state_pending):
            await handle.activity.quiet()
        stash_state()
        stash(table, pending_state, engine.take_seen())  # once per commit, not per batch
        await persist_pending(table, pending_state)

    before_commit(app, flush_state)  # see streams.app

    async def publish(records: list[dict[str, Any]]) -> None:
        for rec in records:
            logger.info(
                "alert %s alert_id=%s seq=%d rule=%s severity=%s zone=%s sensor_id=%s latency_ms=%d",
                rec["state"], rec["alert_id"], rec["seq"], rec["rule"], rec["severity"], rec["zone"],
                rec["sensor_id"], rec["latency_ms"],
            )
            await alerts_out.send(key=rec["alert_id"].encode(), value=orjson.dumps(rec), timestamp=_ts(rec["ts_ms"]))
            metrics = getattr(app, "urbansense_metrics", None)
            if metrics is not None and rec["state"] == "raised":
                metrics.observe_alert(rec)  # alert latency histogram on /metrics
        handle.stats["alert_records"] += len(records)
        if counters is not None:
            counters.alerts += len(records)
        stash_state()
        for rec in records:
            if handle.board is not None:
                try:
                    await handle.board.publish(rec)
                except Exception:
                    logger.exception("alert board publish failed alert_id=%s", rec["alert_id"])
            for sink in handle.sinks:
                try:
                    await sink.send(rec)
                except Exception:  # the Kafka topic is authoritative; a sink outage is logged
                    handle.stats["sink_failures"] += 1
                    logger.exception("alert sink failed sink=%s alert_id=%s", type(sink).__name__, rec["alert_id"])

    handle.publish = publish

    @app.agent(aggs_in, name="urbansense.alerting.route")
    async def route(stream: faust.StreamT) -> AsyncIterator[None]:
        """Re-key the aggregates the rules look at by zone (one message per engine partition and batch).

        One message per engine partition, not per zone: the engine judges silence after each
        message on the clock of the sensor's source, and a batch of a fast replay spans several
        windows. Sent per zone, one zone's aggregates moved that clock on before the next zone's
        message (same partition, same batch) had delivered its sensors' windows, and they looked
        silent (a default-scenario broker run raised 202 silence alerts, and the rate limit they
        set off held back incident alerts: recall 0.67).
        """
        sent: dict[int, int] = {}  # source partition -> window end last announced

        async def send_routed(batch: list[tuple[int, dict[str, Any]]]) -> int:
            routed_aggs, skipped = to_route(engine, batch)
            handle.stats["silence_only_not_routed"] += skipped
            by_part: dict[int, list[Any]] = defaultdict(list)
            for agg in routed_aggs:
                # the partition the zone's key picks: a zone and its state stay where they were
                by_part[kafka_partition(agg["zone"].encode(), k.partitions)].append(agg)
            if by_part:
                handle.activity.touch()
            for p, aggs in sorted(by_part.items()):
                await routed.send(key=aggs[0]["zone"].encode(), value=orjson.dumps({"t": "aggs", "aggs": aggs}),
                                  partition=p)
            return len(routed_aggs)

        async for events in stream.take_events(ROUTE_BATCH, within=0.05):
            first, batch, ends = decode_routed((e.message.partition, e.message.headers, e.value) for e in events)
            if first or batch:
                handle.activity.arrived(len(first) + len(batch))
            if first:
                handle.stats["urgent_routed"] += await send_routed(first)
                await asyncio.sleep(0)  # the producer sends them before this batch's rest is routed
            await send_routed(batch)
            # Progress marker to every engine partition, behind this batch's aggregates: how far
            # each source has got, so a sensor alone in its (partition, source) pair that goes
            # silent does not stall the clock its silence is judged on.
            moved = {s: e for s, e in ends.items() if e > sent.get(s, -1)}
            if moved:
                sent.update(moved)
                body = orjson.dumps({"t": "src", "ends": {str(s): e for s, e in moved.items()}})
                for p in range(k.partitions):
                    await routed.send(key=b"__sources__", value=body, partition=p)
            yield None

    @app.agent(control, name="urbansense.alerting.control")
    async def commands(stream: faust.StreamT) -> AsyncIterator[None]:
        """Validate operator commands and broadcast them to every partition of the engine's input."""
        async for event in stream.events():
            handle.stats["commands_in"] += 1
            try:
                doc = orjson.loads(event.value)
                ok = (
                    isinstance(doc, dict) and doc.get("action") in ("ack", "clear")
                    and isinstance(doc.get("alert_id"), str) and doc.get("token_ok") is True
                )
            except orjson.JSONDecodeError:
                ok = False
            if not ok:
                handle.stats["commands_rejected"] += 1
                logger.warning("alert command rejected offset=%d", event.message.offset)
                yield None
                continue
            body = orjson.dumps({"t": "cmd", **{f: doc.get(f) for f in ("action", "alert_id", "by", "token_ok")}})
            for p in range(k.partitions):
                await routed.send(key=b"__control__", value=body, partition=p)
            yield None

    @app.agent(routed, name="urbansense.alerting")
    async def alerting(stream: faust.StreamT) -> AsyncIterator[None]:
        """Run the engine on each routed batch; publish its records and table changes."""
        async for events in stream.take_events(200, within=0.05):
            handle.activity.touch()
            now = wall_ms()
            for e in events:
                p = e.message.partition
                ensure(p)
                out = engine.apply(orjson.loads(e.value), now, p)
                if out:  # before the next message: a close's first (urgent) message holds its alerts
                    await publish(out)
            yield None

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        # before the new owners restore from the changelog (the rebalance waits for this)
        await flush_state(defer=False)
        await app.producer.flush()
        engine.forget()
        handle.urgency.forget()
        restored.clear()

    state = {"last_reload": 0.0}

    @app.timer(interval=1.0)
    async def alerting_tick() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():  # see streams.agents idle_tick
            return
        now = wall_ms()
        for tp in app.consumer.assignment():
            if tp.topic == routed.get_topic_name():
                ensure(tp.partition)
        out: list[dict[str, Any]] = []
        if time.monotonic() - state["last_reload"] >= RELOAD_INTERVAL_S:
            state["last_reload"] = time.monotonic()
            out += handle.check_reload(now)
        out += engine.tick(now)
        await publish(out)

    @app.page("/urbansense/alerting/")
    async def alerting_stats(web_: Any, request: Any) -> Any:
        c = engine.counters
        return web_.json({**handle.stats, **{f: getattr(c, f) for f in c.__dataclass_fields__},
                          "deferred_for_alerts_s": round(handle.activity.waited_s, 3),
                          "deferred_waits_gave_up": handle.activity.gave_up,
                          "urgent_picked": handle.urgency.picked,
                          "active": len(engine.active_alerts()), "tracks": len(engine.tracks)})

    async def _close_sinks() -> None:
        for sink in handle.sinks:
            try:
                await sink.close()
            except Exception:
                logger.exception("alert sink close failed sink=%s", type(sink).__name__)

    @app.on_before_shutdown.connect
    async def _on_shutdown(app_: Any, **kwargs: Any) -> None:
        # Faust sends this after the consumer stopped: nothing more reaches the sinks, so their
        # connections (MQTT, HTTP sessions) are closed cleanly instead of dropped with the loop.
        await _close_sinks()

    app.urbansense_alerting = handle  # type: ignore[attr-defined]
    handle.close_sinks = _close_sinks  # type: ignore[attr-defined]
    return handle


__all__ = ["URGENT_HEADER", "URGENT_HEADERS", "AlertPathActivity", "Alerting", "attach_alerting", "board_origins",
           "control_topic_for", "decode_routed", "default_sinks", "is_urgent"]
