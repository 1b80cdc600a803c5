"""The worker's processing path with the broker taken out: ``python -m benchmarks pipeline [--json]``.

Raw reading bytes (the simulators' envelope v1, 10,000 sensors reporting once a second, a few
malformed messages mixed in) go through exactly what the Faust agents run per micro-batch, on one
core, fed from memory:

* :meth:`streams.pipeline.Pipeline.process` with the worker's settings (tumbling 60 s windows,
  5 s allowed lateness, zone partials on): validate, window, close, table-state documents
  (with each batch that closes windows, and for the rest at each offset commit, every
  ``URBAN_KAFKA__COMMIT_INTERVAL_S`` of wall time, as the worker writes them);
* :class:`alerting.engine.AlertEngine` with the packaged rules on the closed aggregates (the
  alert decisions the worker's alerting agent makes);
* encoding of every aggregate, zone message, alert and table-state document to the bytes the
  agents send (Faust's JSON codec is orjson).

``pipeline_readings_per_s`` is readings over the **CPU time** of that loop (median of
``--repeats`` runs): the capacity of one core, unaffected by other processes sharing the machine.
Wall-clock figures are reported next to it. Checks, each over the whole input:

* ``batch_independent``: the aggregates (a digest of their bytes) do not depend on the batch size
  (batches of ``--batch`` and of 333);
* ``same_as_reference``: they equal those of the straightforward path, each message through
  :func:`streams.schema.parse_reading` and the readings through
  :meth:`streams.engine.PartitionWindows.add_batch`, with the dead letters and late counts;
* ``state_restores_exactly``: a worker restored from the table (the last document per key) holds
  the same open windows as the one that wrote it.

``--profile`` adds the CPU time per stage (measured around each stage's batch-level call, without
a profiler) and a cProfile run's top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import importlib
import json
import logging
import os
import pstats
import resource
import statistics
import sys
import time
import zlib
from typing import Any

import numpy as np
import orjson

from simulators import build_city, generate, malformed_corpus
from streams import schema
from streams.engine import Late, PartitionWindows, WindowSpec
from streams.errors import InvalidReading
from streams.panes import FREE, PaneStore
from streams.pipeline import Pipeline, Record
from streams.schema import Reading, parse_reading
from streams.settings import Settings

START_MS = 1_780_000_000_000
TOPIC = "urban.readings.v1"


def make_records(sensors: int, steps: int, partitions: int, bad_every: int, seed: int = 1) -> list[tuple[int, Record]]:
    """``(now_ms, record)`` in arrival order: one reading per sensor per second, keyed by sensor."""
    city = build_city(sensors, seed=seed)
    offsets = [0] * partitions
    out: list[tuple[int, Record]] = []
    bad = [raw for _, raw, _ in malformed_corpus(64, seed=seed, now_ms=START_MS)] if bad_every else []
    k = 0
    for batch in generate(city, start_ms=START_MS, interval_ms=1000, steps=steps, seed=seed + 1):
        now = batch.ts_ms + 250  # the broker hands it over a quarter second after the event
        for topic, payload in batch.to_messages():
            sid = topic.rsplit("/", 1)[-1].encode()
            p = zlib.crc32(sid) % partitions
            k += 1
            if bad and k % bad_every == 0:
                payload = bad[(k // bad_every) % len(bad)]
            out.append((now, Record(p, offsets[p], payload, sid, TOPIC)))
            offsets[p] += 1
    return out


def _alert_engine(score_available: bool) -> Any:
    from alerting.engine import AlertEngine
    from alerting.rules import load_rules

    return AlertEngine(load_rules(None, score_available=score_available))


def worker_pipeline() -> Pipeline:
    """The pipeline exactly as a worker with default settings builds it: windows and zones, the
    cardinality guard (``URBAN_MAX_SENSORS_PER_PARTITION``) and the packaged anomaly models."""
    from streams.agents import build_pipeline

    return build_pipeline(Settings())


def run(records: list[tuple[int, Record]], batch: int, *, alerts: bool = True, worker: bool = True) -> dict[str, Any]:
    """Feed ``records`` in micro-batches; return timings, counts and a digest of the aggregates.

    ``worker``: the worker's own pipeline (:func:`worker_pipeline`: guard and scorer included);
    otherwise windows and zones only, which the straightforward reference path also computes.
    """
    pipeline = worker_pipeline() if worker else Pipeline(WindowSpec(), (), zones=True)
    engine = _alert_engine(pipeline.scorer is not None) if alerts else None
    digest = hashlib.sha256()
    table: dict[str, Any] = {}
    n_aggs = n_alerts = n_state = n_bytes = n_state_bytes = 0
    dumps = orjson.dumps
    kept: list[dict[str, Any]] = []
    commit_s = Settings().kafka.commit_interval_s
    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    next_commit = w0 + commit_s
    for lo in range(0, len(records), batch):
        chunk = records[lo : lo + batch]
        now = chunk[-1][0]
        out = pipeline.process([r for _, r in chunk], now)
        out.state.extend(pipeline.closed_state())  # the worker builds them after sending the aggregates
        if time.perf_counter() >= next_commit or lo + batch >= len(records):
            # the worker's offset commit (every URBAN_KAFKA__COMMIT_INTERVAL_S of wall time, and a
            # last one here) writes the documents the batches left for it (agents.flush_state)
            out.state.extend(pipeline.take_state())
            next_commit = time.perf_counter() + commit_s
        decided = engine.process(out.aggregates, now) if engine is not None and out.aggregates else []
        for agg in out.aggregates:
            body = dumps(agg)
            n_bytes += len(body)
            digest.update(body)
        for msg in out.zone_msgs:
            n_bytes += len(dumps(msg))
        for alert in (*out.alerts, *decided):
            n_bytes += len(dumps(alert))
        for dl in out.dead_letters:
            n_bytes += len(dl.value)
        for _, key, doc in out.state:  # the table's changelog records (json key and value)
            n_state_bytes += len(dumps(key)) + len(dumps(doc))
            table[key] = doc
        n_aggs += len(out.aggregates)
        kept.extend(out.aggregates)
        n_alerts += len(out.alerts) + len(decided)
        n_state += len(out.state)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    c = pipeline.counters
    return {
        "cpu_s": cpu, "wall_s": wall, "aggregates": n_aggs, "alerts": n_alerts, "state_docs": n_state,
        "bytes_out": n_bytes, "state_bytes": n_state_bytes, "digest": digest.hexdigest(),
        "dead_letters": c.dead_letters, "late": c.late, "readings_counted": c.readings_counted,
        "open_windows": sum(pw.open_windows for pw in pipeline.partitions.values()),
        "pipeline": pipeline, "table": table, "unscored_digest": _unscored_digest(kept),
    }


#: What the scorer adds to an aggregate (models.stream.StreamScorer.score).
SCORE_FIELDS = ("score", "model_version", "top_features")


def _unscored_digest(aggregates: list[dict[str, Any]]) -> str:
    """Digest of the aggregates' bytes without the scorer's fields: the windows themselves."""
    digest = hashlib.sha256()
    for agg in aggregates:
        digest.update(orjson.dumps({k: v for k, v in agg.items() if k not in SCORE_FIELDS}))
    return digest.hexdigest()


def reference(records: list[tuple[int, Record]], batch: int) -> dict[str, Any]:
    """The straightforward path: ``parse_reading`` per message, ``add_batch`` of Reading objects per partition."""
    spec = WindowSpec()
    parts: dict[int, PartitionWindows] = {}
    digest = hashlib.sha256()
    n_aggs = dead = late = 0
    for lo in range(0, len(records), batch):
        chunk = records[lo : lo + batch]
        now = chunk[-1][0]
        by_p: dict[int, tuple[list[Reading], list[int]]] = {}
        for _, rec in chunk:
            try:
                reading = parse_reading(rec.value, now_ms=now)
            except InvalidReading:
                dead += 1
                continue
            rs, offs = by_p.setdefault(rec.partition, ([], []))
            rs.append(reading)
            offs.append(rec.offset)
        for p in sorted(by_p):
            pw = parts.setdefault(p, PartitionWindows(spec, p))
            late += sum(isinstance(x, Late) for x in pw.add_batch(*by_p[p], now))
        for p in sorted(by_p):
            for agg in parts[p].close_ready():
                digest.update(orjson.dumps(agg))
                n_aggs += 1
    return {"digest": digest.hexdigest(), "aggregates": n_aggs, "dead_letters": dead, "late": late}


def open_cells(pw: PartitionWindows) -> dict[tuple[str, str, int, int], tuple[bytes, int, list[int]]]:
    """Every open pane cell of a partition, by (sensor, metric, store, pane)."""
    out = {}
    for sid, meta in pw.sensors.items():
        for metric, slot in meta.slots.items():
            for si, store in enumerate(pw.stores):
                if not isinstance(store, PaneStore) or slot >= store.cap:
                    continue
                for r in np.flatnonzero(store.pid[slot] != FREE).tolist():
                    cell = (store.acc[slot, r].tobytes(), int(store.sk_off[slot, r]), store.sk[slot, r].tolist())
                    out[(sid, metric, si, int(store.pid[slot, r]))] = cell
    return out


def restores_exactly(result: dict[str, Any]) -> bool:
    """A pipeline restored from the table's last documents (through JSON) holds the same open windows."""
    live: Pipeline = result["pipeline"]
    items = orjson.loads(orjson.dumps(result["table"])).items()
    back = worker_pipeline() if live.scorer is not None else Pipeline(WindowSpec(), (), zones=True)
    for p, pw in live.partitions.items():
        restored = back.partition(p, items)
        if open_cells(restored) != open_cells(pw) or restored.max_ts_ms != pw.max_ts_ms:
            return False
        if any(restored.sensors[s].offset != m.offset for s, m in pw.sensors.items()):
            return False
    return True


