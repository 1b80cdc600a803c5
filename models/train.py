"""Training of the per-kind window models (``urbansense train --kind ...``).

Training data is either a JSON-lines file of window aggregates (``--data PATH``) or simulated: the
seeded city simulator (:mod:`simulators.generators`) sampled every 10 s and summarised into 1-minute
tumbling windows with the same fields as ``streams.engine`` emits. Features come from
:mod:`models.features`; the model is an :class:`~sklearn.ensemble.IsolationForest` whose raw score is
calibrated to [0, 1] by the empirical CDF of the training scores (101 quantiles in the sidecar).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import sklearn
from numpy.typing import NDArray
from sklearn.ensemble import IsolationForest

from models.errors import ScoringError
from models.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION, FeatureState
from models.registry import ARTIFACTS_ROOT, save_model

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "simulated_windows", "train"]

KINDS: tuple[str, ...] = ("traffic", "environment", "crowd", "iot")
_START_MS = 1_780_000_000_000


def simulated_windows(kind: str, *, hours: float = 24.0, sensors: int = 48, seed: int = 11) -> list[dict[str, Any]]:
    """Simulated 1-minute window aggregates of one kind (deterministic for a seed)."""
    from simulators.city import build_city
    from simulators.generators import generate

    city = build_city(sensors, seed=seed)
    idx = np.array([i for i, s in enumerate(city.sensors) if s.kind == kind])
    if idx.size == 0:
        msg = f"simulated training data: no sensor of kind={kind!r} among {sensors} sensors"
        raise ScoringError(msg)
    per_min, interval_ms = 6, 10_000
    steps = int(hours * 60) * per_min
    batches = list(generate(city, start_ms=_START_MS, interval_ms=interval_ms, steps=steps, seed=seed))
    out: list[dict[str, Any]] = []
    metrics = [m for m in batches[0].values if not np.all(np.isnan(batches[0].values[m][idx]))]
    for metric in metrics:
        v = np.stack([b.values[metric][idx] for b in batches])  # (steps, sensors)
        w = v[: (steps // per_min) * per_min].reshape(-1, per_min, idx.size)
        mean, std = w.mean(axis=1), w.std(axis=1)
        lo, hi = w.min(axis=1), w.max(axis=1)
        for k in range(w.shape[0]):
            start = _START_MS + k * per_min * interval_ms
            for j, si in enumerate(idx):
                s = city.sensors[si]
                out.append(
                    {
                        "sensor_id": s.sensor_id,
                        "kind": kind,
                        "zone": s.zone,
                        "metric": metric,
                        "start_ms": start,
                        "end_ms": start + 60_000,
                        "count": per_min,
                        "mean": float(mean[k, j]),
                        "std": float(std[k, j]),
                        "min": float(lo[k, j]),
                        "max": float(hi[k, j]),
                    }
                )
    out.sort(key=lambda r: (r["start_ms"], r["sensor_id"], r["metric"]))
    return out


def read_windows(path: Path, kind: str) -> list[dict[str, Any]]:
    """Window aggregates of ``kind`` from a JSON-lines file, sorted by window start."""
    rows = []
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                msg = f"training data {path} line {line_no}: expected a JSON object, got {line[:60]!r}"
                raise ScoringError(msg) from exc
            if rec.get("kind") == kind:
                rows.append(rec)
    rows.sort(key=lambda r: (r["start_ms"], r["sensor_id"], r["metric"]))
    return rows


def featurize(records: Sequence[Mapping[str, Any]], progress: bool = False) -> NDArray[np.float64]:
    """Features of records in time order, one micro-batch per window start."""
    state = FeatureState()
    starts = np.array([int(r["start_ms"]) for r in records], dtype=np.int64)
    cuts = np.flatnonzero(np.diff(starts)) + 1
    bounds = list(zip(np.r_[0, cuts], np.r_[cuts, len(records)], strict=True))
    it: Iterable[tuple[int, int]] = bounds
    if progress:
        from tqdm import tqdm

        it = tqdm(bounds, desc="features", unit="batch")
    parts = [state.transform(records[a:b]) for a, b in it]
    return np.vstack(parts) if parts else np.zeros((0, len(FEATURE_NAMES)))


def _fingerprint(x: NDArray[np.float64]) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def train(
    kind: str,
    data: Path | None,
    out_dir: Path | None = None,
    *,
    version: str = "1",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Fit, calibrate and save the model of one feed kind; returns the artifact directory.

    Args:
        kind: feed kind (``traffic``, ``environment``, ``crowd``, ``iot``).
        data: JSON-lines window aggregates, or ``None`` for simulated data.
        out_dir: root folder; the artifact goes to ``out_dir/<kind>/<version>/``.
        version: artifact version string.
        seed: seed of the IsolationForest.
        progress: show a progress bar.
    """
    if kind not in KINDS:
        msg = f"train: expected kind in {KINDS}, got {kind!r}"
        raise ScoringError(msg)
    records = simulated_windows(kind) if data is None else read_windows(data, kind)
    if len(records) < 100:
        msg = f"train kind={kind}: expected at least 100 windows, got {len(records)}"
        raise ScoringError(msg)
    x = featurize(records, progress=progress)
    warm = np.any(x != 0.0, axis=1)  # rows with history
    x_fit = x[warm]
    n_fit = int(x_fit.shape[0] * 0.8)
    model = IsolationForest(n_estimators=30, max_samples=128, random_state=seed).fit(x_fit[:n_fit])
    raw_fit = -model.score_samples(x_fit[:n_fit])
    raw_val = -model.score_samples(x_fit[n_fit:])
    quantiles = np.quantile(raw_fit, np.linspace(0.0, 1.0, 101))
    cal_val = np.interp(raw_val, quantiles, np.linspace(0.0, 1.0, 101))
    center = np.median(x_fit, axis=0)
    spread = np.quantile(x_fit, 0.75, axis=0) - np.quantile(x_fit, 0.25, axis=0)
    sidecar = {
        "kind": kind,
        "version": version,
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "feature_names": list(FEATURE_NAMES),
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "model": "IsolationForest(n_estimators=30, max_samples=128)",
        "seed": seed,
        "training_data": "simulated" if data is None else str(data),
        "data_fingerprint": _fingerprint(x_fit),
        "n_windows": int(x.shape[0]),
        "n_fit": n_fit,
        "calibration": {"method": "empirical_cdf", "raw_quantiles": quantiles.tolist()},
        "feature_center": center.tolist(),
        "feature_spread": np.maximum(spread, 1e-9).tolist(),
        "default_threshold": 0.99,
        "metrics": {
            "validation_windows": int(raw_val.shape[0]),
            "validation_rate_above_0.99": float(np.mean(cal_val >= 0.99)),
            "validation_rate_above_0.95": float(np.mean(cal_val >= 0.95)),
        },
    }
    dest = (out_dir or ARTIFACTS_ROOT) / kind / version
    save_model(model, sidecar, dest)
    logger.info("model trained kind=%s version=%s windows=%d path=%s", kind, version, x.shape[0], dest)
    return dest
