"""Incidents, weather and faults: their effects match the ground truth; the feed is exact and seeded."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from simulators.city import METRICS, NEIGHBOURS, plan_city
from simulators.encode import Renderer, csv_header
from simulators.events import HOP_MS, SPREAD_MS, Event, Fault, Rain, make_fault, make_incident, random_events
from simulators.feed import Plan, feed
from simulators.generators import chunks
from simulators.publish import write_jsonl, write_lines
from streams.schema import encode_reading, parse_reading

T0 = 1_780_243_200_000  # 2026-06-01T00:00+08:00 as UTC epoch ms
MIN = 60_000
ZONES = ("futian", "luohu", "nanshan", "baoan", "longgang", "longhua")
CITY = plan_city(ZONES, {"traffic": 24, "environment": 12, "crowd": 12, "iot": 12}, seed=3)


def plan(
    incidents: tuple[Event, ...] = (), faults: tuple[Fault, ...] = (), weather: tuple[Rain, ...] = (), steps: int = 240
) -> Plan:
    return Plan(
        CITY,
        start_ms=T0 + 8 * 3_600_000,
        interval_ms=MIN,
        steps=steps,
        seed=5,
        incidents=incidents,
        faults=faults,
        weather=weather,
    )


def values(p: Plan) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """Whole-run values: ts and kind -> metric -> (ticks, sensors of the kind)."""
    parts = list(
        chunks(
            p.city,
            p.start_ms,
            p.interval_ms,
            p.steps,
            p.seed,
            p.effects(),
            [f for f in p.faults if f.type in ("stuck", "drift", "spike")],
        )
    )
    ts = np.concatenate([t for t, _ in parts])
    out = {k: {m.name: np.concatenate([v[k][m.name] for _, v in parts]) for m in METRICS[k]} for k in METRICS}
    return ts, out


def col(sensor_id: str) -> int:
    s = CITY.sensor(sensor_id)
    return [x.sensor_id for x in CITY.sensors if x.kind == s.kind].index(sensor_id)


def at(p: Plan, ms: int) -> int:
    return (ms - p.start_ms) // p.interval_ms


def messages(p: Plan) -> list[tuple[str, bytes, int]]:
    return [m for tick in feed(p) for m in tick]


START = T0 + 9 * 3_600_000


# --- exactness and determinism -------------------------------------------------------------


def test_feed_is_deterministic_and_seeded() -> None:
    day = plan(steps=1440)
    inc, flt = random_events(
        CITY, incidents=6, faults=7, start_ms=day.start_ms, end_ms=day.end_ms, interval_ms=MIN, seed=1
    )
    p = plan(tuple(inc), tuple(flt), steps=1440)
    assert messages(p) == messages(p)
    other = Plan(
        CITY, start_ms=p.start_ms, interval_ms=MIN, steps=p.steps, seed=6, incidents=p.incidents, faults=p.faults
    )
    assert messages(p) != messages(other)
    inc2, flt2 = random_events(
        CITY, incidents=6, faults=7, start_ms=p.start_ms, end_ms=p.end_ms, interval_ms=MIN, seed=1
    )
    assert [e.truth() for e in inc2] + [f.truth() for f in flt2] == [e.truth() for e in inc] + [f.truth() for f in flt]


def test_feed_does_not_depend_on_chunking() -> None:
    p = plan(steps=30)
    whole = list(chunks(CITY, p.start_ms, MIN, 30, 5, chunk_cells=10**9))
    small = list(chunks(CITY, p.start_ms, MIN, 30, 5, chunk_cells=1))
    assert len(whole) == 1 and len(small) == 30
    for kind, specs in METRICS.items():
        for m in specs:
            joined = np.concatenate([v[kind][m.name] for _, v in small])
            assert np.array_equal(joined, whole[0][1][kind][m.name])


def test_messages_equal_encode_reading_and_fast_files_equal_write_jsonl(tmp_path: Path) -> None:
    day = plan(steps=1440)
    inc, flt = random_events(
        CITY, incidents=4, faults=7, start_ms=day.start_ms, end_ms=day.end_ms, interval_ms=MIN, seed=2
    )
    p = plan(tuple(inc), tuple(flt), steps=1440)
    msgs = messages(p)
    for topic, payload, ts_ms in msgs[:500]:
        r = parse_reading(payload, now_ms=ts_ms)
        s = CITY.sensor(r.sensor_id)
        assert topic == s.topic and r.ts_ms == ts_ms
        assert payload == encode_reading(
            sensor_id=s.sensor_id,
            kind=s.kind,
            zone=s.zone,
            lat=s.lat,
            lon=s.lon,
            ts_ms=ts_ms,
            metrics={m: (v, r.units[m]) for m, v in r.metrics.items()},
        )
    write_jsonl(msgs, tmp_path / "ref.jsonl")
    write_lines(feed(p, "jsonl"), tmp_path / "fast.jsonl")
    assert (tmp_path / "fast.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    write_lines(feed(p, "csv"), tmp_path / "x.csv", header=csv_header())
    rows = list(csv.DictReader(io.StringIO((tmp_path / "x.csv").read_text())))
    assert len(rows) == len(msgs)
    for row, (_, payload, _) in zip(rows[:300], msgs[:300], strict=True):
        r = parse_reading(payload, now_ms=T0 * 2)
        assert row["sensor_id"] == r.sensor_id and row["ts"] == orjson.loads(payload)["ts"]
        assert {m: float(row[m]) for m in r.metrics} == r.metrics
        assert all(
            row[m] == ""
            for m in row
            if m not in r.metrics and m not in ("ts", "sensor_id", "kind", "zone", "lat", "lon")
        )


@pytest.mark.parametrize("kind", list(METRICS))
def test_value_texts_match_orjson_across_each_range(kind: str) -> None:
    city = plan_city(["futian"], {kind: 1}, seed=1)
    renderer = Renderer(city)
    rng = np.random.default_rng(0)
    s = city.sensors[0]
    for _ in range(200):
        vals = {}
        for m in METRICS[kind]:
            x = rng.choice([m.lo, m.hi, rng.uniform(m.lo, m.hi), rng.uniform(m.lo, m.lo + 1)])
            vals[m.name] = np.array([[np.round(x, m.decimals) + 0.0]])
        ((_, payload, _),) = renderer.render(T0, renderer.cells({kind: vals}), 0)
        assert payload == encode_reading(
            sensor_id=s.sensor_id,
            kind=kind,
            zone=s.zone,
            lat=s.lat,
            lon=s.lon,
            ts_ms=T0,
            metrics={m.name: (float(vals[m.name][0, 0]), m.unit) for m in METRICS[kind]},
        )


# --- incidents -----------------------------------------------------------------------------


def test_accident_drops_speed_then_propagates_upstream() -> None:
    base_p = plan()
    acc = make_incident(CITY, "inc-001", "accident", "luohu", START, START + 40 * MIN, 0.9, interval_ms=MIN)
    assert len(acc.sensors) == 4
    chain = acc.sensors
    for down, up in zip(chain, chain[1:], strict=False):
        assert CITY.sensor(down).upstream == up
    ts, base = values(base_p)
    _, hit = values(plan((acc,)))
    truth = acc.truth()
    assert truth["sensors"] == list(chain) and truth["start_ms"] == START and truth["class"] == "incident"
    for hop, sid in enumerate(chain):
        a, b = truth["sensor_windows"][sid]
        assert a == START + hop * HOP_MS
        c = col(sid)
        ratio = hit["traffic"]["speed"][:, c] / np.maximum(base["traffic"]["speed"][:, c], 0.1)
        occ_up = hit["traffic"]["occupancy"][:, c] - base["traffic"]["occupancy"][:, c]
        inside = (ts >= a + HOP_MS) & (ts < b - HOP_MS) if hop else (ts >= a) & (ts < b)
        assert np.all(ratio[inside] < 0.9 - 0.1 * (hop == 0) * 5), (hop, ratio[inside].max())
        assert np.all(occ_up[inside] > 0)
        outside = (ts < a) | (ts >= b)
        assert np.array_equal(hit["traffic"]["speed"][outside, c], base["traffic"]["speed"][outside, c])
    # Upstream follows later: the first slowed tick moves up the chain.
    first_slow = [
        int(np.argmax(hit["traffic"]["speed"][:, col(s)] < base["traffic"]["speed"][:, col(s)] * 0.95)) for s in chain
    ]
    assert first_slow == sorted(first_slow) and first_slow[0] < first_slow[-1]
    others = [col(s.sensor_id) for s in CITY.of_kind("traffic") if s.sensor_id not in chain]
    assert np.array_equal(hit["traffic"]["speed"][:, others], base["traffic"]["speed"][:, others])


def test_pollution_spreads_to_neighbouring_zones_later() -> None:
    pol = make_incident(CITY, "inc-001", "pollution", "baoan", START, START + 3 * 60 * MIN, 0.8, interval_ms=MIN)
    assert set(pol.zones) == {"baoan", *NEIGHBOURS["baoan"]}
    ts, base = values(plan())
    _, hit = values(plan((pol,)))
    ratio = hit["environment"]["pm25"] / base["environment"]["pm25"]
    env = CITY.of_kind("environment")
    for j, s in enumerate(env):
        r = ratio[:, j]
        if s.zone == "baoan":
            assert r[at(plan(), START + 30 * MIN)] > 2.5
        elif s.zone in NEIGHBOURS["baoan"]:
            assert np.all(r[ts < START + SPREAD_MS] == 1.0)
            assert r[at(plan(), START + SPREAD_MS + 40 * MIN)] > 1.5
            assert s.sensor_id in pol.sensors
        else:
            assert np.all(r == 1.0) and s.sensor_id not in pol.sensors


@pytest.mark.parametrize(
    ("type_", "zone", "kind", "metric", "check"),
    [
        ("outage", "nanshan", "iot", "power_load", lambda hit, base: np.all(hit <= 0.05 * base + 0.01)),
        ("leak", "longhua", "iot", "water_pressure", lambda hit, base: np.all(hit < 0.8 * base)),
        ("flood", "baoan", "iot", "drain_level", lambda hit, base: np.all(hit > base + 100)),
        ("concert", "futian", "crowd", "people", lambda hit, base: np.all(hit > 4 * base)),
        ("surge", "luohu", "crowd", "people", lambda hit, base: np.all(hit > 4 * base)),
        ("holiday", "longgang", "crowd", "people", lambda hit, base: np.all(hit > 2 * base)),
    ],
)
def test_incident_moves_its_sensors_only_in_its_window(
    type_: str, zone: str, kind: str, metric: str, check: Any
) -> None:
    inc = make_incident(CITY, "inc-001", type_, zone, START, START + 90 * MIN, 1.0, interval_ms=MIN)
    ts, base = values(plan())
    _, hit = values(plan((inc,)))
    cols = [col(s) for s in inc.sensors]
    assert cols and {CITY.sensor(s).zone for s in inc.sensors} == {zone}
    core = (ts >= START + 30 * MIN) & (ts < START + 60 * MIN)
    assert check(hit[kind][metric][core][:, cols], base[kind][metric][core][:, cols])
    if type_ != "flood":  # a flood comes with rain, which starts an hour earlier
        assert np.array_equal(hit[kind][metric][ts < START], base[kind][metric][ts < START])
    assert np.array_equal(
        hit[kind][metric][ts >= inc.end_ms + 60 * MIN], base[kind][metric][ts >= inc.end_ms + 60 * MIN]
    )


def test_rain_slows_traffic_and_raises_humidity_and_drains() -> None:
    rain = Rain(("futian",), START, START + 90 * MIN, 1.0)
    ts, base = values(plan())
    _, wet = values(plan(weather=(rain,)))
    mid = at(plan(), START + 45 * MIN)
    for kind, metric, sign in (("traffic", "speed", -1), ("environment", "humidity", 1), ("iot", "drain_level", 1)):
        cols = [col(s.sensor_id) for s in CITY.of_kind(kind) if s.zone == "futian"]
        diff = wet[kind][metric][mid, cols] - base[kind][metric][mid, cols]
        assert np.all(sign * diff > 0), (metric, diff)


# --- faults --------------------------------------------------------------------------------

SENSOR = "env-futian-0024"


def fault(type_: str, **kw: Any) -> Fault:
    return make_fault(CITY, "flt-001", type_, kw.pop("sensor", SENSOR), START, START + 60 * MIN, **kw)


def readings_of(msgs: list[tuple[str, bytes, int]], sid: str) -> list[tuple[int, dict[str, float], int]]:
    out = []
    for _, payload, ts in msgs:
        r = parse_reading(payload, now_ms=T0 * 2)
        if r.sensor_id == sid:
            out.append((r.ts_ms, r.metrics, ts))
    return out


def test_stuck_sensor_repeats_its_value() -> None:
    f = fault("stuck")
    got = readings_of(messages(plan(faults=(f,))), SENSOR)
    inside = [m for ts, m, _ in got if f.start_ms <= ts < f.end_ms]
    assert len(inside) == 60 and all(m == inside[0] for m in inside)
    assert len({orjson.dumps(m) for ts, m, _ in got if ts < f.start_ms}) > 1
    assert f.truth()["sensors"] == [SENSOR] and f.truth()["class"] == "fault"


def test_drift_grows_and_spikes_are_sparse() -> None:
    ts, base = values(plan())
    d = fault("drift", severity=0.5)
    _, drifted = values(plan(faults=(d,)))
    c = col(SENSOR)
    ratio = drifted["environment"]["pm25"][:, c] / base["environment"]["pm25"][:, c]
    inside = (ts >= d.start_ms) & (ts < d.end_ms)
    assert ratio[inside][-1] > 1.4 and ratio[inside][0] < 1.05
    assert np.all(np.diff(ratio[inside]) > -0.02)
    assert np.all(ratio[~inside] == 1.0)
    s = fault("spike", probability=0.2, severity=1.0, seed=9)
    _, spiky = values(plan(faults=(s,)))
    r2 = spiky["environment"]["pm25"][:, c] / base["environment"]["pm25"][:, c]
    hits = int(np.sum(r2[inside] > 4))
    assert 3 <= hits <= 25 and np.all((r2[inside] > 4) | (r2[inside] == 1.0)) and np.all(r2[~inside] == 1.0)


def test_delivery_faults() -> None:
    base = messages(plan())
    assert len({ts for ts, _, _ in readings_of(base, SENSOR)}) == 240

    drop = readings_of(messages(plan(faults=(fault("dropout"),))), SENSOR)
    assert len(drop) == 180 and not any(START <= ts < START + 60 * MIN for ts, _, _ in drop)

    dup_msgs = messages(plan(faults=(fault("duplicate"),)))
    dup = Counter(ts for ts, _, _ in readings_of(dup_msgs, SENSOR))
    assert sum(dup.values()) == 300 and {ts for ts, c in dup.items() if c == 2} == {START + k * MIN for k in range(60)}
    assert len(dup_msgs) == len(base) + 60

    skew = readings_of(messages(plan(faults=(fault("clock_skew", offset_ms=-5 * MIN),))), SENSOR)
    shifted = [(ts, kts) for ts, _, kts in skew][at(plan(), START) : at(plan(), START) + 60]
    assert all(ts == kts for ts, kts in shifted) and shifted[0][0] == START - 5 * MIN
    assert [m for _, m, _ in skew] == [m for _, m, _ in readings_of(base, SENSOR)]

    ooo_msgs = messages(plan(faults=(fault("out_of_order", delay_ms=3 * MIN),)))
    ooo = [ts for ts, _, _ in readings_of(ooo_msgs, SENSOR)]
    assert sorted(ooo) == [ts for ts, _, _ in readings_of(base, SENSOR)]
    late = [i for i in range(1, len(ooo)) if ooo[i] < ooo[i - 1]]
    assert len(late) == 30 and len(ooo_msgs) == len(base)
    other = "trf-futian-0000"
    assert readings_of(ooo_msgs, other) == readings_of(base, other)


def test_out_of_order_past_the_end_is_flushed() -> None:
    f = make_fault(
        CITY, "flt-001", "out_of_order", SENSOR, T0 + 8 * 3_600_000 + 230 * MIN, T0 + 20 * 3_600_000, delay_ms=5 * MIN
    )
    ticks = list(feed(plan(faults=(f,))))
    assert len(ticks) == 241 and sum(map(len, ticks)) == 240 * len(CITY.sensors)


def test_random_events_do_not_overlap_and_cover_every_type() -> None:
    p = plan(steps=24 * 60)
    inc, flt = random_events(
        CITY, incidents=16, faults=14, start_ms=p.start_ms, end_ms=p.end_ms, interval_ms=MIN, seed=4
    )
    assert len({e.type for e in inc}) == 8 and len({f.type for f in flt}) == 7
    spans: dict[str, list[tuple[int, int]]] = {}
    for e in inc:
        for sid, w in e.windows.items():
            spans.setdefault(sid, []).append(w)
    for f in flt:
        spans.setdefault(f.sensor_id, []).append((f.start_ms, f.end_ms))
        assert p.start_ms <= f.start_ms < f.end_ms <= p.end_ms
    for ws in spans.values():
        ws.sort()
        assert all(b <= c for (_, b), (c, _) in zip(ws, ws[1:], strict=False))


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        (("meteor", "futian"), {}, "type"),
        (("accident", "gotham"), {}, "no traffic sensors"),
        (("accident", "futian"), {"sensor": "trf-luohu-0001"}, "sensor"),
    ],
)
def test_make_incident_validation(args: tuple[str, str], kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_incident(CITY, "inc-001", *args, START, START + MIN, 0.5, interval_ms=MIN, **kw)
