"""Build the Faust application from :class:`~streams.settings.Settings` (no import-time effects)."""

from __future__ import annotations

import ssl
from typing import Any

import faust

from streams.settings import DEFAULT_SASL_MECHANISM, KafkaSettings, Settings


def broker_credentials(kafka: KafkaSettings) -> faust.auth.Credentials | None:
    """Faust/aiokafka credentials matching :func:`connectors.kafka.client_config`.

    ``SSL``/``SASL_SSL`` get a verifying TLS context (system CAs, or ``ssl_cafile``; plus the
    client certificate for mutual TLS); ``SASL_*`` get username, password and mechanism
    (default ``PLAIN``, as for confluent-kafka). ``PLAINTEXT``: ``None``.
    """
    ctx: ssl.SSLContext | None = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
        if kafka.ssl_certfile is not None:
            ctx.load_cert_chain(str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism or DEFAULT_SASL_MECHANISM,
            ssl_context=ctx,
        )
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


def verify_end_offsets(kafka_cfg: dict[str, Any]) -> None:
    """Make Faust's changelog recovery read to the true end of each partition.

    Faust restores tables up to the end offsets the broker reports. Tansu 0.6.0 under-reports them
    (last batch's base offset + 1), which would leave the newest table updates unrestored. This
    wraps the aiokafka driver's end-offset lookup with :func:`connectors.kafka.true_end_offsets`
    (one small fetch per changelog partition at recovery; on Kafka it changes nothing).
    """
    import asyncio

    from faust.transport.drivers import aiokafka as driver

    from connectors.kafka import true_end_offsets

    cls = driver.AIOKafkaConsumerThread
    original = cls._highwaters  # noqa: SLF001
    if getattr(original, "urbansense_verified", False):
        return

    async def _highwaters(self: Any, partitions: Any) -> Any:
        reported = await original(self, partitions)
        fixed = await asyncio.to_thread(
            true_end_offsets, kafka_cfg, {(tp.topic, tp.partition): int(o or 0) for tp, o in reported.items()}
        )
        return {tp: max(int(o or 0), fixed[(tp.topic, tp.partition)]) for tp, o in reported.items()}

    _highwaters.urbansense_verified = True  # type: ignore[attr-defined]
    cls._highwaters = _highwaters  # type: ignore[method-assign]  # noqa: SLF001


async def persist(table: Any, partition: int, key: Any, value: Any, **serializers: Any) -> None:
    """Write one record to ``table``'s changelog now, so the next offset commit waits for it.

    Faust's ``Table.send_changelog`` queues the record in its producer buffer (``send_soon``).
    Before committing offsets Faust flushes that buffer, but ``ProducerBuffer.flush_atmost``
    returns as soon as no record leaves it for 0.1 s, and the commit goes ahead: on a loaded
    machine the offsets of a batch were committed while its state records were still queued,
    and a SIGKILL then lost them (a restart neither restored the state nor re-read the input).
    Awaiting ``Topic.send`` hands the record to the aiokafka producer, whose ``flush()`` the
    commit does wait for in full. ``serializers`` are ``key_serializer``/``value_serializer``
    overrides (default: the table's).
    """
    await table.changelog_topic.send(
        key=key,
        value=value,
        partition=partition,
        key_serializer=serializers.get("key_serializer", table.key_serializer),
        value_serializer=serializers.get("value_serializer", table.value_serializer),
        callback=table._on_changelog_sent,  # noqa: SLF001 - keeps Faust's persisted-offset bookkeeping
    )


def flush_before_commit() -> None:
    """Make Faust await ``app.urbansense_before_commit()`` before it commits offsets.

    Faust's consumer picks the offsets to commit (those of acknowledged events), then flushes the
    producer and commits. The hook runs between the two: everything an acknowledged event changed
    is in the worker's pending state by then, and the hook writes it to the changelog, so a
    committed offset is never ahead of the state on the changelog. Installed once per process
    (a class-level wrap, as :func:`verify_end_offsets`); apps without the attribute are unaffected.
    """
    from faust.transport.consumer import Consumer

    original = Consumer._commit_offsets  # noqa: SLF001
    if getattr(original, "urbansense_hooked", False):
        return

    async def _commit_offsets(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        hook = getattr(self.app, "urbansense_before_commit", None)
        if hook is not None:
            await hook()
        return await original(self, offsets, start_new_transaction=start_new_transaction)

    _commit_offsets.urbansense_hooked = True  # type: ignore[attr-defined]
    Consumer._commit_offsets = _commit_offsets  # type: ignore[method-assign]  # noqa: SLF001


def create_app(settings: Settings, **overrides: Any) -> faust.App:
    """A configured Faust app with the UrbanSense agents, tables and web views attached."""
    from streams.agents import attach  # agents need the app; keep the import local

    k = settings.kafka
    datadir = settings.data_dir / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    servers = ";".join(f"kafka://{s.strip()}" for s in k.bootstrap_servers.split(",") if s.strip())
    conf: dict[str, Any] = {
        "broker": servers,
        "store": "memory://",
        "topic_partitions": k.partitions,
        "topic_replication_factor": k.replication_factor,
        "topic_allow_declare": True,
        "producer_acks": -1,
        "consumer_auto_offset_reset": "earliest",
        "web_port": settings.web_port,
        "web_host": settings.web_host,
        "web_in_thread": False,
        "datadir": str(datadir),
        "autodiscover": False,
        "broker_session_timeout": k.session_timeout_ms / 1000.0,
        "broker_heartbeat_interval": min(3.0, k.session_timeout_ms / 4000.0),
        # offsets (and the window state before them) are committed on time; the count-based commit
        # is a backstop only (each stalls the fetch loop, and frequent ones defeat state coalescing)
        "broker_commit_every": 100_000,
        "broker_commit_interval": k.commit_interval_s,
        "stream_buffer_maxsize": 8192,
        "table_standby_replicas": 0,
    }
    creds = broker_credentials(k)
    if creds is not None:
        conf["broker_credentials"] = creds
    conf.update(overrides)
    if k.verify_end_offsets:
        from connectors.kafka import client_config

        verify_end_offsets(client_config(k))
    flush_before_commit()
    app = faust.App(settings.app_id, **conf)
    attach(app, settings)
    return app
