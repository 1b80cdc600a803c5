"""WebhookSink against a real local aiohttp server: signature, retries, back-off, back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from alerting.notifiers import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AlertSink,
    WebhookError,
    WebhookSink,
    sign,
    verify_signature,
)
from streams.errors import ConfigError, SinkError
from tests.unit.alerting_sinks.records import make_alert

SECRET = "webhook-shared-secret-42-abcdef"  # noqa: S105 - a test secret


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    #: statuses to answer, in order; 200 once exhausted. A negative number means "sleep -n seconds, then 200".
    script: list[float] = field(default_factory=list)
    delay_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0


@contextlib.asynccontextmanager
async def receiver(script: list[float] | None = None, delay_s: float = 0.0) -> AsyncIterator[Receiver]:
    state = Receiver(script=list(script or []), delay_s=delay_s)

    async def handler(request: web.Request) -> web.Response:
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            state.hits.append(Hit(dict(request.headers), await request.read(), time.monotonic()))
            step = state.script.pop(0) if state.script else 200
            if step < 0:
                await asyncio.sleep(-step)
                step = 200
            if state.delay_s:
                await asyncio.sleep(state.delay_s)
            return web.Response(status=int(step), text="nope" if step >= 300 else "ok")
        finally:
            state.in_flight -= 1

    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield state
    finally:
        await runner.cleanup()


class Sleeps:
    """Records the back-off delays instead of waiting them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def assert_signed(hit: Hit) -> None:
    ts = hit.headers[TIMESTAMP_HEADER]
    assert hit.headers[SIGNATURE_HEADER].startswith("sha256=")
    assert verify_signature(SECRET, hit.body, ts, hit.headers[SIGNATURE_HEADER], now_s=time.time())


def test_delivers_signed_json_once() -> None:
    async def main() -> None:
        async with receiver() as rx:
            sink = WebhookSink(rx.url, SECRET)
            assert isinstance(sink, AlertSink)
            alert = make_alert(seq=2, state="updated")
            await sink.send(alert)
            await sink.close()
        assert len(rx.hits) == 1
        hit = rx.hits[0]
        assert orjson.loads(hit.body) == alert
        assert hit.headers["Content-Type"] == "application/json"
        assert hit.headers[DELIVERY_HEADER] == "a-2f82c14509cd4f2f.2"
        assert_signed(hit)

    run(main)


def test_signature_covers_timestamp_and_body_and_refuses_replays() -> None:
    body = b'{"alert_id":"a-1"}'
    sig = sign(SECRET.encode(), "1800000000", body)
    assert verify_signature(SECRET, body, "1800000000", sig, now_s=1800000000 + 299)
    assert not verify_signature(SECRET, body, "1800000000", sig, now_s=1800000000 + 301)  # replayed later
    assert not verify_signature(SECRET, body, "1800000001", sig, now_s=1800000001)  # timestamp changed
    assert not verify_signature(SECRET, body + b" ", "1800000000", sig, now_s=1800000000)  # body changed
    assert not verify_signature("another-secret-entirely", body, "1800000000", sig, now_s=1800000000)
    assert not verify_signature(SECRET, body, "-5", sig, now_s=1800000000)


def test_503_then_200_retries_with_backoff_and_fresh_signature() -> None:
    async def main() -> None:
        sleeps = Sleeps()
        clock = iter(range(1_800_000_000, 1_800_000_100))
        async with receiver([503, 503, 200]) as rx:
            sink = WebhookSink(
                rx.url,
                SECRET,
                backoff_base_s=0.5,
                backoff_max_s=30,
                sleep=sleeps,
                clock=lambda: float(next(clock)),
                rng=random.Random(7),
            )
            await sink.send(make_alert())
            await sink.close()
        assert len(rx.hits) == 3
        assert len(sleeps.delays) == 2
        # equal jitter: attempt n waits within [base*2**(n-1)/2, base*2**(n-1)]
        assert 0.25 <= sleeps.delays[0] <= 0.5
        assert 0.5 <= sleeps.delays[1] <= 1.0
        stamps = [int(h.headers[TIMESTAMP_HEADER]) for h in rx.hits]
        assert stamps == sorted(stamps) and len(set(stamps)) == 3  # each attempt signed anew
        for h in rx.hits:
            assert verify_signature(
                SECRET,
                h.body,
                h.headers[TIMESTAMP_HEADER],
                h.headers[SIGNATURE_HEADER],
                now_s=int(h.headers[TIMESTAMP_HEADER]),
            )
        assert {h.headers[DELIVERY_HEADER] for h in rx.hits} == {"a-2f82c14509cd4f2f.1"}

    run(main)


def test_real_backoff_waits_between_attempts() -> None:
    async def main() -> None:
        async with receiver([503, 200]) as rx:
            sink = WebhookSink(rx.url, SECRET, backoff_base_s=0.2)
            await sink.send(make_alert())
            await sink.close()
        assert len(rx.hits) == 2
        assert rx.hits[1].at - rx.hits[0].at >= 0.1

    run(main)


def test_400_is_not_retried() -> None:
    async def main() -> None:
        sleeps = Sleeps()
        async with receiver([400]) as rx:
            sink = WebhookSink(rx.url, SECRET, sleep=sleeps)
            with pytest.raises(WebhookError, match="HTTP 400") as err:
                await sink.send(make_alert())
            await sink.close()
        assert err.value.status == 400
        assert isinstance(err.value, SinkError)
        assert len(rx.hits) == 1 and sleeps.delays == []

    run(main)


def test_429_and_timeouts_are_retried_then_give_up() -> None:
    async def main() -> None:
        sleeps = Sleeps()
        async with receiver([429, -1.0, 500, 500]) as rx:
            sink = WebhookSink(
                rx.url, SECRET, timeout_s=0.3, max_attempts=4, sleep=sleeps, backoff_base_s=1, backoff_max_s=2
            )
            with pytest.raises(WebhookError, match="after 4 attempts") as err:
                await sink.send(make_alert())
            await sink.close()
        assert err.value.status == 500
        assert len(rx.hits) == 4
        assert len(sleeps.delays) == 3 and all(d <= 2 for d in sleeps.delays)

    run(main)


def test_connection_refused_is_retried() -> None:
    async def main() -> None:
        async with receiver() as rx:
            url = rx.url
        sleeps = Sleeps()
        sink = WebhookSink(url, SECRET, max_attempts=3, sleep=sleeps)
        with pytest.raises(WebhookError) as err:
            await sink.send(make_alert())
        await sink.close()
        assert err.value.status is None and len(sleeps.delays) == 2

    run(main)


def test_slow_webhook_applies_back_pressure() -> None:
    async def main() -> None:
        async with receiver(delay_s=0.2) as rx:
            sink = WebhookSink(rx.url, SECRET, max_concurrency=2)
            started = time.monotonic()
            await asyncio.gather(*(sink.send(make_alert(seq=i)) for i in range(1, 7)))
            elapsed = time.monotonic() - started
            await sink.close()
        assert len(rx.hits) == 6
        assert rx.max_in_flight == 2  # never more than max_concurrency at the receiver
        assert elapsed >= 3 * 0.2 * 0.9  # six deliveries, two at a time

    run(main)


@pytest.mark.parametrize(
    ("url", "secret", "needle"),
    [("ftp://x", SECRET, "url"), ("http://127.0.0.1/h", "short", "secret")],
)
def test_config_is_checked(url: str, secret: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        WebhookSink(url, secret)
    assert SECRET not in repr(WebhookSink("http://127.0.0.1/h", SECRET))
