"""MQTT -> Kafka bridge: validate each reading, forward it keyed by sensor, dead-letter the rest.

The bridge is a thin adapter. Validation belongs to :mod:`streams.schema`, the dead-letter format
to :mod:`streams.deadletter`, and :func:`route` joins the two without touching a network.

Delivery is at least once. The MQTT session is persistent (``clean_session=False`` with a stable
client id) and acknowledgements are manual. A message is acknowledged only after Kafka's delivery
report confirms its record, and acknowledgements go out in the order the messages arrived. A
message whose record fails is never acknowledged, so the broker redelivers it. The same happens
to messages that are still in flight when the connection drops or the bridge stops.

At least once would count a redelivered reading twice: Kafka gives the copy a new offset, so the
worker's offset-based dedupe cannot see it. The bridge therefore remembers the content of the
last ``redelivery_memory`` messages Kafka confirmed. A message that comes again with the same
topic and bytes is acknowledged and counted as ``redelivered``, not forwarded, when the broker
marks it as a redelivery (the DUP flag) or it arrives within ``redelivery_grace_s`` of a
reconnect (a publisher resending what it had in flight, which the broker passes on without the
flag). Outside those, an identical message is forwarded: a sensor that sends a reading twice is a
fault the alert rules are meant to see. The memory is per process: after a bridge restart,
redeliveries are forwarded again (at least once still holds; nothing is lost).

With ``frame_readings`` > 1 the bridge forwards readings in frames (:mod:`streams.frames`): the
valid readings bound for one partition of the readings topic (the sensor id's, by murmur2) are
held until ``frame_readings`` of them are there or the oldest has waited ``frame_linger_ms``, then
go as one record. The worker's cost is mostly per record, so this is what lets one worker keep up
with a city's feed. Each message is still acknowledged only once its frame is confirmed, in
arrival order. Until the readings topic's partition count is known (the worker creates the
topic), readings go one per record.

Security: :func:`secure_client` applies username/password and TLS (verifying the broker's
certificate and host name) to any paho client. A broker that refuses the credentials, or whose
certificate does not verify, stops the bridge with :class:`MqttConnectError` naming the broker
and the variables to check; other connection failures are retried with backoff.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as paho
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from paho.mqtt.enums import CallbackAPIVersion

from connectors.kafka import produce_dead_letter, producer_config
from streams.deadletter import DeadLetter, dead_letter
from streams.errors import ConfigError, InvalidReading, UrbanSensingError
from streams.frames import MAX_FRAME_READINGS, Framer, encode_frame, kafka_partition
from streams.schema import MAX_PAYLOAD_BYTES, parse_reading
from streams.settings import KafkaSettings, MqttSettings, Settings

logger = logging.getLogger(__name__)

Clock = Callable[[], int]

RECONNECT_MIN_DELAY_S: Final = 1
RECONNECT_MAX_DELAY_S: Final = 30
_BACKPRESSURE_POLL_S: Final = 0.05


def wall_clock_ms() -> int:
    """Current wall-clock time in epoch milliseconds (the default bridge clock)."""
    return time.time_ns() // 1_000_000


class BridgeDeliveryError(UrbanSensingError):
    """Kafka rejected a record after the producer's own retries (the bridge must restart)."""


class MqttConnectError(UrbanSensingError):
    """The MQTT broker refused the credentials or its TLS certificate did not verify.

    Retrying cannot help, so the bridge stops. The message names the broker and the settings to
    check, never the password.
    """


#: CONNACK reasons that mean "these credentials will never be accepted" (MQTT 5 numbering, which
#: paho also uses for 3.1.1): bad user name or password, not authorized, bad authentication method.
_AUTH_REFUSED: Final = frozenset({134, 135, 140})


