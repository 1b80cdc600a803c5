"""One sensor whose clock runs ahead does not move its partition's event-time frontier.

A reading more than ``max_ahead_ms`` ahead of the frontier is held: windowed, but the frontier (and
so the watermark) moves there only when a second sensor is that far ahead too. Without the guard
(``max_ahead_ms=0``, the old behaviour) a sensor 5 minutes ahead makes every other reading of its
partition late for as long as its clock is off.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import orjson
import pytest

from streams.engine import Ahead, Late, PartitionWindows, WindowDef, WindowSpec
from streams.metrics import pipeline_families, render
from streams.panes import PaneStore
from streams.pipeline import CLOCK_AHEAD, WATERMARK_KEY, Pipeline, Record
from streams.schema import Reading, encode_reading

MIN = 60_000
T0 = 1_800_000_000_000  # a whole minute
STEP = 10_000
LATENESS = 5_000
SPEC = WindowSpec(MIN, LATENESS, 0, 30_000)  # max_ahead_ms: 60 s (the default)
SENSORS = [f"s{i}" for i in range(6)]

Event = tuple[str, int, float]


def reading(sid: str, ts: int, value: float) -> Reading:
    return Reading(sid, "environment", "futian", 22.5, 114.0, ts, {"pm25": value}, {"pm25": "ug/m3"})


def feed(minutes: int, skew: dict[str, tuple[int, int, int]] | None = None, gap: tuple[int, int] = (0, 0)) -> list[
    list[Event]
]:
    """One tick per 10 s, every sensor once per tick; ``skew[sid] = (offset_ms, first tick, end tick)``;
    no readings in the ticks of ``gap``."""
    ticks = []
    for k in range(minutes * 6):
        if gap[0] <= k < gap[1]:
            continue
        tick = []
        for i, sid in enumerate(SENSORS):
            offset, lo, hi = (skew or {}).get(sid, (0, 0, 0))
            t = T0 + k * STEP
            tick.append((sid, t + offset if lo <= k < hi else t, float((k * 7 + i * 3) % 23)))
        ticks.append(tick)
    return ticks


class Run:
    """A partition fed batch by batch; aggregates keyed (sensor, window kind, start) with the batch
    index after which each was emitted, and every reading's outcome."""

    def __init__(self, spec: WindowSpec = SPEC) -> None:
        self.pw = PartitionWindows(spec)
        self.aggs: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.emitted_at: dict[tuple[str, str, int], int] = {}
        self.outcomes: list[Any] = []
        self.batches = 0

    def add(self, events: list[Event]) -> list[Any]:
        first = len(self.outcomes)
        res = self.pw.add_batch([reading(*e) for e in events], list(range(first, first + len(events))))
        self.outcomes += res
        self._collect(self.pw.close_ready())
        self.batches += 1
        return res

    def flush(self) -> None:
        self.pw.max_ts_ms += 10**12
        self._collect(self.pw.close_ready())

    def _collect(self, aggs: list[dict[str, Any]]) -> None:
        for a in aggs:
            key = (a["sensor_id"], a["window"], a["start_ms"])
            assert key not in self.aggs, key  # each window closes once
            self.aggs[key] = a
            self.emitted_at[key] = self.batches


def brute_force(events: list[Event], wdef: WindowDef = SPEC.windows[0]) -> dict[tuple[str, str, int], list[Event]]:
    """Every reading in every window of ``wdef`` that contains it (for streams where none is late)."""
    out: dict[tuple[str, str, int], list[Event]] = {}
    for e in events:
        _, ts, _ = e
        last = ts - ts % wdef.hop_ms
        for start in range(last, ts - wdef.size_ms, -wdef.hop_ms):
            out.setdefault((e[0], wdef.kind, start), []).append(e)
    return out


def assert_aggregates(run: Run, events: list[Event], wdef: WindowDef = SPEC.windows[0]) -> None:
    want = brute_force(events, wdef)
    got = {k: a for k, a in run.aggs.items() if k[1] == wdef.kind}
    assert set(got) == set(want)
    for key, evs in want.items():
        a, vals = got[key], [v for _, _, v in evs]
        assert (a["count"], a["sum"], a["min"], a["max"]) == (len(vals), sum(vals), min(vals), max(vals))
        first_ts, last_ts = min(t for _, t, _ in evs), max(t for _, t, _ in evs)
        assert (a["first_ts_ms"], a["last_ts_ms"]) == (first_ts, last_ts)
        assert a["first"] == next(v for _, t, v in evs if t == first_ts)
        assert a["last"] == [v for _, t, v in evs if t == last_ts][-1]


