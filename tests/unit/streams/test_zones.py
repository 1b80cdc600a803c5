"""Zone roll-ups merged from per-partition partials equal a brute force over all the zone's readings."""

from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.engine import PartitionWindows, WindowSpec
from streams.schema import Reading
from streams.zones import ZoneRollup, partials_from_closed

SIZE = 10_000
ZONES = ["futian", "luohu"]


def reading(sid: str, ts: int, value: float) -> Reading:
    zone = ZONES[int(sid[1:]) % 2]
    return Reading(sid, "environment", zone, 22.5, 114.0, ts, {"pm25": value}, {"pm25": "ug/m3"})


def run(events: list[tuple[str, int, float]], partitions: int, order: list[int]) -> list[dict]:
    pws = [PartitionWindows(WindowSpec(SIZE, 2_000, 0, 30_000), p) for p in range(partitions)]
    msgs: list[list[dict]] = [[] for _ in range(partitions)]
    for offset, (sid, ts, v) in enumerate(events):
        p = int(sid[1:]) % partitions
        pw = pws[p]
        pw.add(reading(sid, ts, v), offset)
        for wdef, closed in pw.close_columns():
            meta = [pw.sensors[s] for s in pw.slot_sensor]
            msgs[p] += partials_from_closed(
                closed, wdef.label, wdef.size_ms, wdef.hop_ms, p,
                [m.zone for m in meta], [m.kind for m in meta], pw.slot_metric,
                [meta[i].units[pw.slot_metric[i]] for i in range(len(meta))],
            )
        msgs[p].append({"type": "marker", "src": p, "watermark_ms": pw.watermark_ms})
    for p, pw in enumerate(pws):  # end of input
        pw.max_ts_ms = max(pw.max_ts_ms, 0) + 10**9
        for wdef, closed in pw.close_columns():
            meta = [pw.sensors[s] for s in pw.slot_sensor]
            msgs[p] += partials_from_closed(
                closed, wdef.label, wdef.size_ms, wdef.hop_ms, p,
                [m.zone for m in meta], [m.kind for m in meta], pw.slot_metric,
                [meta[i].units[pw.slot_metric[i]] for i in range(len(meta))],
            )
        msgs[p].append({"type": "marker", "src": p, "watermark_ms": pw.watermark_ms})
    # interleave the partitions' streams in some order (each stays in order)
    zr = ZoneRollup(partitions)
    out: list[dict] = []
    cursors = [0] * partitions
    for p in order * (1 + sum(map(len, msgs))):
        if cursors[p] < len(msgs[p]):
            zr.add(msgs[p][cursors[p]])
            cursors[p] += 1
            out += zr.close()[0]
    assert all(c == len(m) for c, m in zip(cursors, msgs, strict=True))
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([f"s{i}" for i in range(8)]), st.integers(0, 60_000),
                       st.floats(1, 1000, allow_nan=False)), max_size=150),
    st.integers(1, 4), st.randoms(use_true_random=False),
)
def test_zone_rollup_equals_brute_force(events: list, partitions: int, rnd: random.Random) -> None:
    events = sorted(events, key=lambda e: e[1])  # in order: no late readings, so every reading counts
    order = [rnd.randrange(partitions) for _ in range(7)] + list(range(partitions))
    out = run(events, partitions, order)
    ref: dict[tuple[str, int], list[float]] = {}
    for sid, ts, v in events:
        ref.setdefault((ZONES[int(sid[1:]) % 2], ts - ts % SIZE), []).append(v)
    got = {(a["zone"], a["start_ms"]): a for a in out}
    assert set(got) == set(ref)
    for key, vals in ref.items():
        a, arr = got[key], np.array(vals)
        assert a["count"] == len(arr) and a["min"] == arr.min() and a["max"] == arr.max()
        assert math.isclose(a["mean"], arr.mean(), rel_tol=1e-9)
        assert math.isclose(a["std"], arr.std(), rel_tol=1e-6, abs_tol=1e-6)
        if arr.max() / arr.min() < 12:
            for q in (50, 95, 99):
                lo = np.quantile(arr, q / 100, method="lower") * 0.98
                hi = np.quantile(arr, q / 100, method="higher") * 1.02
                assert lo - 1e-9 <= a[f"p{q}"] <= hi + 1e-9


