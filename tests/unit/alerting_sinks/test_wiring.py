"""Settings reach the sinks and the board: CAP sender, allowed origins, webhook."""

from __future__ import annotations

import asyncio

from alerting.cap import CapSink
from alerting.notifiers import WebhookSink
from streams.alert_agents import board_origins, default_sinks
from streams.settings import AlertingSettings, Settings


def _settings(**alerting: object) -> Settings:
    return Settings(alerting=AlertingSettings(**alerting))


def test_cap_and_webhook_sinks_follow_the_settings() -> None:
    s = _settings(
        webhook_url="http://127.0.0.1:9/hook", webhook_secret="w" * 20,
        cap_url="http://127.0.0.1:9/cap", cap_secret="c" * 20, cap_sender="ops.shenzhen.gov",
    )
    sinks = default_sinks(s)
    assert [type(x) for x in sinks] == [WebhookSink, CapSink]
    assert sinks[1].sender == "ops.shenzhen.gov"

    async def close() -> None:
        for x in sinks:
            await x.close()

    asyncio.run(close())


def test_no_secret_no_sink() -> None:
    assert default_sinks(_settings(webhook_url="http://127.0.0.1:9/hook", cap_url="http://127.0.0.1:9/cap")) == []


def test_board_origins_parse() -> None:
    assert board_origins(_settings()) is None
    assert board_origins(_settings(board_allowed_origins="https://a.example/, https://b.example:8443 ,")) == [
        "https://a.example", "https://b.example:8443"]
