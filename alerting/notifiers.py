"""Alert sinks (I/O): MQTT with retained active state, and signed webhooks.

Every sink takes one alert record at a time (the JSON dict the rule engine emits; each lifecycle
transition is a new record with a higher ``seq``) and implements :class:`AlertSink`. A sink's
``send`` returns once the record is delivered (MQTT: PUBACK for QoS 1; webhook: a 2xx answer) and
raises :class:`AlertSinkError` when it could not be delivered after its retries, so the caller
decides whether to hold its offsets. ``send`` waits while the sink is at its concurrency limit:
a slow receiver slows the caller down instead of growing a queue.

The CAP 1.2 sink is :class:`alerting.cap.CapSink` (a webhook carrying CAP XML).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import aiohttp
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from streams.errors import ConfigError, SinkError

if TYPE_CHECKING:
    from streams.settings import MqttSettings

logger = logging.getLogger(__name__)

Alert = Mapping[str, Any]

#: States in which an alert is shown on the board and kept as a retained MQTT message.
ACTIVE_STATES: Final = frozenset({"raised", "updated", "escalated", "acknowledged"})
#: States that end an alert's active life (a suppressed alert is recorded, never notified as active).
INACTIVE_STATES: Final = frozenset({"cleared", "suppressed"})
SEVERITIES: Final = ("info", "warning", "critical")
STATES: Final = ACTIVE_STATES | INACTIVE_STATES

SIGNATURE_HEADER: Final = "X-UrbanSense-Signature"
TIMESTAMP_HEADER: Final = "X-UrbanSense-Timestamp"
DELIVERY_HEADER: Final = "X-UrbanSense-Delivery"
#: A receiver should refuse a signature whose timestamp is further than this from its clock.
DEFAULT_TOLERANCE_S: Final = 300

_TOPIC_UNSAFE = re.compile(r"[+#/\x00-\x1f\x7f]")


class AlertSinkError(SinkError):
    """An alert could not be delivered by a sink (after its retries)."""


class MqttAlertError(AlertSinkError):
    """The MQTT broker refused the connection or did not acknowledge a publish in time."""


class WebhookError(AlertSinkError):
    """The webhook answered with an error, or kept failing until the retries ran out.

    Attributes:
        status: the last HTTP status received, or ``None`` when no answer came (timeout, refused).
    """

    def __init__(self, msg: str, status: int | None = None) -> None:
        super().__init__(msg)
        self.status = status


@runtime_checkable
class AlertSink(Protocol):
    """Where alert records go. ``send`` is called once per record, in order per alert."""

    async def send(self, alert: Alert) -> None:
        """Deliver one alert record; raise :class:`AlertSinkError` when it cannot be delivered."""
        ...

    async def close(self) -> None:
        """Release connections. The sink is not used afterwards."""
        ...


def delivery_id(alert: Alert) -> str:
    """Idempotency key of one alert record: ``<alert_id>.<seq>``.

    >>> delivery_id({"alert_id": "a-1", "seq": 3})
    'a-1.3'
    """
    return f"{alert['alert_id']}.{alert['seq']}"


def _check_record(alert: Alert) -> tuple[str, str, str, str]:
    try:
        alert_id, state, severity, zone = alert["alert_id"], alert["state"], alert["severity"], alert["zone"]
    except KeyError as exc:
        msg = f"alert record: missing field {exc.args[0]!r}; got fields {sorted(alert)}"
        raise ValueError(msg) from exc
    if state not in STATES:
        msg = f"alert {alert_id}: field 'state': expected one of {sorted(STATES)}, got {state!r}"
        raise ValueError(msg)
    if severity not in SEVERITIES:
        msg = f"alert {alert_id}: field 'severity': expected one of {list(SEVERITIES)}, got {severity!r}"
        raise ValueError(msg)
    return str(alert_id), str(state), str(severity), str(zone)


# --------------------------------------------------------------------------------------------- MQTT


def topic_segment(value: str) -> str:
    """``value`` made safe as one MQTT topic level (no ``+``, ``#``, ``/`` or control characters).

    >>> topic_segment("futian")
    'futian'
    >>> topic_segment("a/b+#")
    'a_b__'
    """
    return _TOPIC_UNSAFE.sub("_", value) or "_"


def alert_topics(alert: Alert, root: str = "city/alerts") -> tuple[str, str]:
    """The event topic and the retained per-alert topic of one record.

    >>> alert_topics({"alert_id": "a-1", "zone": "futian", "severity": "critical", "state": "raised", "seq": 1})
    ('city/alerts/futian/critical', 'city/alerts/futian/critical/a-1')
    """
    alert_id, _, severity, zone = _check_record(alert)
    event = f"{root}/{topic_segment(zone)}/{severity}"
    return event, f"{event}/{topic_segment(alert_id)}"


class MqttAlertSink:
    """Publish alerts to ``<root>/<zone>/<severity>`` (QoS 1), with retained state for active alerts.

    Every record is published (not retained) to ``<root>/<zone>/<severity>``, the event stream.
    While an alert is active (raised, updated, escalated, acknowledged) its latest record is also
    the retained message of ``<root>/<zone>/<severity>/<alert_id>``, so several active alerts
    coexist and a fresh subscriber to ``<root>/#`` sees exactly the active ones. When the alert is
    cleared or suppressed, an empty retained payload deletes it. When an escalation changes the
    severity, the retained message under the old severity is deleted too.

    The paho network loop runs in its own thread; ``send`` awaits the broker's PUBACK. While the
    connection is down, paho queues the publishes (at most ``max_queued`` of them) and sends them
    after it reconnects.

    Args:
        host: broker host.
        port: broker port.
        topic_root: first topic levels, without a trailing ``/``.
        client_id: MQTT client id (a random one by default; the session is clean).
        username: optional username.
        password: optional password.
        tls_ca: CA file; setting it (or a client certificate) enables TLS.
        tls_cert: client certificate (needs ``tls_key``).
        tls_key: client key.
        keepalive_s: MQTT keepalive.
        connect_timeout_s: how long the first connection may take.
        publish_timeout_s: how long one publish may wait for its PUBACK.
        publish_events: also publish each record, not retained, to the event topic.
        max_inflight: publishes awaiting their PUBACK at once (more callers wait).
        max_queued: publishes paho may hold while disconnected.
    """

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        topic_root: str = "city/alerts",
        client_id: str | None = None,
        username: str | None = None,
        password: SecretStr | str | None = None,
        tls_ca: Path | str | None = None,
        tls_cert: Path | str | None = None,
        tls_key: Path | str | None = None,
        keepalive_s: int = 30,
        connect_timeout_s: float = 10.0,
        publish_timeout_s: float = 10.0,
        publish_events: bool = True,
        max_inflight: int = 100,
        max_queued: int = 10_000,
    ) -> None:
        if not 1 <= port <= 65535:
            msg = f"MqttAlertSink port: expected 1..65535, got {port}"
            raise ConfigError(msg)
        root = topic_root.rstrip("/")
        if not root or "+" in root or "#" in root:
            msg = f"MqttAlertSink topic_root: expected topic levels without wildcards, got {topic_root!r}"
            raise ConfigError(msg)
        if (tls_cert is None) != (tls_key is None):
            msg = "MqttAlertSink TLS: tls_cert and tls_key must be given together"
            raise ConfigError(msg)
        if max_inflight < 1:
            msg = f"MqttAlertSink max_inflight: expected >= 1, got {max_inflight}"
            raise ConfigError(msg)
        self.host, self.port, self.topic_root = host, port, root
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.publish_events = publish_events
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"urbansense-alerts-{uuid.uuid4().hex[:12]}",
            clean_session=True,
        )
        if username is not None:
            secret = password.get_secret_value() if isinstance(password, SecretStr) else password
            client.username_pw_set(username, secret)
        if tls_ca is not None or tls_cert is not None:
            client.tls_set(
                ca_certs=str(tls_ca) if tls_ca is not None else None,
                certfile=str(tls_cert) if tls_cert is not None else None,
                keyfile=str(tls_key) if tls_key is not None else None,
            )
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(max_queued)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._lock = threading.Lock()  # guards _pending/_early/_abandoned between paho's thread and ours
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}
        self._early: set[int] = set()
        self._abandoned: set[int] = set()
        self._slots = asyncio.Semaphore(max_inflight)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected: asyncio.Future[None] | None = None
        self._started = False
        self._closed = False
        #: Severity of each active alert's retained message, to delete it when the severity changes.
        self._retained_severity: dict[str, str] = {}

    @classmethod
    def from_settings(cls, mqtt: MqttSettings, *, topic_root: str = "city/alerts", **kwargs: Any) -> MqttAlertSink:
        """A sink for the broker of ``URBAN_MQTT__*`` (host, port, credentials, TLS)."""
        return cls(
            mqtt.host,
            mqtt.port,
            topic_root=topic_root,
            username=mqtt.username,
            password=mqtt.password,
            tls_ca=mqtt.tls_ca,
            tls_cert=mqtt.tls_cert,
            tls_key=mqtt.tls_key,
            keepalive_s=mqtt.keepalive_s,
            **kwargs,
        )

    # paho callbacks run on paho's network thread.
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        fut, loop = self._connected, self._loop
        if reason_code.is_failure:
            logger.error(
                "mqtt alert sink connection refused host=%s port=%d reason=%s", self.host, self.port, reason_code
            )
            if fut is not None and loop is not None:
                err = MqttAlertError(f"MQTT broker {self.host}:{self.port} refused the connection: {reason_code}")
                loop.call_soon_threadsafe(_settle, fut, err)
            return
        logger.info("mqtt alert sink connected host=%s port=%d", self.host, self.port)
        if fut is not None and loop is not None:
            loop.call_soon_threadsafe(_settle, fut, None)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not self._closed:
            logger.warning("mqtt alert sink disconnected host=%s port=%d reason=%s", self.host, self.port, reason_code)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # paho may hold its own locks here: take only ours, and never call paho while holding it.
        with self._lock:
            if mid in self._abandoned:
                self._abandoned.discard(mid)
                return
            entry = self._pending.pop(mid, None)
            if entry is None:  # PUBACK before we registered the mid
                self._early.add(mid)
                return
        loop, fut = entry
        loop.call_soon_threadsafe(_settle, fut, None)

    async def connect(self) -> None:
        """Connect (once); later reconnects are automatic. Raises :class:`MqttAlertError`."""
        if self._closed:
            msg = "MqttAlertSink is closed"
            raise MqttAlertError(msg)
        if self._started:
            assert self._connected is not None  # noqa: S101 - set together with _started
            await asyncio.shield(self._connected)
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._connected = self._loop.create_future()
        try:
            self._client.connect_async(self.host, self.port, self.keepalive_s)
            self._client.loop_start()
            await asyncio.wait_for(asyncio.shield(self._connected), self.connect_timeout_s)
        except (OSError, TimeoutError, MqttAlertError) as exc:
            await self._stop_loop()
            self._started = False
            if isinstance(exc, MqttAlertError):
                raise
            msg = f"MQTT broker {self.host}:{self.port}: no connection within {self.connect_timeout_s} s: {exc!r}"
            raise MqttAlertError(msg) from exc

    async def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        loop = asyncio.get_running_loop()
        async with self._slots:
            fut: asyncio.Future[None] = loop.create_future()
            info = self._client.publish(topic, payload, qos=1, retain=retain)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):  # NO_CONN: queued by paho
                msg = f"MQTT publish to {topic!r} failed: {paho.error_string(info.rc)}"
                raise MqttAlertError(msg)
            with self._lock:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    fut.set_result(None)
                else:
                    self._pending[info.mid] = (loop, fut)
            try:
                await asyncio.wait_for(fut, self.publish_timeout_s)
            except TimeoutError as exc:
                with self._lock:
                    if self._pending.pop(info.mid, None) is not None:
                        self._abandoned.add(info.mid)  # a late PUBACK must not complete a reused mid
                msg = f"MQTT publish to {topic!r}: no PUBACK within {self.publish_timeout_s} s"
                raise MqttAlertError(msg) from exc

    async def send(self, alert: Alert) -> None:
        """Publish one alert record and update its retained state (see the class docstring)."""
        alert_id, state, severity, _ = _check_record(alert)
        await self.connect()
        event_topic, retained_topic = alert_topics(alert, self.topic_root)
        base = event_topic.rsplit("/", 1)[0]
        payload = orjson.dumps(alert)
        seg = topic_segment(alert_id)
        jobs: list[Awaitable[None]] = []
        if self.publish_events:
            jobs.append(self._publish(event_topic, payload, retain=False))
        if state in ACTIVE_STATES:
            jobs.append(self._publish(retained_topic, payload, retain=True))
            previous = self._retained_severity.get(alert_id)
            if state != "raised" and previous != severity:
                # Escalated to another severity, or unknown after a restart: delete the other copies.
                stale = SEVERITIES if previous is None else (previous,)
                jobs.extend(self._publish(f"{base}/{s}/{seg}", b"", retain=True) for s in stale if s != severity)
        else:
            jobs.extend(self._publish(f"{base}/{s}/{seg}", b"", retain=True) for s in SEVERITIES)
        await asyncio.gather(*jobs)
        if state in ACTIVE_STATES:
            self._retained_severity[alert_id] = severity
        else:
            self._retained_severity.pop(alert_id, None)
        logger.debug("mqtt alert published alert_id=%s seq=%s state=%s", alert_id, alert.get("seq"), state)

    async def _stop_loop(self) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def close(self) -> None:
        """Disconnect and stop paho's thread; publishes still waiting fail."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            await self._stop_loop()
        with self._lock:
            pending, self._pending = self._pending, {}
        for _, fut in pending.values():
            if not fut.done():
                fut.set_exception(MqttAlertError("MqttAlertSink closed before the PUBACK arrived"))


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


# ------------------------------------------------------------------------------------------ webhook


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` + hex HMAC-SHA256 of ``<timestamp>.<body>``.

    >>> sign(b"k", "1700000000", b"{}")
    'sha256=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146'
    """
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: bytes | str,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    now_s: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Check a webhook delivery as a receiver should (constant-time; refuses stale timestamps).

    Args:
        secret: the shared secret.
        body: the raw request body.
        timestamp: the ``X-UrbanSense-Timestamp`` header (Unix seconds).
        signature: the ``X-UrbanSense-Signature`` header.
        now_s: the receiver's clock, Unix seconds.
        tolerance_s: largest accepted distance between ``timestamp`` and ``now_s`` (replay window).

    Returns:
        Whether the signature is valid and fresh.

    >>> verify_signature(b"k", b"{}", "1700000000", sign(b"k", "1700000000", b"{}"), now_s=1700000100)
    True
    >>> verify_signature(b"k", b"{}", "1700000000", sign(b"k", "1700000000", b"{}"), now_s=1700009999)
    False
    """
    key = secret.encode() if isinstance(secret, str) else secret
    if not timestamp.isdigit() or abs(now_s - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(key, timestamp, body).encode(), signature.encode())


class WebhookSink:
    """POST each alert record as JSON to a URL, signed, with retries and bounded concurrency.

    Headers: ``Content-Type``, ``X-UrbanSense-Timestamp`` (Unix seconds),
    ``X-UrbanSense-Signature: sha256=<hex HMAC-SHA256 over "<timestamp>.<body>">`` (see
    :func:`verify_signature`; the timestamp inside the signed material makes a captured request
    useless after the receiver's tolerance) and ``X-UrbanSense-Delivery: <alert_id>.<seq>`` (an
    idempotency key: a retried delivery carries the same one).

    A 2xx answer delivers. 5xx, 429, timeouts and connection errors are retried up to
    ``max_attempts`` in all, waiting ``base * 2**(n-1)`` capped at ``backoff_max_s`` with equal
    jitter (between half and all of it), or the server's ``Retry-After`` when it is shorter than
    the cap. Other answers (4xx, 3xx: redirects are not followed) fail at once. At most
    ``max_concurrency`` deliveries are in flight; further ``send`` calls wait (back-pressure).

    Args:
        url: http(s) URL.
        secret: shared HMAC secret (at least 16 characters).
        timeout_s: total time for one attempt.
        max_attempts: attempts per record, the first included.
        backoff_base_s: first back-off.
        backoff_max_s: largest back-off.
        max_concurrency: deliveries in flight at once.
        content_type: the body's media type.
        encode: turns a record into the body (JSON by default).
        clock: Unix time in seconds, for the timestamp header.
        sleep: the back-off sleep (injectable for tests).
        rng: jitter source.
    """

    def __init__(
        self,
        url: str,
        secret: SecretStr | str,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 6,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_concurrency: int = 4,
        content_type: str = "application/json",
        encode: Callable[[Alert], bytes] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            msg = f"WebhookSink url: expected an http:// or https:// URL, got {url!r}"
            raise ConfigError(msg)
        raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if len(raw) < 16:
            msg = f"WebhookSink secret: expected at least 16 characters, got {len(raw)}"
            raise ConfigError(msg)
        if max_attempts < 1 or max_concurrency < 1 or timeout_s <= 0 or backoff_base_s < 0:
            msg = (
                "WebhookSink: expected max_attempts >= 1, max_concurrency >= 1, timeout_s > 0, backoff_base_s >= 0; "
                f"got {max_attempts}, {max_concurrency}, {timeout_s}, {backoff_base_s}"
            )
            raise ConfigError(msg)
        self.url = url
        self._secret = raw.encode()
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_concurrency = max_concurrency
        self.content_type = content_type
        self._encode = encode or orjson.dumps
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.url!r}, secret='**********')"

    def backoff_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after_s is not None and 0 <= retry_after_s <= self.backoff_max_s:
            return retry_after_s
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _session_for_loop(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.max_concurrency),
                headers={"User-Agent": "urbansense-webhook/1"},
            )
        return self._session

    async def send(self, alert: Alert) -> None:
        """Deliver one record (see the class docstring). Raises :class:`WebhookError`."""
        await self.post(self._encode(alert), delivery_id(alert))

    async def post(self, body: bytes, delivery: str) -> None:
        """Deliver an already encoded body, signed, with the retry policy."""
        if self._closed:
            msg = "WebhookSink is closed"
            raise WebhookError(msg)
        async with self._slots:
            session = self._session_for_loop()
            for attempt in range(1, self.max_attempts + 1):
                timestamp = str(int(self._clock()))
                headers = {
                    "Content-Type": self.content_type,
                    TIMESTAMP_HEADER: timestamp,
                    SIGNATURE_HEADER: sign(self._secret, timestamp, body),
                    DELIVERY_HEADER: delivery,
                }
                retry_after: float | None = None
                status: int | None = None
                cause: BaseException | None = None
                try:
                    async with session.post(self.url, data=body, headers=headers, allow_redirects=False) as resp:
                        code = resp.status
                        detail = (await resp.content.read(300)).decode("utf-8", "replace")
                        retry_after = _retry_after_s(resp.headers.get("Retry-After"))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    detail, cause = repr(exc), exc
                else:
                    status = code
                    if 200 <= code < 300:
                        logger.debug("webhook delivered delivery=%s status=%d attempt=%d", delivery, code, attempt)
                        return
                    if code != 429 and code < 500:
                        msg = f"webhook {self.url} refused delivery {delivery}: HTTP {code} {detail!r} (not retried)"
                        raise WebhookError(msg, code)
                if attempt == self.max_attempts:
                    last = status or detail
                    msg = f"webhook {self.url}: delivery {delivery} failed after {attempt} attempts, last: {last}"
                    raise WebhookError(msg, status) from cause
                delay = self.backoff_s(attempt, retry_after)
                logger.warning(
                    "webhook delivery failed delivery=%s attempt=%d status=%s retry_in_s=%.2f error=%s",
                    delivery,
                    attempt,
                    status,
                    delay,
                    detail[:120],
                )
                await self._sleep(delay)

    async def close(self) -> None:
        """Close the HTTP session."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: use our own back-off
