from __future__ import annotations

from typing import Any

import pytest

W = 60_000
T0 = 1_800_000_000_000 // W * W


def make_agg(sid: str = "env-futian-0001", i: int = 0, value: float = 10.0, **over: Any) -> dict[str, Any]:
    """Aggregate of window ``i`` (1-minute tumbling) with mean=max=min=``value``."""
    start = T0 + i * W
    base: dict[str, Any] = {
        "v": 1, "sensor_id": sid, "kind": "environment", "zone": "futian", "metric": "pm25", "unit": "ug/m3",
        "window": "tumbling", "size_ms": W, "hop_ms": W, "start_ms": start, "end_ms": start + W,
        "count": 6, "sum": value * 6, "mean": value, "min": value, "max": value, "std": 1.0,
        "first": value, "last": value, "first_ts_ms": start + 1_000, "last_ts_ms": start + 51_000,
    }
    base.update(over)
    return base


@pytest.fixture
def agg() -> Any:
    return make_agg
