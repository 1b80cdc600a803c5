"""MqttAlertSink against the real private Mosquitto: QoS 1 events and retained active state."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from alerting.notifiers import AlertSink, MqttAlertError, MqttAlertSink
from tests.services import Service, free_port, missing, run_mosquitto
from tests.unit.alerting_sinks.records import make_alert, zone_alert

pytestmark = pytest.mark.integration

PASSWORD = "alerts-pa55-w0rd"  # noqa: S105 - a test password


@dataclass
class Seen:
    messages: list[paho.MQTTMessage] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def retained(self) -> dict[str, bytes]:
        return {m.topic: m.payload for m in self.messages if m.retain}

    def live(self) -> list[tuple[str, dict]]:
        return [(m.topic, orjson.loads(m.payload)) for m in self.messages if not m.retain and m.payload]


class Subscriber:
    """A plain paho subscriber to ``<root>/#`` (a fresh session each time)."""

    def __init__(self, port: int, root: str) -> None:
        self.seen = Seen()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{root}/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.seen.subscribed.set()
        self.client.on_message = lambda c, u, msg: self.seen.messages.append(msg)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.seen.subscribed.wait(5), "no SUBACK"

    def settle(self, seconds: float = 0.6) -> Seen:
        time.sleep(seconds)  # retained messages follow the SUBACK at once; give them a moment
        return self.seen

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def snapshot(port: int, root: str) -> dict[str, bytes]:
    sub = Subscriber(port, root)
    try:
        return sub.settle().retained()
    finally:
        sub.stop()


def test_fresh_subscriber_sees_exactly_the_active_alerts(mosquitto: Service) -> None:
    root = f"test-{uuid.uuid4().hex[:8]}/alerts"
    a1 = make_alert("a-0000000000000001", zone="nanshan", severity="critical")
    a2 = make_alert("a-0000000000000002", zone="futian", severity="warning", sensor_id="env-futian-0002")
    a3 = zone_alert("a-0000000000000003", zone="futian", severity="warning")
    a4 = make_alert("a-0000000000000004", zone="luohu", severity="info")

    async def main() -> None:
        sink = MqttAlertSink("127.0.0.1", mosquitto.port, topic_root=root)
        assert isinstance(sink, AlertSink)
        try:
            for a in (a1, a2, a3, a4):
                await sink.send(a)
            await sink.send({**a1, "seq": 2, "state": "updated", "value": 190.0})
            await sink.send({**a2, "seq": 2, "state": "acknowledged", "acked_by": "op-li"})
            await sink.send({**a3, "seq": 2, "state": "escalated", "severity": "critical", "escalation_level": 1})
            await sink.send({**a4, "seq": 2, "state": "cleared"})
        finally:
            await sink.close()

    asyncio.run(main())
    retained = snapshot(mosquitto.port, root)
    assert set(retained) == {
        f"{root}/nanshan/critical/a-0000000000000001",
        f"{root}/futian/warning/a-0000000000000002",
        f"{root}/futian/critical/a-0000000000000003",  # moved with the escalation, gone from warning
    }
    docs = {t: orjson.loads(p) for t, p in retained.items()}
    assert docs[f"{root}/nanshan/critical/a-0000000000000001"]["value"] == 190.0
    assert docs[f"{root}/futian/warning/a-0000000000000002"]["acked_by"] == "op-li"
    assert docs[f"{root}/futian/critical/a-0000000000000003"]["state"] == "escalated"

    async def clear_all() -> None:
        sink = MqttAlertSink("127.0.0.1", mosquitto.port, topic_root=root)
        try:
            await sink.send({**a1, "seq": 3, "state": "cleared"})
            await sink.send({**a2, "seq": 3, "state": "cleared"})
            await sink.send({**a3, "seq": 3, "state": "suppressed", "severity": "critical"})
        finally:
            await sink.close()

    asyncio.run(clear_all())
    assert snapshot(mosquitto.port, root) == {}