STAGES = {
    "parse (parse_batch)": (schema, "parse_batch", "streams.pipeline"),
    "windows (PartitionWindows.add_rows)": (PartitionWindows, "add_rows", None),
    "close windows -> aggregates, zone partials": (PartitionWindows, "close_ready", None),
    "table state documents (take_dirty)": (PartitionWindows, "take_dirty", None),
    "anomaly scoring (StreamScorer.score)": ("models.stream:StreamScorer", "score", None),
    "scorer state documents (StreamScorer.state_docs)": ("models.stream:StreamScorer", "state_docs", None),
    "cardinality guard (Pipeline._admit_all)": (Pipeline, "_admit_all", None),
    "alert engine": ("alerting.engine:AlertEngine", "process", None),
}


def stage_times(records: list[tuple[int, Record]], batch: int) -> dict[str, Any]:
    """CPU time per stage, measured around each stage's batch-level call (no profiler)."""
    spent: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    saved = []

    def timed(label: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.process_time() - t

        return wrapper

    for label, (owner, name, also) in STAGES.items():
        if isinstance(owner, str):
            module, _, cls = owner.partition(":")
            try:
                owner = getattr(importlib.import_module(module), cls)
            except ImportError:
                continue
        fn = getattr(owner, name)
        saved.append((owner, name, fn))
        setattr(owner, name, timed(label, fn))
        if also:  # imported by name elsewhere
            saved.append((sys.modules[also], name, fn))
            setattr(sys.modules[also], name, getattr(owner, name))
    try:
        result = run(records, batch)
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)
    n = len(records)
    total = result["cpu_s"]
    stages = {k: round(v / n * 1e6, 2) for k, v in spent.items()}
    stages["rest: Pipeline.process glue, encoding output and state, benchmark loop"] = round(
        (total - sum(spent.values())) / n * 1e6, 2
    )
    return {"cpu_us_per_reading": round(total / n * 1e6, 2), "cpu_us_per_reading_by_stage": stages}