def test_one_sensor_ahead_leaves_the_others_on_time() -> None:
    # s5's clock runs 5 min ahead from minute 10 to minute 40 of an hour
    ticks = feed(60, {"s5": (300_000, 60, 240)})
    run = Run()
    for k, tick in enumerate(ticks):
        run.add(tick)
        if 60 <= k < 240:
            assert run.pw.sensors_ahead() == {"s5": 300_000}
            assert run.pw.max_ts_ms == T0 + k * STEP  # the others' time, not s5's
    assert not [x for x in run.outcomes if x is not None]  # nothing late, nothing refused
    assert run.pw.held_ahead == 180 and run.pw.sensors_ahead() == {}
    # the others' windows close as the watermark passes them: in the tick at end + 10 s
    for sid in SENSORS[:5]:
        for m in range(59):
            start = T0 + m * MIN
            assert run.aggs[(sid, "tumbling", start)]["count"] == 6
            assert run.emitted_at[(sid, "tumbling", start)] == (m + 1) * 6 + 1
    # and without the guard (the old watermark) the same feed makes them late for half an hour
    old = Run(dataclasses.replace(SPEC, max_ahead_ms=0))
    for tick in ticks:
        old.add(tick)
    late = [x for x in old.outcomes if isinstance(x, Late)]
    assert len(late) > 5 * 150 and {x.reading.sensor_id for x in late} >= set(SENSORS[:5])


def test_the_ahead_sensors_windows_close_when_the_frontier_gets_there() -> None:
    ticks = feed(60, {"s5": (300_000, 60, 240)})
    run = Run()
    for tick in ticks:
        run.add(tick)
    assert run.pw.stores[0].far is None  # the overflow emptied once the frontier passed s5's windows
    run.flush()
    events = [e for tick in ticks for e in tick]
    assert_aggregates(run, events)
    for m in range(15, 44):  # s5's skewed windows: each closes once the others' time passes its end
        start = T0 + m * MIN
        assert run.emitted_at[("s5", "tumbling", start)] == (m + 1) * 6 + 1
    # none in minutes 10-14; minutes 40-44 hold s5's skewed readings (from minutes 35-39) and its
    # readings in step after
    counts = {m: run.aggs[("s5", "tumbling", T0 + m * MIN)]["count"] for m in range(60)
              if ("s5", "tumbling", T0 + m * MIN) in run.aggs}
    assert counts == {m: 12 if 40 <= m < 45 else 6 for m in (*range(10), *range(15, 60))}


def test_hopping_and_session_windows_of_a_sensor_ahead() -> None:
    hop, session = WindowDef("hopping", 5 * MIN, MIN), WindowDef("session", 30_000, 30_000)
    spec = dataclasses.replace(SPEC, extra=(hop, session))
    ticks = feed(40, {"s2": (420_000, 30, 150)})
    run = Run(spec)
    for tick in ticks:
        run.add(tick)
    run.flush()
    assert not [x for x in run.outcomes if x is not None]
    events = [e for tick in ticks for e in tick]
    assert_aggregates(run, events, hop)
    assert_aggregates(run, events)
    sessions = sorted((k[0], a["start_ms"], a["end_ms"], a["count"]) for k, a in run.aggs.items() if k[1] == "session")
    assert [s for s in sessions if s[0] == "s0"] == [("s0", T0, T0 + 239 * STEP + 30_000, 240)]


def test_two_sensors_jumping_together_move_the_frontier() -> None:
    # the whole feed stops at minute 10 and comes back at minute 40 (a gap in a replay)
    ticks = feed(50, gap=(60, 240))
    run = Run()
    for tick in ticks[:60]:
        run.add(tick)
    before = run.pw.max_ts_ms
    back = ticks[60]
    assert run.add(back[:1]) == [None]  # s0 alone: held (counted), the frontier stays
    assert run.pw.max_ts_ms == before and run.pw.sensors_ahead() == {"s0": back[0][1] - before}
    assert run.add(back[1:2]) == [None]  # s1 as far ahead: the frontier jumps
    assert run.pw.max_ts_ms == back[1][1] and run.pw.sensors_ahead() == {}
    assert (SENSORS[5], "tumbling", T0 + 9 * MIN) in run.aggs  # everything before the gap closed
    run.add(back[2:])
    for tick in ticks[61:]:
        run.add(tick)
    run.flush()
    assert not [x for x in run.outcomes if x is not None]
    assert_aggregates(run, [e for tick in ticks for e in tick])
    assert run.pw.held_ahead == 1


