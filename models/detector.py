"""A causal, streaming anomaly detector for one univariate series (pure, deterministic).

:class:`CausalDetector` scores each ``(ts_ms, value)`` as it arrives, using only the rows seen so far.
It combines robust z-scores that each catch a different NAB anomaly shape:

* ``level``: the value against the rolling median/MAD of the recent past (spikes, dips, level shifts);
* ``shape``: the distance of the last ``shape_rows`` values to the nearest earlier window of values
  (patterns never seen before);
* ``season``: the residual against a profile learned online per hour-of-day, or per hour-of-week once a
  bucket has enough history (anomalies that look normal in level but not for that time of day/week);
* ``drift``: the mean of the recent seasonal residuals against their long-run spread (slow shifts).

The ``level``/``season``/``drift`` baselines are kept at several lengths at once (an ensemble over
``history_scales``, octaves around ``history_rows``): a short baseline reacts to a recent change of regime, a
long one knows more of the series' normal range, and no single length suits every series (NAB files are
sampled every 5 minutes to every hour). Each length gives its own score; the row's score is their mean,
which is steadier across series than any one of them, so the single NAB threshold carries over better.

Within one baseline length the largest z is squashed to [0, 1] with a fixed curve (the NAB sweep picks
one global threshold, so the score needs to be comparable across series rather than "probability-like"), then
**suppressed**: a score is emitted in full only when it beats a slowly decaying record of recent emitted
scores. NAB counts only the first detection in a label window and charges every extra false positive,
so one loud flag followed by quiet is what pays. Values judged anomalous do not update the baselines they
are judged against (they enter with a clipped value instead), following River's
``protect_anomaly_detector`` idea.

Example:
    >>> det = CausalDetector()
    >>> scores = [det.update(i * 300_000, 10.0 + (i % 7) * 0.1) for i in range(600)]
    >>> spike = det.update(600 * 300_000, 50.0)
    >>> max(scores[300:]) < 0.5 < spike
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.errors import ScoringError

logger = logging.getLogger(__name__)

__all__ = ["CausalDetector", "DetectorConfig", "score_series"]

_HOUR_MS = 3_600_000
_Z_COMPONENTS = ("level", "season", "drift")
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of :class:`CausalDetector` (one global setting for every series; no per-file tuning).

    Attributes:
        history_rows: length of the main rolling baseline (rows).
        history_scales: the baselines kept, as multiples of ``history_rows`` (at least ``min_rows`` each); the
            score is the mean of the scores of the baselines. ``(1.0,)`` is the single-baseline detector.
        min_rows: rows needed before any score other than 0 is emitted.
        drift_rows: rows averaged by the drift component.
        bucket_rows: values kept per seasonal bucket.
        weekly_min: values a week bucket needs before it replaces the day bucket.
        shape_rows: length of the recent-window shape compared against all past windows (novelty).
        shape_init_rows: rows whose 2nd-98th percentile range scales the shapes (fixed afterwards).
        memory_rows: past shapes kept for the nearest-neighbour search.
        record_half_life_rows: smallest half-life of each component's decaying record (its largest past value).
        record_half_life_frac: the record's half-life grows to this fraction of the rows seen so far, so
            "record-breaking" means rare relative to the whole history on long series, not just the last
            few thousand rows (NAB files hold a handful of anomalies whatever their length).
        record_step: a row can raise a record to at most this multiple of its previous value (or floor):
            one huge spike (a probation outlier, say) must not blind the detector to the next anomaly.
        z_record_floor: smallest record a z component is compared against.
        shape_record_floor: smallest record the shape novelty is compared against.
        ratio_offset: record ratio (value / record) at which the score starts to rise above 0.
        ratio_scale: record ratio above ``ratio_offset`` that gives a score of ``1 - 1/e``.
        hold_half_life_rows: smallest half-life, in rows, of the suppression record.
        hold_half_life_frac: the suppression half-life grows to this fraction of the rows seen so far.
        hold_margin: a score must beat the suppression record by this much to be emitted in full, and an
            emitted score raises the record to itself plus this margin (so a slowly rising score emits once,
            not once per row).
        suppressed_factor: multiplier for scores that do not beat the record.
        protect_z: values with a z above this enter the baselines clipped to this z (each baseline clips by its
            own median/MAD; the seasonal buckets learn the value clipped by the main baseline).
        refresh_rows: recompute the robust baselines every this many rows (1: every row).
    """

    history_rows: int = 600
    history_scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    min_rows: int = 48
    drift_rows: int = 12
    bucket_rows: int = 64
    weekly_min: int = 4
    shape_rows: int = 8
    shape_init_rows: int = 150
    memory_rows: int = 25_000
    record_half_life_rows: float = 1000.0
    record_half_life_frac: float = 0.15
    record_step: float = 1.1
    z_record_floor: float = 3.0
    shape_record_floor: float = 0.05
    ratio_offset: float = 0.6
    ratio_scale: float = 0.5
    hold_half_life_rows: float = 600.0
    hold_half_life_frac: float = 0.1
    hold_margin: float = 0.05
    suppressed_factor: float = 0.3
    protect_z: float = 6.0
    refresh_rows: int = 1


