from __future__ import annotations

import copy

import numpy as np

from models.features import FEATURE_NAMES, FeatureState


def _rec(ts: int, mean: float, sid: str = "s1", zone: str = "z") -> dict:
    return {
        "sensor_id": sid,
        "kind": "traffic",
        "zone": zone,
        "metric": "speed",
        "start_ms": ts * 60_000,
        "mean": mean,
        "std": 1.0,
        "min": mean - 1,
        "max": mean + 1,
    }


def test_shape_finite_and_input_not_mutated() -> None:
    st = FeatureState()
    recs = [_rec(t, 50.0 + (t % 3)) for t in range(30)]
    before = copy.deepcopy(recs)
    rows = np.vstack([st.transform([r]) for r in recs])
    assert rows.shape == (30, len(FEATURE_NAMES))
    assert np.all(np.isfinite(rows))
    assert recs == before


def test_jump_raises_level_and_protected_baseline_stays() -> None:
    st = FeatureState()
    for t in range(30):
        st.transform([_rec(t, 50.0 + (t % 3))])
    jump = st.transform([_rec(30, 90.0)], learn=[False])
    again = st.transform([_rec(31, 90.0)])
    assert jump[0, 0] > 5
    assert again[0, 0] == jump[0, 0]  # the unlearned window did not move the baseline
