"""A causal, streaming anomaly detector for one univariate series (pure, deterministic).

:class:`CausalDetector` scores each ``(ts_ms, value)`` as it arrives, using only the rows seen so far.
It combines robust z-scores that each catch a different NAB anomaly shape:

* ``level``: the value against the rolling median/MAD of the recent past (spikes, dips, level shifts);
* ``diff``: the first difference against the rolling median/MAD of past differences (sudden jumps);
* ``season``: the residual against a profile learned online per hour-of-day, or per hour-of-week once a
  bucket has enough history (anomalies that look normal in level but not for that time of day/week);
* ``drift``: the mean of the recent seasonal residuals against their long-run spread (slow shifts).

The largest z is squashed to [0, 1] with a fixed curve (the NAB sweep picks one global threshold, so the
score needs to be comparable across series rather than "probability-like"), then
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
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of :class:`CausalDetector` (one global setting for every series; no per-file tuning).

    Attributes:
        history_rows: length of the rolling baseline (rows).
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
        protect_z: values with a z above this enter the baselines clipped to this z.
        refresh_rows: recompute the robust baselines every this many rows (1: every row).
    """

    history_rows: int = 600
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


def _robust(values: NDArray[np.float64]) -> tuple[float, float]:
    """Median and a robust sigma (MAD, floored by the inter-decile spread for near-constant series)."""
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med))) * _MAD_TO_SIGMA
    lo, hi = np.percentile(values, [10.0, 90.0])
    spread = float(hi - lo) / 2.563  # inter-decile range of a normal, in sigmas
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


class CausalDetector:
    """Streaming detector: ``update(ts_ms, value) -> score in [0, 1]`` using only past and current rows."""

    _Z_COMPONENTS = ("level", "season", "drift")

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        c = self.config
        self._values = _Ring(c.history_rows)
        self._resid = _Ring(c.history_rows)
        self._recent_resid = _Ring(c.drift_rows)
        self._day: dict[int, _Ring] = {}
        self._week: dict[int, _Ring] = {}
        self._shape = _ShapeMemory(c.shape_rows, c.shape_init_rows, c.memory_rows)
        self._records = {
            name: _Record(c.record_half_life_rows, c.record_half_life_frac, c.record_step)
            for name in (*self._Z_COMPONENTS, "shape")
        }
        self._floors = {name: c.z_record_floor for name in self._Z_COMPONENTS} | {"shape": c.shape_record_floor}
        self._hold = 0.0
        self._rows = 0
        self._stats: tuple[float, float, float, float] | None = None
        #: raw component values of the last row (``level``/``season``/``drift`` z, ``shape`` novelty)
        self.last_components: dict[str, float] = {}
        #: component values divided by their records, for the last row
        self.last_ratios: dict[str, float] = {}

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

    def _baselines(self) -> tuple[float, float, float, float]:
        if self._stats is None or self._rows % self.config.refresh_rows == 0:
            med, sd = _robust(self._values.view())
            rmed, rsd = _robust(self._resid.view()) if len(self._resid) else (0.0, 1.0)
            self._stats = (med, sd, rmed, rsd)
        return self._stats

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
        comp: dict[str, float] = {}
        warm = len(self._values) >= c.min_rows
        med = sd = 0.0
        if warm:
            med, sd, rmed, rsd = self._baselines()
            comp["level"] = abs(x - med) / sd
            if season is not None and len(self._resid) >= c.min_rows:
                comp["season"] = abs(r - rmed) / rsd
                recent = np.r_[self._recent_resid.last(c.drift_rows - 1), r]
                comp["drift"] = abs(float(recent.mean()) - rmed) / rsd
        novelty = self._shape.score(x)
        if novelty is not None:
            comp["shape"] = novelty
        ratios = {k: self._records[k].ratio(val, self._floors[k]) for k, val in comp.items()} if warm else {}
        for k, v in comp.items():
            self._records[k].learn(v, self._floors[k], self._rows)
        self.last_components, self.last_ratios = comp, ratios
        ratio = max(ratios.values(), default=0.0)
        raw = 1.0 - math.exp(-max(0.0, ratio - c.ratio_offset) / c.ratio_scale)
        # suppression: only a score that beats the decaying record of emitted scores is emitted in full,
        # and it raises that record above itself, so a persisting or slowly rising score emits only once
        if raw > self._hold:
            out = raw
            self._hold = raw + c.hold_margin  # may exceed 1: a saturated score must not re-emit next row
        else:
            out = raw * c.suppressed_factor
        self._hold *= 0.5 ** (1.0 / max(c.hold_half_life_rows, c.hold_half_life_frac * self._rows))
        # protect the baselines: an outlier enters them clipped, so it cannot mask what follows
        x_learn = x
        if warm and comp["level"] > c.protect_z:
            x_learn = med + math.copysign(c.protect_z * sd, x - med)
        self._values.push(x_learn)
        if season is not None:
            self._resid.push(r)
            self._recent_resid.push(r)
        self._learn_bucket(ts_ms, x_learn)
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
