"""End to end on real services: ``python -m benchmarks e2e [--json] [--quick]``.

Starts a Tansu broker and an InfluxDB 1.6.7 server on free loopback ports (as the integration
tests do), then for each scenario runs fresh workers on fresh topics:

* **offered loads** (``--loads``, default 1,000 and 10,000 readings/s): a publisher process sends
  live readings (event time = now, one per sensor per second, ``rate`` sensors, incidents that
  trip the packaged rules) straight to Kafka for ``--seconds``; we sample the workers' stats every
  half second (readings in, consumer lag = readings-topic end offsets - readings consumed, points
  written), read the alerts topic (arrival wall clock vs the triggering reading's event time), and
  take CPU time and peak RSS (``VmHWM``) of every worker process from ``/proc``;
* **maximum** (backlog drain): ``--backlog`` readings are produced first, then the workers start
  and consume them; the drain rate between 10 % and 90 % consumed is what the deployment holds.
  Run with 1 and 2 worker processes (scale-out), results compared point for point in InfluxDB;
* the same loads through :mod:`benchmarks.baseline_faust` (per-event agent, Faust windowed
  table, one InfluxDB request per point), compared window by window with ours;
* the time-series writer alone against the same InfluxDB (batched + gzip, and per point).

Everything here shares two cores with the broker and InfluxDB: figures that involve the broker
are broker-bound (Tansu serves roughly 9k records/s to consumers, and every record the worker
writes - aggregates, table changelog, zone partials - goes through it too). The pipeline's own
capacity, with the broker taken out, is ``python -m benchmarks pipeline``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip as gzip_lib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
#: Event time of the first backlog reading: the start of the previous hour, fixed for one run so
#: every drain run gets the same bytes (a fixed date would fall outside InfluxDB retention policies).
START_MS_BACKLOG = (time.time_ns() // 1_000_000 // 3_600_000 - 1) * 3_600_000
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ------------------------------------------------------------------------------------------
# publisher (runs in its own process: ``python -m benchmarks e2e --publish '<json spec>'``)


def feed(spec: dict[str, Any], start_ms: int) -> Any:
    """The simulated batches of a publisher spec (seeded: the same spec and start give the same bytes)."""
    from simulators import Incident, build_city, generate

    sensors, seconds = int(spec["sensors"]), int(spec["seconds"])
    city = build_city(sensors, seed=11)
    zones = city.zone_ids()[:2]
    hot_from = start_ms + int(spec.get("incident_after_s", 5)) * 1000
    incidents = [
        Incident(kind, zone, hot_from, start_ms + seconds * 1000, mag)
        for zone in zones for kind, mag in (("environment", 6.0), ("crowd", 3.0), ("iot", 4.0))
    ]
    return generate(city, start_ms=start_ms, interval_ms=1000, steps=seconds, seed=12, incidents=incidents)


def reference_windows(spec: dict[str, Any], window_ms: int) -> dict[tuple[str, str, int], tuple[float, ...]]:
    """``(sensor_id, metric, start_ms) -> (count, sum, min, max)`` of a backlog spec, computed with numpy."""
    from tests.integration.harness import numpy_reference

    payloads = (payload for b in feed(spec, int(spec["start_ms"])) for _, payload in b.to_messages())
    return {k: (v["count"], v["mean"] * v["count"], v["min"], v["max"])
            for k, v in numpy_reference(payloads, window_ms).items()}


def publish(spec: dict[str, Any]) -> dict[str, Any]:
    """Produce ``spec['sensors']`` readings per second of event time for ``spec['seconds']``.

    Live (``start_ms`` None): event time = the wall clock, paced in tenths of a second.
    Backlog (``start_ms`` given): as fast as the producer goes.
    ``spec['frame']`` > 1: up to that many readings of one partition and one event time per Kafka
    record (:mod:`streams.frames`); the readings handed
    to the producer so far are written to ``spec['progress']`` (records no longer count readings).
    """
    from confluent_kafka import Producer

    from streams.frames import Framer, encode_frame, kafka_partition

    live = spec.get("start_ms") is None
    start_ms = (time.time_ns() // 1_000_000 // 1000 + 1) * 1000 if live else int(spec["start_ms"])
    producer = Producer({
        "bootstrap.servers": spec["bootstrap"], "linger.ms": 20, "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000, "partitioner": "murmur2_random", "acks": "all",
        "enable.idempotence": True,
    })
    topic = spec["topic"]
    sent = 0
    frame, partitions = int(spec.get("frame", 1)), int(spec.get("partitions", 4))
    framer = Framer(lambda key: kafka_partition(key, partitions), frame) if frame > 1 else None
    progress = Path(spec["progress"]) if spec.get("progress") else None

    def produce(value: bytes, key: bytes | None, ts_ms: int, partition: int = -1) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key, timestamp=ts_ms, partition=partition)
                return
            except BufferError:
                producer.poll(0.05)

    batches = feed(spec, start_ms)
    if not live:  # generate first: the backlog reaches the broker without gaps
        batches = [(b.ts_ms, b.to_messages()) for b in batches]
    t_first = time.time()
    for k, item in enumerate(batches):
        ts_ms, msgs = item if isinstance(item, tuple) else (item.ts_ms, item.to_messages())
        slices = 10 if live else 1
        step = -(-len(msgs) // slices)
        for j in range(slices):
            if live:
                due = (start_ms + k * 1000 + j * 100) / 1000.0
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
            for mqtt_topic, payload in msgs[j * step : (j + 1) * step]:
                key = mqtt_topic.rsplit("/", 1)[-1].encode()
                if framer is None:
                    produce(payload, key, ts_ms)
                elif (full := framer.add(key, payload)) is not None:
                    produce(encode_frame(full[1]), None, ts_ms, full[0])
                sent += 1
            if framer is not None:  # a frame holds one event time (the baseline windows on the record's)
                for p, group in framer.drain():
                    produce(encode_frame(group), None, ts_ms, p)
            if progress is not None:
                progress.write_text(str(sent))
            producer.poll(0)
    left = producer.flush(60)
    return {"sent": sent, "undelivered": left, "start_ms": start_ms, "publish_s": time.time() - t_first}


# ------------------------------------------------------------------------------------------
# process and service helpers


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def http_json(url: str, timeout_s: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback only
        return orjson.loads(resp.read())


def influx_query(url: str, db: str, q: str) -> list[dict[str, Any]]:
    """Series of an InfluxQL query (``[]`` when there is nothing)."""
    qs = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
    doc = http_json(f"{url}/query?{qs}", timeout_s=60)
    return doc["results"][0].get("series", []) if doc.get("results") else []


def window_points(url: str, db: str) -> dict[tuple[str, str, int], tuple[float, ...]]:
    """``(sensor_id, metric, start_ms) -> (count, sum, min, max)`` of every tumbling window_agg point."""
    out = {}
    q = 'SELECT "count","sum","min","max" FROM "window_agg" WHERE "window"=\'tumbling\' GROUP BY "sensor_id","metric"'
    for series in influx_query(url, db, q):
        tags = series["tags"]
        for t, count, total, lo, hi in series["values"]:
            out[(tags["sensor_id"], tags["metric"], int(t))] = (count, total, lo, hi)
    return out


def same_windows(a: dict[tuple[str, str, int], tuple[float, ...]], b: dict[tuple[str, str, int], tuple[float, ...]],
                 rel: float = 1e-9) -> dict[str, Any]:
    """Compare the windows both sides emitted (count/min/max exactly, sum to ``rel``)."""
    common = set(a) & set(b)
    bad = [
        k for k in common
        if a[k][0] != b[k][0] or a[k][2] != b[k][2] or a[k][3] != b[k][3]
        or abs(a[k][1] - b[k][1]) > rel * max(1.0, abs(a[k][1]))
    ]
    return {"windows_compared": len(common), "only_first": len(set(a) - common), "only_second": len(set(b) - common),
            "mismatched": len(bad), "equal": bool(common) and not bad,
            "examples": [[list(k), list(a[k]), list(b[k])] for k in sorted(bad)[:3]]}


class AlertReader(threading.Thread):
    """Reads an alerts topic from the start; keeps (arrival wall ms, record)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                  "topic.metadata.refresh.interval.ms": 1000,
                                  # the instrument must not add its own wait (librdkafka's is 500 ms,
                                  # and Tansu holds a fetch for all of it)
                                  "fetch.wait.max.ms": 10})
        self.consumer.subscribe([topic])
        self.records: list[tuple[int, dict[str, Any]]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            msg = self.consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                self.records.append((time.time_ns() // 1_000_000, orjson.loads(msg.value())))
        self.consumer.close()


def end_offsets(consumer: Any, topic: str, partitions: int) -> int:
    """Sum of the topic's high watermarks (records produced so far)."""
    from confluent_kafka import TopicPartition

    total = 0
    for p in range(partitions):
        with contextlib.suppress(Exception):
            total += consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=2, cached=False)[1]
    return total


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# ------------------------------------------------------------------------------------------
# scenarios


class Bench:
    """Shared services and settings of one benchmark run."""

    def __init__(self, tmp: Path, bootstrap: str, influx_url: str, args: argparse.Namespace) -> None:
        self.tmp, self.bootstrap, self.influx_url, self.args = tmp, bootstrap, influx_url, args
        from confluent_kafka import Consumer

        self.meta = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-meta"})
        #: Idle timeout of our workers in the backlog runs: longer than a rebalance (the dead or joining
        #: member's session, about 6 s), as in tests/integration/test_faults_rebalance.py.
        self.backlog_idle_ms = 15_000
        #: ``--set`` settings for our workers, checked here so that a typo does not run a whole benchmark
        self.settings: dict[str, str] = {}
        for item in getattr(args, "set", None) or []:
            name, sep, value = item.partition("=")
            if not sep or not name.startswith("URBAN_"):
                raise SystemExit(f"e2e: --set {item!r}: expected URBAN_NAME=VALUE")
            self.settings[name] = value

    # -- processes -----------------------------------------------------------------------------
    def _env_ours(self, tag: str, workers_env: dict[str, str]) -> dict[str, str]:
        from tests.integration.harness import pipeline_env

        a = self.args
        env = pipeline_env(
            self.tmp / tag, self.bootstrap,
            URBAN_INFLUX__URL=self.influx_url, URBAN_INFLUX__VERSION="1", URBAN_INFLUX__DATABASE=f"db_{tag}",
            URBAN_WINDOW__SIZE_MS=str(a.window_s * 1000), URBAN_WINDOW__ALLOWED_LATENESS_MS=str(a.lateness_ms),
            URBAN_KAFKA__PARTITIONS=str(a.partitions), URBAN_LOG_LEVEL="INFO",
            **{"URBAN_WINDOW__IDLE_TIMEOUT_MS": "2000", **workers_env},
        )
        env.update(self.settings)
        app = env["URBAN_APP_ID"]
        env["URBAN_KAFKA__ZONE_PARTIALS_TOPIC"] = f"{app}.zone-partials"
        env["URBAN_KAFKA__ZONE_AGGREGATES_TOPIC"] = f"{app}.zone-aggregates"
        return env

    def start_ours(self, tag: str, workers: int, idle_ms: int = 2000,
                   frame: int = 1) -> tuple[list[Any], str, str, list[str]]:
        from tests.integration.harness import start_worker
        from tests.services import free_port

        # framed input, framed aggregates (the worker's own output, read by its time-series and alert agents)
        env = self._env_ours(tag, {"URBAN_WINDOW__IDLE_TIMEOUT_MS": str(idle_ms),
                                   "URBAN_KAFKA__FRAME_SIZE": str(frame)})
        procs, urls = [], []
        for i in range(workers):
            e = dict(env, URBAN_WEB_PORT=str(free_port()), URBAN_DATA_DIR=str(self.tmp / tag / f"var{i}"))
            (self.tmp / tag).mkdir(parents=True, exist_ok=True)
            procs.append(start_worker(e, self.tmp / tag, name=f"worker{i}"))
            urls.append(f"http://127.0.0.1:{e['URBAN_WEB_PORT']}/urbansense/stats/")
        return procs, env["URBAN_KAFKA__READINGS_TOPIC"], env["URBAN_KAFKA__ALERTS_TOPIC"], urls

    def start_baseline(self, tag: str) -> tuple[list[Any], str, str, list[str]]:
        from tests.integration.harness import Proc
        from tests.services import free_port

        a = self.args
        port = free_port()
        topic, alerts = f"bl-{tag}.readings", f"bl-{tag}.alerts"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("URBAN_", "BASELINE_"))}
        env.update({
            "BASELINE_BROKER": self.bootstrap, "BASELINE_TOPIC": topic, "BASELINE_ALERTS_TOPIC": alerts,
            "BASELINE_INFLUX_URL": self.influx_url, "BASELINE_DB": f"db_{tag}", "BASELINE_APP_ID": f"bl-{tag}",
            "BASELINE_WEB_PORT": str(port), "BASELINE_WINDOW_S": str(a.window_s),
            "BASELINE_LATENESS_S": str(a.lateness_ms / 1000), "BASELINE_PARTITIONS": str(a.partitions),
            "BASELINE_DATADIR": str(self.tmp / tag / "var"), "PYTHONPATH": str(ROOT),
        })
        (self.tmp / tag).mkdir(parents=True, exist_ok=True)
        log = self.tmp / tag / "baseline.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "baseline_faust", "worker"], env=env,
                                    cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        p = Proc("baseline", proc, log)
        p.wait_for("Worker ready", 90)
        return [p], topic, alerts, [f"http://127.0.0.1:{port}/baseline/stats/"]

    def run_publisher(self, spec: dict[str, Any], wait: bool) -> subprocess.Popen[bytes]:
        spec = {"bootstrap": self.bootstrap, **spec}
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "e2e", "--publish", json.dumps(spec)],
                                cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if wait:
            proc.wait()
        return proc

    def stats(self, urls: list[str]) -> list[dict[str, Any]]:
        out = []
        for u in urls:
            try:
                out.append(http_json(u))
            except (OSError, ValueError):
                out.append({})
        return out

    def wait_ready(self, urls: list[str], workers: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(s for s in self.stats(urls)):
                break
            time.sleep(0.5)
        time.sleep(6.0 if workers > 1 else 1.0)  # let the group settle (the joiner's rebalance) before load

    # -- one scenario --------------------------------------------------------------------------
    def scenario(self, system: str, *, rate: int | None, workers: int = 1, backlog: int = 0,
                 max_s: float = 120.0, frame: int = 1) -> dict[str, Any]:
        a = self.args
        tag = f"{system}-{workers}w-{rate or 'max'}-f{frame}-{uuid.uuid4().hex[:6]}"
        db = f"db_{tag}"
        # workers first (they declare the topics), then the load: no rebalance during the measurement
        if system == "baseline":
            procs, topic, alerts_topic, urls = self.start_baseline(tag)
        else:
            # A replayed (past) feed is flushed after the idle timeout (event time jumps to the wall clock,
            # the rest of the feed would be late): it must outlast the publisher's start and a rebalance.
            procs, topic, alerts_topic, urls = self.start_ours(tag, workers, self.backlog_idle_ms if backlog else 2000,
                                                               frame)
        stat_key = "readings_in"
        try:
            self.wait_ready(urls, workers)
            reader = AlertReader(self.bootstrap, alerts_topic)
            reader.start()
            cpu0 = [proc_cpu_s(p.proc.pid) for p in procs]
            t0 = time.time()
            close_after_s = 0.0  # wall clock (epoch s) before which the last windows cannot have closed
            if backlog:  # the same bytes every time: fixed start, as fast as the producer goes
                sensors = a.backlog_sensors
                spec = {"topic": topic, "sensors": sensors, "seconds": backlog // sensors, "start_ms": START_MS_BACKLOG}
                if system == "baseline":
                    # Faust expires windowed-table keys against the wall clock (Table._del_old_keys calls
                    # window.stale(ts, time.time())): a past feed would close every window at once, after
                    # its first reading. So the baseline's backlog starts just ahead of the wall clock.
                    start = (int(time.time()) // a.window_s + 2) * a.window_s * 1000
                    spec["start_ms"] = start
                    close_after_s = start / 1000 + spec["seconds"] + a.window_s + a.lateness_ms / 1000 + 3
            else:  # live: event time = wall clock
                spec = {"topic": topic, "sensors": rate, "seconds": a.seconds,
                        "incident_after_s": incident_onset_s(a.window_s)}
            progress = self.tmp / f"{tag}.progress"
            if frame > 1:  # records no longer count readings: the publisher says how many it sent
                spec.update(frame=frame, partitions=a.partitions, progress=str(progress))
            pub_out: dict[str, Any] = {}
            pub = self.run_publisher(spec, wait=False)
            samples: list[dict[str, Any]] = []
            pub_done_t = None
            target = None
            settle_until = None
            while True:
                time.sleep(0.5)
                now = time.time()
                st = self.stats(urls)
                consumed = sum(s.get(stat_key, 0) for s in st)
                produced = end_offsets(self.meta, topic, a.partitions)
                if frame > 1:
                    try:
                        produced = int(progress.read_text() or 0)
                    except (OSError, ValueError):
                        produced = 0
                samples.append({"t_s": round(now - t0, 2), "consumed": consumed, "produced": produced,
                                "lag": max(0, produced - consumed),
                                "points_written": sum(s.get("points_written", 0) for s in st)})
                if pub_done_t is None and pub.poll() is not None:
                    pub_done_t = now
                    target = produced
                    if frame > 1 and pub.stdout:
                        pub_out = orjson.loads(pub.stdout.read() or b"{}")
                        target = pub_out.get("sent", produced)
                if target is not None and consumed >= target and settle_until is None:
                    # let the last windows close (idle timeout; the baseline: Faust's wall-clock expiry)
                    wait = (self.backlog_idle_ms / 1000 if backlog and system == "ours" else a.window_s)
                    settle_until = max(now + wait + a.lateness_ms / 1000 + 6, close_after_s + 2)
                if settle_until is not None and now >= settle_until:
                    break
                if now - t0 > max_s or (not backlog and pub_done_t and now > pub_done_t + a.window_s + 25):
                    break
            end_ms = time.time_ns() // 1_000_000
            reader.stop_flag.set()
            reader.join(5)
            cpu = sum(proc_cpu_s(p.proc.pid) - c for p, c in zip(procs, cpu0, strict=True))
            rss = [round(proc_peak_rss_mb(p.proc.pid), 1) for p in procs]
            if pub.poll() is None:
                pub.kill()
            if frame <= 1 or pub_done_t is None:
                pub_out = orjson.loads(pub.stdout.read() or b"{}") if pub.stdout else {}
        finally:
            for p in procs:
                p.stop()
        out = self._summarise(system, rate, workers, backlog, samples, reader.records, cpu, rss, pub_out, db,
                              pub_done_t - t0 if pub_done_t else None)
        out["readings_per_record"] = frame
        if not backlog and not out["alerts"] and pub_out.get("start_ms"):
            # No alert arrived before we stopped watching: the incident's alerts take longer than this.
            onset_ms = pub_out["start_ms"] + spec["incident_after_s"] * 1000
            out["no_alert_within_s_of_incident_onset"] = round((end_ms - onset_ms) / 1000, 1)
        if backlog:
            reference = reference_windows(spec, a.window_s * 1000)
            out["vs_reference"] = same_windows(out["_windows"], reference)
            out["vs_reference"]["reference_windows"] = len(reference)
        return out

    def _summarise(self, system: str, rate: int | None, workers: int, backlog: int, samples: list[dict[str, Any]],
                   alerts: list[tuple[int, dict[str, Any]]], cpu: float, rss: list[float], pub: dict[str, Any],
                   db: str, pub_done_s: float | None) -> dict[str, Any]:
        a = self.args
        consumed = samples[-1]["consumed"] if samples else 0
        produced = samples[-1]["produced"] if samples else 0
        if backlog:  # drain rate between 10 % and 90 % consumed
            lo = next((s for s in samples if s["consumed"] >= 0.1 * backlog), None)
            hi = next((s for s in samples if s["consumed"] >= 0.9 * backlog), None)
            if lo is None:
                rps = 0.0
            elif hi is None or hi is lo:  # never got that far: the rate over what it did
                last = samples[-1]
                rps = (last["consumed"] - lo["consumed"]) / max(1e-9, last["t_s"] - lo["t_s"])
            else:
                rps = (hi["consumed"] - lo["consumed"]) / max(1e-9, hi["t_s"] - lo["t_s"])
        else:  # sustained: consumed while the publisher ran, over its duration
            during = [s for s in samples if pub_done_s is None or s["t_s"] <= pub_done_s]
            first = next((s for s in during if s["consumed"] > 0), during[0] if during else None)
            last = during[-1] if during else None
            rps = (last["consumed"] - first["consumed"]) / max(1e-9, last["t_s"] - first["t_s"]) if first and last \
                and last is not first else 0.0
        lat, post, post_idle = [], [], []
        by_rule: dict[str, int] = {}
        # the last event time the publisher sent: a window ending within the lateness of it was
        # closed by the idle timeout after the feed stopped, not by the watermark of a running feed
        last_ts = pub["start_ms"] + (a.seconds - 1) * 1000 if pub.get("start_ms") and not backlog else None
        for arrival, rec in alerts:
            if rec.get("state", "raised") != "raised" or "first_reading_ts_ms" not in rec:
                continue
            after = (arrival - rec["ts_ms"] - a.lateness_ms) / 1000
            if last_ts is not None and rec["ts_ms"] + a.lateness_ms > last_ts:
                post_idle.append(after)
                continue
            lat.append((arrival - rec["first_reading_ts_ms"]) / 1000)
            by_rule[str(rec.get("rule"))] = by_rule.get(str(rec.get("rule")), 0) + 1
            post.append(after)
        elapsed = samples[-1]["t_s"] if samples else 1.0
        pts = samples[-1]["points_written"] if samples else 0
        live = not backlog
        try:
            count_pts = window_points(self.influx_url, db)
        except (OSError, KeyError, ValueError):
            count_pts = {}
        return {
            "system": system, "workers": workers, "offered_per_s": rate, "backlog": backlog or None,
            "readings_per_s": round(rps), "published": pub.get("sent", produced if backlog else None),
            "consumed": consumed, "lag_at_publisher_end": next(
                (s["lag"] for s in samples if pub_done_s is not None and s["t_s"] >= pub_done_s), None),
            "max_lag": max((s["lag"] for s in samples), default=0),
            "kept_up": None if not live else bool(pub_done_s) and next(
                (s["lag"] for s in samples if s["t_s"] >= (pub_done_s or 0)), 10**9) <= (rate or 0),
            "alerts": len(lat),
            "alerts_by_rule": dict(sorted(by_rule.items())),
            "alert_latency_s": {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99)} if live else None,
            "alert_after_watermark_s": {"p50": pct(post, 0.5), "p95": pct(post, 0.95), "p99": pct(post, 0.99)}
            if live else None,
            # windows the feed's end left to the idle timeout (up to one idle interval more)
            "alerts_after_feed_stopped": len(post_idle) if live else None,
            "alert_after_watermark_s_feed_stopped": {"p50": pct(post_idle, 0.5), "p99": pct(post_idle, 0.99)}
            if live and post_idle else None,
            "cpu_ms_per_reading": round(cpu * 1000 / max(consumed, 1), 3),
            "peak_rss_mb": rss,
            "points_written": pts, "points_per_s": round(pts / max(elapsed, 1e-9)),
            "influx_window_points": len(count_pts),
            "lag_over_time": [[s["t_s"], s["lag"]] for s in samples[:: max(1, len(samples) // 60)]],
            "_windows": count_pts,
        }


def writer_bench(influx_url: str, points: int, influx_pid: int | None = None) -> dict[str, Any]:  # noqa: C901, PLR0915
    """The time-series writer alone against InfluxDB 1.x; every rate is the median of 3 runs.

    ``points`` distinct ``window_agg`` points (10,000 sensors, one window after another, 12 fields
    each), a fresh database per run. CPU per point comes from ``/proc`` (the server, when
    ``influx_pid`` is given) and ``process_time`` (this client): on a shared machine the wall-clock
    rates move with everything else that runs, the CPU costs much less.
    """
    from connectors.influx import DEFAULT_GZIP_LEVEL, InfluxV1Sink
    from connectors.lineprotocol import aggregate_point, encode_lines

    batch = 5000  # the worker's SINK_BATCH and the default batch_size: one request per write
    aggs = [
        {"sensor_id": f"s{i % 10_000:05d}", "kind": "iot", "zone": "futian", "metric": f"m{i % 4}", "unit": "kW",
         "window": "tumbling", "size_ms": 60_000, "start_ms": START_MS_BACKLOG + (i // 10_000) * 60_000,
         "count": 60, "sum": 123.5 + i, "mean": 2.05, "min": 1.0, "max": 3.0, "std": 0.5, "first": 1.0,
         "last": 2.0, "p50": 2.0, "p95": 2.9, "p99": 3.0, "rate_per_s": 0.01}
        for i in range(points)
    ]

    def server_cpu_s() -> float | None:
        return None if influx_pid is None else proc_cpu_s(influx_pid)

    def median3(f: Any) -> Any:
        return statistics.median(f() for _ in range(3))

    def cpu_us(f: Any, n: int) -> float:
        t = time.process_time()
        f()
        return (time.process_time() - t) / n * 1e6

    n_enc = min(points, 20_000)
    build_us = median3(lambda: cpu_us(lambda: [aggregate_point(x) for x in aggs[:n_enc]], n_enc))
    pts = [aggregate_point(x) for x in aggs]
    first_encode_us = cpu_us(lambda: encode_lines(pts[:n_enc]), n_enc)  # fills the series cache
    encode_us = median3(lambda: cpu_us(lambda: encode_lines(pts[:n_enc]), n_enc))
    runs: dict[str, list[dict[str, float]]] = {}

    def timed(name: str, n: int, go: Any) -> None:
        s0, c0, t0 = server_cpu_s(), time.process_time(), time.perf_counter()
        asyncio.run(go())
        wall = time.perf_counter() - t0
        time.sleep(1.0)  # the server's deferred work (cache snapshot) counts too
        s1 = server_cpu_s()
        runs.setdefault(name, []).append({
            "points_per_s": n / wall,
            "client_cpu_us": (time.process_time() - c0) / n * 1e6,
            "server_cpu_us": (s1 - s0) / n * 1e6 if s0 is not None and s1 is not None else float("nan"),
        })

    def sink_run(gzip: bool, write_points: int, n: int, **kwargs: Any) -> Any:
        kwargs.setdefault("batch_size", batch)

        async def go() -> None:
            sink = InfluxV1Sink(influx_url, f"writer_{uuid.uuid4().hex[:6]}", gzip=gzip, **kwargs)
            await sink.write(pts[:1])  # creates the database
            for lo in range(0, n, write_points):
                await sink.write(pts[lo : lo + write_points])
            await sink.close()
        return go

    def server_only(request_points: int) -> Any:
        """Pre-encoded, pre-compressed bodies, 2 in flight: what the server takes when the client costs nothing."""
        bodies = [gzip_lib.compress(encode_lines(pts[lo : lo + request_points]), DEFAULT_GZIP_LEVEL)
                  for lo in range(0, points, request_points)]

        async def go() -> None:
            import aiohttp

            db = f"writer_{uuid.uuid4().hex[:6]}"
            async with aiohttp.ClientSession() as http:
                await (await http.post(f"{influx_url}/query", data={"q": f'CREATE DATABASE "{db}"'})).read()
                queue = iter(bodies)

                async def lane() -> None:
                    for body in queue:
                        async with http.post(f"{influx_url}/write", params={"db": db, "precision": "ms"}, data=body,
                                             headers={"Content-Encoding": "gzip"}) as resp:
                            if resp.status >= 300:
                                msg = f"influx write: HTTP {resp.status}: {await resp.text()}"
                                raise RuntimeError(msg)

                await asyncio.gather(lane(), lane())
        return go

    load_before = [round(x, 2) for x in os.getloadavg()]
    for _ in range(3):  # interleaved, so a burst of other load hits every variant alike
        timed("server_only", points, server_only(batch))
        timed("server_only_50k_requests", points, server_only(10 * batch))
        timed("batched_gzip", points, sink_run(True, batch, points))
        timed("batched_gzip_50k_writes", points, sink_run(True, 10 * batch, points, batch_size=5 * batch,
                                                            max_in_flight=2))
        timed("batched_plain", points, sink_run(False, batch, points))
    n_single = min(points, 2000)
    timed("per_point", n_single, sink_run(False, 1, n_single, max_in_flight=1))

    def med(name: str, key: str, digits: int = 0) -> float | None:
        values = [r[key] for r in runs[name] if r[key] == r[key]]  # NaN: no server pid
        return round(statistics.median(values), digits or None) if values else None

    server_us = med("server_only", "server_cpu_us", 1)
    sink_client_us = med("batched_gzip", "client_cpu_us", 1)
    ceiling = round(2e6 / (server_us + sink_client_us)) if server_us and sink_client_us else None
    out: dict[str, Any] = {
        "server_only_points_per_s": med("server_only", "points_per_s"),
        "server_only_50k_requests_points_per_s": med("server_only_50k_requests", "points_per_s"),
        "batched_gzip_points_per_s": med("batched_gzip", "points_per_s"),
        "batched_gzip_50k_writes_points_per_s": med("batched_gzip_50k_writes", "points_per_s"),
        "batched_plain_points_per_s": med("batched_plain", "points_per_s"),
        "per_point_points_per_s": round(runs["per_point"][0]["points_per_s"]),
        "server_cpu_us_per_point": server_us,
        "server_cpu_us_per_point_50k_requests": med("server_only_50k_requests", "server_cpu_us", 1),
        "server_cpu_us_per_point_through_sink": med("batched_gzip", "server_cpu_us", 1),
        "client_cpu_us_per_point_through_sink": sink_client_us,
        "client_build_us_per_point": round(build_us, 2),
        "client_encode_us_per_point": round(encode_us, 2),
        "client_encode_us_per_point_cold_cache": round(first_encode_us, 2),
        "two_core_ceiling_points_per_s": ceiling,
        "server_bound": f"yes: every rate here is bound by influxd's CPU per point (server_cpu_us_per_point, "
        f"{len(pts[0].fields)} fields per point), not by the client (client_cpu_us_per_point_through_sink); "
        "two_core_ceiling_points_per_s = 2 cores / (server + client CPU per point) is the most this machine "
        "ingests in requests of 5,000 with both cores free; the wall-clock rates also move with other load",
        "points": points, "batch_size": batch, "gzip_level": DEFAULT_GZIP_LEVEL, "precision": "ms",
        "fields_per_point": len(pts[0].fields),
        "variants": {
            "server_only": "pre-encoded gzip bodies of 5,000 points, 2 requests in flight (aiohttp, no sink)",
            "server_only_50k_requests": "the same with 50,000 points per request",
            "batched_gzip": "InfluxV1Sink defaults (gzip level 1, one request in flight), write() calls of 5,000 "
            "points as the worker makes them",
            "batched_gzip_50k_writes": "InfluxV1Sink, write() calls of 50,000, batch_size 25,000, 2 in flight",
            "batched_plain": "as batched_gzip without compression",
            "per_point": "one point per request (the plain Faust baseline's way)",
        },
        "runs": {k: [{m: round(x, 1) for m, x in r.items()} for r in v] for k, v in runs.items()},
        "load_average_at_start": load_before,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    return out


def plot(result: dict[str, Any], path: Path) -> bool:
    """Latency against offered load, and consumer lag over time (PNG; False without matplotlib)."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for system, style in (("ours", "-o"), ("baseline", "--s")):
        runs = [(int(k), v) for k, v in (result.get(system) or {}).items() if k.isdigit() and v.get("alert_latency_s")]
        runs.sort()
        for q in ("p50", "p99"):
            pts = [(load, v["alert_latency_s"][q]) for load, v in runs if v["alert_latency_s"][q] is not None]
            if pts:
                ax1.plot([x for x, _ in pts], [y for _, y in pts], style, label=f"{system} {q}")
        bounds = [(load, v["no_alert_within_s_of_incident_onset"]) for load, v in runs
                  if v.get("no_alert_within_s_of_incident_onset") is not None]
        # A lower bound where no alert had arrived when the run stopped; only for ours: the baseline's
        # threshold rules do not fire on this workload at any load, so its "no alert" says nothing.
        if bounds and system == "ours":
            ax1.plot([x for x, _ in bounds], [y for _, y in bounds], "^", markersize=9,
                     label=f"{system}: no alert yet (latency > this)")
        for load, v in runs:
            ax2.plot([t for t, _ in v["lag_over_time"]], [lag for _, lag in v["lag_over_time"]], style,
                     markersize=2, label=f"{system} {load}/s")
    st = result.get("settings", {})
    ax1.set(xscale="log", xlabel="offered readings/s", ylabel="alert latency (s): triggering reading -> alerts topic",
            title=f"alert latency vs load (window {st.get('window_s')} s, lateness {st.get('allowed_lateness_ms')} ms)")
    ax2.set(xlabel="time since load started (s)", ylabel="consumer lag (records)", title="consumer lag over time")
    ax1.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def drains(bench: Bench, repeats: int) -> dict[str, Any]:
    """Backlog drain rates of one worker, ours and the baseline, framed and not: alternating, medians.

    The same machine state for every system (each repeat runs all four in turn), so the ratios are
    comparable even where the absolute rates move with other load.
    """
    a = bench.args
    f = max(a.frame, 2)
    cases = {f"ours_frame_{f}": ("ours", f, a.backlog), "ours_frame_1": ("ours", 1, a.backlog),
             f"baseline_frame_{f}": ("baseline", f, a.baseline_backlog),
             "baseline_frame_1": ("baseline", 1, a.baseline_backlog)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (system, frame, backlog) in cases.items():
            out = bench.scenario(system, rate=None, backlog=backlog, frame=frame,
                                 max_s=backlog / 2000 + 60 if system == "ours" else 3 * a.window_s + 70)
            runs[name].append({"readings_per_s": out["readings_per_s"], "cpu_ms_per_reading": out["cpu_ms_per_reading"],
                               "equal_to_reference": (out.get("vs_reference") or {}).get("equal")})
    med = {name: statistics.median(r["readings_per_s"] for r in rs) for name, rs in runs.items()}
    return {
        "median_readings_per_s": med,
        "baseline_ratio_framed": round(med[f"ours_frame_{f}"] / max(med[f"baseline_frame_{f}"], 1), 2),
        "baseline_ratio_one_per_record": round(med["ours_frame_1"] / max(med["baseline_frame_1"], 1), 2),
        "ours_framed_over_one_per_record": round(med[f"ours_frame_{f}"] / max(med["ours_frame_1"], 1), 2),
        "runs": runs, "repeats": repeats,
        "settings": {"window_s": a.window_s, "allowed_lateness_ms": a.lateness_ms, "backlog": a.backlog,
                     "baseline_backlog": a.baseline_backlog, "backlog_sensors": a.backlog_sensors, "frame": f,
                     "set": bench.settings},
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def live_loads(bench: Bench, loads: list[int], with_baseline: bool) -> dict[str, Any]:
    """Only the offered-load scenarios (live publishing): throughput, lag and alert latency per load."""
    a = bench.args
    keep = ("readings_per_s", "kept_up", "max_lag", "lag_at_publisher_end", "alerts", "alerts_by_rule",
            "alert_latency_s", "alert_after_watermark_s", "alerts_after_feed_stopped",
            "alert_after_watermark_s_feed_stopped", "cpu_ms_per_reading")
    systems = ("ours", "baseline") if with_baseline else ("ours",)
    out: dict[str, Any] = {}
    for system in systems:
        out[system] = {}
        for r in loads:
            workers = a.workers if system == "ours" else 1
            res = bench.scenario(system, rate=r, workers=workers, max_s=a.seconds + a.window_s + 40, frame=a.frame)
            out[system][str(r)] = {"workers": workers, **{k: res.get(k) for k in keep}}
    return {"loads": out, "settings": {"window_s": a.window_s, "allowed_lateness_ms": a.lateness_ms,
                                       "seconds_per_load": a.seconds, "frame": a.frame, "set": bench.settings},
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}


def incident_onset_s(window_s: int) -> int:
    """Seconds into a live load at which its incident starts (half a window, at least 2)."""
    return max(2, window_s // 2)


def live_seconds(args: argparse.Namespace) -> int:
    """Publishing time of an offered load: ``--seconds``, or longer, so that the incident's first two
    whole windows are closed by the watermark of the running feed (alert latency under load), not by
    the idle timeout once the feed has stopped.

    >>> live_seconds(argparse.Namespace(seconds=90, window_s=60, lateness_ms=5000))
    220
    """
    return max(args.seconds, incident_onset_s(args.window_s) + 3 * args.window_s + -(-args.lateness_ms // 1000) + 5)


def main(argv: list[str]) -> int:  # noqa: C901, PLR0915 - one benchmark driver
    """Run the benchmark; print JSON (``--json``) or a summary."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks e2e")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="10 s windows, 20 s per load, smaller backlogs (about 10 min)")
    ap.add_argument("--loads", default="1000,10000", help="offered readings/s (comma separated)")
    ap.add_argument("--seconds", type=int, default=90, help="publishing time per offered load")
    ap.add_argument("--window-s", type=int, default=60)
    ap.add_argument("--lateness-ms", type=int, default=5000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--backlog", type=int, default=300_000, help="readings for the maximum (drain) runs")
    ap.add_argument("--backlog-sensors", type=int, default=5000)
    ap.add_argument("--baseline-backlog", type=int, default=60_000)
    ap.add_argument("--writer-points", type=int, default=200_000)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--frame", type=int, default=100,
                    help="readings per Kafka record (streams.frames) for both systems; 1: one reading per record")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here (without per-window data)")
    ap.add_argument("--plot", type=Path, default=None, help="write the latency/lag PNG here (needs matplotlib)")
    ap.add_argument("--writer-only", action="store_true", help="only the InfluxDB writer benchmark")
    ap.add_argument("--from-json", type=Path, default=None, help="only plot a saved result")
    ap.add_argument("--pipeline-json", type=Path, default=None, help="take pipeline_readings_per_s from this file")
    ap.add_argument("--drains", type=int, default=0, metavar="N",
                    help="only the backlog drains of ours and the baseline, framed and not, N times in turn (medians)")
    ap.add_argument("--live-only", action="store_true",
                    help="only the offered loads (--loads), ours and (unless --skip-baseline) the baseline")
    ap.add_argument("--workers", type=int, default=1, help="with --live-only: our worker processes")
    ap.add_argument("--set", action="append", default=[], metavar="URBAN_NAME=VALUE",
                    help="a setting for our workers (repeatable), e.g. URBAN_GC_YOUNG_THRESHOLD=0 to compare")
    ap.add_argument("--publish", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.publish is not None:
        sys.stdout.write(json.dumps(publish(json.loads(args.publish))) + "\n")
        return 0
    if args.writer_only:
        from tests.services import run_influxd

        with tempfile.TemporaryDirectory(prefix="urban-writer-") as tmpdir, run_influxd(Path(tmpdir)) as influx:
            out = writer_bench(f"http://127.0.0.1:{influx.port}", args.writer_points, influx.proc.pid)
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    if args.from_json is not None:
        return 0 if plot(orjson.loads(args.from_json.read_bytes()), args.plot or Path("latency_vs_load.png")) else 1
    if args.quick:
        args.seconds, args.window_s, args.lateness_ms = 20, 10, 1000
        args.backlog, args.backlog_sensors, args.baseline_backlog = 60_000, 2000, 20_000
        args.writer_points = 50_000
    args.seconds = live_seconds(args)
    loads = [int(x) for x in args.loads.split(",") if x.strip()]
    from tests.services import run_influxd, run_tansu

    if args.drains or args.live_only:
        with tempfile.TemporaryDirectory(prefix="urban-e2e-") as tmpdir, contextlib.ExitStack() as stack:
            tmp = Path(tmpdir)
            tansu = stack.enter_context(run_tansu(tmp))
            influx = stack.enter_context(run_influxd(tmp))
            bench = Bench(tmp, f"127.0.0.1:{tansu.port}", f"http://127.0.0.1:{influx.port}", args)
            result = drains(bench, args.drains) if args.drains else live_loads(bench, loads, not args.skip_baseline)
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0

    t_start = time.time()
    load_before = [round(x, 2) for x in os.getloadavg()]
    # the broker-free figure first, while nothing else runs (its own benchmark, one core)
    mode = ["--quick"] if args.quick else ["--repeats", "1"]
    cmd = [sys.executable, "-m", "benchmarks", "pipeline", "--json", *mode]
    if args.pipeline_json:
        pipeline = orjson.loads(args.pipeline_json.read_bytes())
    else:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, check=False,  # noqa: S603
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        pipeline = orjson.loads(done.stdout) if done.returncode == 0 else {}
    with tempfile.TemporaryDirectory(prefix="urban-e2e-") as tmpdir, contextlib.ExitStack() as stack:
        tmp = Path(tmpdir)
        tansu = stack.enter_context(run_tansu(tmp))
        influx = stack.enter_context(run_influxd(tmp))
        bench = Bench(tmp, f"127.0.0.1:{tansu.port}", f"http://127.0.0.1:{influx.port}", args)
        writer = writer_bench(bench.influx_url, args.writer_points, influx.proc.pid)
        f = args.frame
        ours = {str(r): bench.scenario("ours", rate=r, max_s=args.seconds + args.window_s + 40, frame=f) for r in loads}
        drain_s = args.backlog / 2000 + 60
        ours["max"] = bench.scenario("ours", rate=None, backlog=args.backlog, max_s=drain_s, frame=f)
        ours["max_2_workers"] = bench.scenario("ours", rate=None, backlog=args.backlog, workers=2, max_s=drain_s,
                                               frame=f)
        if f > 1:  # what one reading per record (the MQTT bridge's output) gives
            ours["max_one_per_record"] = bench.scenario("ours", rate=None, backlog=args.backlog, max_s=drain_s)
        base: dict[str, Any] = {}
        if not args.skip_baseline:
            base = {str(r): bench.scenario("baseline", rate=r, max_s=args.seconds + args.window_s + 40, frame=f)
                    for r in loads}
            base["max"] = bench.scenario("baseline", rate=None, backlog=args.baseline_backlog,
                                         max_s=3 * args.window_s + 70, frame=f)
    one, two = ours["max"], ours["max_2_workers"]
    w1, w2 = one.pop("_windows"), two.pop("_windows")
    scale = same_windows(w1, w2)
    # the baseline's backlog starts near the wall clock (see Bench.scenario): each side against numpy
    equal_base = {"ours": one["vs_reference"], "baseline": base["max"]["vs_reference"]} if base else None
    for d in (ours, base):
        for v in d.values():
            v.pop("_windows", None)
    ten = ours.get("10000") or (ours[str(loads[-1])] if loads else {})
    result: dict[str, Any] = {
        "pipeline_readings_per_s": pipeline.get("pipeline_readings_per_s"),
        "e2e_readings_per_s": ours["max"]["readings_per_s"],
        "readings_per_record": f,
        "e2e_readings_per_s_one_per_record": (ours.get("max_one_per_record") or ours["max"])["readings_per_s"],
        "e2e_readings_per_s_2_workers": two["readings_per_s"],
        "scale_out_speedup": round(two["readings_per_s"] / max(one["readings_per_s"], 1), 2),
        "scale_out_results_equal": scale,
        "baseline_ratio": round(ours["max"]["readings_per_s"] / max(base["max"]["readings_per_s"], 1), 1)
        if base else None,
        "baseline_results_equal": equal_base,
        "alert_latency_p99_s": (ten.get("alert_latency_s") or {}).get("p99"),
        "alert_latency_p99_s_load": ten.get("offered_per_s"),
        "alert_latency_p99_s_by_load": {k: (v.get("alert_latency_s") or {}).get("p99") for k, v in ours.items()
                                        if k.isdigit()},
        "alert_after_watermark_p99_s": (ten.get("alert_after_watermark_s") or {}).get("p99"),
        "influx_points_per_s": writer["batched_gzip_points_per_s"],
        "peak_rss_mb": max(max(v["peak_rss_mb"] or [0]) for v in ours.values()),
        "broker_bound": "e2e_readings_per_s, scale-out and the baseline's rates go through Tansu (about 9k "
        "records/s to consumers on this machine); pipeline_readings_per_s and influx_points_per_s do not",
        "settings": {"window_s": args.window_s, "allowed_lateness_ms": args.lateness_ms,
                     "idle_timeout_ms": 2000, "partitions": args.partitions, "seconds_per_load": args.seconds,
                     "readings_per_record": f,
                     "backlog": args.backlog, "backlog_sensors": args.backlog_sensors, "cores": os.cpu_count(),
                     "set": bench.settings},
        "writer": writer,
        "ours": ours,
        "baseline": base,
        "run_s": round(time.time() - t_start, 1),
        "load_average_at_start": load_before,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "bench_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if base:
        for r in loads:
            b, o = base[str(r)], ours[str(r)]
            o["throughput_ratio_vs_baseline"] = round(o["readings_per_s"] / max(b["readings_per_s"], 1), 2)
            bl, ol = (b["alert_latency_s"] or {}).get("p99"), (o["alert_latency_s"] or {}).get("p99")
            o["latency_p99_ratio_vs_baseline"] = round(ol / bl, 3) if bl and ol else None
    if args.plot:
        result["plot"] = str(args.plot) if plot(result, args.plot) else None
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        sys.stdout.write(text + "\n")
    else:
        for k, v in result.items():
            if not isinstance(v, dict):
                sys.stdout.write(f"{k:32} {v}\n")
    return 0