def test_two_clocks_ahead_corroborate_each_other() -> None:
    """The quorum is two sensors: two clocks off at once move the frontier to the nearer one."""
    run = Run()
    run.add([(sid, T0, 1.0) for sid in SENSORS])
    run.add([("s0", T0 + 10 * MIN, 1.0)])
    assert run.pw.max_ts_ms == T0
    run.add([("s1", T0 + 3 * MIN, 1.0)])
    assert run.pw.max_ts_ms == T0 + 3 * MIN and run.pw.sensors_ahead() == {"s0": 7 * MIN}
    assert isinstance(run.add([("s2", T0 + 10_000, 1.0)])[0], Late)


def test_a_jump_beyond_the_horizon_refuses_the_uncorroborated_reading() -> None:
    spec = dataclasses.replace(SPEC, ahead_horizon_ms=10 * MIN)
    ticks = feed(50, gap=(60, 240))  # 30 min gap > 10 min horizon
    run = Run(spec)
    for tick in ticks:
        run.add(tick)
    refused = [(k, x) for k, x in enumerate(run.outcomes) if x is not None]
    assert [(k, type(x)) for k, x in refused] == [(360, Ahead)]  # s0's first reading after the gap
    x = refused[0][1]
    assert x.reading.sensor_id == "s0" and x.frontier_ms == T0 + 59 * STEP and x.ahead_by_ms == 181 * STEP
    assert run.pw.refused_ahead == 1 and run.pw.held_ahead == 1
    run.flush()
    events = [e for k, e in enumerate(e for tick in ticks for e in tick) if k != 360]
    assert_aggregates(run, events)


def test_a_single_sensor_partition_follows_its_sensor_as_before() -> None:
    events = [("s0", T0 + k * STEP, float(k)) for k in range(60)]
    events += [("s0", T0 + 2 * 3_600_000 + k * STEP, float(k)) for k in range(30)]  # a 2 h gap
    events += [("s0", T0 + 50 * STEP, 99.0), ("s0", T0 + 2 * 3_600_000 + 5 * STEP, 7.0)]  # late, in time
    runs = []
    for max_ahead in (0, 60_000):
        run = Run(dataclasses.replace(SPEC, max_ahead_ms=max_ahead, ahead_horizon_ms=10 * MIN))
        for lo in range(0, len(events), 7):
            run.add(events[lo : lo + 7])
            assert run.pw.sensors_ahead() == {}
        run.flush()
        runs.append(run)
    old, new = runs
    assert repr(new.outcomes) == repr(old.outcomes) and isinstance(new.outcomes[90], Late)
    assert new.aggs == old.aggs and new.emitted_at == old.emitted_at
    assert new.pw.held_ahead == 0
    # a second sensor is judged against the first: far ahead of it, it is held
    new.add([("s1", new.pw.max_ts_ms + 5 * MIN, 1.0)])
    assert list(new.pw.sensors_ahead()) == ["s1"]


def mixed_stream() -> list[Event]:
    """A skewed clock (s5: 5 min ahead, then back), a gap the feed jumps over, a reading past the
    horizon, late readings and redelivered ones."""
    ticks = feed(9, {"s5": (300_000, 3, 30), "s3": (-120_000, 33, 36)}, gap=(40, 48))
    events = [e for tick in ticks for e in tick]
    events.insert(220, ("s4", T0 + 3 * 3_600_000, 1.0))  # one reading 3 h ahead: refused
    events.insert(150, ("s1", T0, 5.0))  # late
    return events


def outcomes_of(events: list[Event], cuts: list[int], spec: WindowSpec) -> tuple[Any, ...]:
    run = Run(spec)
    for lo, hi in zip([0, *cuts], [*cuts, len(events)], strict=True):
        if hi > lo:
            run.add(events[lo:hi])
    state = (run.pw.max_ts_ms, dict(run.pw.ahead), run.pw.held_ahead, run.pw.refused_ahead)
    run.flush()
    return repr(run.outcomes), {k: repr(a) for k, a in run.aggs.items()}, state


