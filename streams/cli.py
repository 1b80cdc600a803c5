"""The ``urbansense`` command: Faust's CLI plus ``bridge``, ``simulate``, ``demo`` and ``history``.

``urbansense worker`` is Faust's own worker command. The others are Faust app commands
(``app.command``), so all share one ``--help`` and one configuration (``URBAN_*`` variables).
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import signal
import sys
import threading

import click
import faust
from faust.cli import option

from streams.app import create_app
from streams.errors import UrbanSensingError
from streams.settings import Settings

logger = logging.getLogger(__name__)


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:  # keep handlers set up by Faust or an embedding program
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)  # Faust's CLI sets app commands (and its handler) to WARN
    for handler in root.handlers:
        handler.setLevel(level)


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def source_topics(settings: Settings) -> dict[str, int]:
    """Topics the worker reads or writes, with the partition count the tables expect."""
    k = settings.kafka
    names = [
        k.readings_topic,
        k.aggregates_topic,
        k.alerts_topic,
        k.dlq_topic,
        k.late_topic,
        k.zone_partials_topic,
        k.zone_aggregates_topic,
    ]
    names += [t.strip() for t in k.extra_source_topics.split(",") if t.strip()]
    return dict.fromkeys(names, k.partitions)


def register_commands(app: faust.App, settings: Settings) -> None:
    """Attach the UrbanSense commands to ``app``'s CLI."""

    @app.command(
        option("--max-seconds", type=float, default=0.0, help="Stop after this many seconds (0: run until signalled)."),
    )
    async def bridge(self: object, max_seconds: float) -> None:
        """Bridge MQTT (city/<kind>/<zone>/<sensor_id>) to the Kafka readings topic."""
        from connectors.kafka import client_config, ensure_topics
        from connectors.mqtt import MqttBridge

        _configure_logging(settings.log_level)
        ensure_topics(client_config(settings.kafka), source_topics(settings))
        stop = _stop_event()
        if max_seconds > 0:
            threading.Timer(max_seconds, stop.set).start()
        b = MqttBridge.from_settings(settings)
        try:
            b.run(stop)
        except UrbanSensingError as exc:  # refused credentials, untrusted certificate: say so, no traceback
            click.echo(f"urbansense bridge: {exc}", err=True)
            raise SystemExit(2) from None
        finally:
            b.close()
            logger.info("bridge stopped counters=%s", b.counters)

    @app.command(
        option("--transport", type=click.Choice(["mqtt", "kafka", "file"]), default="mqtt", show_default=True),
        option(
            "--sensors",
            type=int,
            default=None,
            help="Number of sensors (default 200; with --scenario: scale its counts).",
        ),
        option("--interval", default=None, help="Event-time step (default 10s, or the scenario's)."),
        option("--duration", default=None, help="Simulated span (default 1h, or the scenario's)."),
        option(
            "--start",
            default=None,
            help="Simulated start: RFC 3339 UTC or relative (-1h); default -1h or the scenario's.",
        ),
        option(
            "--speed", type=float, default=0.0, show_default=True, help="N times real time (0: as fast as possible)."
        ),
        option(
            "--malformed-every",
            type=int,
            default=0,
            show_default=True,
            help="Mix in one malformed message every N readings (0: none).",
        ),
        option("--seed", type=int, default=None, help="Noise seed (default 7, or the scenario's)."),
        option("--out", default="var/simulated.jsonl", show_default=True, help="File for --transport file."),
        option("--scenario", default=None, help="Scenario TOML file or shipped name (e.g. default)."),
        option(
            "--truth",
            "truth_out",
            default=None,
            help="Ground-truth JSON-lines file (file transport default: <out>.truth.jsonl).",
        ),
        option(
            "--format",
            "fmt",
            type=click.Choice(["jsonl", "csv"]),
            default=None,
            help="File transport format (default: by --out suffix).",
        ),
        option("--progress/--no-progress", default=None, help="Progress line on stderr (default: on a terminal)."),
    )
    async def simulate(
        self: object,
        transport: str,
        sensors: int | None,
        interval: str | None,
        duration: str | None,
        start: str | None,
        speed: float,
        malformed_every: int,
        seed: int | None,
        out: str,
        scenario: str | None,
        truth_out: str | None,
        fmt: str | None,
        progress: bool | None,
    ) -> None:
        """Simulate city feeds (traffic, environment, crowd, IoT) and publish them."""
        from simulators.run import run_simulation

        _configure_logging(settings.log_level)
        stop = _stop_event()
        try:
            n = run_simulation(
                settings,
                transport=transport,
                sensors=sensors,
                interval=interval,
                duration=duration,
                start=start,
                speed=speed,
                malformed_every=malformed_every,
                seed=seed,
                out=out,
                stop=stop,
                scenario=scenario,
                truth_out=truth_out,
                fmt=fmt,
                progress=progress,
            )
        except (UrbanSensingError, ValueError) as exc:
            click.echo(f"urbansense simulate: {exc}", err=True)
            raise SystemExit(2) from None
        click.echo(f"published {n} messages via {transport}")

    @app.command(
        faust.cli.argument("file"),
        option("--transport", type=click.Choice(["mqtt", "kafka"]), default="kafka", show_default=True),
        option(
            "--speed",
            type=float,
            default=1.0,
            show_default=True,
            help="Time scale: 1 original pace, 1000 = 1000x, 0 = as fast as possible.",
        ),
        option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True),
        option("--sensor", default=None, help="CSV: sensor id (default nab-<file stem>)."),
        option(
            "--kind", type=click.Choice(["traffic", "environment", "crowd", "iot"]), default="iot", show_default=True
        ),
        option("--zone", default="futian", show_default=True),
        option("--metric", default="value", show_default=True),
        option("--unit", default="", show_default=True),
        option("--time-column", default="timestamp", show_default=True),
        option("--value-column", default="value", show_default=True),
        option("--start", default=None, help="Shift timestamps so the first is at this instant (now, -1h, RFC 3339)."),
        option("--limit", type=int, default=None, help="Replay at most this many messages."),
    )
    async def replay(
        self: object,
        file: str,
        transport: str,
        speed: float,
        fmt: str,
        sensor: str | None,
        kind: str,
        zone: str,
        metric: str,
        unit: str,
        time_column: str,
        value_column: str,
        start: str | None,
        limit: int | None,
    ) -> None:
        """Replay a recorded feed (our JSON lines, or CSV such as NAB) with its timing scaled."""
        from simulators.run import run_replay

        _configure_logging(settings.log_level)
        try:
            n = run_replay(
                settings,
                file=file,
                transport=transport,
                speed=speed,
                fmt=fmt,
                sensor=sensor,
                kind=kind,
                zone=zone,
                metric=metric,
                unit=unit,
                time_column=time_column,
                value_column=value_column,
                start=start,
                limit=limit,
                stop=_stop_event(),
            )
        except (UrbanSensingError, ValueError) as exc:
            click.echo(f"urbansense replay: {exc}", err=True)
            raise SystemExit(2) from None
        click.echo(f"replayed {n} messages via {transport}")

    @app.command(
        option("--duration", type=float, default=60.0, show_default=True, help="Seconds to run (0: until Ctrl-C)."),
        option("--sensors", type=int, default=200, show_default=True),
    )
    async def demo(self: object, duration: float, sensors: int) -> None:
        """Run the whole pipeline on this machine: broker, worker, bridge, simulators; print a summary."""
        from streams.demo import run_demo

        _configure_logging(settings.log_level)
        run_demo(settings, duration_s=duration, sensors=sensors)

    @app.command(
        option("--sensor", default=None, help="Sensor id."),
        option("--zone", default=None, help="Zone id (e.g. futian)."),
        option("--kind", type=click.Choice(["traffic", "environment", "crowd", "iot"]), default=None),
        option("--metric", default=None, help="Metric name, e.g. pm25 (required except with --alerts)."),
        option("--since", default="1h", show_default=True, help="30m, -2h, now-7d, today, or ISO 8601."),
        option("--until", default="now", show_default=True),
        option("--tz", default="UTC", show_default=True, help="IANA zone for times without offset and for output."),
        option("--every", default=None, help="Downsample into buckets of this size (e.g. 5m)."),
        option(
            "--agg",
            type=click.Choice(["mean", "min", "max", "sum", "count", "p50", "p90", "p95", "p99"]),
            default="mean",
            show_default=True,
        ),
        option("--field", default="mean", show_default=True, help="Aggregate field of the windows to read."),
        option("--group-by", type=click.Choice(["sensor_id", "zone", "kind"]), default=None),
        option(
            "--source",
            type=click.Choice(["window", "1h", "1d", "zone_5m", "zone_1h"]),
            default="window",
            show_default=True,
            help="Window aggregates, a per-series roll-up or a zone roll-up.",
        ),
        option(
            "--rollups/--no-rollups",
            default=True,
            show_default=True,
            help="Answer zone queries from the zone roll-ups where they hold the same answer.",
        ),
        option("--window-size", default=None, help="Window size to read (default: the tumbling one)."),
        option("--top", type=int, default=None, help="Top-N zones by --metric."),
        option("--alerts", is_flag=True, default=False, help="Alerts in the period, with evidence."),
        option("--severity", default=None),
        option("--rule", default=None),
        option("--state", default=None),
        option("--evidence", default="10m", show_default=True, help="Series around each alert."),
        option("--limit", type=int, default=None),
        option(
            "--format", "fmt", type=click.Choice(["table", "csv", "json", "ndjson"]), default="table", show_default=True
        ),
    )
    async def history(
        self: object,
        sensor: str | None,
        zone: str | None,
        kind: str | None,
        metric: str | None,
        since: str,
        until: str,
        tz: str,
        every: str | None,
        agg: str,
        field: str,
        group_by: str | None,
        source: str,
        rollups: bool,
        window_size: str | None,
        top: int | None,
        alerts: bool,
        severity: str | None,
        rule: str | None,
        state: str | None,
        evidence: str,
        limit: int | None,
        fmt: str,
    ) -> None:
        """Query the history of sensors, zones and alerts from the configured store."""
        from connectors.history import run_history_cli

        opts = dict(
            sensor=sensor,
            zone=zone,
            kind=kind,
            metric=metric,
            since=since,
            until=until,
            tz=tz,
            every=every,
            agg=agg,
            field=field,
            group_by=group_by,
            source=source,
            rollups=rollups,
            window_size=window_size,
            limit=limit,
        )
        if alerts:
            keep = ("sensor", "zone", "kind", "metric", "since", "until", "tz", "limit")
            opts = {k: opts[k] for k in keep} | dict(severity=severity, rule=rule, state=state, evidence=evidence)
        elif top is not None:
            opts = {k: opts[k] for k in ("metric", "kind", "since", "until", "tz", "agg", "field", "window_size")}
        try:
            code = run_history_cli(settings, top=top, alerts=alerts, fmt=fmt, **opts)
        except (UrbanSensingError, ValueError) as exc:
            click.echo(f"urbansense history: {exc}", err=True)
            raise SystemExit(2) from None
        if code:
            raise SystemExit(code)

    @app.command(
        option("--sensor", required=True),
        option("--metric", required=True),
        option("--since", default="7d", show_default=True),
        option("--until", default="now", show_default=True),
        option("--tz", default="UTC", show_default=True),
        option("--out", required=True, help="PNG file to write."),
    )
    async def plot(self: object, sensor: str, metric: str, since: str, until: str, tz: str, out: str) -> None:
        """Draw a sensor's windows (mean with min/max band), anomaly scores and alerts to a PNG."""
        from streams.plot import run_plot_cli

        code = run_plot_cli(settings, sensor=sensor, metric=metric, since=since, until=until, tz=tz, out=out)
        if code:
            raise SystemExit(code)