def profile(records: list[tuple[int, Record]], batch: int) -> dict[str, Any]:
    """Stage CPU times, plus a cProfile run's top functions by own time (cProfile inflates Python calls)."""
    out = stage_times(records, batch)
    prof = cProfile.Profile()
    prof.enable()
    run(records, batch)
    prof.disable()
    st = pstats.Stats(prof)
    total = max(st.total_tt, 1e-9)  # type: ignore[attr-defined]
    top = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]  # type: ignore[attr-defined]
    out["cprofile_top_own_time"] = [
        {"function": f"{'/'.join(k[0].rsplit('/', 2)[-2:])}:{k[1]}({k[2]})",
         "own_share": round(v[2] / total, 3), "calls": v[1]}
        for k, v in top
    ]
    return out


def main(argv: list[str]) -> int:
    """Run the benchmark; print JSON (``--json``) or a summary."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks pipeline")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sensors", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=75, help="event-time seconds (one reading per sensor each)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2000, help="records per micro-batch (the agent takes 2000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bad-every", type=int, default=1000, help="every Nth message is malformed (0: none)")
    ap.add_argument("--profile", action="store_true", help="add a cProfile breakdown")
    ap.add_argument("--quick", action="store_true", help="2,000 sensors, one run (about 30 s)")
    args = ap.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # dead-letter warnings would flood stderr
    if args.quick:
        args.sensors, args.repeats = min(args.sensors, 2000), 1
    records = make_records(args.sensors, args.seconds, args.partitions, args.bad_every)
    gc.freeze()  # the input held in memory is not part of a worker's heap: keep it out of GC passes
    runs = []
    for _ in range(args.repeats):
        r = run(records, args.batch)
        runs.append({k: v for k, v in r.items() if k not in ("pipeline", "table")})
        last = r
    n = len(records)
    cpu = statistics.median(r["cpu_s"] for r in runs)
    wall = statistics.median(r["wall_s"] for r in runs)
    small = run(records, 333, alerts=False)
    plain = run(records, args.batch, worker=False)  # windows, zones and alert engine, no guard, no models
    ref = reference(records, args.batch)
    first = runs[0]
    out: dict[str, Any] = {
        "pipeline_readings_per_s": round(n / cpu),
        "pipeline_readings_per_s_wall": round(n / wall),
        "target_readings_per_s": 100_000,
        "target_met": n / cpu >= 100_000,
        "cpu_us_per_reading": round(cpu / n * 1e6, 2),
        "readings": n,
        "sensors": args.sensors,
        "partitions": args.partitions,
        "batch_records": args.batch,
        "runs_cpu_s": [round(r["cpu_s"], 3) for r in runs],
        "runs_wall_s": [round(r["wall_s"], 3) for r in runs],
        "aggregates": first["aggregates"],
        "alert_records": first["alerts"],
        "state_docs": first["state_docs"],
        "state_bytes_per_doc": round(first["state_bytes"] / max(first["state_docs"], 1)),
        "dead_letters": first["dead_letters"],
        "late": first["late"],
        "open_windows_at_end": first["open_windows"],
        "aggregates_digest": first["digest"],
        "batch_independent": small["digest"] == first["digest"] and small["aggregates"] == first["aggregates"],
        "same_as_reference": (ref["digest"], ref["aggregates"], ref["dead_letters"], ref["late"])
        == (plain["digest"], plain["aggregates"], plain["dead_letters"], plain["late"]),
        "same_windows_with_models": last["unscored_digest"] == plain["digest"],
        "without_guard_and_models_readings_per_s": round(n / plain["cpu_s"]),
        "state_restores_exactly": restores_exactly(last),
        "workload": "envelope v1 from simulators.generate, 1 reading/s per sensor, 3-5 metrics each; "
        "the worker's pipeline with default settings (tumbling 60 s, lateness 5 s, zone partials, "
        "cardinality guard, packaged anomaly models scoring every close); AlertEngine with the packaged rules",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    del last, small, plain
    if args.profile:
        out["profile"] = profile(records, args.batch)
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        for k, v in out.items():
            sys.stdout.write(f"{k:32} {v}\n")
    return 0