def secure_client(client: paho.Client, mqtt: MqttSettings) -> None:
    """Apply the credentials and TLS settings of ``mqtt`` to a paho client (before connecting).

    TLS is on when ``mqtt.tls`` is true or a CA or client certificate is given. The broker's
    certificate and host name are always verified: against ``tls_ca`` when set, else the system CAs.

    Raises:
        ConfigError: a TLS file cannot be loaded (names the variable, never the password).
    """
    if mqtt.username is not None:
        password = mqtt.password.get_secret_value() if mqtt.password is not None else None
        client.username_pw_set(mqtt.username, password)
    if mqtt.tls or mqtt.tls_ca is not None or mqtt.tls_cert is not None:
        try:
            client.tls_set(
                ca_certs=str(mqtt.tls_ca) if mqtt.tls_ca is not None else None,
                certfile=str(mqtt.tls_cert) if mqtt.tls_cert is not None else None,
                keyfile=str(mqtt.tls_key) if mqtt.tls_key is not None else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError) as exc:
            msg = (
                f"URBAN_MQTT__TLS_CA / URBAN_MQTT__TLS_CERT / URBAN_MQTT__TLS_KEY: cannot load the TLS files "
                f"for mqtt broker {mqtt.host}:{mqtt.port}: {exc}"
            )
            raise ConfigError(msg) from exc


class _ReportingClient(paho.Client):
    """A paho client that reports why a (re)connection attempt failed.

    paho swallows these errors in its network loop and only retries, so a TLS certificate that
    never verifies would otherwise look like a broker that is merely down.
    """

    on_connect_error: Callable[[OSError], None] | None = None

    def reconnect(self) -> paho.MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            if self.on_connect_error is not None:
                self.on_connect_error(exc)
            raise


@dataclass(frozen=True, slots=True)
class Forward:
    """A valid reading to produce to the readings topic."""

    key: bytes
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class BridgeCounters:
    """A snapshot of the bridge's counters.

    ``forwarded`` and ``dead_lettered`` count records that Kafka confirmed. ``errors``
    counts failed deliveries and messages the handler could not process.
    """

    received: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    errors: int = 0
    #: messages recognised as broker or publisher redeliveries of a confirmed one (acknowledged, not forwarded)
    redelivered: int = 0


def subscription(topic_root: str) -> str:
    """The MQTT filter for ``<topic_root>/<kind>/<zone>/<sensor_id>``.

    >>> subscription("city")
    'city/+/+/+'
    """
    return f"{topic_root}/+/+/+"