class _Ring:
    """Fixed-size ring buffer of floats with a cheap ``view()`` of the stored values."""

    __slots__ = ("_buf", "_n", "_pos")

    def __init__(self, size: int) -> None:
        self._buf = np.zeros(size, dtype=np.float64)
        self._n = 0
        self._pos = 0

    def push(self, x: float) -> None:
        self._buf[self._pos] = x
        self._pos = (self._pos + 1) % self._buf.shape[0]
        self._n = min(self._n + 1, self._buf.shape[0])

    def view(self) -> NDArray[np.float64]:
        return self._buf if self._n == self._buf.shape[0] else self._buf[: self._n]

    def last(self, k: int) -> NDArray[np.float64]:
        """The most recent ``k`` values (fewer when fewer are stored), in no particular order."""
        k = min(k, self._n)
        idx = (self._pos - 1 - np.arange(k)) % self._buf.shape[0]
        return self._buf[idx]

    def __len__(self) -> int:
        return self._n


def _lerp(a: float, b: float, t: float) -> float:
    """Linear interpolation written as numpy's ``percentile`` does it (same rounding)."""
    d = b - a
    return b - d * (1.0 - t) if t >= 0.5 else a + d * t


def _robust(values: NDArray[np.float64]) -> tuple[float, float]:
    """Median and a robust sigma (MAD, floored by the inter-decile spread for near-constant series).

    One partial sort gives the median and both deciles (the values of ``np.median`` and of the default
    ``np.percentile``, to the last bit), a second one the MAD; this runs once per baseline and row.
    """
    n = values.shape[0]
    half = n // 2
    pos_lo, pos_hi = 0.1 * (n - 1), 0.9 * (n - 1)
    i_lo, i_hi = math.floor(pos_lo), math.floor(pos_hi)
    kth = sorted({half - 1 if n % 2 == 0 else half, half, i_lo, min(i_lo + 1, n - 1), i_hi, min(i_hi + 1, n - 1)})
    part = np.partition(values, kth)
    med = float(part[half]) if n % 2 else (float(part[half - 1]) + float(part[half])) / 2.0
    lo = _lerp(float(part[i_lo]), float(part[min(i_lo + 1, n - 1)]), pos_lo - i_lo)
    hi = _lerp(float(part[i_hi]), float(part[min(i_hi + 1, n - 1)]), pos_hi - i_hi)
    dev = np.abs(values - med)
    dev_part = np.partition(dev, [half - 1, half] if n % 2 == 0 else [half])
    mad_raw = float(dev_part[half]) if n % 2 else (float(dev_part[half - 1]) + float(dev_part[half])) / 2.0
    mad = mad_raw * _MAD_TO_SIGMA
    spread = (hi - lo) / 2.563  # inter-decile range of a normal, in sigmas
    return med, max(mad, 0.25 * spread, 1e-9 * (abs(med) + 1.0))


class _Record:
    """Decaying record of a component: ``max(previous record * decay, value)`` after each row.

    The half-life grows with the rows seen (``max(half_life_rows, half_life_frac * rows)``) and one row can
    raise the record by at most ``step`` times, so a single extreme value does not mask later anomalies.
    """

    __slots__ = ("_frac", "_half_life", "_step", "value")

    def __init__(self, half_life_rows: float, half_life_frac: float, step: float) -> None:
        self._half_life = half_life_rows
        self._frac = half_life_frac
        self._step = step
        self.value = 0.0

    def ratio(self, x: float, floor: float) -> float:
        return x / max(self.value, floor)

    def learn(self, x: float, floor: float, rows: int) -> None:
        decay = 0.5 ** (1.0 / max(self._half_life, self._frac * rows))
        self.value = max(self.value * decay, min(x, self._step * max(self.value, floor)))


