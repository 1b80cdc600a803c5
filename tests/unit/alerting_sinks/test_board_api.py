"""AlertBoard's view, API and security checks over real HTTP (aiohttp server on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from alerting.board import SECURITY_HEADERS, AlertBoard, sse_event
from streams.errors import ConfigError
from tests.unit.alerting_sinks.records import make_alert, zone_alert

TOKEN = "board-token-0123456789abcdef"  # noqa: S105 - a test token


class Actions:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(self, action: str, alert_id: str, by: str) -> None:
        self.calls.append((action, alert_id, by))
        if alert_id == "a-conflict":
            msg = "already cleared"
            raise ValueError(msg)


@contextlib.asynccontextmanager
async def served(board: AlertBoard, *, router: bool = False) -> AsyncIterator[str]:
    app = web.Application()
    board.mount(app.router if router else app, prefix="/board")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await board.close()
        await runner.cleanup()


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def good_headers(base: str, **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Origin": base,
        "Sec-Fetch-Site": "same-origin",
        **extra,
    }


def test_view_keeps_latest_record_and_drops_cleared() -> None:
    async def main() -> None:
        board = AlertBoard(SecretStr(TOKEN))
        assert await board.publish(make_alert("a-1", 1, severity="warning", zone="futian"))
        assert await board.publish(make_alert("a-2", 1, severity="critical", zone="nanshan"))
        assert await board.publish(zone_alert("a-3", 1, severity="critical", zone="baoan"))
        assert await board.publish(make_alert("a-1", 3, state="acknowledged", severity="warning", zone="futian"))
        assert not await board.publish(make_alert("a-1", 2, state="updated", zone="futian"))  # older: ignored
        assert [a["alert_id"] for a in board.active()] == ["a-3", "a-2", "a-1"]  # critical first, then zone
        assert board.get("a-1")["state"] == "acknowledged"  # type: ignore[index]
        assert await board.publish(make_alert("a-2", 2, state="cleared"))
        assert not await board.publish(make_alert("a-2", 1))  # a redelivered raise cannot revive it
        assert board.get("a-2") is None
        with pytest.raises(ValueError, match="state"):
            await board.publish(make_alert("a-9", 1, state="open"))
        assert TOKEN not in repr(board)

    run(main)


def test_pages_and_api_carry_security_headers() -> None:
    async def main() -> None:
        board = AlertBoard(TOKEN)
        await board.publish(make_alert("a-1", sensor_id="<script>alert(1)</script>"))
        async with served(board) as base, aiohttp.ClientSession() as http:
            for path, ctype in [
                ("/board/", "text/html"),
                ("/board/static/board.js", "text/javascript"),
                ("/board/static/board.css", "text/css"),
                ("/board/api/alerts", "application/json"),
            ]:
                async with http.get(base + path) as resp:
                    assert resp.status == 200, path
                    assert resp.content_type == ctype
                    for name, value in SECURITY_HEADERS.items():
                        assert resp.headers[name] == value, (path, name)
                    assert "access-control-allow-origin" not in {h.lower() for h in resp.headers}
            async with http.get(base + "/board", allow_redirects=False) as resp:
                assert resp.status == 308 and resp.headers["Location"] == "/board/"
            async with http.get(base + "/board/api/alerts") as resp:
                body = await resp.json()
            assert body["alerts"][0]["sensor_id"] == "<script>alert(1)</script>"  # data as data, JSON-typed
            async with http.get(base + "/board/") as resp:
                page = await resp.text()
            assert '<script src="static/board.js" defer></script>' in page
            assert "https://" not in page and "http://" not in page  # no CDN, no external fonts
            csp = SECURITY_HEADERS["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "unsafe-inline" not in csp

    run(main)


def test_page_script_never_uses_html_sinks() -> None:
    from importlib import resources

    js = (resources.files("alerting") / "static" / "board.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js.replace("never parsed as HTML", ""), sink


@pytest.mark.parametrize("router", [False, True])
def test_ack_with_token_reaches_on_action(router: bool) -> None:
    async def main() -> None:
        actions = Actions()
        board = AlertBoard(TOKEN, on_action=actions)
        await board.publish(make_alert("a-1"))
        async with served(board, router=router) as base, aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/board/api/alerts/a-1/ack", headers=good_headers(base), data=orjson.dumps({"by": "op-li <b>"})
            ) as resp:
                assert resp.status == 202
                assert (await resp.json())["by"] == "op-li b"
            async with http.post(f"{base}/board/api/alerts/a-1/clear", headers=good_headers(base), data=b"{}") as resp:
                assert resp.status == 202
        assert actions.calls == [("ack", "a-1", "op-li b"), ("clear", "a-1", "operator")]

    run(main)


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"Authorization": None}, 401),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "text/plain"}, 415),
        ({"Origin": None, "Sec-Fetch-Site": None}, 202),  # a non-browser client with the token
    ],
)
def test_writes_are_refused_without_token_or_from_another_site(change: dict[str, Any], status: int) -> None:
    async def main() -> None:
        actions = Actions()
        board = AlertBoard(TOKEN, on_action=actions)
        await board.publish(make_alert("a-1"))
        async with served(board) as base, aiohttp.ClientSession() as http:
            headers = good_headers(base)
            for k, v in change.items():
                if v is None:
                    headers.pop(k)
                else:
                    headers[k] = v
            async with http.post(f"{base}/board/api/alerts/a-1/ack", headers=headers, data=b'{"by":"x"}') as resp:
                assert resp.status == status
                if status == 401:
                    assert resp.headers["WWW-Authenticate"] == "Bearer"
                assert TOKEN not in await resp.text()
        assert len(actions.calls) == (1 if status == 202 else 0)

    run(main)


def test_allowed_origins_and_errors() -> None:
    async def main() -> None:
        actions = Actions()
        board = AlertBoard(TOKEN, on_action=actions, allowed_origins=["https://ops.city.example"])
        await board.publish(make_alert("a-conflict"))
        async with served(board) as base, aiohttp.ClientSession() as http:
            url = f"{base}/board/api/alerts/a-conflict/ack"
            async with http.post(url, headers=good_headers(base), data=b"{}") as resp:
                assert resp.status == 403  # own origin no longer listed
            ok = good_headers(base, Origin="https://ops.city.example")
            async with http.post(url, headers=ok, data=b"{}") as resp:
                assert resp.status == 409  # on_action refused it
            async with http.post(f"{base}/board/api/alerts/a-none/ack", headers=ok, data=b"{}") as resp:
                assert resp.status == 404
            async with http.post(f"{base}/board/api/alerts/a-conflict/delete", headers=ok, data=b"{}") as resp:
                assert resp.status == 404
            async with http.post(url, headers=ok, data=b"{not json") as resp:
                assert resp.status == 400
            async with http.get(url) as resp:
                assert resp.status == 405

    run(main)


def test_event_stream_sends_snapshot_then_each_record() -> None:
    async def main() -> None:
        board = AlertBoard(TOKEN)
        await board.publish(make_alert("a-1"))
        async with served(board) as base, aiohttp.ClientSession() as http:
            async with http.get(f"{base}/board/api/stream") as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                assert resp.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]

                async def next_event() -> tuple[str, dict]:
                    event, data = "", b""
                    while True:
                        line = (await asyncio.wait_for(resp.content.readline(), 5)).rstrip(b"\n")
                        if line.startswith(b"event: "):
                            event = line[7:].decode()
                        elif line.startswith(b"data: "):
                            data = line[6:]
                        elif not line and event:
                            return event, orjson.loads(data)

                event, doc = await next_event()
                assert event == "snapshot" and [a["alert_id"] for a in doc["alerts"]] == ["a-1"]
                await board.publish(make_alert("a-2", message="line one\nline two"))
                event, doc = await next_event()
                assert event == "alert" and doc["alert_id"] == "a-2" and doc["message"] == "line one\nline two"
                await board.publish(make_alert("a-1", 2, state="cleared"))
                event, doc = await next_event()
                assert (event, doc["state"]) == ("alert", "cleared")

    run(main)


def test_slow_stream_clients_are_dropped_not_buffered() -> None:
    async def main() -> None:
        board = AlertBoard(TOKEN, client_queue=4, max_clients=1)
        async with served(board) as base, aiohttp.ClientSession() as http:
            async with http.get(f"{base}/board/api/stream") as resp:
                await asyncio.wait_for(resp.content.readline(), 5)
                async with http.get(f"{base}/board/api/stream") as second:
                    assert second.status == 503  # max_clients
                assert len(board._clients) == 1
                for i in range(50):  # publish never yields, so the handler drains nothing: the client overflows
                    await board.publish(make_alert(f"a-{i}"))
                assert len(board._clients) == 0  # dropped at the 5th record, not buffered
                rest = await asyncio.wait_for(resp.content.read(), 5)  # the server ends the stream
                assert rest.count(b"event: alert") <= 4
            assert len(board.active()) == 50

    run(main)


def test_sse_event_and_config() -> None:
    assert sse_event("alert", {"x": "<\n>"}) == b'event: alert\ndata: {"x":"<\\n>"}\n\n'
    with pytest.raises(ConfigError, match="token"):
        AlertBoard("short")
    with pytest.raises(ConfigError, match="prefix"):
        AlertBoard(TOKEN).mount(web.Application(), prefix="/")
