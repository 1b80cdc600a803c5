"""``urbansense evaluate``: run a scenario through the real pipeline and score the alerts it raised.

:func:`score_alerts` is pure: ground truth (:meth:`simulators.feed.Plan.truth`) and alert records
(the alerts topic) in, a report out. :func:`run_evaluation` is the adapter: a private Tansu
broker, fresh topics, a ``python -m streams worker`` subprocess, the scenario published to Kafka
as fast as possible, the alerts read back and scored; everything it started is stopped.
:func:`evaluate_offline` (``urbansense evaluate --offline``) runs the same scenario through the
same cores in-process, without a broker: the readings, partitioned as the producer partitions
them, through :class:`streams.pipeline.Pipeline` with the shipped models, then the closed
aggregates in event-time order through :class:`alerting.engine.AlertEngine`. It takes about a
minute for the default scenario (the broker run takes about fifteen) and is the loop to tune
rules with; the broker run remains the reference.

Matching. An alert *matches* a ground-truth record when

* the kinds agree (a crowd alert does not detect a pollution episode; alerts without a kind,
  such as silence alerts, match any kind),
* it is about the record's place: for incidents, the alert's zone is one of the incident's
  zones or a sensor of the alert (``sensor_id`` and ``evidence.sensors``) is one of its
  sensors; for faults (one sensor), a sensor of the alert is the faulty sensor,
* and its raise event time ``raised_ts_ms`` lies in ``[start - 1 window, end + 2 windows]``.

Only the first record of each ``alert_id`` counts (later records are lifecycle transitions).
Rate-limit summaries (category ``summary``) are not scored. Incident-category alerts are
scored against incidents; an incident alert that matches no incident but does match a sensor
fault is a ``fault_incident_alert`` (faults must surface as maintenance alerts only).

>>> truth = [{"id": "inc-1", "class": "incident", "kind": "crowd", "type": "surge", "zone": "futian",
...           "zones": ["futian"], "sensors": ["crd-futian-0000"], "start_ms": 0, "end_ms": 600_000}]
>>> alerts = [{"alert_id": "a1", "seq": 0, "rule": "crowd_surge", "category": "incident",
...            "subject_type": "sensor", "sensor_id": "crd-futian-0000", "zone": "futian",
...            "kind": "crowd", "raised_ts_ms": 120_000, "evidence": {"sensors": []}}]
>>> r = score_alerts(truth, alerts, 60_000)
>>> (r["precision"], r["recall"], r["median_delay_windows"], r["fault_incident_alerts"])
(1.0, 1.0, 2.0, 0)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from streams.frames import kafka_partition

logger = logging.getLogger(__name__)

__all__ = [
    "evaluate_offline",
    "evaluate_offline_with",
    "format_table",
    "offline_aggregates",
    "offline_alerts",
    "replay_engine_input",
    "rescore_run",
    "run_evaluation",
    "score_alerts",
]

_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Scoring (pure)


def _first_records(alerts: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The first record (lowest ``seq``) of each ``alert_id``, in raise-time order."""
    first: dict[str, Mapping[str, Any]] = {}
    for a in alerts:
        aid = str(a["alert_id"])
        if aid not in first or int(a.get("seq", 0)) < int(first[aid].get("seq", 0)):
            first[aid] = a
    return sorted(first.values(), key=lambda a: (int(a["raised_ts_ms"]), str(a["alert_id"])))


def _alert_sensors(a: Mapping[str, Any]) -> set[str]:
    out = {str(s) for s in (a.get("evidence") or {}).get("sensors") or ()}
    if a.get("sensor_id"):
        out.add(str(a["sensor_id"]))
    return out


def _in_time(a: Mapping[str, Any], t: Mapping[str, Any], window_ms: int) -> bool:
    ts = int(a["raised_ts_ms"])
    return int(t["start_ms"]) - window_ms <= ts <= int(t["end_ms"]) + 2 * window_ms


def _kind_ok(a: Mapping[str, Any], t: Mapping[str, Any]) -> bool:
    return a.get("kind") is None or a.get("kind") == t.get("kind")


def _matches(a: Mapping[str, Any], t: Mapping[str, Any], window_ms: int) -> bool:
    if not (_kind_ok(a, t) and _in_time(a, t, window_ms)):
        return False
    sensors = _alert_sensors(a)
    if t["class"] == "fault":
        return bool(sensors & set(t.get("sensors") or ()))
    zones = set(t.get("zones") or ()) | {t["zone"]}
    return a.get("zone") in zones or bool(sensors & set(t.get("sensors") or ()))


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _median(values: Sequence[float]) -> float | None:
    return round(float(statistics.median(values)), 3) if values else None


