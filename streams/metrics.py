"""Prometheus text exposition (format 0.0.4) of a worker's live metrics, without a client library.

:func:`render` turns :class:`Metric` families into the text format; the ``*_families`` functions
read the pipeline's counters, Faust's monitor (consumer lag) and any extra stats the wiring passes
in; :func:`register_metrics` mounts ``GET /metrics`` on the Faust web server. Every value is read
when the page is scraped: nothing runs in the background.

Metrics (prefix ``urbansense_``):

=================================  =========  ===============================================
name                               type       meaning
=================================  =========  ===============================================
``readings_in_total``              counter    records consumed from the readings topic
``readings_counted_total``         counter    readings applied to windows
``dead_letters_total``             counter    readings sent to the dead-letter topic
``late_readings_total``            counter    readings behind the watermark (late topic)
``duplicate_readings_total``       counter    redelivered readings skipped after a restart
``aggregates_total``               counter    closed windows emitted
``alerts_total``                   counter    alert records published
``cardinality_limited_total``      counter    readings refused by the per-partition sensor cap
``readings_held_ahead_total``      counter    readings held ahead of their partition's frontier
``readings_refused_ahead_total``   counter    held readings beyond the horizon, dead-lettered
``open_windows``                   gauge      open (sensor, metric, pane) cells
``partition_watermark_ms``         gauge      watermark per input partition (label ``partition``)
``sensor_ahead_ms``                gauge      how far a sensor held ahead is ahead of the frontier
                                              (labels ``partition``, ``sensor_id``)
``consumer_lag``                   gauge      end offset - next offset to read, per topic partition
``alert_latency_seconds``          histogram  event time of the triggering reading to publication
``<extra>``                        gauge      each number of ``extra_stats`` (e.g. writer queue depth)
``<extra>_info``                   gauge (1)  each string of ``extra_stats`` as a label (model version)
=================================  =========  ===============================================
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

logger = logging.getLogger(__name__)

PREFIX: Final = "urbansense_"
CONTENT_TYPE: Final = "text/plain; version=0.0.4"
MetricType = Literal["counter", "gauge", "histogram", "untyped"]
Labels = tuple[tuple[str, str], ...]
#: Alert latency buckets (seconds): the window close dominates, so they reach past a window.
LATENCY_BUCKETS_S: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_NAME_RE: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_BAD_CHARS: Final = re.compile(r"[^a-zA-Z0-9_:]")


@dataclass(slots=True)
class Metric:
    """One metric family: its samples are ``(name suffix, labels, value)``."""

    name: str
    type: MetricType
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Mapping[str, str] | None = None, suffix: str = "") -> Metric:
        """Append a sample; returns self for chaining."""
        self.samples.append((suffix, tuple((labels or {}).items()), float(value)))
        return self


def metric_name(text: str) -> str:
    """A valid metric name from a stats key.

    >>> metric_name("points-written")
    'points_written'
    """
    name = _BAD_CHARS.sub("_", text)
    return name if _NAME_RE.fullmatch(name) else f"_{name}"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(v)


def render(families: Iterable[Metric]) -> str:
    """The text exposition format, one ``# HELP``/``# TYPE`` header per family.

    >>> print(render([Metric("x_total", "counter", "Things.").add(3, {"p": "0"})]), end="")
    # HELP x_total Things.
    # TYPE x_total counter
    x_total{p="0"} 3

    Raises:
        ValueError: an invalid metric or label name.
    """
    lines: list[str] = []
    for fam in families:
        if not _NAME_RE.fullmatch(fam.name):
            msg = f"metric name: expected [a-zA-Z_:][a-zA-Z0-9_:]*, got {fam.name!r}"
            raise ValueError(msg)
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for suffix, labels, value in fam.samples:
            for key, _ in labels:
                if not _LABEL_RE.fullmatch(key) or key.startswith("__"):
                    msg = f"metric {fam.name} label name: expected [a-zA-Z_][a-zA-Z0-9_]*, got {key!r}"
                    raise ValueError(msg)
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            head = f"{fam.name}{suffix}{{{text}}}" if text else f"{fam.name}{suffix}"
            lines.append(f"{head} {_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""


class Histogram:
    """A cumulative histogram (Prometheus semantics: ``le`` buckets, ``_sum``, ``_count``).

    >>> h = Histogram((1.0, 2.0))
    >>> h.observe(0.5); h.observe(1.5); h.observe(9.0)
    >>> h.counts, h.count, h.total
    ([1, 1, 1], 3, 11.0)
    """

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS_S) -> None:
        self.buckets = tuple(sorted(buckets))
        if not self.buckets or any(math.isnan(b) for b in self.buckets):
            msg = f"histogram buckets: expected at least one number, got {self.buckets!r}"
            raise ValueError(msg)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.total += value

    def family(self, name: str, help_text: str) -> Metric:
        """The histogram as a metric family."""
        fam = Metric(name, "histogram", help_text)
        running = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += n
            fam.add(running, {"le": "+Inf" if math.isinf(bound) else _value(bound)}, "_bucket")
        fam.add(self.total, suffix="_sum")
        fam.add(self.count, suffix="_count")
        return fam


_COUNTERS: Final = (
    ("readings_in", "readings_in_total", "Records consumed from the readings topic."),
    ("readings_counted", "readings_counted_total", "Readings applied to windows."),
    ("dead_letters", "dead_letters_total", "Readings sent to the dead-letter topic."),
    ("late", "late_readings_total", "Readings behind the watermark, routed to the late topic."),
    ("duplicates", "duplicate_readings_total", "Redelivered readings skipped after a restart."),
    ("aggregates", "aggregates_total", "Closed windows emitted."),
    ("alerts", "alerts_total", "Alert records published."),
    ("cardinality_limited", "cardinality_limited_total", "Readings refused by the per-partition sensor cap."),
    ("held_ahead", "readings_held_ahead_total", "Readings held ahead of their partition's event-time frontier."),
    ("refused_ahead", "readings_refused_ahead_total", "Held readings beyond the horizon, dead-lettered."),
)


def pipeline_families(pipeline: Any) -> list[Metric]:
    """Counters, open windows, watermarks and sensors ahead of a :class:`~streams.pipeline.Pipeline`."""
    c = pipeline.counters
    out = [
        Metric(PREFIX + name, "counter", help_text).add(getattr(c, attr))
        for attr, name, help_text in _COUNTERS
        if hasattr(c, attr)
    ]
    parts = dict(pipeline.partitions)
    out.append(Metric(PREFIX + "open_windows", "gauge", "Open (sensor, metric, pane) cells.").add(
        sum(pw.open_windows for pw in parts.values())
    ))
    wm = Metric(PREFIX + "partition_watermark_ms", "gauge", "Event-time watermark per input partition (epoch ms).")
    for p in sorted(parts):
        if parts[p].watermark_ms > -(2**61):  # NO_WATERMARK: nothing seen yet
            wm.add(parts[p].watermark_ms, {"partition": str(p)})
    out.append(wm)
    ahead = Metric(PREFIX + "sensor_ahead_ms", "gauge", "How far a sensor held ahead is ahead of the frontier (ms).")
    for p in sorted(parts):
        for sid, ms in sorted(parts[p].sensors_ahead().items()):
            ahead.add(ms, {"partition": str(p), "sensor_id": sid})
    out.append(ahead)
    return out


def lag_family(monitor: Any) -> Metric:
    """Consumer lag per topic partition from Faust's monitor (end offset - next offset to read)."""
    fam = Metric(PREFIX + "consumer_lag", "gauge", "Records behind the end of each consumed topic partition.")
    ends = dict(getattr(monitor, "tp_end_offsets", None) or {})
    read = dict(getattr(monitor, "tp_read_offsets", None) or {})
    for tp in sorted(ends, key=lambda t: (t.topic, t.partition)):
        nxt = read[tp] + 1 if tp in read else 0
        fam.add(max(0, int(ends[tp]) - nxt), {"topic": tp.topic, "partition": str(tp.partition)})
    return fam


