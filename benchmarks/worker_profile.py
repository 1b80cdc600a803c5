"""Where a real worker's CPU goes: ``python -m benchmarks worker_profile [--json] [--py-spy]``.

Starts a private Tansu broker and one UrbanSense worker (``urbansense worker``, embedded store),
publishes a backlog of simulated readings straight to the readings topic, and measures while the
worker drains it: readings/s (wall), the worker's and the broker's CPU time (``/proc``), so
``worker_cpu_us_per_reading`` compares directly with ``python -m benchmarks pipeline`` (the same
processing path fed from memory). With ``--py-spy`` (``pip install py-spy``; not a dependency) it
also samples the worker and reports the share of samples per part of the worker: Kafka producer,
consuming, our processing path, Faust machinery, state sends, store writer, alerting, idle.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.e2e import proc_cpu_s

#: (share name, a predicate on the ';'-joined stack), first match wins; order matters.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (waiting in epoll)", ("EpollSelector.select",)),
    ("store writer thread", ("_worker (concurrent/futures/thread.py",)),
    ("processing path (Pipeline.process and .tick)", ("streams/pipeline.py",)),
    ("table-state sends (streams.app.persist)", ("persist (streams/app.py",)),
    ("output sends (aggregates, zone partials)", ("emit (streams/agents.py",)),
    ("Kafka producer (aiokafka requests, socket writes)", ("aiokafka/producer", "Sender.")),
    ("alerting agents", ("alert_agents", "alerting/")),
    ("time-series and zone agents", ("timeseries (streams", "zones (streams", "connectors/")),
    ("consuming (aiokafka fetcher, Faust conductor)",
     ("Fetcher", "aiokafka/consumer", "_drain_messages", "conductor.py")),
    ("Kafka connection reads and protocol decoding", ("aiokafka/conn.py", "aiokafka/protocol")),
    ("Faust stream and agent machinery", ("faust/streams.py", "faust/agents", "faust/channels")),
)


OTHER = "other (event loop, Faust services)"


def categorise(raw: Path) -> dict[str, float]:
    """Shares of py-spy's raw (collapsed-stack) samples per :data:`CATEGORIES`."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        total += int(n)
        last = stack.rsplit(";", 1)[-1]
        name = next((c for c, needles in CATEGORIES[:1] if any(x in last for x in needles)), None)
        if name is None:
            name = next((c for c, needles in CATEGORIES[1:] if any(x in stack for x in needles)), OTHER)
        counts[name] += int(n)
    return {k: round(v / max(total, 1), 3) for k, v in counts.most_common()}


def run_once(
    tmp: Path, sensors: int, steps: int, py_spy: str | None, frame: int = 1, keep: Path | None = None,
) -> dict[str, Any]:
    """One worker draining ``sensors * steps`` readings; figures as in the module docstring.

    ``frame`` > 1: the backlog goes in frames of that many readings and the worker frames its
    aggregates topic too (``URBAN_KAFKA__FRAME_SIZE``, :mod:`streams.frames`). ``keep``: a path
    to copy py-spy's raw samples to (collapsed stacks, for a closer look than the shares).
    """
    from connectors.broker import free_port, start_tansu, stop_process
    from connectors.kafka import producer_config
    from simulators.city import build_city
    from simulators.generators import generate
    from simulators.publish import publish_kafka
    from streams.settings import KafkaSettings
    from tests.integration.harness import pipeline_env, start_worker, try_stats

    port = free_port()
    broker = start_tansu(port, tmp / "tansu.log")
    bootstrap = f"127.0.0.1:{port}"
    env = pipeline_env(tmp, bootstrap, URBAN_KAFKA__FRAME_SIZE=str(frame))
    now = time.time_ns() // 1_000_000
    batches = generate(build_city(sensors, seed=3), start_ms=now - 3_600_000, interval_ms=1000, steps=steps, seed=4)
    msgs = [m for b in batches for m in b.to_timed_messages()]
    worker = start_worker(env, tmp)
    spy = None
    try:
        pcfg = producer_config(KafkaSettings(bootstrap_servers=bootstrap))
        publish_kafka(msgs, producer_config=pcfg, topic=env["URBAN_KAFKA__READINGS_TOPIC"], frame=frame)
        t0, w0, b0 = time.monotonic(), proc_cpu_s(worker.proc.pid), proc_cpu_s(broker.pid)
        if py_spy:
            spy = subprocess.Popen(  # noqa: S603 - a local profiler on our own child
                [py_spy, "record", "-p", str(worker.proc.pid), "-r", "50", "-f", "raw",
                 "-o", str(tmp / "spy.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        done = 0
        while time.monotonic() - t0 < 300:
            done = (try_stats(env) or {}).get("readings_in", 0)
            if done >= len(msgs):
                break
            time.sleep(0.2)
        wall = time.monotonic() - t0
        w_cpu, b_cpu = proc_cpu_s(worker.proc.pid) - w0, proc_cpu_s(broker.pid) - b0
    finally:
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            spy.wait(30)
        worker.stop()
        stop_process(broker)
    out: dict[str, Any] = {
        "readings": len(msgs), "frame": frame, "drained": done, "wall_s": round(wall, 2),
        "readings_per_s": round(done / wall), "worker_cpu_us_per_reading": round(w_cpu * 1e6 / max(done, 1), 1),
        "broker_cpu_s": round(b_cpu, 2),
    }
    if spy is not None and (tmp / "spy.txt").exists():
        out["py_spy_shares"] = categorise(tmp / "spy.txt")
        if keep is not None:
            shutil.copyfile(tmp / "spy.txt", keep)
    return out


def main(argv: list[str]) -> int:
    """Run the profile; print JSON (``--json``) or a summary."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks worker_profile")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sensors", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=40, help="readings per sensor (one per second of event time)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frame", type=int, default=1, help="readings per Kafka record (and aggregates per record)")
    ap.add_argument("--py-spy", action="store_true", help="sample the worker with py-spy (pip install py-spy)")
    ap.add_argument("--keep-samples", type=Path, help="with --py-spy: copy each run's raw samples to PATH.N")
    args = ap.parse_args(argv)
    py_spy = None
    if args.py_spy:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(py_spy).exists():
            sys.stderr.write("--py-spy: py-spy is not installed (pip install py-spy)\n")
            return 2
    runs = []
    for i in range(args.repeats):
        keep = args.keep_samples.with_name(f"{args.keep_samples.name}.{i}") if args.keep_samples else None
        with tempfile.TemporaryDirectory(prefix="urban-wprof-") as d:
            runs.append(run_once(Path(d), args.sensors, args.steps, py_spy, args.frame, keep))
    result = {
        "worker_cpu_us_per_reading": statistics.median(r["worker_cpu_us_per_reading"] for r in runs),
        "readings_per_s": statistics.median(r["readings_per_s"] for r in runs),
        "runs": runs, "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(f"worker: {result['readings_per_s']} readings/s, "
                         f"{result['worker_cpu_us_per_reading']} µs CPU per reading (median of {len(runs)})\n")
        for r in runs:
            for k, v in (r.get("py_spy_shares") or {}).items():
                sys.stdout.write(f"  {v:6.1%}  {k}\n")
    return 0
