"""Versioned feature schema for window aggregates (pure, numpy).

One row of features per closed window aggregate (the dicts ``streams.engine`` emits: ``sensor_id``,
``kind``, ``zone``, ``metric``, ``start_ms``, ``mean``, ``std``, ``min``, ``max``, ...). History is kept
per ``(sensor_id, metric)`` series in :class:`FeatureState`; anomalous windows can be kept out of it
(``learn=False``) so they do not shift the baselines they are judged against.

Example:
    >>> st = FeatureState()
    >>> rec = {"sensor_id": "s1", "kind": "iot", "zone": "z", "metric": "m", "start_ms": 0,
    ...        "mean": 1.0, "std": 0.1, "min": 0.9, "max": 1.1}
    >>> st.transform([rec]).shape == (1, len(FEATURE_NAMES))
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

__all__ = ["FEATURE_NAMES", "FEATURE_SCHEMA_VERSION", "FeatureState"]

FEATURE_SCHEMA_VERSION = "1"
FEATURE_NAMES: tuple[str, ...] = (
    "level_z",  # window mean against the series' recent mean/std
    "trend_z",  # change since the previous window
    "change5_z",  # change since five windows ago
    "volatility_ratio",  # window std against the recent typical window std
    "range_z",  # (max - min) against the recent std
    "season_z",  # residual against the learned hour-of-week profile
    "zone_z",  # level_z minus the median level_z of the zone peers in the same batch
)
_HOUR_MS = 3_600_000
_ALPHA = 0.05  # EWMA weight of the running mean/variance (about 20 windows)
_SEASON_ALPHA = 0.2


@dataclass
class _Series:
    mean: float = math.nan
    var: float = 0.0
    std_level: float = 0.0
    n: int = 0
    recent: list[float] = field(default_factory=list)  # last 6 window means
    season: dict[int, float] = field(default_factory=dict)


class FeatureState:
    """Per-series history that turns window aggregates into feature rows (order: :data:`FEATURE_NAMES`)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _Series] = {}
        self._by_sensor: dict[str, dict[str, _Series]] = {}  # the same series, by sensor then metric

    def transform(
        self, records: Sequence[Mapping[str, Any]], learn: Sequence[bool] | NDArray[np.bool_] | None = None
    ) -> NDArray[np.float64]:
        """Features of a micro-batch, then (unless ``learn[i]`` is false) update the history.

        Args:
            records: window aggregates; each needs ``sensor_id``, ``zone``, ``metric``, ``start_ms``,
                ``mean``, ``std``, ``min`` and ``max``. The dicts are not modified.
            learn: per record, whether it may update the baselines (default: all).

        Returns:
            ``float64`` array of shape ``(len(records), len(FEATURE_NAMES))``, always finite.
        """
        n = len(records)
        out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float64)
        for i, rec in enumerate(records):
            key = (str(rec["sensor_id"]), str(rec["metric"]))
            s = self._series.get(key)
            mean = float(rec["mean"])
            std = float(rec.get("std") or 0.0)
            rng = float(rec["max"]) - float(rec["min"])
            how = self.bucket(int(rec["start_ms"]))
            if s is None or s.n < 3:
                continue  # not enough history: neutral features
            sd = math.sqrt(s.var) + 1e-6 * (abs(s.mean) + 1.0)
            out[i, 0] = (mean - s.mean) / sd
            out[i, 1] = (mean - s.recent[-1]) / sd
            out[i, 2] = (mean - s.recent[0]) / sd
            out[i, 3] = std / (s.std_level + 1e-6 * (abs(s.mean) + 1.0))
            out[i, 4] = rng / sd
            base = s.season.get(how, s.mean)
            out[i, 5] = (mean - base) / sd
        zones = np.array([f"{r['zone']}|{r['metric']}" for r in records]) if n else np.empty(0, dtype=str)
        for z in np.unique(zones):
            idx = np.flatnonzero(zones == z)
            out[idx, 6] = out[idx, 0] - np.median(out[idx, 0])
        np.clip(out, -1e6, 1e6, out=out)
        for i, rec in enumerate(records):
            if learn is not None and not learn[i]:
                continue
            self._learn(rec)
        return out

    def learn(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Update the baselines with ``records`` (call after scoring, with the normal ones only)."""
        for rec in records:
            self._learn(rec)

    def seen(self, sensor_id: str, metric: str) -> int:
        """How many windows of the series have updated its baselines."""
        s = self._series.get((sensor_id, metric))
        return 0 if s is None else s.n

    def series_doc(self, sensor_id: str) -> dict[str, list[Any]]:
        """The baselines of a sensor's series as a JSON document (no season; see :meth:`season_doc`).

        Per metric ``[mean, var, std_level, n, recent]``: floats round-trip exactly through JSON
        (shortest repr), so :meth:`restore_series` rebuilds the same features.

        Example:
            >>> st = FeatureState()
            >>> st.learn([{"sensor_id": "s1", "metric": "m", "start_ms": 0, "mean": 2.5, "std": 0.5}])
            >>> st.series_doc("s1")
            {'m': [2.5, 0.0, 0.5, 1, [2.5]]}
        """
        series = self._by_sensor.get(sensor_id, {})
        return {m: [s.mean, s.var, s.std_level, s.n, list(s.recent)] for m, s in series.items()}

    def season_doc(self, sensor_id: str, bucket: int) -> dict[str, float]:
        """A sensor's learned value of one hour-of-week ``bucket`` per metric (see :meth:`bucket`)."""
        return {m: s.season[bucket] for m, s in self._by_sensor.get(sensor_id, {}).items() if bucket in s.season}

    @staticmethod
    def bucket(start_ms: int) -> int:
        """The hour-of-week season bucket (0..167) a window starting at ``start_ms`` learns into."""
        return (start_ms // _HOUR_MS) % 168

    def restore_series(self, sensor_id: str, doc: Mapping[str, Sequence[Any]]) -> None:
        """Load baselines written by :meth:`series_doc` (they replace the series'; its season stays)."""
        for metric, (mean, var, std_level, n, recent) in doc.items():
            s = self._get(sensor_id, metric)
            s.mean = math.nan if mean is None else float(mean)  # JSON has no NaN: orjson writes null
            s.var, s.std_level, s.n, s.recent = float(var), float(std_level), int(n), [float(x) for x in recent]

    def restore_season(self, sensor_id: str, bucket: int, values: Mapping[str, float]) -> None:
        """Load one season bucket written by :meth:`season_doc`."""
        for metric, value in values.items():
            self._get(sensor_id, metric).season[bucket] = float(value)

    def _get(self, sensor_id: str, metric: str) -> _Series:
        s = self._series.get((sensor_id, metric))
        if s is None:
            s = self._series[(sensor_id, metric)] = _Series()
            self._by_sensor.setdefault(sensor_id, {})[metric] = s
        return s

    def _learn(self, rec: Mapping[str, Any]) -> None:
        s = self._get(str(rec["sensor_id"]), str(rec["metric"]))
        mean = float(rec["mean"])
        std = float(rec.get("std") or 0.0)
        how = self.bucket(int(rec["start_ms"]))
        if s.n == 0:
            s.mean, s.var, s.std_level = mean, 0.0, std
        else:
            a = max(_ALPHA, 1.0 / (s.n + 1))
            d = mean - s.mean
            s.mean += a * d
            s.var = (1 - a) * (s.var + a * d * d)
            s.std_level += a * (std - s.std_level)
        prev = s.season.get(how)
        s.season[how] = mean if prev is None else prev + _SEASON_ALPHA * (mean - prev)
        s.recent.append(mean)
        if len(s.recent) > 5:
            del s.recent[0]
        s.n += 1