class _ShapeMemory:
    """Nearest-neighbour novelty of the recent window of values against every earlier window kept."""

    def __init__(self, rows: int, init_rows: int, memory_rows: int) -> None:
        self._w = rows
        self._init_rows = init_rows
        self._raw: list[float] = []
        self._lo = 0.0
        self._scale = 0.0
        self._mem = np.zeros((memory_rows, rows), dtype=np.float64)
        self._sq = np.zeros(memory_rows, dtype=np.float64)  # squared norm of each stored shape
        self._n = 0
        self._pos = 0
        self._recent_list: list[float] = []

    @property
    def ready(self) -> bool:
        return self._scale > 0.0

    def _store(self, vec: NDArray[np.float64]) -> None:
        self._mem[self._pos] = vec
        self._sq[self._pos] = float(vec @ vec)
        self._pos = (self._pos + 1) % self._mem.shape[0]
        self._n = min(self._n + 1, self._mem.shape[0])

    def _nearest(self, vec: NDArray[np.float64]) -> float:
        """Distance to the nearest stored shape that does not overlap ``vec`` (all but the newest ``w - 1``).

        Uses ``|p - v|^2 = |p|^2 - 2 p.v + |v|^2`` (one matrix-vector product), which is several times
        faster than materialising ``past - vec``; shapes are scaled to about [0, 1], so the cancellation
        error is far below any distance that matters.
        """
        if self._n - (self._w - 1) <= 0:
            return 0.0
        d2 = self._sq[: self._n] - 2.0 * (self._mem[: self._n] @ vec)
        newest = (self._pos - 1 - np.arange(self._w - 1)) % self._mem.shape[0]
        d2[newest] = np.inf
        return math.sqrt(max(0.0, float(d2.min()) + float(vec @ vec)))

    def score(self, x: float) -> float | None:
        """Novelty of the window ending at ``x`` (``None`` while scaling is still being learned)."""
        if not self.ready:
            self._raw.append(x)
            if len(self._raw) < self._init_rows:
                return None
            lo, hi = np.percentile(np.asarray(self._raw), [2.0, 98.0])
            self._lo = float(lo)
            self._scale = max(float(hi - lo), 1e-9 * (abs(float(lo)) + 1.0))
            scaled = (np.asarray(self._raw) - self._lo) / self._scale
            for t in range(self._w - 1, len(scaled)):
                self._store(scaled[t - self._w + 1 : t + 1])
            self._recent_list = list(scaled[-self._w :])
            self._raw = []
            return None
        self._recent_list.append((x - self._lo) / self._scale)
        del self._recent_list[0]
        vec = np.asarray(self._recent_list)
        novelty = self._nearest(vec)
        self._store(vec)
        return novelty


class _Baseline:
    """One baseline length of the ensemble: recent values and seasonal residuals, with the z records."""

    __slots__ = ("records", "resid", "stats", "values")

    def __init__(self, rows: int, c: DetectorConfig) -> None:
        self.values = _Ring(rows)
        self.resid = _Ring(rows)
        self.records = {
            name: _Record(c.record_half_life_rows, c.record_half_life_frac, c.record_step) for name in _Z_COMPONENTS
        }
        self.stats: tuple[float, float, float, float] | None = None

    def robust_stats(self, refresh: bool) -> tuple[float, float, float, float]:
        """``(median, sigma)`` of the values and of the residuals, recomputed when ``refresh`` (or first use)."""
        if self.stats is None or refresh:
            med, sd = _robust(self.values.view())
            rmed, rsd = _robust(self.resid.view()) if len(self.resid) else (0.0, 1.0)
            self.stats = (med, sd, rmed, rsd)
        return self.stats


