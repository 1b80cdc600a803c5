"""Typed configuration from the environment (prefix ``URBAN_``, nested with ``__``).

Only entrypoints build :class:`Settings`; everything else takes explicit arguments.
Example: ``URBAN_KAFKA__BOOTSTRAP_SERVERS=broker:9092``, ``URBAN_INFLUX__TOKEN=...``.
Secrets are :class:`~pydantic.SecretStr` and never appear in ``repr`` or logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _int_if_digits(value: object) -> object:
    # Environment values arrive as strings; Literal[1, 2] needs the int.
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


IntChoice = BeforeValidator(_int_if_digits)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Kafka (or Kafka-protocol) broker and topic names."""

    bootstrap_servers: str = "127.0.0.1:9092"
    readings_topic: str = "urban.readings.v1"
    aggregates_topic: str = "urban.aggregates.v1"
    alerts_topic: str = "urban.alerts.v1"
    dlq_topic: str = "urban.readings.dlq.v1"
    late_topic: str = "urban.readings.late.v1"
    zone_partials_topic: str = "urban.zone-partials.v1"
    zone_aggregates_topic: str = "urban.zone-aggregates.v1"
    #: Extra Kafka-native feed topics consumed straight by the worker (comma separated).
    extra_source_topics: str = ""
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    #: Consumer-group session timeout of the worker. A member that dies without leaving holds
    #: its partitions this long, and (on Tansu) a join waits about half of it.
    session_timeout_ms: int = Field(default=10_000, ge=3000)
    #: Check the broker's end offsets before restoring tables (works around Tansu 0.6.0, which
    #: under-reports them; harmless on Kafka).
    verify_end_offsets: bool = True


class MqttSettings(_Section):
    """MQTT broker the bridge subscribes to."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_root: str = "city"
    client_id: str = "urbansense-bridge"
    qos: Annotated[Literal[0, 1, 2], IntChoice] = 1
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive_s: int = Field(default=30, ge=5)


class InfluxSettings(_Section):
    """Time-series store. Empty ``url`` means the embedded SQLite store."""

    url: str = ""
    version: Annotated[Literal[1, 2], IntChoice] = 2
    token: SecretStr | None = None
    org: str = "urbansense"
    bucket: str = "urbansense"
    database: str = "urbansense"
    username: str | None = None
    password: SecretStr | None = None
    batch_size: int = Field(default=5000, ge=1)
    flush_interval_ms: int = Field(default=1000, ge=10)
    max_retries: int = Field(default=5, ge=0)
    timeout_ms: int = Field(default=10_000, ge=100)
    # Outage buffering (connectors/buffer.py): points held in memory while the store is down, then an
    # on-disk spool under <data_dir>/spool of at most this many bytes; beyond both the writer pauses
    # consumption (back-pressure) instead of dropping points. 0 memory points: spool every held batch.
    buffer_memory_points: int = Field(default=50_000, ge=0)
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=4096)


class StoreSettings(_Section):
    """The embedded store used when no InfluxDB is configured."""

    path: Path = Path("var/urbansense.db")


class WindowSettings(_Section):
    """Event-time windowing of the worker."""

    size_ms: int = Field(default=60_000, ge=1000)
    #: How far behind the newest event of a partition a reading may arrive and still count.
    allowed_lateness_ms: int = Field(default=5_000, ge=0)
    #: Extra time a window stays open after the watermark passes its end.
    grace_ms: int = Field(default=0, ge=0)
    #: Wall-clock time after which a silent partition's watermark is advanced anyway.
    idle_timeout_ms: int = Field(default=30_000, ge=1000)
    #: Further windows besides the tumbling one, e.g. ``hopping:5m/1m,tumbling:1h``.
    extra: str = ""
    #: Roll every window up per zone (all sensors of a zone, merged from partial states).
    zones: bool = True
    #: Also publish provisional results (``"final": false``) of open windows after each micro-batch.
    early_updates: bool = False


class ModelSettings(_Section):
    """Anomaly models scored in the stream."""

    enabled: bool = True
    #: Folder of ``<kind>/<version>/`` artifacts; the newest version of each kind is used, and a
    #: newer one dropped in is swapped in without a restart. Default: the models shipped with the
    #: package.
    dir: Path | None = None
    reload_interval_s: float = Field(default=5.0, gt=0)


class AlertingSettings(_Section):
    """Alert rules, sinks and the live board."""

    rules_file: Path | None = None
    #: Bearer token operators enter on the board to acknowledge/clear (>= 16 characters). No
    #: token: the board is read-only.
    board_token: SecretStr | None = None
    #: Origins allowed to post acknowledgements (comma separated, e.g. ``https://ops.city.example``
    #: behind a TLS proxy). They replace the default, the board's own origin.
    board_allowed_origins: str = ""
    #: Publish alerts to MQTT ``<topic_root>/alerts/<zone>/<severity>`` (retained while active).
    mqtt_alerts: bool = False
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    cap_url: str | None = None
    cap_secret: SecretStr | None = None
    cap_sender: str = "urbansense"


from connectors.retention import RetentionSettings  # noqa: E402 - a settings section kept with its code


class Settings(BaseSettings):
    """All UrbanSense settings. Built once, by an entrypoint."""

    model_config = SettingsConfigDict(
        env_prefix="URBAN_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    app_id: str = "urbansense"
    data_dir: Path = Path("var")
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_payload_bytes: int = Field(default=64 * 1024, ge=256)
    #: Distinct sensor ids one input partition tracks; readings of further new ids are dead-lettered
    #: (reason ``cardinality_limit``) and one maintenance alert is raised (streams/pipeline.py).
    max_sensors_per_partition: int = Field(default=100_000, ge=1)
    kafka: KafkaSettings = KafkaSettings()
    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    store: StoreSettings = StoreSettings()
    window: WindowSettings = WindowSettings()
    models: ModelSettings = ModelSettings()
    alerting: AlertingSettings = AlertingSettings()
    retention: RetentionSettings = RetentionSettings()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.influx.url and self.influx.version == 2 and self.influx.token is None:
            msg = "URBAN_INFLUX__TOKEN is required when URBAN_INFLUX__URL is set with URBAN_INFLUX__VERSION=2"
            raise ValueError(msg)
        return self