def register_evaluate_command(app: faust.App, settings: Settings) -> None:
    """``evaluate``: a scenario through a private broker and worker, alerts scored against its truth."""

    @app.command(
        option("--scenario", default="default", show_default=True, help="Scenario TOML file or shipped name."),
        option("--speed", type=float, default=0.0, show_default=True, help="N x real time (0: fastest)."),
        option("--out-dir", default="var/evaluate", show_default=True, help="Logs, truth, alerts and report."),
        option("--timeout", type=float, default=1800.0, show_default=True, help="Bound on the worker catching up (s)."),
        option("--json", "as_json", is_flag=True, default=False, help="Print the report as JSON instead of a table."),
        option(
            "--offline",
            is_flag=True,
            default=False,
            help="No broker: the same windowing, models and alert engine in-process (about a minute); "
            "for tuning rules. The broker run stays the reference.",
        ),
    )
    async def evaluate(
        self: object, scenario: str, speed: float, out_dir: str, timeout: float, as_json: bool, offline: bool
    ) -> None:
        """Run a scenario through the real pipeline (or --offline) and score precision, recall, delay and faults."""
        import orjson

        from simulators.evaluate import evaluate_offline_with, format_table, run_evaluation

        _configure_logging(settings.log_level)
        # SIGTERM unwinds run_evaluation's clean-up (its broker and worker), as Ctrl-C does.
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
        try:
            if offline:
                report = evaluate_offline_with(settings, scenario)
            else:
                report = run_evaluation(
                    settings, scenario, speed=speed, out_dir=out_dir, timeout_s=timeout, progress=sys.stderr.isatty()
                )
        except (UrbanSensingError, ValueError, FileNotFoundError, RuntimeError, TimeoutError) as exc:
            click.echo(f"urbansense evaluate: {exc}", err=True)
            raise SystemExit(2) from None
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if as_json else format_table(report))


