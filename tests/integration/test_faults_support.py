"""Shared pieces of the fault-injection tests (no tests here): proxies, restarts, RSS, feeds, tallies."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import orjson

from simulators.city import build_city
from simulators.generators import generate
from tests.services import Service

WINDOW_MS = 60_000


def outage_s(var: str, ci_default: float, local_default: float) -> float:
    """Outage length: ``$var`` if set, else the issue's number under CI=true, else a shorter local one."""
    if os.environ.get(var):
        return float(os.environ[var])
    ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    return ci_default if ci else local_default


def feed(sensors: int, steps: int, seed: int, interval_ms: int = 5_000) -> list[tuple[str, bytes, int]]:
    """Seeded readings of all four kinds, an hour in the past, windows straddling ticks."""
    now_ms = time.time_ns() // 1_000_000
    start_ms = (now_ms - 3_600_000) // WINDOW_MS * WINDOW_MS + 7_000
    city = build_city(sensors, seed=seed)
    return [m for b in generate(city, start_ms=start_ms, interval_ms=interval_ms, steps=steps, seed=seed)
            for m in b.to_timed_messages()]


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


class RssSampler:
    """Sample a process's RSS every ``interval_s`` in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._t.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            kb = rss_kb(self.pid)
            if kb:
                self.samples.append(kb)

    def stop(self) -> list[int]:
        self._stop.set()
        self._t.join(5)
        return self.samples


def influx_rows(port: int, db: str, measurement: str = "window_agg") -> list[dict]:
    """All rows of ``measurement`` (``[]`` while the database does not exist or the server is down)."""
    import urllib.parse

    q = urllib.parse.urlencode({"db": db, "epoch": "ms", "q": f"SELECT * FROM {measurement}"})
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/query?{q}", timeout=10) as r:  # noqa: S310
            doc = orjson.loads(r.read())
    except OSError:
        return []
    rows: list[dict] = []
    for series in doc["results"][0].get("series", []):
        cols = series["columns"]
        rows += [dict(zip(cols, v, strict=True)) for v in series["values"]]
    return rows


def restart_influxd(svc: Service) -> None:
    """Start a NEW influxd with the stopped one's config (same port, same data dir); update ``svc``."""
    assert svc.proc.poll() is not None, "stop it first"
    root = svc.workdir
    log = open(root / "influxd.log", "ab")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([shutil.which("influxd") or "influxd", "-config", str(root / "influxdb.conf")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=root)
    log.close()
    svc.proc = proc  # the fixture's teardown stops the new process
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/ping", timeout=1) as resp:  # noqa: S310
                if resp.status == 204:
                    return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"influxd did not restart: {(root / 'influxd.log').read_text()[-2000:]}") from None
            time.sleep(0.1)


class TcpProxy:
    """A loopback TCP proxy (threads) that can refuse service and add latency.

    ``pause()`` closes every open connection and makes new ones close immediately (the peer
    sees a reset/EOF, as when a broker host vanishes); ``resume()`` serves again. ``delay_s``
    delays each chunk sent from the client to the target (a slow server).
    """

    def __init__(self, target_port: int, listen_port: int = 0, delay_s: float = 0.0) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", listen_port))
        self._srv.listen(128)
        self.port = int(self._srv.getsockname()[1])
        self._paused = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self.accepted = 0
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            if self._paused.is_set():
                self.refused += 1
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.accepted += 1
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream, self.delay_s), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, delay_s: float) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if delay_s:
                    time.sleep(delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._conns -= {src, dst}

    def pause(self) -> None:
        self._paused.set()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def resume(self) -> None:
        self._paused.clear()

    def close(self) -> None:
        self._closed.set()
        self.pause()
        self._srv.close()


#: the tallies of this session's fault tests, printed at the end of the run (tests/conftest.py)
FIGURES: list[str] = []


def figures(name: str, sent: int, processed: int, dead_lettered: int, **extra: object) -> int:
    """Record the no-loss tally of a fault test; returns ``lost`` (must be 0)."""
    lost = sent - processed - dead_lettered
    more = " ".join(f"{k}={v}" for k, v in extra.items())
    line = f"FAULT-FIGURES {name}: sent={sent} processed={processed} dead_lettered={dead_lettered} lost={lost} {more}"
    FIGURES.append(line.rstrip())
    print("\n" + line)
    return lost


def readings_in_windows(windows: dict[tuple[str, str, int], dict]) -> int:
    """Readings behind window aggregates: per (sensor, window) the largest metric count, summed.

    Every reading of the simulated feed carries all metrics of its kind, so this counts readings
    exactly (checked against the feed itself by the caller).
    """
    best: dict[tuple[str, int], int] = {}
    for (sensor_id, _, start_ms), agg in windows.items():
        best[(sensor_id, start_ms)] = max(best.get((sensor_id, start_ms), 0), int(agg["count"]))
    return sum(best.values())


#: Fields of an aggregate record that come from the anomaly scorer: its baselines are restored from
#: the changelog with the window state, but a re-emitted window may close with fewer of its zone
#: peers than the first time (the ``zone_z`` feature), so it may score differently.
SCORE_FIELDS = ("score", "model_version", "top_features")


def dedupe_aggregates_scored(msgs: list) -> tuple[dict[tuple[str, str, int], dict], int, int]:
    """Like ``harness.dedupe_aggregates``, but re-emitted copies may differ in :data:`SCORE_FIELDS`.

    Returns the first record per window key, how many re-emitted copies were dropped and how many
    of those carried a different score. Any other difference fails.
    """
    first: dict[tuple[str, str, int], dict] = {}
    dups = rescored = 0
    for m in msgs:
        doc = orjson.loads(m.value())
        key = (doc["sensor_id"], doc["metric"], doc["start_ms"])
        assert m.key() == doc["sensor_id"].encode(), f"aggregate key {m.key()!r} != sensor id of {doc}"
        if key not in first:
            first[key] = doc
            continue
        dups += 1
        old = first[key]
        data, old_data = ({f: v for f, v in d.items() if f not in SCORE_FIELDS} for d in (doc, old))
        assert data == old_data, f"re-emitted {key} differs:\n{old}\n{doc}"
        rescored += any(doc.get(f) != old.get(f) for f in SCORE_FIELDS)
    return first, dups, rescored