class CausalDetector:
    """Streaming detector: ``update(ts_ms, value) -> score in [0, 1]`` using only past and current rows."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        c = self.config
        if not c.history_scales or min(c.history_scales) <= 0.0:
            msg = f"DetectorConfig.history_scales: expected positive multiples, got {c.history_scales!r}"
            raise ScoringError(msg)
        self._baselines = [_Baseline(max(c.min_rows, round(c.history_rows * m)), c) for m in c.history_scales]
        # the seasonal buckets learn the value as protected by the baseline closest to history_rows
        self._main = min(range(len(c.history_scales)), key=lambda k: abs(math.log(c.history_scales[k])))
        self._recent_resid = _Ring(c.drift_rows)
        self._day: dict[int, _Ring] = {}
        self._week: dict[int, _Ring] = {}
        self._shape = _ShapeMemory(c.shape_rows, c.shape_init_rows, c.memory_rows)
        self._shape_record = _Record(c.record_half_life_rows, c.record_half_life_frac, c.record_step)
        self._hold = 0.0
        self._rows = 0
        #: raw component values of the last row for the main baseline (``level``/``season``/``drift`` z,
        #: ``shape`` novelty)
        self.last_components: dict[str, float] = {}
        #: component values divided by their records, for the last row and the main baseline
        self.last_ratios: dict[str, float] = {}
        #: score of each baseline (before averaging and suppression), for the last row
        self.last_scores: tuple[float, ...] = ()

    def _bucket_median(self, ts_ms: int) -> float | None:
        hour = ts_ms // _HOUR_MS
        week = self._week.get(hour % 168)
        if week is not None and len(week) >= self.config.weekly_min:
            return float(np.median(week.view()))
        day = self._day.get(hour % 24)
        if day is not None and len(day) >= 2:
            return float(np.median(day.view()))
        return None

    def _learn_bucket(self, ts_ms: int, x: float) -> None:
        hour = ts_ms // _HOUR_MS
        size = self.config.bucket_rows
        self._day.setdefault(hour % 24, _Ring(size)).push(x)
        self._week.setdefault(hour % 168, _Ring(size)).push(x)

    def update(self, ts_ms: int, value: float) -> float:
        """Score one row and learn from it. Rows must come in file order.

        Args:
            ts_ms: the row's timestamp, epoch milliseconds (only hour-of-day/week is used).
            value: the reading; must be finite.

        Returns:
            The anomaly score of this row, in [0, 1].

        Raises:
            ScoringError: the value is not finite.
        """
        if not math.isfinite(value):
            msg = f"detector row {self._rows} ts_ms={ts_ms}: expected a finite value, got {value!r}"
            raise ScoringError(msg)
        c = self.config
        x = float(value)
        season = self._bucket_median(ts_ms)
        r = 0.0 if season is None else x - season
        warm = self._rows >= c.min_rows
        novelty = self._shape.score(x)
        shape_ratio: float | None = None
        if novelty is not None:
            shape_ratio = self._shape_record.ratio(novelty, c.shape_record_floor)
            self._shape_record.learn(novelty, c.shape_record_floor, self._rows)
        recent_mean = float(np.r_[self._recent_resid.last(c.drift_rows - 1), r].mean())
        refresh = self._rows % c.refresh_rows == 0
        scores: list[float] = []
        learned: list[float] = []
        for k, base in enumerate(self._baselines):
            comp: dict[str, float] = {}
            ratios: dict[str, float] = {}
            x_learn = x
            if warm:
                med, sd, rmed, rsd = base.robust_stats(refresh)
                comp["level"] = abs(x - med) / sd
                if season is not None and len(base.resid) >= c.min_rows:
                    comp["season"] = abs(r - rmed) / rsd
                    comp["drift"] = abs(recent_mean - rmed) / rsd
                ratios = {name: base.records[name].ratio(v, c.z_record_floor) for name, v in comp.items()}
                for name, v in comp.items():
                    base.records[name].learn(v, c.z_record_floor, self._rows)
                if shape_ratio is not None:
                    ratios["shape"] = shape_ratio
                # protect the baseline: an outlier enters it clipped, so it cannot mask what follows
                if comp["level"] > c.protect_z:
                    x_learn = med + math.copysign(c.protect_z * sd, x - med)
            ratio = max(ratios.values(), default=0.0)
            scores.append(1.0 - math.exp(-max(0.0, ratio - c.ratio_offset) / c.ratio_scale))
            learned.append(x_learn)
            if k == self._main:
                self.last_components = comp | ({"shape": novelty} if novelty is not None else {})
                self.last_ratios = ratios
        self.last_scores = tuple(scores)
        raw = math.fsum(scores) / len(scores)
        # suppression: only a score that beats the decaying record of emitted scores is emitted in full,
        # and it raises that record above itself, so a persisting or slowly rising score emits only once
        if raw > self._hold:
            out = raw
            self._hold = raw + c.hold_margin  # may exceed 1: a saturated score must not re-emit next row
        else:
            out = raw * c.suppressed_factor
        self._hold *= 0.5 ** (1.0 / max(c.hold_half_life_rows, c.hold_half_life_frac * self._rows))
        for base, x_learn in zip(self._baselines, learned, strict=True):
            base.values.push(x_learn)
            if season is not None:
                base.resid.push(r)
        if season is not None:
            self._recent_resid.push(r)
        self._learn_bucket(ts_ms, learned[self._main])
        self._rows += 1
        return min(1.0, max(0.0, out))


def score_series(
    ts_ms: Sequence[int] | NDArray[np.int64],
    values: Sequence[float] | NDArray[np.float64],
    config: DetectorConfig | None = None,
) -> NDArray[np.float64]:
    """Score a whole series row by row with a fresh :class:`CausalDetector` (causal by construction).

    Example:
        >>> s = score_series([0, 60_000, 120_000], [1.0, 1.0, 1.0])
        >>> s.shape, float(s.max())
        ((3,), 0.0)
    """
    if len(ts_ms) != len(values):
        msg = f"score_series: expected as many timestamps as values, got {len(ts_ms)} and {len(values)}"
        raise ScoringError(msg)
    det = CausalDetector(config)
    return np.fromiter(
        (det.update(int(t), float(v)) for t, v in zip(ts_ms, values, strict=True)), dtype=np.float64, count=len(values)
    )