def register_model_commands(app: faust.App, settings: Settings) -> None:
    """``score-csv`` and ``train``."""

    @app.command(
        faust.cli.argument("in_path", type=click.Path(exists=True, dir_okay=False)),
        faust.cli.argument("out_path", type=click.Path(dir_okay=False)),
    )
    async def score_csv(self: object, in_path: str, out_path: str) -> None:
        """Score a NAB-format CSV (timestamp,value) causally: writes timestamp,value,anomaly_score."""
        from models.cli import score_csv as run
        from models.errors import ScoringError

        try:
            n = run(in_path, out_path)
        except ScoringError as exc:
            click.echo(f"urbansense score-csv: {exc}", err=True)
            raise SystemExit(2) from None
        click.echo(f"scored {n} rows -> {out_path}")

    @app.command(
        option("--kind", type=click.Choice(["traffic", "environment", "crowd", "iot"]), required=True),
        option("--data", "data", default=None, help="Window aggregates (JSON lines) to train on."),
        option("--simulated", is_flag=True, default=False, help="Train on simulated feeds instead."),
        option("--out", default="models/artifacts", show_default=True),
        option("--version", "version", default="1", show_default=True),
    )
    async def train(self: object, kind: str, data: str | None, simulated: bool, out: str, version: str) -> None:
        """Fit, calibrate and save a model for one feed kind (skops artifact + JSON sidecar)."""
        from pathlib import Path

        from models.train import train as fit

        _configure_logging(settings.log_level)
        if not simulated and data is None:
            click.echo("urbansense train: give --data PATH or --simulated", err=True)
            raise SystemExit(2)
        fit(kind, None if simulated else Path(data), Path(out), version=version)  # type: ignore[arg-type]


def main() -> None:
    """Entry point of the ``urbansense`` console script."""
    try:
        settings = Settings()
    except Exception as exc:  # pydantic.ValidationError: show it without a traceback
        click.echo(f"urbansense: invalid configuration: {exc}", err=True)
        sys.exit(2)
    try:
        app = create_app(settings)
    except UrbanSensingError as exc:  # a bad model artifact, rule file, ... : say what and where, no traceback
        click.echo(f"urbansense: {exc}", err=True)
        sys.exit(2)
    if settings.gc_young_threshold:
        gc.set_threshold(settings.gc_young_threshold, *gc.get_threshold()[1:])
    register_commands(app, settings)
    register_model_commands(app, settings)
    register_evaluate_command(app, settings)
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        from connectors.kafka import client_config, ensure_topics

        # ``kill -QUIT`` prints every thread's stack to the log, even with the event loop blocked
        # (``kill -USR1``, Faust's own, also prints the asyncio tasks but needs the loop running).
        faulthandler.register(signal.SIGQUIT, all_threads=True)

        try:
            ensure_topics(client_config(settings.kafka), source_topics(settings))
        except UrbanSensingError as exc:
            click.echo(f"urbansense worker: {exc}", err=True)
            sys.exit(2)
    app.main()
