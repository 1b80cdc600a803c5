"""Run UrbanSense processes (worker, bridge) against the test services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] | None = None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: {needle!r} not seen in {timeout_s} s; log tail:\n{self.text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def pipeline_env(tmp: Path, bootstrap: str, **extra: str) -> dict[str, str]:
    """Environment for one isolated pipeline: fresh app id, topics, MQTT root and client ids."""
    tag = uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith("URBAN_")}
    env.update(
        {
            "URBAN_APP_ID": f"t-{tag}",
            "URBAN_DATA_DIR": str(tmp / "var"),
            "URBAN_STORE__PATH": str(tmp / "var" / "store.db"),
            "URBAN_WEB_PORT": str(free_port()),
            "URBAN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "URBAN_KAFKA__READINGS_TOPIC": f"t-{tag}.readings",
            "URBAN_KAFKA__AGGREGATES_TOPIC": f"t-{tag}.aggregates",
            "URBAN_KAFKA__ALERTS_TOPIC": f"t-{tag}.alerts",
            "URBAN_KAFKA__DLQ_TOPIC": f"t-{tag}.dlq",
            "URBAN_KAFKA__LATE_TOPIC": f"t-{tag}.late",
            "URBAN_KAFKA__ZONE_PARTIALS_TOPIC": f"t-{tag}.zone-partials",
            "URBAN_KAFKA__ZONE_AGGREGATES_TOPIC": f"t-{tag}.zone-aggregates",
            "URBAN_MQTT__TOPIC_ROOT": f"city{tag}",
            "URBAN_MQTT__CLIENT_ID": f"bridge-{tag}",
            "URBAN_WINDOW__IDLE_TIMEOUT_MS": "2000",
            "URBAN_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def start(name: str, env: dict[str, str], tmp: Path, *args: str) -> Proc:
    log = tmp / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams", *args], env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT
        )
    started = Proc(name, proc, log, env)
    _STARTED.append(started)
    return started


_STARTED: list[Proc] = []


#: log lines worth quoting (matched in lower case) when a wait times out (the rest is routine INFO)
NOTABLE = ("warning", "error", "critical", "crashed", "rewinds", "levelling", "restored window state",
           "stopped draining", "revok", "assign", "rebalanc", "has not committed")


def log_excerpt(text: str, notable: int = 30, tail: int = 12) -> str:
    """The last ``notable`` lines of interest and the last ``tail`` lines of a worker log."""
    lines = text.splitlines()
    picked = [ln for ln in lines if any(w in ln.lower() for w in NOTABLE)
              and not ln.startswith(("|", "+")) and "__assignor" not in ln][-notable:]
    return "\n".join(["  notable:", *(f"    {ln[:300]}" for ln in picked), "  tail:",
                      *(f"    {ln[:300]}" for ln in lines[-tail:])])


def diagnose_live_workers() -> str:
    """Ask every live worker to dump its stacks into its log; return their stats and log excerpts.

    ``SIGUSR1`` makes Faust's (mode's) worker print every thread and asyncio task with its stack
    (it needs a running event loop); ``SIGQUIT`` makes ``faulthandler`` print the threads' stacks
    even when the loop is blocked. Called when a wait times out, so a stalled worker explains
    itself in the test's output (CI keeps only that: the excerpt is taken from the log as it was
    before the dumps; the dumps stay in the log file).
    """
    lines = []
    live = [p for p in _STARTED if p.proc.poll() is None and p.env is not None and "worker" in p.name]
    before = {p.name: p.text() for p in live}
    for p in live:
        p.proc.send_signal(signal.SIGUSR1)
    time.sleep(1.5)
    for p in live:
        p.proc.send_signal(signal.SIGQUIT)
    time.sleep(0.5)
    for p in live:
        assert p.env is not None
        lines.append(f"{p.name} (pid {p.proc.pid}, log {p.log}): stats {try_stats(p.env)}")
        lines.append(log_excerpt(before[p.name]))
    return "\n".join(lines)


def start_worker(env: dict[str, str], tmp: Path, name: str = "worker") -> Proc:
    p = start(name, env, tmp, "worker", "-l", "info")
    p.wait_for("Worker ready", 90)
    return p


def start_bridge(env: dict[str, str], tmp: Path) -> Proc:
    p = start("bridge", env, tmp, "bridge")
    p.wait_for("mqtt subscribed", 30)
    return p


def stats(env: dict[str, str]) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{env['URBAN_WEB_PORT']}/urbansense/stats/", timeout=5) as r:  # noqa: S310
        return orjson.loads(r.read())


def kafka_cfg(env: dict[str, str]) -> dict[str, str]:
    return {"bootstrap.servers": env["URBAN_KAFKA__BOOTSTRAP_SERVERS"]}


# --------------------------------------------------------------------------------------------
# Helpers for the recovery, replay-speed and Kafka-native tests (added; nothing above changed).

import sqlite3  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from streams.schema import parse_ts  # noqa: E402


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25) -> None:
    """Poll ``pred`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{diagnose_live_workers()}")


def try_stats(env: dict[str, str]) -> dict | None:
    """The worker's stats page, or ``None`` while its web server is not answering."""
    try:
        return stats(env)
    except OSError:
        return None


def store_window_rows(env: dict[str, str]) -> list[dict]:
    """Every ``window_agg`` row of the worker's embedded SQLite store (``[]`` before the first write)."""
    path = Path(env["URBAN_STORE__PATH"])
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute('SELECT * FROM "window_agg"')]
        except sqlite3.OperationalError as exc:  # table not created yet
            if "no such table" in str(exc):
                return []
            raise
    finally:
        conn.close()


def numpy_reference(payloads: Iterable[bytes], window_ms: int) -> dict[tuple[str, str, int], dict[str, float]]:
    """Window aggregates per ``(sensor_id, metric, start_ms)`` computed with numpy from readings.

    ``first``/``last`` are by event time (ties keep input order); ``mean`` is numpy's.
    """
    groups: dict[tuple[str, str, int], tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for payload in payloads:
        doc = orjson.loads(payload)
        ts = parse_ts(doc["ts"], "ts")
        for metric, entry in doc["metrics"].items():
            tss, vals = groups[(doc["sensor_id"], metric, ts - ts % window_ms)]
            tss.append(ts)
            vals.append(float(entry["value"]))
    out: dict[tuple[str, str, int], dict[str, float]] = {}
    for key, (tss, vals) in groups.items():
        v = np.asarray(vals, dtype=np.float64)
        order = np.argsort(np.asarray(tss, dtype=np.int64), kind="stable")
        out[key] = {
            "count": len(v),
            "min": float(v.min()),
            "max": float(v.max()),
            "mean": float(v.mean()),
            "first": float(v[order[0]]),
            "last": float(v[order[-1]]),
        }
    return out


def assert_matches_reference(
    got: dict[tuple[str, str, int], dict], reference: dict[tuple[str, str, int], dict[str, float]], where: str
) -> None:
    """``got`` (aggregate records or store rows by window key) equals ``reference``.

    count/min/max/first/last exactly, mean to 1e-9 (relative to max(1, |mean|)).
    """
    missing = sorted(set(reference) - set(got))
    extra = sorted(set(got) - set(reference))
    assert not missing, f"{where}: {len(missing)} windows missing, e.g. {missing[:3]}"
    assert not extra, f"{where}: {len(extra)} unexpected windows, e.g. {extra[:3]}"
    bad = []
    for key, ref in reference.items():
        r = got[key]
        exact = all(r[f] == ref[f] for f in ("count", "min", "max", "first", "last"))
        if not exact or abs(r["mean"] - ref["mean"]) > 1e-9 * max(1.0, abs(ref["mean"])):
            bad.append((key, {f: r[f] for f in ref}, ref))
    assert not bad, f"{where}: {len(bad)} windows differ from the numpy reference, e.g. {bad[:2]}"


def dedupe_aggregates(msgs: Iterable[Any]) -> tuple[dict[tuple[str, str, int], dict], int]:
    """Aggregate records by ``(sensor_id, metric, start_ms)``; re-emitted copies must be byte-identical.

    Returns the records by key and how many re-emitted duplicates were dropped.
    """
    raw: dict[tuple[str, str, int], bytes] = {}
    dups = 0
    for m in msgs:
        doc = orjson.loads(m.value())
        key = (doc["sensor_id"], doc["metric"], doc["start_ms"])
        assert m.key() == doc["sensor_id"].encode(), f"aggregate key {m.key()!r} != sensor id of {doc}"
        if key in raw:
            assert raw[key] == m.value(), f"re-emitted aggregate {key} differs:\n{raw[key]!r}\n{m.value()!r}"
            dups += 1
        else:
            raw[key] = m.value()
    return {k: orjson.loads(v) for k, v in raw.items()}, dups
