"""The live alert board in a real headless Chromium (Debian's), driven by Selenium.

The board runs in a standalone aiohttp server on a free loopback port (the same routes the worker
mounts). The test checks that an alert published after the page loaded appears without a reload,
that acknowledging and clearing from the page reach ``on_action`` (which, like the rule engine,
answers with a new record), that hostile sensor ids are shown as text and never run, and that a
cross-site form post and a cross-origin fetch are refused. A screenshot is saved in the test's
tmp dir. No browser or driver is ever downloaded: the paths are Debian's and Selenium Manager is
kept offline.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from alerting.board import AlertBoard
from tests.services import free_port, missing
from tests.unit.alerting_sinks.records import make_alert, zone_alert

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-test-token-0123456789"  # noqa: S105 - a test token
XSS_SENSOR = '<script>alert(1)</script><img src=x onerror="alert(2);window.__xss=1">'


class Server:
    """The board (and a hostile page on another origin) on their own event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.actions: list[tuple[str, str, str]] = []
        self.writes: list[tuple[str, int, str | None, str | None]] = []  # "METHOD path", status, Origin, Sec-Fetch-Site
        self.board = AlertBoard(TOKEN, on_action=self.on_action)
        self.port, self.evil_port = free_port(), free_port()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def on_action(self, action: str, alert_id: str, by: str) -> None:
        # What the rule engine does: record the transition and emit the next record of the alert.
        self.actions.append((action, alert_id, by))
        current = self.board.get(alert_id)
        assert current is not None
        state = "acknowledged" if action == "ack" else "cleared"
        nxt = {**current, "seq": current["seq"] + 1, "state": state, "ts_ms": current["ts_ms"] + 1000}
        if action == "ack":
            nxt["acked_by"] = by
        await self.board.publish(nxt)

    @web.middleware
    async def record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            resp = await handler(request)
            status = resp.status
        except web.HTTPException as exc:  # e.g. 405 for the CORS preflight nobody answers
            status = exc.status
            raise
        finally:
            if request.method != "GET":
                self.writes.append(
                    (
                        f"{request.method} {request.path}",
                        status,
                        request.headers.get("Origin"),
                        request.headers.get("Sec-Fetch-Site"),
                    )
                )
        return resp

    async def _start(self) -> None:
        app = web.Application(middlewares=[self.record])
        self.board.mount(app)
        evil = web.Application()
        evil.router.add_get("/", self._evil_page)
        for application, port in ((app, self.port), (evil, self.evil_port)):
            runner = web.AppRunner(application)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self._runners.append(runner)

    async def _evil_page(self, request: web.Request) -> web.Response:
        target = f"http://127.0.0.1:{self.port}/board/api/alerts/{request.query['id']}/ack"
        submit = "true" if request.query.get("form") == "1" else "false"
        html = f"""<!doctype html><html><body><h1>cute cats</h1>
<form id="f" method="POST" action="{target}" enctype="text/plain">
  <input type="hidden" name='{{"by":"attacker","x":"' value='"}}'>
</form>
<script>
  window.fetchResult = "pending";
  fetch("{target}", {{method: "POST", headers: {{"Authorization": "Bearer {TOKEN}",
        "Content-Type": "application/json"}}, body: "{{}}"}})
    .then(r => {{ window.fetchResult = "status " + r.status; }})
    .catch(e => {{ window.fetchResult = "blocked"; }})
    .finally(() => {{ if ({submit}) document.getElementById("f").submit(); }});
</script></body></html>"""
        return web.Response(text=html, content_type="text/html")

    def call(self, coro: Awaitable[Any], timeout_s: float = 10) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout_s)

    def start(self) -> None:
        self._thread.start()
        self.call(self._start())

    def stop(self) -> None:
        async def _stop() -> None:
            await self.board.close()
            for runner in self._runners:
                await runner.cleanup()

        self.call(_stop(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        missing("Debian chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as ChromeService
    except ImportError:
        missing("selenium (pip install 'selenium>=4.20')")

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    profile = tmp_path / "chromium-profile"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1500",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.set_capability("unhandledPromptBehavior", "ignore")
    drv = webdriver.Chrome(
        service=ChromeService(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
        options=options,
    )
    drv.set_page_load_timeout(20)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(what: str, pred: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def no_dialog(drv: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        drv.switch_to.alert  # noqa: B018 - raises when no dialog is open
    except NoAlertPresentException:
        return True
    return False


CARD_JS = """
const card = [...document.querySelectorAll('article.alert')].find(e => e.dataset.alertId === arguments[0]);
if (!card) return null;
const q = (s) => card.querySelector(s);
return {cls: card.className, text: card.innerText, subject: q('.subject').textContent, msg: q('.msg').textContent,
        ackDisabled: q('button.ack').disabled, spark: q('svg.spark polyline')?.getAttribute('points') ?? null};
"""


def card(drv: Any, alert_id: str) -> dict[str, Any] | None:
    """A card's content, read in one script call (the page re-renders as events arrive)."""
    return drv.execute_script(CARD_JS, alert_id)


def click(drv: Any, alert_id: str, button: str) -> None:
    """Click a card's button as a user would, retrying if a render replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(20):
        try:
            for e in drv.find_elements(By.CSS_SELECTOR, "article.alert"):
                if e.get_attribute("data-alert-id") == alert_id:
                    e.find_element(By.CSS_SELECTOR, f"button.{button}").click()
                    return
        except StaleElementReferenceException:
            pass
        time.sleep(0.05)
    pytest.fail(f"no {button} button for {alert_id}")


def test_board_in_a_real_browser(server: Server, driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    base = f"http://127.0.0.1:{server.port}/board/"
    server.call(server.board.publish(zone_alert("a-zone-futian-001", zone="futian", severity="warning")))
    driver.get(base)
    wait("the event stream", lambda: driver.find_element(By.ID, "conn").text == "live")
    assert card(driver, "a-zone-futian-001") is not None  # from the snapshot
    driver.execute_script("window.__sameDocument = 'yes';")

    # Published after the page loaded: appears without a reload.
    incident = make_alert("a-0123456789abcdef", zone="nanshan", severity="critical")
    hostile = make_alert(
        "a-xss000000000001",
        zone="luohu",
        severity="info",
        sensor_id=XSS_SENSOR,
        message=f"sensor {XSS_SENSOR} says <b>hi</b>",
        rule="<img src=x onerror=alert(3)>",
    )
    server.call(server.board.publish(incident))
    server.call(server.board.publish(hostile))
    wait("the new alert", lambda: card(driver, "a-0123456789abcdef"))
    wait("the hostile alert", lambda: card(driver, "a-xss000000000001"))
    assert driver.execute_script("return window.__sameDocument") == "yes"  # no reload happened
    assert driver.find_element(By.ID, "count-critical").text == "1"
    shown = card(driver, "a-0123456789abcdef")
    assert shown is not None
    assert "sev-critical" in shown["cls"] and "pm25 mean 182.4" in shown["msg"]
    assert len(shown["spark"].split()) == 18  # the sparkline of evidence.series

    # Hostile text is shown as text and never runs.
    bad = card(driver, "a-xss000000000001")
    assert bad is not None
    assert bad["subject"] == XSS_SENSOR
    assert bad["msg"] == f"sensor {XSS_SENSOR} says <b>hi</b>"
    assert "<img src=x onerror=alert(3)>" in bad["text"]
    assert driver.find_elements(By.CSS_SELECTOR, "#board script, #board img, #board b") == []
    time.sleep(0.3)
    assert no_dialog(driver)
    assert driver.execute_script("return typeof window.__xss") == "undefined"

    # The operator enters the token once (sessionStorage), then acknowledges from the page.
    driver.find_element(By.ID, "operator").send_keys("op-li")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "save-token").click()
    wait("token stored", lambda: driver.find_element(By.ID, "token-state").text == "token set for this tab")
    assert driver.execute_script("return sessionStorage.getItem('urbansense.board.token')") == TOKEN
    assert driver.execute_script("return localStorage.length") == 0
    click(driver, "a-0123456789abcdef", "ack")
    wait("on_action(ack)", lambda: ("ack", "a-0123456789abcdef", "op-li") in server.actions)
    acked = wait(
        "acknowledged state on the page",
        lambda: (c := card(driver, "a-0123456789abcdef")) and "acknowledged" in c["cls"] + c["text"] and c,
    )
    assert acked["ackDisabled"] is True
    assert "op-li" in acked["text"]
    assert server.board.get("a-0123456789abcdef")["state"] == "acknowledged"  # type: ignore[index]

    screenshot = tmp_path / "alert-board.png"
    assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"\nalert board screenshot: {screenshot}")  # noqa: T201 - the report names this path

    # Clearing from the page removes the alert.
    click(driver, "a-xss000000000001", "clear")
    wait("cleared alert gone", lambda: card(driver, "a-xss000000000001") is None)
    assert ("clear", "a-xss000000000001", "op-li") in server.actions
    assert no_dialog(driver)

    # The page itself broke no CSP / Trusted Types rule and threw nothing.
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe

    # A hostile page on another site: a form post and a fetch with a stolen token both fail.
    n_actions = len(server.actions)
    driver.get(f"http://localhost:{server.evil_port}/?id=a-zone-futian-001&form=1")
    posted = ("POST /board/api/alerts/a-zone-futian-001/ack", 403)
    wait("the cross-site form post", lambda: posted in [w[:2] for w in server.writes])
    assert len(server.actions) == n_actions
    refused = [w for w in server.writes if w[0].startswith("POST") and w[1] == 403]
    assert refused[0][2] == f"http://localhost:{server.evil_port}" and refused[0][3] == "cross-site"
    assert server.board.get("a-zone-futian-001")["state"] == "raised"  # type: ignore[index]
    assert no_dialog(driver)


def test_cross_origin_post_is_refused_in_the_browser(server: Server, driver: Any) -> None:
    """The fetch with a (stolen) token from another origin never reaches on_action: no CORS for writes."""
    server.call(server.board.publish(make_alert("a-target")))
    driver.get(f"http://localhost:{server.evil_port}/?id=a-target")
    result = wait(
        "the fetch to settle", lambda: (r := driver.execute_script("return window.fetchResult")) != "pending" and r
    )
    assert result == "blocked"  # the preflight is not answered with CORS headers
    # Only the unanswered preflight (OPTIONS, 405) reached the server; the POST was never sent.
    assert [(m, s) for m, s, _, _ in server.writes] == [("OPTIONS /board/api/alerts/a-target/ack", 405)]
    assert server.actions == []