def test_live_subscriber_gets_every_record_as_an_event(mosquitto: Service) -> None:
    root = f"test-{uuid.uuid4().hex[:8]}/alerts"
    sub = Subscriber(mosquitto.port, root)
    a = make_alert("a-00000000000000e1", zone="baoan", severity="warning")
    records = [
        a,
        {**a, "seq": 2, "state": "escalated", "severity": "critical", "escalation_level": 1},
        {**a, "seq": 3, "state": "acknowledged", "severity": "critical", "acked_by": "op"},
        {**a, "seq": 4, "state": "cleared", "severity": "critical"},
    ]

    async def main() -> None:
        sink = MqttAlertSink("127.0.0.1", mosquitto.port, topic_root=root)
        try:
            for r in records:
                await sink.send(r)
        finally:
            await sink.close()

    try:
        asyncio.run(main())
        seen = sub.settle(0.5)
    finally:
        sub.stop()
    events = [(t, d["seq"]) for t, d in seen.live() if t.count("/") == 3]  # <root(2 levels)>/<zone>/<sev>
    assert events == [
        (f"{root}/baoan/warning", 1),
        (f"{root}/baoan/critical", 2),
        (f"{root}/baoan/critical", 3),
        (f"{root}/baoan/critical", 4),
    ]
    assert all(m.qos == 1 for m in seen.messages)
    assert snapshot(mosquitto.port, root) == {}


def test_a_restarted_sink_still_removes_the_old_severity_copy(mosquitto: Service) -> None:
    root = f"test-{uuid.uuid4().hex[:8]}/alerts"
    a = make_alert("a-00000000000000f1", zone="longhua", severity="warning")

    async def send(*records: dict) -> None:
        sink = MqttAlertSink("127.0.0.1", mosquitto.port, topic_root=root, publish_events=False)
        try:
            for r in records:
                await sink.send(r)
        finally:
            await sink.close()

    asyncio.run(send(a))
    assert set(snapshot(mosquitto.port, root)) == {f"{root}/longhua/warning/a-00000000000000f1"}
    asyncio.run(send({**a, "seq": 2, "state": "escalated", "severity": "critical"}))  # a new sink: no memory
    assert set(snapshot(mosquitto.port, root)) == {f"{root}/longhua/critical/a-00000000000000f1"}


def test_unreachable_broker_fails_fast() -> None:
    async def main() -> None:
        sink = MqttAlertSink("127.0.0.1", free_port(), connect_timeout_s=1.0)
        with pytest.raises(MqttAlertError, match="no connection"):
            await sink.send(make_alert())
        await sink.close()

    asyncio.run(main())


def test_username_password_against_a_broker_that_refuses_anonymous(tmp_path: Path) -> None:
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        missing("mosquitto_passwd (Debian package mosquitto)")
    pwfile = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(pwfile), "alerts", PASSWORD], check=True, capture_output=True)
    pwfile.chmod(0o600)
    # As root, mosquitto would drop to its own user, which cannot read pytest's private tmp dir.
    conf = f"allow_anonymous false\npassword_file {pwfile}\n" + ("user root\n" if os.geteuid() == 0 else "")
    root = f"test-{uuid.uuid4().hex[:8]}/alerts"
    with run_mosquitto(tmp_path, extra_conf=conf) as broker:

        async def main() -> None:
            anonymous = MqttAlertSink("127.0.0.1", broker.port, topic_root=root, connect_timeout_s=3)
            with pytest.raises(MqttAlertError, match="refused") as err:
                await anonymous.send(make_alert())
            await anonymous.close()
            wrong = MqttAlertSink("127.0.0.1", broker.port, username="alerts", password="wrong", connect_timeout_s=3)  # noqa: S106
            with pytest.raises(MqttAlertError, match="refused") as err:
                await wrong.send(make_alert())
            await wrong.close()
            assert "wrong" not in str(err.value)
            sink = MqttAlertSink(
                "127.0.0.1", broker.port, topic_root=root, username="alerts", password=SecretStr(PASSWORD)
            )
            try:
                await sink.send(make_alert("a-00000000000000a1", zone="futian"))
            finally:
                await sink.close()

        asyncio.run(main())
        sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
        sub.username_pw_set("alerts", PASSWORD)
        got: list[str] = []
        done = threading.Event()
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{root}/#", qos=1)
        sub.on_message = lambda c, u, msg: (got.append(msg.topic), done.set())
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        try:
            assert done.wait(5)
        finally:
            sub.disconnect()
            sub.loop_stop()
        assert got == [f"{root}/futian/critical/a-00000000000000a1"]
