"""Windowing engine benchmark: ``python -m benchmarks windowing [--json] [--readings N]``.

Feeds N readings (default 1,000,000) from 10,000 sensors with 4 metrics each (5 % out of order,
0.5 % late) through the engine core (:class:`streams.engine.PartitionWindows`, tumbling 1-minute
windows, every aggregate including the p50/p95/p99 sketch), in micro-batches, on one core. Speeds are
readings over the process's CPU time (unaffected by other jobs on a shared machine); wall times are beside.

In the same run it feeds the same input through a straightforward per-event implementation on
Faust-style dict tables (a dict per window, the ``ddsketch`` library per window for quantiles,
closing by watermark) and reports ``naive_ratio`` = engine speed / naive speed. Both outputs are
compared (counts, sums, min/max) so the ratio is between equal results.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import resource
import statistics
import sys
import time
from typing import Any

import numpy as np
from ddsketch import DDSketch

from streams.engine import PartitionWindows, WindowSpec

SENSORS = 10_000
METRICS = 4
WINDOW_MS = 60_000
LATENESS_MS = 5_000


def make_input(n_readings: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sensor index, event time and 4 values per reading, in arrival order."""
    rng = np.random.default_rng(seed)
    rounds = -(-n_readings // SENSORS)
    sensor = np.tile(np.arange(SENSORS), rounds)[:n_readings]
    ts = 1_800_000_000_000 + np.repeat(np.arange(rounds) * 10_000, SENSORS)[:n_readings]
    ts = ts + rng.integers(0, 10_000, n_readings)  # each sensor reports once per 10 s
    order = np.argsort(ts, kind="stable")
    sensor, ts = sensor[order], ts[order]
    n = n_readings
    ooo = rng.random(n) < 0.05  # 5 % out of order: up to 4 s behind (within the allowed lateness)
    ts = np.where(ooo, ts - rng.integers(1, 4_000, n), ts)
    late = rng.random(n) < 0.005  # 0.5 % late: 2 minutes behind
    ts = np.where(late, ts - 120_000, ts)
    base = 50 + 30 * np.sin(ts / 3_600_000.0)[:, None] + rng.normal(0, 5, (n, METRICS))
    return sensor.astype(np.int64), ts.astype(np.int64), base.astype(np.float64)


def run_engine(sensor: np.ndarray, ts: np.ndarray, vals: np.ndarray, batch: int) -> tuple[float, dict[str, Any]]:
    pw = PartitionWindows(WindowSpec(WINDOW_MS, LATENESS_MS, 0, 30_000))
    for s in range(SENSORS):  # slot registry, as a worker has it after the first minutes
        pw.register(f"s{s:05d}", "iot", "futian", {f"m{m}": "" for m in range(METRICS)})
    closed = 0
    total_count = 0
    total_sum = 0.0
    late = 0
    open_peak = 0
    bytes_peak = 0
    t0, w0 = time.process_time(), time.perf_counter()
    for lo in range(0, len(sensor), batch):
        s = sensor[lo : lo + batch]
        slot = (s[:, None] * METRICS + np.arange(METRICS)).reshape(-1)
        t = np.repeat(ts[lo : lo + batch], METRICS)
        v = vals[lo : lo + batch].reshape(-1)
        late += pw.add_columns(slot, t, v) // METRICS
        open_now = pw.open_windows
        if open_now > open_peak:
            open_peak = open_now
            bytes_peak = sum(st.state_bytes() for st in pw.stores)
        for _, c in pw.close_columns():
            cols = c.columns()
            closed += len(c)
            total_count += int(cols["count"].sum())
            total_sum += float(cols["sum"].sum())
    pw.max_ts_ms += 10 * WINDOW_MS
    for _, c in pw.close_columns():
        cols = c.columns()
        closed += len(c)
        total_count += int(cols["count"].sum())
        total_sum += float(cols["sum"].sum())
    elapsed = time.process_time() - t0
    return elapsed, {
        "wall_s": time.perf_counter() - w0,
        "windows": closed, "values": total_count, "sum": total_sum, "late": late,
        "open_peak": open_peak, "state_bytes_at_peak": bytes_peak,
    }


def run_naive(sensor: np.ndarray, ts: np.ndarray, vals: np.ndarray) -> tuple[float, dict[str, Any]]:
    """Per event: look up a dict per (sensor, metric, window) like a Faust table, update it."""
    table: dict[tuple[int, int, int], dict[str, Any]] = {}
    ends: list[tuple[int, tuple[int, int, int]]] = []
    max_ts = -(2**62)
    closed = 0
    total_count = 0
    total_sum = 0.0
    late = 0
    sensor_l, ts_l, vals_l = sensor.tolist(), ts.tolist(), vals.tolist()
    t0, w0 = time.process_time(), time.perf_counter()
    for s, t, row in zip(sensor_l, ts_l, vals_l, strict=True):
        wm = max_ts - LATENESS_MS
        start = t - t % WINDOW_MS
        if start + WINDOW_MS <= wm:
            late += 1
            continue
        for m, v in enumerate(row):
            key = (s, m, start)
            w = table.get(key)
            if w is None:
                w = table[key] = {"count": 0, "sum": 0.0, "sumsq": 0.0, "min": v, "max": v,
                                  "first": (t, v), "last": (t, v), "sketch": DDSketch(0.02)}
                heapq.heappush(ends, (start + WINDOW_MS, key))
            w["count"] += 1
            w["sum"] += v
            w["sumsq"] += v * v
            w["min"] = min(w["min"], v)
            w["max"] = max(w["max"], v)
            if t < w["first"][0]:
                w["first"] = (t, v)
            if t >= w["last"][0]:
                w["last"] = (t, v)
            w["sketch"].add(v)
        max_ts = max(max_ts, t)
        wm = max_ts - LATENESS_MS
        while ends and ends[0][0] <= wm:
            _, key = heapq.heappop(ends)
            w = table.pop(key)
            q = [w["sketch"].get_quantile_value(x) for x in (0.5, 0.95, 0.99)]
            del q
            closed += 1
            total_count += w["count"]
            total_sum += w["sum"]
    for key, w in table.items():
        del key
        closed += 1
        total_count += w["count"]
        total_sum += w["sum"]
    elapsed = time.process_time() - t0
    wall = time.perf_counter() - w0
    return elapsed, {"wall_s": wall, "windows": closed, "values": total_count, "sum": total_sum, "late": late}


def main(argv: list[str]) -> int:
    """Run the benchmark; print JSON (``--json``) or a summary."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks windowing")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=20_000, help="readings per micro-batch")
    ap.add_argument("--repeats", type=int, default=3, help="engine runs; the median is reported")
    ap.add_argument("--naive-readings", type=int, default=0,
                    help="readings for the naive run (default: all; a prefix of the same input)")
    args = ap.parse_args(argv)
    sensor, ts, vals = make_input(args.readings)
    times = []
    result: dict[str, Any] = {}
    for _ in range(args.repeats):
        gc.collect()
        elapsed, result = run_engine(sensor, ts, vals, args.batch)
        times.append(elapsed)
    engine_s = statistics.median(times)
    nn = args.naive_readings or args.readings
    naive_s, naive = run_naive(sensor[:nn], ts[:nn], vals[:nn])
    if nn == args.readings:
        same = naive["windows"] == result["windows"] and naive["values"] == result["values"]
        same = same and abs(naive["sum"] - result["sum"]) <= 1e-9 * abs(naive["sum"])
    else:
        same = None
    out = {
        "readings": args.readings,
        "sensors": SENSORS,
        "metrics_per_reading": METRICS,
        "window": "tumbling 60 s, lateness 5 s, aggregates count/sum/mean/min/max/std/first/last/rate/p50/p95/p99",
        "batch_readings": args.batch,
        "readings_per_s": args.readings / engine_s,
        "timing": "CPU time of this process (one core), median of the engine runs; wall times beside",
        "engine_cpu_s_runs": times,
        "engine_wall_s_last": result["wall_s"],
        "naive_wall_s": naive["wall_s"],
        "naive_readings_per_s": nn / naive_s,
        "naive_ratio": (args.readings / engine_s) / (nn / naive_s),
        "results_equal": same,
        "windows_closed": result["windows"],
        "late_readings": result["late"],
        "open_windows_peak": result["open_peak"],
        "state_bytes_per_open_window": result["state_bytes_at_peak"] / max(result["open_peak"], 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        for k, v in out.items():
            sys.stdout.write(f"{k:32} {v}\n")
    return 0
