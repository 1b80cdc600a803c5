"""The window engine against a brute-force reference on shuffled, late, duplicated streams."""

from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.aggregates import acc_add, acc_merge, acc_new, acc_result
from streams.engine import DUPLICATE, Late, PartitionWindows, SensorWindows, WindowSpec
from streams.schema import Reading

SIZE = 10_000


def reading(sid: str, ts: int, value: float) -> Reading:
    return Reading(
        sid, "iot", "futian", 22.5, 114.0, ts, {"power_kw": value, "drain_level": -value}, {"power_kw": "kW"}
    )


def run(events: list[tuple[str, int, float]], spec: WindowSpec) -> tuple[list[dict], dict[int, Late]]:
    pw = PartitionWindows(spec)
    out, late = [], {}
    for offset, (sid, ts, v) in enumerate(events):
        res = pw.add(reading(sid, ts, v), offset)
        if isinstance(res, Late):
            late[offset] = res
        out += pw.close_ready()
    pw.max_ts_ms += 10**9  # end of input: flush everything still open
    out += pw.close_ready()
    return out, late


def reference(events: list[tuple[str, int, float]], late: dict[int, Late]) -> dict:
    groups: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for i, (sid, ts, v) in enumerate(events):
        if i in late:
            assert (sid, ts) == (late[i].reading.sensor_id, late[i].reading.ts_ms)
            continue
        groups.setdefault((sid, ts - ts % SIZE), []).append((ts, v))
    return groups


events_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 100_000), st.floats(-1e6, 1e6, allow_nan=False)),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(events_strategy, st.integers(0, 20_000), st.integers(0, 5_000))
def test_engine_matches_brute_force(events: list, lateness: int, grace: int) -> None:
    spec = WindowSpec(SIZE, lateness, grace, 30_000)
    out, late = run(events, spec)
    ref = reference(events, late)
    got = {(a["sensor_id"], a["start_ms"]): a for a in out if a["metric"] == "power_kw"}
    assert set(got) == set(ref)
    for key, values in ref.items():
        a = got[key]
        vals = np.array([v for _, v in values])
        assert a["count"] == len(vals)
        assert a["min"] == vals.min() and a["max"] == vals.max()
        assert math.isclose(a["mean"], vals.mean(), rel_tol=1e-9, abs_tol=1e-6)
        assert math.isclose(a["std"], vals.std(), rel_tol=1e-6, abs_tol=1e-3)
        first = min(values, key=lambda x: x[0])[0]
        assert a["first_ts_ms"] == first and a["last_ts_ms"] == max(t for t, _ in values)
    # each window closes exactly once
    assert len(out) == len({(a["sensor_id"], a["start_ms"], a["metric"]) for a in out})
    # late readings really were behind the watermark for their window
    for x in late.values():
        assert x.window_start_ms + SIZE + grace <= x.watermark_ms


def test_in_order_stream_has_no_late_data_and_closes_on_watermark() -> None:
    spec = WindowSpec(SIZE, 0, 0, 30_000)
    pw = PartitionWindows(spec)
    for i in range(25):
        assert pw.add(reading("s", i * 1000, float(i)), i) is None
    closed = pw.close_ready()
    assert [(a["start_ms"], a["count"]) for a in closed if a["metric"] == "power_kw"] == [(0, 10), (10_000, 10)]
    assert pw.open_windows == 1


def test_late_reading_is_reported_and_never_reopens() -> None:
    pw = PartitionWindows(WindowSpec(SIZE, 1000, 0, 30_000))
    pw.add(reading("s", 500, 1.0), 0)
    pw.add(reading("s", 12_000, 1.0), 1)
    assert len(pw.close_ready()) == 2
    res = pw.add(reading("s", 700, 5.0), 2)
    assert isinstance(res, Late) and res.late_by_ms == 11_000 - 700
    assert pw.close_ready() == []


def test_redelivered_offsets_are_skipped() -> None:
    pw = PartitionWindows(WindowSpec(SIZE, 0, 0, 30_000))
    for off in range(5):
        pw.add(reading("s", off * 100, 1.0), off)
    state = SensorWindows.from_json(pw.sensors["s"].to_json(0))
    restored = PartitionWindows(WindowSpec(SIZE, 0, 0, 30_000))
    restored.restore("s", state)
    assert restored.add(reading("s", 300, 1.0), 3) == DUPLICATE
    assert restored.add(reading("s", 600, 1.0), 5) is None
    restored.max_ts_ms = 10**9
    [agg] = [a for a in restored.close_ready() if a["metric"] == "power_kw"]
    assert agg["count"] == 6


def test_idle_partition_flushes_by_clock() -> None:
    pw = PartitionWindows(WindowSpec(SIZE, 0, 0, 5_000))
    pw.add(reading("s", 1_000, 1.0), 0, now_ms=100_000)
    assert not pw.idle_advance(104_000)
    assert pw.idle_advance(105_000)
    assert len(pw.close_ready()) == 2


@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.floats(-1e6, 1e6, allow_nan=False)), min_size=2, max_size=50),
    st.integers(1, 49),
)
def test_merge_equals_sequential(values: list[tuple[int, float]], cut: int) -> None:
    cut = min(cut, len(values) - 1)

    def fold(vs: list[tuple[int, float]]) -> list[float]:
        a = acc_new(*vs[0])
        for t, v in vs[1:]:
            acc_add(a, t, v)
        return a

    whole, merged = acc_result(fold(values)), acc_result(acc_merge(fold(values[:cut]), fold(values[cut:])))
    for k in ("count", "min", "max", "first_ts_ms", "last_ts_ms"):
        assert whole[k] == merged[k]
    assert math.isclose(whole["mean"], merged["mean"], rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(whole["std"], merged["std"], rel_tol=1e-6, abs_tol=1e-3)


def test_shuffled_per_key_order_changes_nothing_for_in_window_data() -> None:
    rng = random.Random(3)
    events = [(f"s{i % 7}", rng.randrange(0, 50_000), rng.uniform(0, 100)) for i in range(2000)]
    a, _ = run(sorted(events, key=lambda e: e[1]), WindowSpec(SIZE, 10**9, 0, 30_000))
    b, _ = run(rng.sample(events, len(events)), WindowSpec(SIZE, 10**9, 0, 30_000))
    key = lambda x: (x["sensor_id"], x["start_ms"], x["metric"])  # noqa: E731
    for x, y in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
        assert (x["count"], x["min"], x["max"]) == (y["count"], y["min"], y["max"])
