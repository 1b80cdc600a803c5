from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from models.detector import CausalDetector, DetectorConfig, score_series
from models.errors import ScoringError
from models.nab import read_series


@pytest.fixture(scope="module")
def series(nab_root: Path) -> tuple[np.ndarray, np.ndarray]:
    _, ms, values = read_series(nab_root / "data" / "realTraffic" / "speed_7578.csv")
    return ms, values


def _synthetic(n: int = 900, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = np.arange(n, dtype=np.int64) * 300_000
    hours = (ts // 3_600_000) % 24
    x = 50 + 10 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 1, n)
    return ts, x


def test_scores_in_unit_interval_and_one_per_row(series: tuple[np.ndarray, np.ndarray]) -> None:
    ms, values = series
    s = score_series(ms, values)
    assert s.shape == values.shape
    assert np.all((s >= 0.0) & (s <= 1.0))
    assert s.max() > 0.5  # the file holds real anomalies


def test_deterministic(series: tuple[np.ndarray, np.ndarray]) -> None:
    ms, values = series
    assert np.array_equal(score_series(ms, values), score_series(ms, values))


@pytest.mark.parametrize("cut", [200, 555, 900])
def test_causal_prefix_unchanged_when_future_altered(series: tuple[np.ndarray, np.ndarray], cut: int) -> None:
    ms, values = series
    full = score_series(ms, values)
    altered = values.copy()
    altered[cut:] = altered[cut:] * 3.0 + 1000.0
    assert np.array_equal(score_series(ms, altered)[:cut], full[:cut])
    assert np.array_equal(score_series(ms[:cut], values[:cut]), full[:cut])


def test_spike_scores_high_after_quiet_period() -> None:
    ts, x = _synthetic()
    x[700] += 40.0
    s = score_series(ts, x)
    assert s[700] > 0.8
    assert s[700] == s[400:].max()


def test_input_not_mutated_and_detector_pickles() -> None:
    ts, x = _synthetic(300)
    before = x.copy()
    det = CausalDetector()
    first = [det.update(int(t), float(v)) for t, v in zip(ts[:200], x[:200], strict=True)]
    clone = pickle.loads(pickle.dumps(det))  # noqa: S301 - our own object, round-trip check
    rest_a = [det.update(int(t), float(v)) for t, v in zip(ts[200:], x[200:], strict=True)]
    rest_b = [clone.update(int(t), float(v)) for t, v in zip(ts[200:], x[200:], strict=True)]
    assert rest_a == rest_b
    assert np.array_equal(x, before)
    assert len(first) == 200


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_raises(bad: float) -> None:
    det = CausalDetector()
    with pytest.raises(ScoringError, match="finite"):
        det.update(0, bad)


def test_length_mismatch_raises() -> None:
    with pytest.raises(ScoringError, match="as many timestamps"):
        score_series([0, 1], [1.0])


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        DetectorConfig().min_rows = 3  # type: ignore[misc]


def test_one_huge_spike_does_not_mask_a_later_anomaly() -> None:
    # record_step caps how far one row raises a record: a 60-sigma spike early on must not hide a
    # 10-sigma one later (NAB TravelTime_387: probation spikes hid the first window)
    ts, x = _synthetic(1600)
    x[300] += 600.0
    x[1400] += 100.0
    s = score_series(ts, x)
    assert s[1400] > 0.8
    assert s[1400] == s[1000:].max()


def test_persistent_shift_emits_once() -> None:
    # hold_margin: a level shift that persists gets one full score at its onset, not one per row
    ts, x = _synthetic(1600)
    x[1000:] += 30.0
    s = score_series(ts, x)
    assert s[1000:1010].max() > 0.8
    assert int(np.sum(s[1000:] > 0.5)) <= 3


def test_scores_in_range_and_causal_on_long_series() -> None:
    # the record and suppression half-lives grow with the rows seen; check range and causality past that
    ts, x = _synthetic(6000, seed=11)
    x[[2500, 4100, 5200]] += [25.0, -30.0, 40.0]
    full = score_series(ts, x)
    assert np.all((full >= 0.0) & (full <= 1.0))
    assert np.array_equal(score_series(ts[:4500], x[:4500]), full[:4500])
    assert np.array_equal(score_series(ts, x), full)


def test_nearest_shape_matches_brute_force() -> None:
    from models.detector import _ShapeMemory

    rng = np.random.default_rng(5)
    mem = _ShapeMemory(rows=8, init_rows=50, memory_rows=120)  # small ring: exercises wrap-around
    xs = rng.normal(0.0, 1.0, 400)
    window: list[float] = []
    history: list[np.ndarray] = []
    for i, v in enumerate(xs):
        got = mem.score(float(v))
        if i < 49:
            assert got is None
            continue
        if i == 49:
            assert got is None
            scaled = (xs[:50] - mem._lo) / mem._scale
            history = [scaled[t - 7 : t + 1] for t in range(7, 50)]
            window = list(scaled[-8:])
            continue
        window = [*window[1:], (v - mem._lo) / mem._scale]
        vec = np.asarray(window)
        past = np.asarray(history[-120:][: max(0, min(len(history), 120) - 7)])
        want = float(np.sqrt(np.min(np.sum((past - vec) ** 2, axis=1)))) if len(past) else 0.0
        assert got == pytest.approx(want, abs=1e-9)
        history.append(vec)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 299, 300, 2400])
def test_robust_equals_numpy_median_and_percentiles(n: int) -> None:
    # _robust takes the median and deciles from one partial sort; it must give numpy's values bit for bit
    from models.detector import _MAD_TO_SIGMA, _robust

    rng = np.random.default_rng(n)
    for values in (rng.normal(0.0, 7.0, n), np.round(rng.exponential(3.0, n), 1), np.full(n, 2.5)):
        med = float(np.median(values))
        mad = float(np.median(np.abs(values - med))) * _MAD_TO_SIGMA
        lo, hi = np.percentile(values, [10.0, 90.0])
        want = (med, max(mad, 0.25 * float(hi - lo) / 2.563, 1e-9 * (abs(med) + 1.0)))
        assert _robust(values) == want


def test_score_is_mean_of_the_baseline_scores() -> None:
    # the ensemble: one score per baseline length, the emitted score (when not suppressed) is their mean
    ts, x = _synthetic()
    x[700] += 40.0
    det = CausalDetector()
    for t, v in zip(ts[:700], x[:700], strict=True):
        det.update(int(t), float(v))
    s = det.update(int(ts[700]), float(x[700]))
    assert len(det.last_scores) == len(DetectorConfig().history_scales)
    assert s == pytest.approx(sum(det.last_scores) / len(det.last_scores))
    assert s > 0.8


def test_single_baseline_config_and_bad_scales() -> None:
    ts, x = _synthetic(600)
    single = score_series(ts, x, DetectorConfig(history_scales=(1.0,)))
    assert np.all((single >= 0.0) & (single <= 1.0))
    with pytest.raises(ScoringError, match="history_scales"):
        CausalDetector(DetectorConfig(history_scales=()))
    with pytest.raises(ScoringError, match="history_scales"):
        CausalDetector(DetectorConfig(history_scales=(1.0, 0.0)))