@pytest.mark.parametrize(
    "extra", [(), (WindowDef("hopping", 3 * MIN, MIN), WindowDef("session", 25_000, 25_000))], ids=["tumbling", "more"]
)
def test_outcomes_do_not_depend_on_batch_boundaries(extra: tuple[WindowDef, ...]) -> None:
    events = mixed_stream()
    spec = dataclasses.replace(SPEC, extra=extra)
    one_by_one = outcomes_of(events, list(range(1, len(events))), spec)
    outcomes = eval(one_by_one[0], {"Late": Late, "Ahead": Ahead, "Reading": Reading})  # noqa: S307 - our repr
    assert sum(isinstance(x, Late) for x in outcomes) > 1 and sum(isinstance(x, Ahead) for x in outcomes) == 1
    assert one_by_one[2][2] > 25  # readings held
    assert outcomes_of(events, [], spec) == one_by_one
    for cut in range(1, len(events)):
        assert outcomes_of(events, [cut], spec) == one_by_one, cut


def payload(sid: str, ts: int, value: float) -> bytes:
    return encode_reading(
        sensor_id=sid, kind="environment", zone="futian", lat=22.5, lon=114.0, ts_ms=ts, metrics={"pm25": (value, "")}
    )


def records(events: list[Event], first_offset: int = 0) -> list[Record]:
    return [Record(0, first_offset + i, payload(*e), e[0].encode(), "urban.readings.v1") for i, e in enumerate(events)]


def test_the_watermark_document_keeps_the_sensors_ahead() -> None:
    events = [e for tick in feed(30, {"s5": (300_000, 30, 150)}) for e in tick]
    cut = 100 * 6  # s5 is 5 min ahead, its windows in the overflow store
    recs = records(events)
    now = T0 + 10**9
    a = Pipeline(SPEC, ())
    out = a.process(recs[:cut], now)
    table: dict[str, Any] = {}
    for _, key, value in [*out.state, *a.take_state()]:  # and what the offset commit wrote
        table[key] = orjson.loads(orjson.dumps(value))  # through JSON, as the changelog gives it back
    doc = table[WATERMARK_KEY.format(partition=0)]
    assert doc == {"p": 0, "max_ts_ms": T0 + 99 * STEP, "ahead": {"s5": T0 + 99 * STEP + 300_000}}
    pa = a.partitions[0]
    assert isinstance(pa.stores[0], PaneStore) and pa.stores[0].far is not None
    b = Pipeline(SPEC, ())
    pb = b.partition(0, table.items())
    assert (pb.max_ts_ms, pb.ahead, pb.open_windows) == (pa.max_ts_ms, pa.ahead, pa.open_windows)
    assert pb.stores[0].far is not None  # s5's open panes span more than the ring: restored to the overflow
    outs = [x.process(recs[cut:], now) for x in (a, b)]
    for x in (a, b):
        x.partitions[0].max_ts_ms += 10**12
    rest = [o.aggregates + x.tick(now + 10**12).aggregates for o, x in zip(outs, (a, b), strict=True)]
    assert rest[0] == rest[1] and len(rest[0]) > 80
    assert not out.late and not outs[0].late and not outs[1].late
    # a document from before the field restores with no sensor ahead
    old = Pipeline(SPEC, ())
    po = old.partition(0, [(WATERMARK_KEY.format(partition=0), {"p": 0, "max_ts_ms": T0})])
    assert (po.max_ts_ms, po.ahead) == (T0, {})


def test_refused_readings_are_dead_lettered_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    events = [e for tick in feed(5) for e in tick]
    events.insert(100, ("s2", T0 + 3 * 3_600_000, 1.0))  # refused: s2 is back in step at once
    events.insert(120, ("s4", T0 + 4 * MIN + 5 * MIN, 1.0))  # held
    recs = records(events)
    p = Pipeline(SPEC, ())
    with caplog.at_level(logging.INFO, logger="streams.pipeline"):
        out = p.process(recs[:121], T0 + 10**9)
        text = render(pipeline_families(p))
        assert p.partitions[0].sensors_ahead() == {"s4": 9 * MIN - 19 * STEP}  # the frontier: tick 19
        assert 'urbansense_sensor_ahead_ms{partition="0",sensor_id="s4"} 350000\n' in text
        assert "sensor clock ahead partition=0 sensor_id=s4 ahead_ms=350000" in caplog.text
        assert "sensor_id=s2 ahead" not in caplog.text
        out2 = p.process(recs[121:], T0 + 10**9)
    assert "sensor no longer ahead partition=0 sensor_id=s4" in caplog.text
    assert [d.reason for d in out.dead_letters + out2.dead_letters] == [CLOCK_AHEAD]
    headers = dict(out.dead_letters[0].headers)
    assert headers["urban.dlq.source"] == b"kafka:urban.readings.v1/0@100"
    assert b"s2" in headers["urban.dlq.detail"] and b"3600000 ms ahead" in headers["urban.dlq.detail"]
    c = p.counters
    assert (c.refused_ahead, c.held_ahead, c.dead_letters, c.late) == (1, 2, 1, 0)
    assert c.readings_counted == len(events) - 1
    text = render(pipeline_families(p))
    assert "urbansense_readings_held_ahead_total 2\n" in text
    assert "urbansense_readings_refused_ahead_total 1\n" in text
    assert "urbansense_sensor_ahead_ms{" not in text


