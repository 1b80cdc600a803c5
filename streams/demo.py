"""``urbansense demo``: the whole pipeline on one machine, then a summary.

Starts the embedded Kafka-protocol broker (Tansu), the Faust worker, the MQTT bridge when an
MQTT broker answers (else the simulators publish to Kafka directly, and the demo says so) and the
simulators for all four feed kinds. Stops everything cleanly and prints what went through.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import click

from connectors.broker import free_port, start_tansu, stop_process
from connectors.kafka import client_config, ensure_topics, topic_message_count
from streams.settings import Settings


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), 1.0):
            return True
    except OSError:
        return False





def _store_rows(settings: Settings) -> int:
    path = Path(settings.store.path)
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM window_agg").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def run_demo(settings: Settings, *, duration_s: float, sensors: int) -> dict[str, int]:
    """Run the demo; return (and print) the summary counts."""
    var = settings.data_dir
    logs = var / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    web_port = free_port()
    env = dict(os.environ)
    app_id = f"urbansense-demo-{int(time.time())}"
    env.update(
        {
            "URBAN_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "URBAN_APP_ID": app_id,
            "URBAN_WEB_PORT": str(web_port),
            "URBAN_WINDOW__IDLE_TIMEOUT_MS": env.get("URBAN_WINDOW__IDLE_TIMEOUT_MS", "3000"),
            "URBAN_MQTT__CLIENT_ID": f"{app_id}-bridge",
        }
    )
    store = "InfluxDB at " + settings.influx.url if settings.influx.url else f"embedded store {settings.store.path}"
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    tansu = start_tansu(port, logs / "tansu.log")
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{port}"})
    cfg = client_config(kafka)
    summary: dict[str, int] = {}
    rows_before = _store_rows(settings)

    def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append((name, proc))
        return proc

    try:
        from streams.cli import source_topics

        ensure_topics(cfg, source_topics(settings))
        click.echo(f"demo: broker tansu on 127.0.0.1:{port}; time series -> {store}; logs in {logs}/")
        spawn("worker", "worker", "-l", "info", "--web-port", str(web_port))
        mqtt_addr = f"{settings.mqtt.host}:{settings.mqtt.port}"
        mqtt_up = _answers(settings.mqtt.host, settings.mqtt.port)
        if mqtt_up:
            click.echo(
                f"demo: MQTT broker answers on {mqtt_addr}: simulators -> MQTT -> bridge -> Kafka"
            )
            spawn("bridge", "bridge")
            transport = "mqtt"
        else:
            click.echo(
                f"demo: no MQTT broker on {mqtt_addr}: simulators publish to Kafka directly"
            )
            transport = "kafka"
        time.sleep(3.0)
        span_s = max(duration_s, 10.0)
        sim = spawn(
            "simulator",
            "simulate",
            "--transport",
            transport,
            "--sensors",
            str(sensors),
            "--interval",
            "10s",
            "--duration",
            f"{int(span_s * 60)}s",
            "--start",
            f"-{int(span_s * 60) + 120}s",
            "--speed",
            "60",
            "--malformed-every",
            "500",
        )
        click.echo(f"demo: running for {duration_s:.0f} s with {sensors} sensors (simulated time at 60x) ...")
        # the duration counts from the first reading in Kafka, not from the simulator's start-up
        # (on a loaded machine starting the simulator and its connection took most of 15 s)
        first_by = time.monotonic() + 60.0
        while (time.monotonic() < first_by and sim.poll() is None
               and topic_message_count(cfg, settings.kafka.readings_topic) == 0):
            time.sleep(0.5)
        deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        with contextlib.suppress(KeyboardInterrupt):
            while time.monotonic() < deadline and all(p.poll() is None for n, p in procs if n != "simulator"):
                time.sleep(0.5)
        stop_process(sim)
        time.sleep(6.0)  # let the worker drain and the idle timeout flush open windows
        k = settings.kafka
        summary = {
            "readings_in": topic_message_count(cfg, k.readings_topic),
            "aggregates": topic_message_count(cfg, k.aggregates_topic),
            "alerts": topic_message_count(cfg, k.alerts_topic),
            "dead_letters": topic_message_count(cfg, k.dlq_topic),
            "late_readings": topic_message_count(cfg, k.late_topic),
        }
        if k.frame_size > 1:  # the counts above are Kafka records, each a frame of up to this many
            summary["records_hold_up_to"] = k.frame_size
        if not settings.influx.url:
            summary["aggregates_stored"] = _store_rows(settings) - rows_before
    finally:
        for _, proc in reversed(procs):
            stop_process(proc)
        tansu.terminate()
        try:
            tansu.wait(10)
        except subprocess.TimeoutExpired:
            tansu.kill()
    click.echo("demo summary:")
    for key, value in summary.items():
        click.echo(f"  {key:<20} {value}")
    return summary
