"""Typed configuration from the environment (prefix ``URBAN_``, nested with ``__``).

Only entrypoints build :class:`Settings`; everything else takes explicit arguments.
Example: ``URBAN_KAFKA__BOOTSTRAP_SERVERS=broker:9092``, ``URBAN_INFLUX__TOKEN=...``.
Secrets are :class:`~pydantic.SecretStr` and never appear in ``repr``, logs or error messages.
Every secret can also be read from a file named by ``<VARIABLE>_FILE`` (Docker/Kubernetes secrets),
e.g. ``URBAN_INFLUX__TOKEN_FILE=/run/secrets/influx_token``.

A bad configuration raises :class:`~streams.errors.ConfigError` naming each offending variable
(``URBAN_WINDOW__SIZE_MS: ...``) and never the value of a secret; nothing is half-applied because
a :class:`Settings` either validates completely or does not exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from streams.errors import ConfigError

ENV_PREFIX: Final = "URBAN_"
ENV_NESTED_DELIMITER: Final = "__"
#: Suffix of the variable that names a file holding a secret setting.
SECRET_FILE_SUFFIX: Final = "_FILE"  # noqa: S105 - a name suffix, not a password
_MAX_SHOWN_INPUT: Final = 80
#: SASL mechanism used by both Kafka clients (confluent-kafka and Faust) when none is set.
DEFAULT_SASL_MECHANISM: Final = "PLAIN"


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
    #: Client certificate and key for brokers that require mutual TLS (set both or neither).
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: Consumer-group session timeout of the worker. A member that dies without leaving holds
    #: its partitions this long, and (on Tansu) a join waits about half of it.
    session_timeout_ms: int = Field(default=10_000, ge=3000)
    #: Check the broker's end offsets before restoring tables (works around Tansu 0.6.0, which
    #: under-reports them; harmless on Kafka).
    verify_end_offsets: bool = True
    #: Seconds between offset commits of the worker. Window state is written to its changelog
    #: just before each commit (latest document per sensor), so a sensor reporting several times
    #: per interval costs one state record, not one per reading. A crash replays at most this
    #: much input (recognised as duplicates).
    commit_interval_s: float = Field(default=2.0, gt=0, le=60)
    #: Longest a worker's fetch waits for records (ms). Kafka answers as soon as data is there, so
    #: this only bounds idle polling; a broker that holds every fetch this long (Tansu does) adds
    #: up to this much to each hop of an alert's path. Faust's own value is 1,500; at 50 rather
    #: than 100 the e2e run at 10,000 readings/s showed no more worker CPU per reading (0.051 ms).
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    #: Readings per Kafka record when UrbanSense's own producers (the MQTT bridge, simulate, replay,
    #: evaluate) publish to the readings topic: a frame of one partition's readings (streams.frames).
    #: The worker's cost is mostly per record; 1 publishes one reading per record.
    frame_size: int = Field(default=1, ge=1, le=65_536)
    #: Bytes the worker's producer buffers per partition before a send waits for the buffer to
    #: drain to the broker. A window close sends a burst (10,000 sensors: 35,000 aggregates in
    #: frames of up to 60 kB and 30,000 state records), and aiokafka sends at most one batch per
    #: partition per request: at Faust's 16 kB nearly every frame waited for a broker round trip,
    #: and the close's aggregates reached the alert path over 2.6-4.4 s (e2e at 10,000/s, one
    #: worker); at 512 kB over 1.0-2.4 s, with the consumer lag peaking at 30,000 readings instead
    #: of 78,000-87,000. Backlog drains showed no clear difference. At most the producer's request
    #: size (1,000,000).
    producer_batch_bytes: int = Field(default=524_288, ge=16_384, le=1_000_000)
    #: How long the MQTT bridge holds a partly filled frame for more readings (ms).
    frame_linger_ms: int = Field(default=20, ge=0, le=10_000)


class MqttSettings(_Section):
    """MQTT broker the bridge subscribes to."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_root: str = "city"
    client_id: str = "urbansense-bridge"
    qos: Annotated[Literal[0, 1, 2], IntChoice] = 1
    username: str | None = None
    password: SecretStr | None = None
    #: Connect with TLS, verifying the broker against the system CAs (or ``tls_ca`` when set).
    #: Setting ``tls_ca`` or ``tls_cert`` also turns TLS on.
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive_s: int = Field(default=30, ge=5)
    #: Confirmed messages remembered to recognise QoS 1 redeliveries (connectors.mqtt); 0 turns it off.
    redelivery_memory: int = Field(default=20_000, ge=0, le=10_000_000)
    #: After a reconnect, how long a remembered message counts as a redelivery without the DUP flag.
    redelivery_grace_s: float = Field(default=30.0, ge=0)


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
    #: A reading further than this ahead of its partition's event-time frontier moves the frontier
    #: (and so the watermark) only once a second sensor is that far ahead too: one clock running
    #: ahead does not make the partition's other readings late. 0: every reading moves it.
    #: At most the 1 h horizon beyond which such a reading is dead-lettered (``clock_ahead``).
    max_ahead_ms: int = Field(default=60_000, ge=0, le=3_600_000)
    #: A worker pauses a readings partition read more than this far ahead (event time) of its slowest
    #: partition that still has records waiting, so that stages joining partitions (zone roll-ups,
    #: zone and drift rules) get them level (:mod:`streams.align`). 0: read as they come.
    max_partition_skew_ms: int = Field(default=300_000, ge=0)
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
    """All UrbanSense settings. Built once, by an entrypoint.

    Raises:
        ConfigError: a value is invalid, settings contradict each other, a file named by a setting
            is missing, or a secret file cannot be read. The message names every offending
            ``URBAN_...`` variable and never contains the value of a secret.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, frozen=True, extra="ignore"
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
    #: Allocations between two young-generation passes of Python's cyclic garbage collector
    #: (Python's own default: 700). A window close of 10,000 sensors allocates some 300,000
    #: objects: at 700 that made about 460 young, 40 middle and 3 full passes over a heap of half a
    #: million objects, 0.6-1.0 s of the close, before its alerts could leave. Our state is
    #: acyclic (reference counting frees it); cycles (asyncio, exceptions) are still collected,
    #: just in larger batches. 0 keeps Python's thresholds.
    gc_young_threshold: int = Field(default=50_000, ge=0)
    kafka: KafkaSettings = KafkaSettings()
    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    store: StoreSettings = StoreSettings()
    window: WindowSettings = WindowSettings()
    models: ModelSettings = ModelSettings()
    alerting: AlertingSettings = AlertingSettings()
    retention: RetentionSettings = RetentionSettings()

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # ``from None``: pydantic's own text repeats the raw input, secrets included.
            raise ConfigError(describe_validation_error(exc, type(self))) from None
        except SettingsError as exc:  # a section variable (URBAN_KAFKA) that is not a JSON object
            found = re.search(r'field "([^"]+)"', str(exc))
            var = env_var(found.group(1)) if found else "environment"
            msg = f"{var}: cannot parse the value (a whole section must be given as a JSON object)"
            raise ConfigError(msg) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables with ``<SECRET>_FILE`` support in place of the plain env source."""
        return init_settings, _EnvWithSecretFiles(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="after")
    def _check(self) -> Settings:
        problems: list[str] = []
        if self.influx.url and self.influx.version == 2 and self.influx.token is None:
            problems.append(
                "URBAN_INFLUX__TOKEN is required when URBAN_INFLUX__URL is set with URBAN_INFLUX__VERSION=2"
            )
        problems += _kafka_problems(self.kafka)
        problems += _mqtt_problems(self.mqtt)
        if problems:
            raise ValueError("\n".join(problems))
        return self


