"""The live alert board: a web page and a small API, served by the worker's aiohttp server.

:class:`AlertBoard` keeps the active alerts (the latest record of each ``alert_id``; a cleared
or suppressed alert leaves the view) and pushes every record to connected pages over server-sent
events. Routes, under a prefix (``/board`` by default):

================================  ==========================================================
``GET  /board/``                  the page (static HTML, vanilla JS and CSS from ``static/``)
``GET  /board/api/alerts``        ``{"alerts": [...]}``: the active alerts, most severe first
``GET  /board/api/stream``        ``text/event-stream``: a ``snapshot`` event, then one
                                  ``alert`` event per record
``POST /board/api/alerts/{id}/ack``    acknowledge; ``{"by": "<operator>"}`` in a JSON body
``POST /board/api/alerts/{id}/clear``  clear (operator's decision)
================================  ==========================================================

Security (issue 7): a write needs ``Authorization: Bearer <token>`` (compared in constant time),
a JSON body (``Content-Type: application/json``, which an HTML form cannot send, and which with
the ``Authorization`` header forces a CORS preflight that we never answer), and must not be
cross-site: a ``Sec-Fetch-Site`` other than ``same-origin``/``none`` and an ``Origin`` outside
``allowed_origins`` (by default: the board's own origin) are refused with 403. Every response
carries a strict Content-Security-Policy (``default-src 'self'``, no inline script, Trusted Types
required so the page cannot assign HTML strings) and the usual hardening headers. The page
builds its DOM with ``textContent``/``createElement`` only. Reads are not authenticated: the
board shows alerts, never secrets.

The board is not thread-safe: call :meth:`AlertBoard.publish` from the event loop that serves
the web app (Faust's default, ``web_in_thread=False``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import Any, Final

import orjson
from aiohttp import web
from pydantic import SecretStr

from alerting.notifiers import INACTIVE_STATES, SEVERITIES, STATES
from streams.errors import ConfigError

logger = logging.getLogger(__name__)

OnAction = Callable[[str, str, str], Awaitable[None]]
ACTIONS: Final = ("ack", "clear")

SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
        "require-trusted-types-for 'script'; trusted-types 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Cache-Control": "no-store",
}

_STATIC: Final[Mapping[str, str]] = {
    "index.html": "text/html",
    "board.js": "text/javascript",
    "board.css": "text/css",
}
_OPERATOR = re.compile(r"[^\w .@:-]")
_SEVERITY_RANK: Final = {s: i for i, s in enumerate(reversed(SEVERITIES))}  # critical first
_CLOSE: Final = b""


class _Client:
    __slots__ = ("queue",)

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(size)


def sse_event(event: str, data: Any, event_id: str | None = None) -> bytes:
    r"""One server-sent event; ``data`` is JSON (a single line, so it needs no splitting).

    >>> sse_event("alert", {"a": "x\ny"}, "a-1.2")
    b'event: alert\nid: a-1.2\ndata: {"a":"x\\ny"}\n\n'
    """
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id else "")
    return head.encode() + b"data: " + orjson.dumps(data) + b"\n\n"


class AlertBoard:
    """The live alert board (see the module docstring).

    Args:
        token: the bearer token that acknowledge and clear require (at least 16 characters).
        allowed_origins: origins (``scheme://host[:port]``) allowed to write; by default only the
            board's own origin as seen in the request's ``Host``. Set it behind a TLS-terminating
            proxy (the request then looks like ``http`` while the page is ``https``).
        on_action: called with ``(action, alert_id, by)`` for ``ack``/``clear``; the rule engine
            applies it and its new record comes back through :meth:`publish`. It may raise
            ``KeyError`` (unknown alert: 404) or ``ValueError`` (not allowed now: 409).
        max_clients: concurrent event streams (more get 503).
        client_queue: records buffered per event stream; a client that falls further behind is
            disconnected (its browser reconnects and gets a fresh snapshot), so memory stays bounded.
        keepalive_s: comment sent on an idle stream so proxies keep it open.
        remember_closed: cleared alert ids remembered, so a redelivered older record cannot revive one.
    """

    def __init__(
        self,
        token: SecretStr | str,
        *,
        allowed_origins: Iterable[str] | None = None,
        on_action: OnAction | None = None,
        max_clients: int = 64,
        client_queue: int = 256,
        keepalive_s: float = 15.0,
        remember_closed: int = 10_000,
    ) -> None:
        raw = token.get_secret_value() if isinstance(token, SecretStr) else token
        if len(raw) < 16:
            msg = f"AlertBoard token: expected at least 16 characters, got {len(raw)}"
            raise ConfigError(msg)
        self._token = raw.encode()
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins) if allowed_origins else None
        self.on_action = on_action
        self.max_clients = max_clients
        self.client_queue = client_queue
        self.keepalive_s = keepalive_s
        self._remember_closed = remember_closed
        self._alerts: dict[str, dict[str, Any]] = {}
        self._closed_seq: OrderedDict[str, int] = OrderedDict()
        self._clients: set[_Client] = set()
        self._static: dict[str, bytes] = {}
        self._shutting_down = False

    def __repr__(self) -> str:
        return f"AlertBoard(token='**********', active={len(self._alerts)}, clients={len(self._clients)})"

    # ------------------------------------------------------------------------------------- state

    def active(self) -> list[dict[str, Any]]:
        """The active alerts, most severe first, then by zone and raise time."""
        return sorted(
            self._alerts.values(),
            key=lambda a: (
                _SEVERITY_RANK.get(str(a.get("severity")), 9),
                str(a.get("zone")),
                a.get("raised_ts_ms") or 0,
                str(a["alert_id"]),
            ),
        )

    def get(self, alert_id: str) -> dict[str, Any] | None:
        """The latest record of an active alert."""
        return self._alerts.get(alert_id)

    async def publish(self, alert: Mapping[str, Any]) -> bool:
        """Apply one alert record to the view and push it to the pages.

        Records older than (or equal to) the one shown for the same alert are ignored, so
        redelivery never moves an alert back. Returns whether the record was applied.
        """
        try:
            alert_id, seq, state = str(alert["alert_id"]), int(alert["seq"]), alert["state"]
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"alert record: expected alert_id, integer seq and state; got {exc!r}"
            raise ValueError(msg) from exc
        if state not in STATES:
            msg = f"alert {alert_id}: field 'state': expected one of {sorted(STATES)}, got {state!r}"
            raise ValueError(msg)
        current = self._alerts.get(alert_id)
        if (current is not None and int(current["seq"]) >= seq) or self._closed_seq.get(alert_id, -1) >= seq:
            logger.debug("board ignored stale record alert_id=%s seq=%d", alert_id, seq)
            return False
        record = dict(alert)
        if state in INACTIVE_STATES:
            self._alerts.pop(alert_id, None)
            self._closed_seq[alert_id] = seq
            self._closed_seq.move_to_end(alert_id)
            while len(self._closed_seq) > self._remember_closed:
                self._closed_seq.popitem(last=False)
        else:
            self._alerts[alert_id] = record
        data = sse_event("alert", record, f"{alert_id}.{seq}")
        for client in list(self._clients):
            try:
                client.queue.put_nowait(data)
            except asyncio.QueueFull:
                logger.warning("board client too slow, disconnecting queued=%d", client.queue.qsize())
                self._drop(client)
        return True

    def _drop(self, client: _Client) -> None:
        self._clients.discard(client)
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(_CLOSE)

    async def close(self) -> None:
        """End every event stream (call before the web server stops, or it waits for them)."""
        self._shutting_down = True
        for client in list(self._clients):
            self._drop(client)

    # ------------------------------------------------------------------------------------ routes

    def mount(self, target: web.Application | web.UrlDispatcher, prefix: str = "/board") -> None:
        """Add the board's routes to an aiohttp application or router (before the server starts).

        With an :class:`~aiohttp.web.Application`, the event streams are also closed on its
        ``on_shutdown`` signal.
        """
        prefix = "/" + prefix.strip("/")
        if prefix == "/":
            msg = "AlertBoard.mount prefix: expected a path such as '/board', got '/'"
            raise ConfigError(msg)
        files = resources.files("alerting") / "static"
        self._static = {name: (files / name).read_bytes() for name in _STATIC}
        router = target.router if isinstance(target, web.Application) else target
        if isinstance(target, web.Application):
            target.on_shutdown.append(self._on_shutdown)
        router.add_get(prefix, self._redirect(prefix + "/"))
        router.add_get(prefix + "/", self._page("index.html"))
        router.add_get(prefix + "/static/board.js", self._page("board.js"))
        router.add_get(prefix + "/static/board.css", self._page("board.css"))
        router.add_get(prefix + "/api/alerts", self._list)
        router.add_get(prefix + "/api/stream", self._stream)
        router.add_post(prefix + "/api/alerts/{alert_id}/{action}", self._action)
        logger.info("alert board mounted prefix=%s", prefix)

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close()

    @staticmethod
    def _secure(resp: web.StreamResponse) -> web.StreamResponse:
        resp.headers.update(SECURITY_HEADERS)
        return resp

    def _json(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        resp = web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)
        self._secure(resp)
        return resp

    def _redirect(self, location: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return self._secure(web.Response(status=308, headers={"Location": location}))

        return handler

    def _page(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.Response(body=self._static[name], content_type=_STATIC[name], charset="utf-8")
            return self._secure(resp)

        return handler

    async def _list(self, request: web.Request) -> web.StreamResponse:
        return self._json({"alerts": self.active()})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if self._shutting_down or len(self._clients) >= self.max_clients:
            return self._json({"error": "too many board connections"}, 503, {"Retry-After": "5"})
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no"}
        )
        self._secure(resp)
        client = _Client(self.client_queue)
        self._clients.add(client)
        snapshot = sse_event("snapshot", {"alerts": self.active()})  # same loop step as add(): nothing missed
        try:
            await resp.prepare(request)
            await resp.write(b"retry: 2000\n\n" + snapshot)
            while True:
                try:
                    data = await asyncio.wait_for(client.queue.get(), self.keepalive_s)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if data == _CLOSE:
                    break
                await resp.write(data)
        except (ConnectionResetError, ConnectionError):
            logger.debug("board event stream closed by the client")
        finally:
            self._clients.discard(client)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp

    def _cross_site(self, request: web.Request) -> str | None:
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site {fetch_site}"
        origin = request.headers.get("Origin")
        if origin is None:
            return None  # not a browser's cross-origin request (browsers send Origin on every POST)
        allowed = self.allowed_origins or {f"{request.scheme}://{request.host}"}
        if origin.rstrip("/") not in allowed:
            return "Origin not allowed"
        return None

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        supplied = value.strip().encode() if scheme.lower() == "bearer" else b""
        # compare_digest takes time independent of where the strings differ.
        return hmac.compare_digest(supplied, self._token) and bool(supplied)

    async def _action(self, request: web.Request) -> web.StreamResponse:
        alert_id, action = request.match_info["alert_id"], request.match_info["action"]
        reason = self._cross_site(request)
        if reason is not None:
            logger.warning("board refused cross-site write action=%s reason=%s", action, reason)
            return self._json({"error": "cross-site request refused"}, 403)
        if not self._authorised(request):
            logger.warning("board refused write without a valid token action=%s remote=%s", action, request.remote)
            return self._json({"error": "a valid bearer token is required"}, 401, {"WWW-Authenticate": "Bearer"})
        if action not in ACTIONS:
            return self._json({"error": "unknown action"}, 404)
        if request.content_type != "application/json":
            return self._json({"error": "expected Content-Type: application/json"}, 415)
        body = await request.content.read(4097)
        try:
            doc = orjson.loads(body) if body.strip() and len(body) <= 4096 else {}
        except orjson.JSONDecodeError:
            return self._json({"error": "invalid JSON body"}, 400)
        by_raw = doc.get("by") if isinstance(doc, dict) else None
        by = _OPERATOR.sub("", by_raw)[:64].strip() if isinstance(by_raw, str) else ""
        by = by or "operator"
        if alert_id not in self._alerts:
            return self._json({"error": "no such active alert"}, 404)
        if self.on_action is None:
            return self._json({"error": "acknowledging is not enabled on this worker"}, 503)
        try:
            await self.on_action(action, alert_id, by)
        except KeyError:
            return self._json({"error": "no such active alert"}, 404)
        except ValueError as exc:
            return self._json({"error": str(exc)[:200]}, 409)
        logger.info("board action accepted action=%s alert_id=%s by=%s", action, alert_id, by)
        return self._json({"ok": True, "action": action, "alert_id": alert_id, "by": by}, 202)