def test_a_restored_overflow_cell_conflict_moves_the_slot() -> None:
    """A restored sensor whose cells span more than the ring lands in the overflow store whatever the
    order of its cells."""
    pw = PartitionWindows(SPEC)
    pw.add_batch([reading("a", T0, 1.0), reading("b", T0, 1.0)], [0, 1])
    pw.add_batch([reading("b", T0 + k * MIN, float(k)) for k in range(2, 9)], list(range(2, 9)))
    assert pw.sensors_ahead() == {"b": 8 * MIN}
    doc = orjson.loads(orjson.dumps(pw.sensor_state("b")))
    for order in (doc["w"], list(reversed(doc["w"]))):
        back = PartitionWindows(SPEC)
        back.restore("b", {**doc, "w": order})
        back.restore_watermark(pw.max_ts_ms, dict(pw.ahead))
        store = back.stores[0]
        assert isinstance(store, PaneStore) and store.far is not None
        assert sorted(c[0] for c in store.cells_of(back.sensors["b"].slots["pm25"])) == [
            (T0 + k * MIN) // MIN for k in (0, *range(2, 9))
        ]
        back.max_ts_ms += 10**12
        assert repr(back.close_ready()) == repr(
            [a for a in _flushed(pw) if a["sensor_id"] == "b"]
        )


def _flushed(pw: PartitionWindows) -> list[dict[str, Any]]:
    copy = PartitionWindows(pw.spec)
    for sid in pw.sensors:
        copy.restore(sid, orjson.loads(orjson.dumps(pw.sensor_state(sid))))
    copy.restore_watermark(pw.max_ts_ms, dict(pw.ahead))
    copy.max_ts_ms += 10**12
    return copy.close_ready()


def test_add_columns_shares_the_rule() -> None:
    """The benchmarks' fast path: the same frontier, held and refused readings as add_batch."""
    events = mixed_stream()
    spec = dataclasses.replace(SPEC, ahead_horizon_ms=30 * MIN)
    rows = Run(spec)
    cols = PartitionWindows(spec)
    for sid in SENSORS:
        cols.register(sid, "environment", "futian", {"pm25": "ug/m3"})
        rows.pw.register(sid, "environment", "futian", {"pm25": "ug/m3"})
    late = 0
    for lo in range(0, len(events), 50):
        chunk = events[lo : lo + 50]
        rows.add(chunk)
        slot = np.array([cols.sensors[s].slots["pm25"] for s, _, _ in chunk], dtype=np.int64)
        late += cols.add_columns(slot, np.array([t for _, t, _ in chunk]), np.array([v for _, _, v in chunk]))
        assert (cols.max_ts_ms, cols.ahead) == (rows.pw.max_ts_ms, rows.pw.ahead)
    assert late == sum(isinstance(x, Late) for x in rows.outcomes)
    assert (cols.held_ahead, cols.refused_ahead) == (rows.pw.held_ahead, rows.pw.refused_ahead)
    assert cols.refused_ahead == 1


def test_idle_advance_catches_up_with_the_sensor_ahead() -> None:
    pw = PartitionWindows(dataclasses.replace(SPEC, idle_timeout_ms=5_000))
    pw.add_batch([reading("a", T0, 1.0), reading("b", T0 + 5 * MIN, 2.0)], [0, 1], now_ms=T0)
    assert pw.sensors_ahead() == {"b": 5 * MIN}
    assert pw.idle_advance(T0 + 10 * MIN)  # the partition went silent; the wall clock passes b's time
    assert pw.sensors_ahead() == {} and pw.max_ts_ms == T0 + 10 * MIN
    assert [(a["sensor_id"], a["start_ms"]) for a in pw.close_ready()] == [("a", T0), ("b", T0 + 5 * MIN)]


def test_a_spec_with_the_horizon_before_the_guard_is_refused() -> None:
    with pytest.raises(ValueError, match="max_ahead_ms"):
        WindowSpec(max_ahead_ms=10 * MIN, ahead_horizon_ms=MIN)
    with pytest.raises(ValueError, match="max_ahead_ms"):
        WindowSpec(max_ahead_ms=-1)