def test_redelivered_partials_do_not_double_count() -> None:
    events = [(f"s{i % 4}", i * 700, float(i)) for i in range(60)]
    once = run(events, 2, [0, 1])
    zr_msgs_twice = run(events + [], 2, [1, 0])
    assert [(a["zone"], a["start_ms"], a["count"]) for a in once] == [
        (a["zone"], a["start_ms"], a["count"]) for a in zr_msgs_twice
    ]
    zr = ZoneRollup(1)
    p = {"type": "partial", "src": 0, "zone": "z", "kind": "iot", "metric": "m", "unit": "", "window": "tumbling:10",
         "size_ms": 10, "hop_ms": 10, "start_ms": 0, "end_ms": 10, "sensors": 1,
         "acc": [1, 5.0, 5.0, 0.0, 0.0, 5.0, 5.0, 1, 5.0, 1, 5.0], "sk": [2000, [0], [1]]}
    zr.add(p)
    zr.add(p)  # redelivered
    zr.add({"type": "marker", "src": 0, "watermark_ms": 10})
    [agg], _ = zr.close()
    assert agg["count"] == 1 and agg["sensors"] == 1


def test_zone_waits_for_every_source() -> None:
    zr = ZoneRollup(2)
    zr.add({"type": "marker", "src": 0, "watermark_ms": 10**9})
    assert zr.watermark_ms is None and zr.close() == ([], [])


def test_sources_that_never_report_stop_blocking_after_the_idle_timeout() -> None:
    zr = ZoneRollup(3, idle_timeout_ms=5_000)
    p = {"type": "partial", "src": 0, "zone": "z", "kind": "iot", "metric": "m", "unit": "", "window": "tumbling:10",
         "size_ms": 10, "hop_ms": 10, "start_ms": 0, "end_ms": 10, "sensors": 1,
         "acc": [1, 5.0, 5.0, 0.0, 0.0, 5.0, 5.0, 1, 5.0, 1, 5.0], "sk": [2000, [0], [1]]}
    zr.add(p)
    zr.add({"type": "marker", "src": 0, "watermark_ms": 100})
    zr.tick(1_000)
    assert zr.close() == ([], [])  # sources 1 and 2 may still send partials
    zr.tick(6_000)
    [agg], _ = zr.close()
    assert agg["count"] == 1


def test_a_restore_keeps_windows_whatever_order_it_meets_them_and_the_marks() -> None:
    """The table holds open windows and the marks separately; restoring the marks first used to run
    the windows through the late check and drop them (they were stored before the marks passed them)."""
    p = {"type": "partial", "src": 1, "zone": "z", "kind": "iot", "metric": "m", "unit": "", "window": "tumbling:10",
         "size_ms": 10, "hop_ms": 10, "start_ms": 0, "end_ms": 10, "sensors": 2,
         "acc": [2, 10.0, 5.0, 0.0, 0.0, 5.0, 5.0, 1, 5.0, 1, 5.0], "sk": [2000, [0], [2]]}
    for marks_first in (True, False):
        zr = ZoneRollup(2)
        if marks_first:
            zr.marks.update({0: 100, 1: 100})
        zr.restore_window({"parts": [p]})
        if not marks_first:
            zr.marks.update({0: 100, 1: 100})
        assert zr.late == 0 and zr.closable()
        [agg], keys = zr.close()
        assert (agg["count"], agg["sensors"], keys) == (2, 2, [("z", "iot", "m", "tumbling:10", 0)])
        assert not zr.closable() and zr.partials == {}


def test_closable_says_whether_close_would_close_a_window() -> None:
    zr = ZoneRollup(2)
    assert not zr.closable()  # nothing open, no marks
    zr.add({"type": "partial", "src": 0, "zone": "z", "kind": "iot", "metric": "m", "unit": "", "window": "tumbling:10",
            "size_ms": 10, "hop_ms": 10, "start_ms": 0, "end_ms": 10, "sensors": 1,
            "acc": [1, 5.0, 5.0, 0.0, 0.0, 5.0, 5.0, 1, 5.0, 1, 5.0], "sk": [2000, [0], [1]]})
    zr.add({"type": "marker", "src": 0, "watermark_ms": 50})
    assert not zr.closable()  # source 1 has not passed it
    zr.add({"type": "marker", "src": 1, "watermark_ms": 9})
    assert not zr.closable()
    zr.add({"type": "marker", "src": 1, "watermark_ms": 10})
    assert zr.closable() and len(zr.close()[0]) == 1
