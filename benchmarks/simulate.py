"""Generator throughput to a file sink: ``python -m benchmarks simulate --json``.

Times the seeded generator writing JSON lines (the format ``urbansense simulate --transport file``
writes) to a temporary file, pinned to one CPU core, and reports the median of several runs as
``readings_per_s``; ``readings_per_s_with_faults`` repeats it with random incidents and faults
(all delivery faults included), and ``message_readings_per_s`` times the in-memory
``(topic, payload, ts_ms)`` path used by the MQTT and Kafka publishers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulators.city import KIND_ORDER, ZONES, plan_city
from simulators.events import Event, Fault, random_events
from simulators.feed import Plan, feed
from simulators.publish import write_lines

START_MS = 1_780_243_200_000


def _plan(sensors: int, steps: int, interval_ms: int, faults: bool) -> Plan:
    per_kind = {k: max(sensors // len(KIND_ORDER), 1) for k in KIND_ORDER}
    city = plan_city([z.zone_id for z in ZONES], per_kind, seed=1)
    incidents: list[Event] = []
    fault_list: list[Fault] = []
    if faults:
        incidents, fault_list = random_events(
            city,
            incidents=16,
            faults=40,
            start_ms=START_MS,
            end_ms=START_MS + steps * interval_ms,
            interval_ms=interval_ms,
            seed=2,
        )
    return Plan(city, START_MS, interval_ms, steps, seed=3, incidents=tuple(incidents), faults=tuple(fault_list))


def _time_file(plan: Plan, fmt: str, folder: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = write_lines(feed(plan, fmt), folder / f"bench.{fmt}")  # type: ignore[arg-type]
    return time.perf_counter() - t0, n


def _time_messages(plan: Plan) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(len(tick) for tick in feed(plan, "message"))
    return time.perf_counter() - t0, n


def main(argv: list[str]) -> int:
    """Run the benchmark; prints JSON with ``--json``, a short summary otherwise."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks simulate", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300, help="ticks per run")
    ap.add_argument("--interval-ms", type=int, default=120_000, help="event time between ticks")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    args = ap.parse_args(argv)
    pinned: list[int] | None = None
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = [cpu]
    clean = _plan(args.sensors, args.steps, args.interval_ms, faults=False)
    # Random incidents and faults need a day of simulated time to spread over.
    faulty = _plan(args.sensors, args.steps, max(args.interval_ms, -(-86_400_000 // args.steps)), faults=True)
    results: dict[str, list[float]] = {"file": [], "faults": [], "message": []}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _time_file(clean, args.format, folder)  # warm-up: lookup tables, page cache
        for _ in range(args.runs):
            for key, (dt, n) in (
                ("file", _time_file(clean, args.format, folder)),
                ("faults", _time_file(faulty, args.format, folder)),
                ("message", _time_messages(clean)),
            ):
                results[key].append(n / dt)
                counts[key] = n
    report: dict[str, Any] = {
        "readings_per_s": round(statistics.median(results["file"])),
        "readings_per_s_with_faults": round(statistics.median(results["faults"])),
        "message_readings_per_s": round(statistics.median(results["message"])),
        "runs": args.runs,
        "sensors": len(clean.city.sensors),
        "steps": args.steps,
        "readings_per_run": counts["file"],
        "readings_per_run_with_faults": counts["faults"],
        "incidents_with_faults": len(faulty.incidents),
        "faults": len(faulty.faults),
        "sink": f"file ({args.format})",
        "cpu_affinity": pinned,
        "python": sys.version.split()[0],
    }
    if args.json:
        print(json.dumps(report))  # noqa: T201 - the benchmark's output
    else:
        print(  # noqa: T201
            f"generator -> {report['sink']}: {report['readings_per_s']:,} readings/s "
            f"({report['readings_per_s_with_faults']:,} with faults), in memory {report['message_readings_per_s']:,}/s"
        )
    return 0