# -- cross-field checks (run on the whole Settings, so each section stays constructible alone) --


def _file_problems(paths: Mapping[str, Path | None]) -> list[str]:
    out = []
    for var, path in paths.items():
        if path is not None and not path.is_file():
            out.append(f"{var}: file {str(path)!r} does not exist or is not a regular file")
    return out


def _kafka_problems(k: KafkaSettings) -> list[str]:
    proto = k.security_protocol
    out = []
    sasl_set = {
        "URBAN_KAFKA__SASL_MECHANISM": k.sasl_mechanism,
        "URBAN_KAFKA__SASL_USERNAME": k.sasl_username,
        "URBAN_KAFKA__SASL_PASSWORD": k.sasl_password,
    }
    ssl_set = {
        "URBAN_KAFKA__SSL_CAFILE": k.ssl_cafile,
        "URBAN_KAFKA__SSL_CERTFILE": k.ssl_certfile,
        "URBAN_KAFKA__SSL_KEYFILE": k.ssl_keyfile,
    }
    if proto.startswith("SASL"):
        out += [
            f"{var} is required with URBAN_KAFKA__SECURITY_PROTOCOL={proto}"
            for var in ("URBAN_KAFKA__SASL_USERNAME", "URBAN_KAFKA__SASL_PASSWORD")
            if sasl_set[var] is None
        ]
    else:
        # Credentials that would silently not be used: refuse rather than run unauthenticated.
        out += [
            f"{var} is set but URBAN_KAFKA__SECURITY_PROTOCOL={proto} does not use SASL "
            "(use SASL_PLAINTEXT or SASL_SSL)"
            for var, value in sasl_set.items()
            if value is not None
        ]
    if not proto.endswith("SSL"):
        out += [
            f"{var} is set but URBAN_KAFKA__SECURITY_PROTOCOL={proto} does not use TLS (use SSL or SASL_SSL)"
            for var, value in ssl_set.items()
            if value is not None
        ]
    if (k.ssl_certfile is None) != (k.ssl_keyfile is None):
        out.append("URBAN_KAFKA__SSL_CERTFILE and URBAN_KAFKA__SSL_KEYFILE must be set together")
    return out + _file_problems(ssl_set)