def extra_families(stats: Mapping[str, Any]) -> list[Metric]:
    """Numbers as gauges (``*_total`` as counters), strings as ``<name>_info{value=...} 1``,
    mappings of numbers as one gauge labelled ``key``; anything else is skipped."""
    out: list[Metric] = []
    for key in sorted(stats):
        value = stats[key]
        name = PREFIX + metric_name(key)
        if isinstance(value, bool):
            out.append(Metric(name, "gauge", f"{key} (1 = true).").add(int(value)))
        elif isinstance(value, int | float):
            out.append(Metric(name, "counter" if name.endswith("_total") else "gauge", f"{key}.").add(value))
        elif isinstance(value, str):
            out.append(Metric(name + "_info", "gauge", f"{key} (the value is the label).").add(1, {"value": value}))
        elif isinstance(value, Mapping):
            fam = Metric(name, "gauge", f"{key} by key.")
            for k in sorted(value, key=str):
                v = value[k]
                if isinstance(v, int | float) and not isinstance(v, bool):
                    fam.add(v, {"key": str(k)})
            out.append(fam)
    return out


class WorkerMetrics:
    """What :func:`register_metrics` returns: the latency histogram to feed and the page body."""

    def __init__(
        self,
        pipeline: Any,
        extra_stats: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        monitor: Any = None,
    ) -> None:
        self.pipeline = pipeline
        self.extra_stats = extra_stats
        self.monitor = monitor
        self.alert_latency = Histogram()

    def observe_alert(self, record: Mapping[str, Any]) -> None:
        """Feed one published alert record (its ``latency_ms``, when present)."""
        latency_ms = record.get("latency_ms")
        if isinstance(latency_ms, int | float) and not isinstance(latency_ms, bool) and latency_ms >= 0:
            self.alert_latency.observe(latency_ms / 1000.0)

    def families(self) -> list[Metric]:
        """Every family, read now."""
        out = pipeline_families(self.pipeline)
        if self.monitor is not None:
            out.append(lag_family(self.monitor))
        out.append(self.alert_latency.family(
            PREFIX + "alert_latency_seconds", "Event time of the triggering reading to alert publication."
        ))
        extra = self.extra_stats() if callable(self.extra_stats) else self.extra_stats
        if extra:
            out.extend(extra_families(extra))
        return out

    def text(self) -> str:
        """The exposition text."""
        return render(self.families())


def register_metrics(
    app: Any,
    pipeline: Any,
    extra_stats: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    *,
    path: str = "/metrics",
) -> WorkerMetrics:
    """Mount ``GET <path>`` (Prometheus text format) on the Faust app's web server.

    Args:
        app: the Faust app (its ``monitor`` gives the consumer lag).
        pipeline: the :class:`~streams.pipeline.Pipeline` the agents run.
        extra_stats: a mapping, or a callable returning one, read at every scrape: e.g. the sink's
            ``points_written``/``write_failures``/``writer_queue_depth`` and ``model_version``.
        path: URL path.

    Returns:
        The :class:`WorkerMetrics`; call ``observe_alert(record)`` for each published alert.
    """
    metrics = WorkerMetrics(pipeline, extra_stats, getattr(app, "monitor", None))

    @app.page(path)
    async def prometheus(web_: Any, request: Any) -> Any:
        try:
            metrics.monitor = app.monitor
        except AttributeError:  # pragma: no cover - a Faust app always has one
            pass
        return web_.text(metrics.text(), content_type=CONTENT_TYPE)

    return metrics