def route(
    topic: str,
    payload: bytes,
    now_ms: int,
    *,
    topic_root: str = "city",
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> Forward | DeadLetter:
    """Decide where one MQTT message goes. Pure: no I/O, time is injected.

    Args:
        topic: the MQTT topic, ``<topic_root>/<kind>/<zone>/<sensor_id>``.
        payload: the message bytes exactly as received.
        now_ms: processing time (epoch ms) for validation and the dead-letter stamp.
        topic_root: the first topic level(s).
        max_payload_bytes: payload size limit.

    Returns:
        :class:`Forward` with the original bytes keyed by sensor id and stamped with event time,
        or a :class:`~streams.deadletter.DeadLetter` whose reason is the validation error's
        code, or ``topic_mismatch`` when the topic disagrees with the payload.

    >>> route("city/iot/futian/s1", b"{", 1).reason
    'bad_json'
    """
    source = f"mqtt:{topic}"
    root_levels = topic_root.split("/")
    levels = topic.split("/")
    from_topic: tuple[str, str, str] | None = None
    if len(levels) == len(root_levels) + 3 and levels[: len(root_levels)] == root_levels:
        from_topic = (levels[-3], levels[-2], levels[-1])
    topic_key = from_topic[2].encode() if from_topic and from_topic[2] else None
    try:
        reading = parse_reading(payload, now_ms=now_ms, max_bytes=max_payload_bytes)
    except InvalidReading as err:
        return dead_letter(payload, err, source=source, now_ms=now_ms, key=topic_key)
    key = reading.sensor_id.encode()
    in_payload = (reading.kind, reading.zone, reading.sensor_id)
    if from_topic != in_payload:
        detail = (
            f"reading sensor_id={reading.sensor_id} topic {topic!r}: expected "
            f"'{topic_root}/{reading.kind}/{reading.zone}/{reading.sensor_id}' "
            "(kind/zone/sensor_id of the payload)"
        )
        mismatch = InvalidReading("topic_mismatch", detail)
        return dead_letter(payload, mismatch, source=source, now_ms=now_ms, key=key)
    return Forward(key=key, value=payload, timestamp_ms=reading.ts_ms)


class _Pending:
    """One received message waiting for its Kafka delivery report."""

    __slots__ = ("mid", "qos", "done", "ack", "digest")

    def __init__(self, mid: int, qos: int, digest: int = 0) -> None:
        self.mid = mid
        self.qos = qos
        self.done = False
        self.ack = False
        self.digest = digest


class _Recent:
    """Content digests of the last ``size`` confirmed messages (a bounded multiset)."""

    __slots__ = ("size", "order", "counts")

    def __init__(self, size: int) -> None:
        self.size = size
        self.order: deque[int] = deque()
        self.counts: dict[int, int] = {}

    def add(self, digest: int) -> None:
        if self.size <= 0:
            return
        self.order.append(digest)
        self.counts[digest] = self.counts.get(digest, 0) + 1
        if len(self.order) > self.size:
            old = self.order.popleft()
            n = self.counts[old] - 1
            if n:
                self.counts[old] = n
            else:
                del self.counts[old]

    def __contains__(self, digest: int) -> bool:
        return digest in self.counts


class MqttBridge:
    """Subscribe to sensor readings over MQTT and produce them to Kafka.

    Args:
        mqtt: broker address, credentials, TLS files, client id, topic root and QoS.
        kafka: bootstrap servers, security and the readings/DLQ topic names.
        producer: an existing producer (default: one built from :func:`producer_config`).
        clock: current time in epoch ms (injected for tests).
        max_payload_bytes: payload size limit passed to the validator.
        client: an existing paho client (default: a persistent v3.1.1 client with manual acks).
        poll_interval_s: how long :meth:`run` blocks in each ``producer.poll``.
        redelivery_memory: confirmed messages remembered to recognise redeliveries (0: none).
        redelivery_grace_s: after a reconnect, how long a remembered message counts as a redelivery
            without the broker's DUP flag.
        frame_readings: readings per Kafka record, at most (1: one per record).
        frame_linger_ms: how long a partly filled frame waits for more readings.

    Raises:
        ConfigError: the topic root holds wildcards or TLS files are incomplete or unreadable.
    """

    def __init__(
        self,
        mqtt: MqttSettings,
        kafka: KafkaSettings,
        *,
        producer: Producer | None = None,
        clock: Clock = wall_clock_ms,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        client: paho.Client | None = None,
        poll_interval_s: float = 0.05,
        redelivery_memory: int = 20_000,
        redelivery_grace_s: float = 30.0,
        frame_readings: int = 1,
        frame_linger_ms: int = 20,
    ) -> None:
        root = mqtt.topic_root
        if not root or "+" in root or "#" in root or root.startswith("/") or root.endswith("/"):
            msg = f"URBAN_MQTT__TOPIC_ROOT: expected a topic prefix without wildcards, got {root!r}"
            raise ConfigError(msg)
        if (mqtt.tls_cert is None) != (mqtt.tls_key is None):
            msg = "URBAN_MQTT__TLS_CERT and URBAN_MQTT__TLS_KEY must be set together"
            raise ConfigError(msg)
        if max_payload_bytes < 1:
            msg = f"max_payload_bytes: expected >= 1, got {max_payload_bytes}"
            raise ConfigError(msg)
        if not 1 <= frame_readings <= MAX_FRAME_READINGS:
            msg = f"URBAN_KAFKA__FRAME_SIZE: expected 1..{MAX_FRAME_READINGS}, got {frame_readings}"
            raise ConfigError(msg)
        self._mqtt = mqtt
        self._readings_topic = kafka.readings_topic
        self._dlq_topic = kafka.dlq_topic
        self._clock = clock
        self._max_payload_bytes = max_payload_bytes
        self._poll_interval_s = poll_interval_s
        self._producer = producer if producer is not None else Producer(producer_config(kafka))
        self._client = client if client is not None else self._make_client(mqtt)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._lock = threading.Lock()
        self._ack_lock = threading.Lock()
        self._pending: deque[_Pending] = deque()
        self._counts = {"received": 0, "forwarded": 0, "dead_lettered": 0, "errors": 0, "redelivered": 0}
        self._recent = _Recent(redelivery_memory)
        self._grace_ms = int(redelivery_grace_s * 1000)
        self._redelivery_until_ms = -1  # set at each reconnect
        self._connects = 0
        self._frame = frame_readings
        self._linger_s = frame_linger_ms / 1000.0
        self._partitions: int | None = None  # of the readings topic, once known (frames need it)
        self._partitions_checked = -1e18
        # held readings, (pending entry, Forward) per partition of the readings topic
        self._framer = Framer(self._partition_of, frame_readings, clock=time.monotonic)
        self._frame_lock = threading.Lock()  # takes and produces frames: a partition's stay in order
        self._failure: KafkaError | None = None
        self._fatal: MqttConnectError | None = None
        self._closing = False
        self._closed = False
        self._started = False
        self._subscribed = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = wall_clock_ms) -> MqttBridge:
        """Build a bridge from the application settings (entrypoints only)."""
        return cls(
            settings.mqtt,
            settings.kafka,
            clock=clock,
            max_payload_bytes=settings.max_payload_bytes,
            redelivery_memory=settings.mqtt.redelivery_memory,
            redelivery_grace_s=settings.mqtt.redelivery_grace_s,
            frame_readings=settings.kafka.frame_size,
            frame_linger_ms=settings.kafka.frame_linger_ms,
        )

    def _make_client(self, mqtt: MqttSettings) -> paho.Client:
        client = _ReportingClient(
            CallbackAPIVersion.VERSION2,
            client_id=mqtt.client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
            manual_ack=True,
        )
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_DELAY_S, max_delay=RECONNECT_MAX_DELAY_S)
        secure_client(client, mqtt)
        client.on_connect_error = self._on_connect_error
        return client

    @property
    def _broker(self) -> str:
        return f"{self._mqtt.host}:{self._mqtt.port}"

    def _stop_for(self, msg: str) -> None:
        logger.error("%s", msg)
        if self._fatal is None:
            self._fatal = MqttConnectError(msg)

    @property
    def counters(self) -> BridgeCounters:
        """A consistent snapshot of the counters."""
        with self._lock:
            return BridgeCounters(**self._counts)

    @property
    def pending(self) -> int:
        """Messages received but not yet acknowledged or abandoned."""
        with self._lock:
            return len(self._pending)

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the broker has confirmed the subscription; ``False`` on timeout."""
        return self._subscribed.wait(timeout_s)

    def route(self, topic: str, payload: bytes, now_ms: int) -> Forward | DeadLetter:
        """:func:`route` with this bridge's topic root and payload limit."""
        return route(
            topic,
            payload,
            now_ms,
            topic_root=self._mqtt.topic_root,
            max_payload_bytes=self._max_payload_bytes,
        )

    def run(self, stop_event: threading.Event) -> None:
        """Connect, bridge messages until ``stop_event`` is set, then :meth:`close`.

        The paho network thread receives and enqueues messages (reconnecting with backoff
        from 1 s to 30 s); this thread serves Kafka delivery reports, which acknowledge them.

        Raises:
            BridgeDeliveryError: Kafka failed a record (its MQTT message stays unacknowledged).
            MqttConnectError: the broker refused the credentials or its certificate did not verify.
        """
        m = self._mqtt
        self._client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self._client.loop_start()
        self._started = True
        logger.info(
            "mqtt bridge started host=%s port=%d client_id=%s subscription=%s readings=%s dlq=%s",
            m.host,
            m.port,
            m.client_id,
            subscription(m.topic_root),
            self._readings_topic,
            self._dlq_topic,
        )
        try:
            while not stop_event.is_set():
                self._producer.poll(self._poll_interval_s)
                if self._frame > 1:
                    self._check_partitions()
                    self.flush_frames(time.monotonic() - self._linger_s)
                if self._fatal is not None:
                    raise self._fatal
                failure = self._failure
                if failure is not None:
                    msg = f"kafka delivery failed: {failure.str()} (code {failure.code()})"
                    raise BridgeDeliveryError(msg)
        finally:
            self.close()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking messages, flush the producer (acknowledging what it delivered), disconnect.

        Messages that arrive while closing, or whose records are still queued after
        ``timeout_s``, are not acknowledged; the broker redelivers them to the next session.
        """
        if self._closed:
            return
        self._closing = True
        self.flush_frames()
        left = self._producer.flush(timeout_s)
        if left:
            logger.warning("mqtt bridge closing with undelivered records count=%d", left)
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
        self._closed = True
        c = self.counters
        logger.info(
            "mqtt bridge stopped received=%d forwarded=%d dead_lettered=%d redelivered=%d errors=%d",
            c.received,
            c.forwarded,
            c.dead_lettered,
            c.redelivered,
            c.errors,
        )

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: Any,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            if reason_code.value in _AUTH_REFUSED:
                m = self._mqtt
                who = (
                    f"as user {m.username!r}; check URBAN_MQTT__USERNAME and URBAN_MQTT__PASSWORD"
                    if m.username is not None
                    else "without credentials; set URBAN_MQTT__USERNAME and URBAN_MQTT__PASSWORD"
                )
                self._stop_for(f"mqtt broker {self._broker} refused the connection: {reason_code} ({who})")
                client.disconnect()  # no point retrying the same credentials
                return
            logger.error("mqtt connect refused broker=%s reason=%s (retrying)", self._broker, reason_code)
            return
        with self._lock:
            # Acks only make sense on the connection that received the message; whatever is
            # still pending is redelivered by the broker on this new connection.
            self._pending.clear()
            self._connects += 1
            if self._connects > 1:  # what was in flight comes again now (see the module docstring)
                self._redelivery_until_ms = self._clock() + self._grace_ms
        sub = subscription(self._mqtt.topic_root)
        client.subscribe(sub, qos=self._mqtt.qos)
        logger.info(
            "mqtt connected host=%s session_present=%s subscription=%s qos=%d",
            self._mqtt.host,
            flags.session_present,
            sub,
            self._mqtt.qos,
        )

    def _on_connect_error(self, exc: OSError) -> None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._stop_for(
                f"mqtt broker {self._broker}: TLS certificate verification failed: {exc.verify_message} "
                "(check URBAN_MQTT__TLS_CA and that URBAN_MQTT__HOST matches the certificate)"
            )
            return
        logger.warning("mqtt connect failed broker=%s error=%s (retrying)", self._broker, exc)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[Any],
        properties: Any,
    ) -> None:
        if any(rc.is_failure for rc in reason_codes):
            logger.error(
                "mqtt subscription refused subscription=%s reason=%s",
                subscription(self._mqtt.topic_root),
                [str(rc) for rc in reason_codes],
            )
            return
        logger.info("mqtt subscribed subscription=%s", subscription(self._mqtt.topic_root))
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Any,
    ) -> None:
        self._subscribed.clear()
        if self._closing:
            logger.info("mqtt disconnected reason=%s", reason_code)
        else:
            logger.warning("mqtt connection lost reason=%s (reconnecting)", reason_code)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._closing:
            return  # not acknowledged: redelivered to the next session
        try:
            self._handle(message.topic, bytes(message.payload), message.mid, message.qos, dup=bool(message.dup))
        except Exception:
            # Never let one message kill paho's network thread; it stays unacknowledged.
            logger.exception("mqtt message handling failed mid=%d", message.mid)
            self._bump("errors")

    def _handle(self, topic: str, payload: bytes, mid: int, qos: int, *, dup: bool = False) -> None:
        self._bump("received")
        now = self._clock()
        digest = hash((topic, payload))
        entry = _Pending(mid, qos, digest)
        with self._lock:
            again = (dup or now < self._redelivery_until_ms) and digest in self._recent
            self._pending.append(entry)
        if again:
            logger.debug("skipped redelivered message topic=%s mid=%d dup=%s", topic, mid, dup)
            self._bump("redelivered")
            self._settle(entry, ack=True)
            return
        outcome = self.route(topic, payload, now)
        send: Callable[[], None]
        if isinstance(outcome, Forward) and self._frame > 1 and self._partitions is not None:
            self._add_to_frame(entry, outcome)
            return
        if isinstance(outcome, Forward):
            logger.debug("forwarding reading topic=%s bytes=%d", topic, len(payload))
            send = functools.partial(
                self._producer.produce,
                self._readings_topic,
                value=outcome.value,
                key=outcome.key,
                timestamp=outcome.timestamp_ms,
                on_delivery=functools.partial(self._delivered, entry, "forwarded"),
            )
        else:
            logger.warning(
                "dead-lettered reading source=mqtt:%s reason=%s bytes=%d",
                topic,
                outcome.reason,
                len(payload),
            )
            send = functools.partial(
                produce_dead_letter,
                self._producer,
                self._dlq_topic,
                outcome,
                on_delivery=functools.partial(self._delivered, entry, "dead_lettered"),
            )
        while True:
            try:
                send()
                return
            except BufferError:
                if self._closing:
                    self._settle(entry, ack=False)  # redelivered to the next session
                    return
                # Back-pressure: serve delivery reports until the local queue has room.
                self._producer.poll(_BACKPRESSURE_POLL_S)

    # -- frames (streams.frames) -----------------------------------------------------------

    def _check_partitions(self) -> None:
        """Learn the readings topic's partition count (every 10 s until known)."""
        now = time.monotonic()
        if self._partitions is not None or now - self._partitions_checked < 10.0:
            return
        self._partitions_checked = now
        try:
            meta = self._producer.list_topics(self._readings_topic, timeout=2).topics.get(self._readings_topic)
        except KafkaException as exc:
            logger.warning("readings topic metadata unavailable topic=%s error=%s", self._readings_topic, exc)
            return
        if meta is not None and meta.error is None and meta.partitions:
            self._partitions = len(meta.partitions)
            logger.info("framing readings topic=%s partitions=%d frame_readings=%d",
                        self._readings_topic, self._partitions, self._frame)

    def _partition_of(self, key: bytes) -> int:
        assert self._partitions is not None  # noqa: S101 - frames start once the count is known
        return kafka_partition(key, self._partitions)

    def _add_to_frame(self, entry: _Pending, fwd: Forward) -> None:
        with self._frame_lock:
            with self._lock:
                full = self._framer.add(fwd.key, (entry, fwd))
            if full is not None:
                self._produce_frame(*full)

    def flush_frames(self, started_before: float | None = None) -> None:
        """Send the held frames (those started before ``started_before``, monotonic s; None: all)."""
        with self._frame_lock:
            with self._lock:
                taken = self._framer.drain(started_before)
            for p, items in taken:
                self._produce_frame(p, items)

    def _produce_frame(self, partition: int, items: list[tuple[_Pending, Forward]]) -> None:
        """One record for ``items`` (caller holds ``_frame_lock``); each is settled by its delivery."""
        value = encode_frame([fwd.value for _, fwd in items])
        entries = [entry for entry, _ in items]
        report = functools.partial(self._delivered_frame, entries)
        while True:
            try:
                self._producer.produce(self._readings_topic, value=value, partition=partition,
                                       timestamp=items[0][1].timestamp_ms, on_delivery=report)
                return
            except BufferError:
                self._producer.poll(_BACKPRESSURE_POLL_S)  # back-pressure, as for single readings

    def _delivered_frame(self, entries: list[_Pending], err: KafkaError | None, msg: Message) -> None:
        for entry in entries:
            self._delivered(entry, "forwarded", err, msg)

    # -- delivery reports (whichever thread polls the producer) --------------------------

    def _delivered(
        self, entry: _Pending, counter: str, err: KafkaError | None, msg: Message
    ) -> None:
        if err is not None:
            logger.error(
                "kafka delivery failed topic=%s mid=%d error=%s", msg.topic(), entry.mid, err.str()
            )
            self._bump("errors")
            if self._failure is None:
                self._failure = err
            self._settle(entry, ack=False)
            return
        with self._lock:
            self._recent.add(entry.digest)
        self._bump(counter)
        self._settle(entry, ack=True)

    def _settle(self, entry: _Pending, *, ack: bool) -> None:
        with self._ack_lock:
            ready: list[_Pending] = []
            with self._lock:
                entry.done = True
                entry.ack = ack
                while self._pending and self._pending[0].done:
                    ready.append(self._pending.popleft())
            # PUBACKs go out in arrival order (MQTT 3.1.1, 4.6). paho's own locks are taken
            # inside ack(), so it is called without self._lock held.
            for e in ready:
                if e.ack:
                    self._client.ack(e.mid, e.qos)

    def _bump(self, counter: str) -> None:
        with self._lock:
            self._counts[counter] += 1
