"""``urbansense plot``: one sensor's metric as a PNG (matplotlib, Agg backend, no display).

The picture: the window means as a line with the min/max band, the anomaly score (field
``score``, when the store has it) on a second axis, and the sensor's alerts for that metric as
markers at their time and value. Long ranges are downsampled first (bucket mean of the means,
min of the mins, max of the maxes, max of the scores), so a plot never draws more than about
:data:`MAX_POINTS` points.

The figure is built with :class:`matplotlib.figure.Figure` and the Agg canvas directly (not
``pyplot``), so plots can be rendered from the API's worker threads.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from connectors.history import (
    AlertQuery,
    HistoryQuery,
    format_time,
    iter_alerts,
    iter_series,
    parse_instant,
    parse_tz,
)
from streams.errors import UrbanSensingError

if TYPE_CHECKING:
    from streams.settings import Settings

logger = logging.getLogger(__name__)

MAX_POINTS: Final = 5000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class PlotData:
    """What a plot shows (times in epoch ms)."""

    sensor_id: str
    metric: str
    since_ms: int
    until_ms: int
    every_ms: int | None
    times: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    score_times: list[int]
    scores: list[float]
    alerts: list[dict[str, Any]]


def _bucket_ms(since_ms: int, until_ms: int, window_ms: int = 60_000) -> int | None:
    """None when the stored windows fit in :data:`MAX_POINTS`, else a whole-minute bucket size."""
    if (until_ms - since_ms) // window_ms <= MAX_POINTS:
        return None
    minutes = -(-(until_ms - since_ms) // (MAX_POINTS * 60_000))
    return int(minutes * 60_000)


def load_plot_data(settings: Settings, sensor: str, metric: str, since_ms: int, until_ms: int) -> PlotData:
    """Read the series, scores and alerts of one sensor's metric."""
    every = _bucket_ms(since_ms, until_ms)
    times: list[int] = []
    mean: list[float] = []
    low: list[float] = []
    high: list[float] = []
    score_times: list[int] = []
    scores: list[float] = []
    if every is None:
        q = HistoryQuery(sensor, metric, since_ms, until_ms, columns=("mean", "min", "max", "score"))
        for r in iter_series(settings, q):
            times.append(r["time_ms"])
            mean.append(r["mean"])
            low.append(r["min"])
            high.append(r["max"])
            if r["score"] is not None:
                score_times.append(r["time_ms"])
                scores.append(r["score"])
    else:
        def buckets(agg: str, field: str) -> dict[int, float]:
            q = HistoryQuery(sensor, metric, since_ms, until_ms, every_ms=every, agg=agg, field=field)  # type: ignore[arg-type]
            return {r["time_ms"]: r["value"] for r in iter_series(settings, q)}

        means, lows, highs = buckets("mean", "mean"), buckets("min", "min"), buckets("max", "max")
        times = sorted(means)
        mean = [means[t] for t in times]
        low = [lows.get(t, means[t]) for t in times]
        high = [highs.get(t, means[t]) for t in times]
        score_by_time = buckets("max", "score")
        score_times = sorted(score_by_time)
        scores = [score_by_time[t] for t in score_times]
    alerts = list(iter_alerts(settings, AlertQuery(since_ms, until_ms, sensor_id=sensor, metric=metric, evidence_ms=0)))
    return PlotData(sensor, metric, since_ms, until_ms, every, times, mean, low, high, score_times, scores, alerts)


def _dt(ms: int, tz: tzinfo) -> datetime:
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz)


def render_png(data: PlotData, tz: tzinfo = UTC, *, width_in: float = 12.0, height_in: float = 5.0) -> bytes:
    """Draw the plot and return PNG bytes."""
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [_dt(t, tz) for t in data.times]
    what = "window" if data.every_ms is None else f"{data.every_ms // 60_000} min bucket"
    if xs:
        ax.fill_between(xs, data.low, data.high, color="tab:blue", alpha=0.2, linewidth=0, label=f"{what} min-max")
        ax.plot(xs, data.mean, color="tab:blue", linewidth=1.0, label=f"{what} mean")
    if data.alerts:
        ax.scatter([_dt(a["time_ms"], tz) for a in data.alerts], [a["value"] for a in data.alerts], marker="v",
                   color="tab:red", s=40, zorder=5, label=f"alerts ({len(data.alerts)})")  # fmt: skip
    ax.set_ylabel(data.metric)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if data.scores:
        ax2 = ax.twinx()
        ax2.plot([_dt(t, tz) for t in data.score_times], data.scores, color="tab:orange", linewidth=0.8, alpha=0.8,
                 label="anomaly score")  # fmt: skip
        ax2.set_ylabel("anomaly score")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if not xs:
        ax.text(0.5, 0.5, "no data in this period", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlim(_dt(data.since_ms, tz), _dt(data.until_ms, tz))
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator(), tz=tz))
    if handles:
        ax.legend(handles, labels, loc="upper left", fontsize="small")
    tz_name = getattr(tz, "key", None) or str(tz)
    ax.set_title(f"{data.sensor_id} {data.metric}: {format_time(data.since_ms, tz)} .. "
                 f"{format_time(data.until_ms, tz)} ({tz_name})", fontsize="medium")  # fmt: skip
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_png(settings: Settings, sensor: str, metric: str, since_ms: int, until_ms: int, tz: tzinfo = UTC) -> bytes:
    """Read and draw one sensor's metric; PNG bytes."""
    data = load_plot_data(settings, sensor, metric, since_ms, until_ms)
    logger.debug("plot sensor_id=%s metric=%s points=%d alerts=%d", sensor, metric, len(data.times), len(data.alerts))
    return render_png(data, tz)


def run_plot_cli(
    settings: Settings,
    *,
    sensor: str,
    metric: str,
    out: str,
    since: str = "7d",
    until: str = "now",
    tz: str = "UTC",
    now_ms: int | None = None,
    err: TextIO | None = None,
) -> int:
    """The body of ``urbansense plot``; returns the exit code (2 for bad input or store errors)."""
    import sys

    from pydantic import ValidationError

    from connectors.history import SeriesParams, validation_message

    err = err or sys.stderr
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    try:
        SeriesParams(sensor=sensor, metric=metric, since=since, until=until, tz=tz)  # same checks as the API
        zone = parse_tz(tz)
        since_ms, until_ms = parse_instant(since, now, zone), parse_instant(until, now, zone)
        if not 0 <= since_ms < until_ms:
            msg = f"time range: expected since < until, got {since!r}, {until!r}"
            raise ValueError(msg)
        png = plot_png(settings, sensor, metric, since_ms, until_ms, zone)
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    except ValidationError as exc:
        err.write(f"urbansense plot: {validation_message(exc)}\n")
        return 2
    except (UrbanSensingError, ValueError, OSError) as exc:
        err.write(f"urbansense plot: {exc}\n")
        return 2
    return 0