def _mqtt_problems(m: MqttSettings) -> list[str]:
    out = []
    root = m.topic_root
    if not root or "+" in root or "#" in root or root.startswith("/") or root.endswith("/"):
        out.append(f"URBAN_MQTT__TOPIC_ROOT: expected a topic prefix without wildcards, got {root!r}")
    if m.password is not None and m.username is None:
        out.append("URBAN_MQTT__PASSWORD is set without URBAN_MQTT__USERNAME")
    if (m.tls_cert is None) != (m.tls_key is None):
        out.append("URBAN_MQTT__TLS_CERT and URBAN_MQTT__TLS_KEY must be set together")
    return out + _file_problems(
        {"URBAN_MQTT__TLS_CA": m.tls_ca, "URBAN_MQTT__TLS_CERT": m.tls_cert, "URBAN_MQTT__TLS_KEY": m.tls_key}
    )


# -- variable names, secrets and error messages --------------------------------------------------


def env_var(*loc: str) -> str:
    """The environment variable of a setting.

    >>> env_var("window", "size_ms")
    'URBAN_WINDOW__SIZE_MS'
    """
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in loc)


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(a) for a in get_args(annotation))


def _section(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def secret_settings(model: type[BaseModel] | None = None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every secret (``SecretStr``) setting, e.g. ``("influx", "token")``.

    >>> ("kafka", "sasl_password") in secret_settings()
    True
    """
    out: list[tuple[str, ...]] = []
    for name, field in (model or Settings).model_fields.items():
        sub = _section(field.annotation)
        if sub is not None:
            out += secret_settings(sub, (*prefix, name))
        elif _is_secret(field.annotation):
            out.append((*prefix, name))
    return out


def _locate(loc: tuple[int | str, ...], model: type[BaseModel]) -> tuple[str, bool, bool]:
    """``(variable, known, secret)`` for an error location; ``("", ...)`` for a whole-model error."""
    names: list[str] = []
    current: type[BaseModel] | None = model
    known, secret = True, False
    for item in loc:
        if not isinstance(item, str):
            break
        if current is None or item not in current.model_fields:
            if current is not None:  # an unknown setting in a section (a typo): never show its value
                names.append(item)
                known = False
            break
        names.append(item)
        annotation = current.model_fields[item].annotation
        secret = _is_secret(annotation)
        current = _section(annotation)
    return (env_var(*names) if names else ""), known, secret


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem, naming the ``URBAN_...`` variable; values of secrets are never shown.

    Pydantic's own ``str(exc)`` repeats the raw input of whole-model errors, which holds every
    secret set in the environment, so it must never be shown.
    """
    lines = []
    for err in exc.errors(include_url=False, include_context=False, include_input=True):
        var, known, secret = _locate(tuple(err["loc"]), model)
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ") if kind == "value_error" else err["msg"]
        if kind == "extra_forbidden":
            msg = "not a known setting"
            if var.endswith(SECRET_FILE_SUFFIX):
                msg += f" (only secrets can be read from a file with {SECRET_FILE_SUFFIX})"
        value = err.get("input")
        shown = ""
        if var and known and not secret and isinstance(value, str | int | float | bool):
            text = repr(value)
            shown = f" (got {text[:_MAX_SHOWN_INPUT] + '...' if len(text) > _MAX_SHOWN_INPUT else text})"
        lines += [f"{var}: {msg}{shown}"] if var else msg.splitlines()
    if len(lines) == 1:
        return lines[0]
    return f"{len(lines)} problems:\n  " + "\n  ".join(lines)


def read_secret_file(variable: str, path: str) -> str:
    """The secret held in ``path`` (one trailing line break removed).

    Raises:
        ConfigError: the file cannot be read or is empty; names ``variable`` and the path only.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        msg = f"{variable}: cannot read secret file {path!r}: {reason}"
        raise ConfigError(msg) from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        msg = f"{variable}: secret file {path!r} is empty"
        raise ConfigError(msg)
    return value


class _EnvWithSecretFiles(EnvSettingsSource):
    """The environment, where any secret may instead be given as ``<VARIABLE>_FILE=<path>``."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = dict(super()._load_env_vars())
        for loc in secret_settings(self.settings_cls):
            var = env_var(*loc)
            file_var = var + SECRET_FILE_SUFFIX
            key, file_key = (var, file_var) if self.case_sensitive else (var.lower(), file_var.lower())
            path = env.pop(file_key, None)
            if path is None:
                continue
            if env.get(key) is not None:
                msg = f"{var} and {file_var} are both set; set only one"
                raise ConfigError(msg)
            env[key] = read_secret_file(file_var, path)
        return env