def _brief(a: Mapping[str, Any]) -> dict[str, Any]:
    return {
        f: a.get(f) for f in ("alert_id", "rule", "category", "kind", "zone", "sensor_id", "metric", "raised_ts_ms")
    }


def score_alerts(
    truth: Sequence[Mapping[str, Any]], alerts: Sequence[Mapping[str, Any]], window_ms: int
) -> dict[str, Any]:
    """Score alert records against ground truth (see the module docstring for the matching).

    Args:
        truth: ground-truth records (``class`` ``incident`` or ``fault``, ``kind``, ``type``,
            ``zone``, ``zones``, ``sensors``, ``start_ms``, ``end_ms``).
        alerts: alert records as on the alerts topic (every lifecycle record, in any order).
        window_ms: window size; the matching tolerance and the unit of the delays.

    Returns:
        ``precision`` (matched / incident alerts), ``recall`` (detected / incidents),
        ``median_delay_windows`` (incident start to first matching alert, >= 0, median over
        detected incidents), ``fault_incident_alerts`` (incident alerts explained only by a
        sensor fault); ``per_kind`` (by sensor kind: precision, recall, delay), ``per_type``
        (by incident type: recall, delay), ``faults`` (faults surfaced as maintenance alerts,
        by type), counts, ``missed`` incidents, ``false_alarms`` and ``fault_incident_alert_list``.
        Ratios with an empty denominator are ``None``.

    Raises:
        ValueError: ``window_ms`` is not positive.
    """
    if window_ms <= 0:
        msg = f"score_alerts: window_ms: expected > 0, got {window_ms}"
        raise ValueError(msg)
    incidents = [t for t in truth if t["class"] == "incident"]
    faults = [t for t in truth if t["class"] == "fault"]
    firsts = [a for a in _first_records(alerts) if a.get("category") != "summary"]
    inc_alerts = [a for a in firsts if a.get("category") == "incident"]
    maint_alerts = [a for a in firsts if a.get("category") == "maintenance"]

    first_hit: dict[str, int] = {}
    matched_alerts: list[Mapping[str, Any]] = []
    false_alarms: list[Mapping[str, Any]] = []
    fault_caused: list[dict[str, Any]] = []
    for a in inc_alerts:
        hits = [t for t in incidents if _matches(a, t, window_ms)]
        if hits:
            matched_alerts.append(a)
            for t in hits:
                ts = int(a["raised_ts_ms"])
                first_hit[t["id"]] = min(first_hit.get(t["id"], ts), ts)
            continue
        false_alarms.append(a)
        by_fault = [t["id"] for t in faults if _matches(a, t, window_ms)]
        if by_fault:
            fault_caused.append({**_brief(a), "faults": by_fault})

    def delay(t: Mapping[str, Any]) -> float:
        return max(0.0, (first_hit[t["id"]] - int(t["start_ms"])) / window_ms)

    def group(items: Sequence[Mapping[str, Any]], alerts_of: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
        hit = [t for t in items if t["id"] in first_hit]
        out: dict[str, Any] = {
            "incidents": len(items),
            "detected": len(hit),
            "recall": _ratio(len(hit), len(items)),
            "median_delay_windows": _median([delay(t) for t in hit]),
        }
        if alerts_of is not None:
            ok = sum(1 for a in alerts_of if a in matched_alerts)
            out = {"alerts": len(alerts_of), "true_alerts": ok, "precision": _ratio(ok, len(alerts_of)), **out}
        return out

    kinds = sorted({str(t["kind"]) for t in incidents} | {str(a.get("kind")) for a in inc_alerts if a.get("kind")})
    per_kind = {
        k: group([t for t in incidents if t["kind"] == k], [a for a in inc_alerts if a.get("kind") == k]) for k in kinds
    }
    per_type = {
        ty: group([t for t in incidents if t["type"] == ty], None) for ty in sorted({str(t["type"]) for t in incidents})
    }
    fault_types: dict[str, dict[str, int]] = {}
    for f in faults:
        row = fault_types.setdefault(str(f["type"]), {"faults": 0, "maintenance_detected": 0})
        row["faults"] += 1
        if any(_matches(a, f, window_ms) for a in maint_alerts):
            row["maintenance_detected"] += 1
    detected = [t for t in incidents if t["id"] in first_hit]
    return {
        "precision": _ratio(len(matched_alerts), len(inc_alerts)),
        "recall": _ratio(len(detected), len(incidents)),
        "median_delay_windows": _median([delay(t) for t in detected]),
        "fault_incident_alerts": len(fault_caused),
        "window_ms": window_ms,
        "incidents": len(incidents),
        "detected": len(detected),
        "faults": len(faults),
        "incident_alerts": len(inc_alerts),
        "maintenance_alerts": len(maint_alerts),
        "true_alerts": len(matched_alerts),
        "per_kind": per_kind,
        "per_type": per_type,
        "fault_types": fault_types,
        "missed": [
            {f: t.get(f) for f in ("id", "kind", "type", "zone", "start_ms", "end_ms", "severity")}
            for t in incidents
            if t["id"] not in first_hit
        ],
        "false_alarms": [_brief(a) for a in false_alarms],
        "fault_incident_alert_list": fault_caused,
    }


def format_table(report: Mapping[str, Any]) -> str:
    """A plain-text table of a report (per kind, per type, totals)."""

    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = [
        f"{'kind':<12} {'alerts':>6} {'true':>5} {'precision':>9} {'incidents':>9} {'detected':>8} "
        f"{'recall':>7} {'delay(w)':>8}"
    ]
    for k, r in report["per_kind"].items():
        lines.append(
            f"{k:<12} {r['alerts']:>6} {r['true_alerts']:>5} {f(r['precision']):>9} {r['incidents']:>9} "
            f"{r['detected']:>8} {f(r['recall']):>7} {f(r['median_delay_windows']):>8}"
        )
    lines.append(
        f"{'ALL':<12} {report['incident_alerts']:>6} {report['true_alerts']:>5} {f(report['precision']):>9} "
        f"{report['incidents']:>9} {report['detected']:>8} {f(report['recall']):>7} "
        f"{f(report['median_delay_windows']):>8}"
    )
    lines.append("")
    lines.append(f"{'type':<12} {'incidents':>9} {'detected':>8} {'recall':>7} {'delay(w)':>8}")
    for ty, r in report["per_type"].items():
        lines.append(
            f"{ty:<12} {r['incidents']:>9} {r['detected']:>8} {f(r['recall']):>7} " f"{f(r['median_delay_windows']):>8}"
        )
    lines.append("")
    lines.append(f"{'fault type':<12} {'faults':>6} {'maintenance alert':>17}")
    for ty, r in report["fault_types"].items():
        lines.append(f"{ty:<12} {r['faults']:>6} {r['maintenance_detected']:>17}")
    lines.append("")
    lines.append(
        f"fault_incident_alerts {report['fault_incident_alerts']}   maintenance_alerts "
        f"{report['maintenance_alerts']}   false_alarms {len(report['false_alarms'])}   "
        f"missed {len(report['missed'])}"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Offline: the same cores in-process, no broker


class _CountLate(logging.Filter):
    """Counts and drops the pipeline's per-reading 'late reading' warnings (thousands per run)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("late reading"):
            self.dropped += 1
            return False
        return True


def offline_aggregates(
    plan: Any,
    *,
    window_ms: int = 60_000,
    allowed_lateness_ms: int = 5_000,
    partitions: int = 4,
    scorer: Any = None,
    batch: int = 2000,
    max_ahead_ms: int = 60_000,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Closed window aggregates of ``plan``, as the worker's windows stage produces them.

    The feed (faults included) and the end marks of :func:`_publish_end_marks` are encoded as
    published, keyed by sensor id onto ``partitions`` partitions (:func:`kafka_partition`), and
    run in delivery order, ``batch`` records at a time, through one
    :class:`~streams.pipeline.Pipeline` (the worker's; zone roll-ups off: the rules do not read
    them). Each aggregate gets ``src``, its source partition, as the alert router adds it.

    Args:
        plan: a :class:`~simulators.feed.Plan`.
        window_ms: tumbling window size.
        allowed_lateness_ms: the worker's allowed lateness.
        partitions: readings topic partitions.
        scorer: a :class:`~models.stream.StreamScorer` (anomaly scores), or None.
        batch: records per micro-batch (the worker takes up to 2000).
        max_ahead_ms: the worker's guard against a clock running ahead (0: off).

    Returns:
        The aggregates (in closing order) and the pipeline's counters.
    """
    from simulators.feed import feed
    from streams.engine import WindowSpec
    from streams.pipeline import Pipeline, Record

    spec = WindowSpec(window_ms, allowed_lateness_ms, 0, 30_000, (), max_ahead_ms=max_ahead_ms)
    pipeline = Pipeline(spec, (), zones=False, scorer=scorer)
    now_ms = plan.end_ms + 86_400_000  # a wall clock after the (past) feed, as in a replay
    offsets = [0] * partitions
    out: list[dict[str, Any]] = []
    records: list[Any] = []
    quiet = _CountLate()
    plog = logging.getLogger("streams.pipeline")
    plog.addFilter(quiet)

    def flush() -> None:
        res = pipeline.process(records, now_ms)
        for agg in res.aggregates:
            agg["src"] = kafka_partition(agg["sensor_id"].encode(), partitions)
        out.extend(res.aggregates)
        records.clear()

    try:
        ends = _end_marks(plan, window_ms, allowed_lateness_ms)
        for source in (plan, ends):
            for tick in feed(source, "message"):
                for topic, payload, _ in tick:
                    key = topic.rsplit("/", 1)[1].encode()
                    p = kafka_partition(key, partitions)
                    records.append(Record(p, offsets[p], payload, key))
                    offsets[p] += 1
                if len(records) >= batch:
                    flush()
        flush()
    finally:
        plog.removeFilter(quiet)
    c = pipeline.counters
    counters = {
        "readings_in": c.readings_in,
        "late": c.late,
        "duplicates": c.duplicates,
        "dead_letters": c.dead_letters,
        "aggregates": c.aggregates,
        "held_ahead": c.held_ahead,
        "refused_ahead": c.refused_ahead,
    }
    return out, counters


def offline_alerts(
    aggregates: Iterable[Mapping[str, Any]], rules: Any, *, source_lag_ms: Mapping[int, int] | None = None
) -> list[dict[str, Any]]:
    """Alert records of ``rules`` (a :class:`~alerting.rules.RuleSet`) over closed aggregates.

    One :class:`~alerting.engine.AlertEngine` (as one worker owning every partition) gets the
    aggregates its rules look at, one window end at a time in event-time order; the host clock
    is the window end (the worker's advances as fast as a replay is consumed).

    ``source_lag_ms`` (source partition -> lag) delivers each source partition's aggregates that
    much later instead (host clock: window end + lag), as a worker reading a backlog or a fast
    replay consumes its partitions at different speeds: the broker run's disorder, reproduced.
    """
    from alerting.engine import AlertEngine

    engine = AlertEngine(rules)
    lag = dict(source_lag_ms or {})

    def at(a: Mapping[str, Any]) -> int:
        return int(a["end_ms"]) + lag.get(int(a.get("src", 0)), 0)

    wanted = sorted(
        (a for a in aggregates if engine.wants(a)),
        key=lambda a: (at(a), str(a["zone"]), str(a["sensor_id"]), str(a["metric"])),
    )
    records: list[dict[str, Any]] = []
    group: list[dict[str, Any]] = []
    now = None
    for agg in wanted:
        if now is not None and at(agg) != now:
            records += engine.process(group, now)
            group = []
        now = at(agg)
        group.append(dict(agg))
    if now is not None:
        records += engine.process(group, now)
        records += engine.tick(now)
    return records


def replay_engine_input(records: Iterable[Mapping[str, Any]], rules: Any) -> list[dict[str, Any]]:
    """Alert records of ``rules`` over a broker run's recorded engine input (``engine-input.jsonl``).

    Each record is ``{"p": partition, "o": offset, "ts": broker timestamp ms, "v": message}`` as
    :func:`run_evaluation` writes them. They are applied in broker-timestamp order (partition
    order within a partition), with the timestamp as the host clock and the engine's 1 s timer
    in between: the broker run's alerting, reproduced without the broker, to tune rules on it.
    """
    from alerting.engine import AlertEngine

    engine = AlertEngine(rules)
    out: list[dict[str, Any]] = []
    last_tick: int | None = None
    for r in sorted(records, key=lambda r: (int(r["ts"]), int(r["p"]), int(r["o"]))):
        now, p, doc = int(r["ts"]), int(r["p"]), r["v"]
        if last_tick is None:
            last_tick = now
        while now - last_tick >= 1000:
            last_tick += 1000
            out += engine.tick(last_tick)
        out += engine.apply(doc, now, p)
    if last_tick is not None:
        out += engine.tick(last_tick + 1000)
    return out


def rescore_run(settings: Any, run_dir: str | Path, window_ms: int = 60_000) -> dict[str, Any]:
    """Score ``settings``' rules on a broker run's recorded engine input (``run_dir`` of :func:`run_evaluation`)."""
    from alerting.rules import load_rules

    d = Path(run_dir)
    truth = [orjson.loads(line) for line in (d / "truth.jsonl").read_bytes().splitlines() if line]
    recorded = (orjson.loads(line) for line in (d / "engine-input.jsonl").read_bytes().splitlines() if line)
    rules = load_rules(settings.alerting.rules_file, score_available=settings.models.enabled)
    records = replay_engine_input(recorded, rules)
    report = score_alerts(truth, records, window_ms)
    report.update({"replayed_from": str(d), "alert_records": len(records)})
    return report


def evaluate_offline(
    scenario: Any = "default",
    rules_path: str | Path | None = None,
    *,
    window_ms: int = 60_000,
    allowed_lateness_ms: int = 5_000,
    partitions: int = 4,
    models: bool = True,
    models_dir: str | Path | None = None,
    aggregates: Sequence[Mapping[str, Any]] | None = None,
    source_lag_ms: Mapping[int, int] | None = None,
    max_ahead_ms: int = 60_000,
) -> dict[str, Any]:
    """Run ``scenario`` through the worker's cores in-process and score the alerts (no broker).

    The readings stage (:func:`offline_aggregates`) and the alert stage (:func:`offline_alerts`)
    are those of the worker; what is not reproduced is the broker: micro-batch boundaries,
    how partitions interleave and wall-clock effects (idle flushes, the event clock advancing
    while a loaded worker pauses).

    Args:
        scenario: a scenario name or file, or a :class:`~simulators.scenario.Scenario`.
        rules_path: rules TOML (None: the packaged defaults).
        window_ms: tumbling window size.
        allowed_lateness_ms: the worker's allowed lateness.
        partitions: readings topic partitions.
        models: score windows with the anomaly models (as the worker does by default).
        models_dir: models folder (None: the shipped artifacts).
        aggregates: closed aggregates from an earlier :func:`offline_aggregates` of the same
            scenario and window (skips the readings stage; for trying rules quickly).
        source_lag_ms: deliver source partitions this late (see :func:`offline_alerts`).
        max_ahead_ms: the worker's guard against a clock running ahead (0: off).

    Returns:
        :func:`score_alerts`'s report plus ``scenario``, ``mode`` (``"offline"``), the
        pipeline counters, ``alert_records`` and ``elapsed_s``.

    Raises:
        ScenarioError: bad scenario. RuleError: bad rules file. ModelLoadError: bad models.
    """
    from alerting.rules import load_rules
    from simulators.scenario import Scenario, load_scenario

    t0 = time.monotonic()
    scn = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    plan = scn.plan()
    rules = load_rules(rules_path, score_available=models)
    counters: dict[str, int] = {}
    if aggregates is None:
        scorer = None
        if models:
            import models as models_pkg
            from models.stream import StreamScorer

            root = Path(models_dir) if models_dir is not None else Path(models_pkg.__file__).parent / "artifacts"
            scorer = StreamScorer.from_folder(root, size_ms=window_ms)
        aggregates, counters = offline_aggregates(
            plan,
            window_ms=window_ms,
            allowed_lateness_ms=allowed_lateness_ms,
            partitions=partitions,
            scorer=scorer,
            max_ahead_ms=max_ahead_ms,
        )
    records = offline_alerts(aggregates, rules, source_lag_ms=source_lag_ms)
    report = score_alerts(plan.truth(), records, window_ms)
    report.update(
        {
            "scenario": plan.name,
            "mode": "offline",
            "source_lag_ms": {str(k): v for k, v in sorted((source_lag_ms or {}).items())},
            "sensors": len(plan.city.sensors),
            **counters,
            "alert_records": len(records),
            "elapsed_s": round(time.monotonic() - t0, 1),
        }
    )
    return report


def evaluate_offline_with(
    settings: Any, scenario: Any = "default", source_lag_ms: Mapping[int, int] | None = None
) -> dict[str, Any]:
    """:func:`evaluate_offline` with the worker's settings: rules file, window, lateness, ahead guard,
    partitions, models."""
    return evaluate_offline(
        scenario,
        settings.alerting.rules_file,
        window_ms=settings.window.size_ms,
        allowed_lateness_ms=settings.window.allowed_lateness_ms,
        partitions=settings.kafka.partitions,
        models=settings.models.enabled,
        models_dir=settings.models.dir,
        source_lag_ms=source_lag_ms,
        max_ahead_ms=settings.window.max_ahead_ms,
    )


# --------------------------------------------------------------------------------------------
# Running the pipeline (adapter)





def _get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback URL we built
            doc = orjson.loads(r.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None





def _wait(pred: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc.poll() is not None:
            msg = f"evaluate: the worker exited (code {proc.returncode}) while waiting for {what}; see {log}"
            raise RuntimeError(msg)
        time.sleep(0.5)
    msg = f"evaluate: timed out after {timeout_s:.0f} s waiting for {what}; see {log}"
    raise TimeoutError(msg)


def _drained(cfg: Mapping[str, Any], group: str, topics: Sequence[str]) -> bool:
    """Whether ``group`` has committed offsets at the end of every partition of ``topics``."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({**cfg, "group.id": group, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(timeout=5)
        tps = [TopicPartition(t, p) for t in topics if t in meta.topics for p in meta.topics[t].partitions]
        if not tps:
            return False
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=5)}
        for tp in tps:
            _, high = consumer.get_watermark_offsets(tp, timeout=5)
            if high > 0 and committed[(tp.topic, tp.partition)] < high:
                return False
        return True
    except KafkaException as exc:
        logger.warning("evaluate: cannot read committed offsets group=%s error=%s", group, exc)
        return False
    finally:
        consumer.close()


def _publish_end_marks(settings: Any, plan: Any, window_ms: int) -> int:
    """One normal reading per sensor, a window and the allowed lateness after the feed's end.

    Every partition's watermark then passes the end of the feed, so all of its windows close,
    without waiting on the (wall-clock) idle flush. Their own windows stay open and never
    produce aggregates, so they cannot raise alerts. Returns the readings published.
    """
    from connectors.kafka import producer_config
    from simulators.feed import feed
    from simulators.publish import publish_kafka

    marks = _end_marks(plan, window_ms, settings.window.allowed_lateness_ms)
    items = [x for tick in feed(marks, "message", topic_root=settings.mqtt.topic_root) for x in tick]
    return publish_kafka(items, producer_config=producer_config(settings.kafka), topic=settings.kafka.readings_topic,
                         frame=settings.kafka.frame_size)


def _end_marks(plan: Any, window_ms: int, allowed_lateness_ms: int) -> Any:
    """The one-tick plan of :func:`_publish_end_marks` (also used by :func:`evaluate_offline`)."""
    from simulators.feed import Plan

    at = plan.end_ms + window_ms + allowed_lateness_ms + plan.interval_ms
    at -= at % plan.interval_ms
    return Plan(plan.city, start_ms=at, interval_ms=plan.interval_ms, steps=1, seed=plan.seed, name="end-marks")


def run_evaluation(
    settings: Any,
    scenario: Any = "default",
    *,
    speed: float = 0,
    out_dir: str | Path,
    window_ms: int = 60_000,
    timeout_s: float = 900.0,
    idle_timeout_ms: int = 3_600_000,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``scenario`` through a private broker and worker, and score the alerts raised.

    Args:
        settings: :class:`~streams.settings.Settings`; its rules file, models and partition
            count are used; broker, topics, app id, ports and store are replaced by private ones.
        scenario: a scenario name or file, or a :class:`~simulators.scenario.Scenario`.
        speed: N times real time; 0 as fast as possible.
        out_dir: logs (``tansu.log``, ``worker.log``), ``truth.jsonl``, ``alerts.jsonl``,
            ``engine-input.jsonl`` (the alert engine's input), ``report.json`` and the worker's
            data dir go here.
        window_ms: tumbling window size of the worker (the scenario ticks every 30 s).
        timeout_s: bound on the worker catching up after publishing.
        idle_timeout_ms: the worker's idle flush (wall time); it must exceed any pause of the
            worker's consumption, or the watermark jumps to the wall clock and the rest of the
            (past) feed is late.
        progress: draw the publishing progress line on stderr.

    Returns:
        :func:`score_alerts`'s report plus ``scenario``, ``readings_published``,
        ``alert_records`` and ``elapsed_s``.

    Raises:
        FileNotFoundError: no Tansu binary.
        RuntimeError: the worker exited early.
        TimeoutError: the worker did not catch up in time.
    """
    from connectors.broker import free_port, start_tansu, stop_process
    from connectors.kafka import client_config, consume_all, ensure_topics
    from simulators.run import run_plan
    from simulators.scenario import Scenario, load_scenario
    from streams.cli import source_topics

    t0 = time.monotonic()
    scn = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    plan = scn.plan()
    truth = plan.truth()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "truth.jsonl").write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in truth))

    tag = uuid.uuid4().hex[:10]
    port, web_port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    topics = {
        "readings_topic": f"eval-{tag}.readings",
        "aggregates_topic": f"eval-{tag}.aggregates",
        "alerts_topic": f"eval-{tag}.alerts",
        "dlq_topic": f"eval-{tag}.dlq",
        "late_topic": f"eval-{tag}.late",
        "zone_partials_topic": f"eval-{tag}.zone-partials",
        "zone_aggregates_topic": f"eval-{tag}.zone-aggregates",
    }
    kafka = settings.kafka.model_copy(
        update={
            "bootstrap_servers": bootstrap,
            "extra_source_topics": "",
            "security_protocol": "PLAINTEXT",
            "sasl_mechanism": None,
            **topics,
        }
    )
    run_settings = settings.model_copy(update={"kafka": kafka})
    env = {k: v for k, v in os.environ.items() if not k.startswith("URBAN_")}
    env.update(
        {
            "URBAN_APP_ID": f"eval-{tag}",
            "URBAN_DATA_DIR": str(out / "var"),
            "URBAN_STORE__PATH": str(out / "var" / "store.db"),
            "URBAN_WEB_HOST": "127.0.0.1",
            "URBAN_WEB_PORT": str(web_port),
            "URBAN_LOG_LEVEL": "INFO",
            "URBAN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "URBAN_KAFKA__PARTITIONS": str(kafka.partitions),
            "URBAN_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "URBAN_WINDOW__SIZE_MS": str(window_ms),
            "URBAN_WINDOW__ALLOWED_LATENESS_MS": str(settings.window.allowed_lateness_ms),
            "URBAN_WINDOW__MAX_AHEAD_MS": str(settings.window.max_ahead_ms),
            "URBAN_WINDOW__MAX_PARTITION_SKEW_MS": str(settings.window.max_partition_skew_ms),
            # Idle flush: a partition silent this long (wall time) jumps its watermark to the wall
            # clock, which makes the rest of a past feed late. A loaded worker pauses partitions
            # for seconds, so keep it out of the way; the end is flushed by _publish_end_marks.
            "URBAN_WINDOW__IDLE_TIMEOUT_MS": str(idle_timeout_ms),
            "URBAN_WINDOW__ZONES": "true",
            "URBAN_MODELS__ENABLED": "true" if settings.models.enabled else "false",
            "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p),
            **{f"URBAN_KAFKA__{k.upper()}": v for k, v in topics.items()},
        }
    )
    if settings.alerting.rules_file is not None:
        env["URBAN_ALERTING__RULES_FILE"] = str(Path(settings.alerting.rules_file).resolve())
    if settings.models.dir is not None:
        env["URBAN_MODELS__DIR"] = str(Path(settings.models.dir).resolve())

    stats_url = f"http://127.0.0.1:{web_port}/urbansense/stats/"
    alerting_url = f"http://127.0.0.1:{web_port}/urbansense/alerting/"
    worker_log = out / "worker.log"
    tansu = start_tansu(port, out / "tansu.log")
    worker: subprocess.Popen[bytes] | None = None
    try:
        cfg = client_config(kafka)
        ensure_topics(cfg, source_topics(run_settings))
        with worker_log.open("wb") as fh:
            worker = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "streams", "worker", "-l", "info", "--web-port", str(web_port)],
                env=env,
                cwd=_ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait(
            lambda: "Worker ready" in worker_log.read_text(errors="replace") and _get_json(stats_url),
            120,
            "the worker to start",
            worker,
            worker_log,
        )
        logger.info(
            "evaluate: worker ready, publishing scenario=%s sensors=%d steps=%d",
            plan.name,
            len(plan.city.sensors),
            plan.steps,
        )
        published = run_plan(
            run_settings, plan, transport="kafka", speed=speed, out="", stop=threading.Event(), show_progress=progress
        )
        published += _publish_end_marks(run_settings, plan, window_ms)
        logger.info("evaluate: published readings=%d in %.1f s", published, time.monotonic() - t0)
        flushed_ms = plan.end_ms + window_ms

        def caught_up() -> bool:
            s = _get_json(stats_url)
            if not s:
                return False
            marks = [int(v) for v in s.get("watermarks_ms", {}).values()]
            return (
                s["readings_in"] >= published
                and len(marks) == kafka.partitions
                and min(marks) >= flushed_ms
                and s.get("zone_windows_open", 0) == 0
            )

        _wait(caught_up, timeout_s, f"the worker to process {published} readings", worker, worker_log)
        # The alerting stage trails the windows (aggregates -> routed by zone -> engine). Done when
        # its counters have settled and the worker's group has committed the end of the topics it
        # consumes, or (committed offsets on Tansu are not always reliable) after 20 s settled.
        inner = [
            kafka.aggregates_topic,
            kafka.zone_partials_topic,
            kafka.zone_aggregates_topic,
            f"eval-{tag}-alerting-input",
        ]
        last: tuple[Any, ...] = ()
        settled_since = time.monotonic()
        deadline = time.monotonic() + timeout_s
        while True:
            a, s = _get_json(alerting_url) or {}, _get_json(stats_url) or {}
            now = (a.get("aggregates"), a.get("alert_records"), s.get("aggregates"), s.get("alerts"))
            if now != last or not a or not s:
                last, settled_since = now, time.monotonic()
            settled = time.monotonic() - settled_since
            if (settled >= 5 and _drained(cfg, f"eval-{tag}", inner)) or settled >= 20:
                break
            if worker.poll() is not None:
                msg = f"evaluate: the worker exited (code {worker.returncode}); see {worker_log}"
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                msg = f"evaluate: timed out after {timeout_s:.0f} s waiting for the alerting stage; see {worker_log}"
                raise TimeoutError(msg)
            time.sleep(1.0)
        stats = _get_json(stats_url) or {}
        records = [orjson.loads(m.value()) for m in consume_all(cfg, kafka.alerts_topic, timeout_s=3)]
        # The alert engine's input as it came (partition, offset, broker timestamp, value): a broker
        # run's alerting can be replayed offline from it (``python -m simulators.evaluate --rescore DIR``).
        with (out / "engine-input.jsonl").open("wb") as fh:
            for m in consume_all(cfg, f"eval-{tag}-alerting-input", timeout_s=3):
                doc = {"p": m.partition(), "o": m.offset(), "ts": m.timestamp()[1], "v": orjson.loads(m.value())}
                fh.write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))
    finally:
        if worker is not None:
            stop_process(worker)
        stop_process(tansu, 10)
    (out / "alerts.jsonl").write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))
    report = score_alerts(truth, records, window_ms)
    report.update(
        {
            "scenario": plan.name,
            "sensors": len(plan.city.sensors),
            "readings_published": published,
            "readings_in": stats.get("readings_in"),
            "late": stats.get("late"),
            "duplicates": stats.get("duplicates"),
            "dead_letters": stats.get("dead_letters"),
            "alert_records": len(records),
            "elapsed_s": round(time.monotonic() - t0, 1),
        }
    )
    (out / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return report


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds run_evaluation's finally: broker and worker are stopped


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulators.evaluate [--scenario NAME] [--json] [--out-dir DIR] [--offline [--source-lag MS,..]]
    [--rescore RUN_DIR]``."""
    import argparse

    from streams.settings import Settings

    p = argparse.ArgumentParser(prog="python -m simulators.evaluate")
    p.add_argument("--scenario", default="default")
    p.add_argument("--speed", type=float, default=0.0)
    p.add_argument("--out-dir", default="var/evaluate")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--offline", action="store_true", help="in-process, no broker (see evaluate_offline)")
    p.add_argument("--rescore", metavar="RUN_DIR", help="the rules on a broker run's recorded engine input")
    p.add_argument(
        "--source-lag",
        default="",
        help="offline: comma-separated lag in ms of source partition 0, 1, ... (the broker run's disorder)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    settings = Settings()
    if args.rescore:
        report = rescore_run(settings, args.rescore)
    elif args.offline:
        lags = [int(x) for x in args.source_lag.split(",") if x.strip()]
        report = evaluate_offline_with(settings, args.scenario, dict(enumerate(lags)) or None)
    else:
        report = run_evaluation(
            settings,
            args.scenario,
            speed=args.speed,
            out_dir=args.out_dir,
            timeout_s=args.timeout,
            progress=sys.stderr.isatty(),
        )
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_table(report) + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
