"""The performance fast paths give exactly what the straightforward code gives.

* ``parse_reading`` (memoised checks for the canonical envelope) and ``parse_batch`` (the canonical
  envelope recognised from its bytes, as columns) against ``_parse_full`` (every check, in order):
  equal readings, or the same reason and message.
* ``PartitionWindows.take_dirty`` (packed cells, one numpy pass) against ``sensor_state`` per sensor (the
  readable form): restoring either gives the state that was exported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulators import build_city, generate, malformed_corpus
from streams import schema
from streams.engine import PartitionWindows, WindowDef, WindowSpec, decoded
from streams.errors import InvalidReading
from streams.panes import FREE, PaneStore
from streams.schema import MAX_PAYLOAD_BYTES, _parse_full, encode_reading, format_ts, parse_batch, parse_reading

NOW = 1_800_000_000_000


def outcome(fn: object, raw: bytes) -> object:
    try:
        r = fn(raw, now_ms=NOW, max_bytes=MAX_PAYLOAD_BYTES)  # type: ignore[operator]
    except InvalidReading as err:
        return ("error", err.reason, str(err))
    return ("ok", r, repr(r))


def batch_outcomes(raws: list[bytes]) -> list[object]:
    rows, errors = parse_batch(raws, now_ms=NOW, max_bytes=MAX_PAYLOAD_BYTES)
    got: dict[int, object] = {i: ("error", err.reason, str(err)) for i, err in errors}
    for k, i in enumerate(rows.index):
        r = rows.reading(k)
        got[i] = ("ok", r, repr(r))
    assert len(got) == len(raws)
    return [got[i] for i in range(len(raws))]


def assert_same(raw: bytes) -> None:
    want = outcome(_parse_full, raw)
    assert outcome(parse_reading, raw) == want, raw
    # cold, seen once, memoised: parse_batch learns a sensor's parts from its second message
    assert batch_outcomes([raw, raw, raw]) == [want] * 3, raw


def city_payloads(n_sensors: int = 48, steps: int = 3) -> list[bytes]:
    city = build_city(n_sensors, seed=4)
    out: list[bytes] = []
    for batch in generate(city, start_ms=NOW - 600_000, interval_ms=1000, steps=steps, seed=5):
        out.extend(p for _, p in batch.to_messages())
    return out


def test_generated_readings_equal() -> None:
    payloads = city_payloads()
    for raw in payloads:
        assert_same(raw)
    want = [outcome(_parse_full, raw) for raw in payloads]
    assert batch_outcomes(payloads) == want


def test_batch_takes_the_byte_path_for_canonical_envelopes() -> None:
    payloads = city_payloads(20, 4)
    batch_outcomes(payloads)  # learn
    calls = 0
    real = schema.parse_reading

    def counting(raw: bytes, **kw: object) -> object:
        nonlocal calls
        calls += 1
        return real(raw, **kw)  # type: ignore[arg-type]

    schema.parse_reading = counting  # type: ignore[assignment]
    try:
        rows, errors = parse_batch(payloads, now_ms=NOW)
    finally:
        schema.parse_reading = real
    assert calls == 0 and not errors and len(rows) == len(payloads)
    assert len({id(x) for x in rows.shape}) <= 4  # shared per kind


def envelope(values: list[bytes], *, quality: bytes = b"", lat: bytes = b"22.5", ts: bytes = b"") -> bytes:
    metrics = b",".join(b'"m%d":{"value":%s,"unit":"u"}' % (i, v) for i, v in enumerate(values))
    ts = ts or format_ts(NOW - 1000).encode()
    q = b',"quality":[' + quality + b"]" if quality else b""
    return (
        b'{"v":1,"sensor_id":"s-1","kind":"iot","zone":"futian","location":{"lat":' + lat + b',"lon":114.0},'
        b'"ts":"' + ts + b'","metrics":{' + metrics + b"}" + q + b"}"
    )


NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    st.integers(-(10**17), 10**17).map(lambda n: str(n).encode()),
    st.from_regex(r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?", fullmatch=True).map(str.encode),
    st.sampled_from(
        [b"-0", b"-0.0", b"0", b"0.0", b"00", b"01.5", b"1.", b".5", b"+1", b"1e400", b"-", b"1_0", b"NaN"]
    ),
)


@given(st.lists(NUMBER_TEXT, min_size=1, max_size=4), NUMBER_TEXT)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_number_texts_same_outcome(values: list[bytes], lat: bytes) -> None:
    assert_same(envelope(values, lat=lat))


@pytest.mark.parametrize(
    "quality", [b'"calibrating"', b'"a","b"', b' "a" ', b'"A"', b"1", b'"a"],"x":["b"', b'"\\u0061"', b'["a"]']
)
def test_quality_texts_same_outcome(quality: bytes) -> None:
    assert_same(envelope([b"1.5"], quality=quality))


@given(st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_byte_mutations_same_outcome(data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(city_payloads(8, 1) + [envelope([b"2.5", b"-3"], quality=b'"x"')])))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        byte = data.draw(st.sampled_from([*b'"{}[],:.-0129eE \\xZ', 0x80, 0xC3, 0xFF, 0x00]))
        if op == "set":
            raw[at] = byte
        elif op == "insert":
            raw.insert(at, byte)
        else:
            del raw[at]
    assert_same(bytes(raw))


def test_malformed_corpus_same_errors() -> None:
    for _, raw, _reason in malformed_corpus(400, seed=3, now_ms=NOW):
        assert_same(raw)


BASE = orjson.loads(
    encode_reading(
        sensor_id="env-futian-0001", kind="environment", zone="futian", lat=22.5, lon=114.0, ts_ms=NOW - 1000,
        metrics={"pm25": (12.5, "ug/m3"), "no2": (40, "ppb")}, quality=("calibrating",),
    )
)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("v",), 1.0), (("v",), True), (("v",), 2), (("sensor_id",), "bad id"), (("sensor_id",), 7),
        (("kind",), "bus"), (("zone",), ""), (("location", "lat"), 91), (("location", "lat"), True),
        (("location", "lon"), 10**15 + 1), (("location", "lon"), 1e16), (("ts",), "2027-01-15T08:00:00Z"),
        (("ts",), "2027-01-15T08:00:00.123+00:00"), (("ts",), "2027-01-15T08:00:00.12\u0663Z"),
        (("ts",), "2027-02-30T08:00:00.000Z"), (("ts",), "1999-12-31T23:59:59.999Z"),
        (("ts",), "2027-01-15 08:00:00.000Z"), (("ts",), "2099-01-15T08:00:00.000Z"),
        (("metrics", "pm25", "value"), -0.0), (("metrics", "pm25", "value"), 10**15),
        (("metrics", "pm25", "value"), "3"), (("metrics", "pm25", "unit"), "a,b"),
        (("metrics", "pm25", "unit"), 5), (("metrics", "pm25", "extra"), 1), (("metrics", "Bad"), {"value": 1}),
        (("metrics", "x"), {"value": 1}), (("metrics", "y"), {"unit": "m"}), (("quality",), ["ok", "Bad"]),
        (("quality",), []), (("quality",), "calibrating"), (("location", "alt"), 3), (("extra",), 1),
    ],
)
def test_mutations_same_outcome(path: tuple[str, ...], value: object) -> None:
    doc = orjson.loads(orjson.dumps(BASE))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert_same(orjson.dumps(doc))


INT64 = st.integers(-(2**63), 2**63 - 1)
SCALARS = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=30)
FIELDS = st.sampled_from(["v", "sensor_id", "kind", "zone", "location", "ts", "metrics", "quality"])


@given(st.dictionaries(FIELDS, SCALARS))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_overrides_same_outcome(overrides: dict[str, object]) -> None:
    assert_same(orjson.dumps({**BASE, **overrides}))


def cells(pw: PartitionWindows) -> dict[object, object]:
    """Everything a restore must bring back: sensor metadata and every open pane cell, by name."""
    out: dict[object, object] = {
        ("closed", si): getattr(store, "closed_end", None) for si, store in enumerate(pw.stores)
    }
    for sid, meta in pw.sensors.items():
        out[sid] = (meta.kind, meta.zone, meta.offset, dict(meta.units))
        for metric, slot in meta.slots.items():
            for si, store in enumerate(pw.stores):
                if not isinstance(store, PaneStore) or slot >= store.cap:
                    continue
                for r in np.flatnonzero(store.pid[slot] != FREE).tolist():
                    out[(sid, metric, si, int(store.pid[slot, r]))] = (
                        store.acc[slot, r].tobytes(), int(store.sk_off[slot, r]), store.sk[slot, r].tolist()
                    )
    return out


def restored(spec: WindowSpec, docs: dict[str, dict[str, object]], partition: int = 3) -> PartitionWindows:
    """A fresh partition restored from table documents (round-tripped through JSON, as the changelog does)."""
    back = PartitionWindows(spec, partition)
    for sid, doc in orjson.loads(orjson.dumps(docs)).items():
        back.restore(sid, doc)
    return back


@pytest.mark.parametrize("extra", [(), (WindowDef.parse("hopping:5m/1m"),)])
def test_packed_state_restores_like_the_readable_form(extra: tuple[WindowDef, ...]) -> None:
    city = build_city(60, seed=2)
    readings = []
    for batch in generate(city, start_ms=NOW - 3_600_000, interval_ms=7_000, steps=60, seed=6):
        readings.extend(parse_reading(p, now_ms=NOW) for _, p in batch.to_messages())
    spec = WindowSpec(extra=extra)
    pw = PartitionWindows(spec, 3)
    table: dict[str, dict[str, object]] = {}
    for lo in range(0, len(readings), 97):
        chunk = readings[lo : lo + 97]
        pw.add_batch(chunk, list(range(lo, lo + len(chunk))), NOW)
        pw.close_ready()
        sids = sorted(pw.dirty, key=lambda sid: pw.sensors[sid].idx)
        readable = {sid: pw.sensor_state(sid) for sid in sids}
        encoded = pw.sensor_states(sids, encoded=True)
        packed = pw.take_dirty()
        assert list(packed) == sids and not pw.dirty
        # the encoded documents are the bytes of the dicts (what the table's serializer writes)
        assert [orjson.dumps(v) for v in encoded.values()] == [orjson.dumps(v) for v in packed.values()]
        assert all(decoded(v) == orjson.loads(orjson.dumps(packed[k])) for k, v in encoded.items())
        table.update(packed)
        # the dirty sensors' documents alone restore them exactly
        assert cells(restored(spec, packed)) == cells(restored(spec, readable))
        # and the table (documents of every batch, latest per key) restores the whole partition
        want = cells(pw)
        got = cells(restored(spec, table))
        assert {k: v for k, v in got.items() if k[0] != "closed"} == {
            k: v for k, v in want.items() if k[0] != "closed"
        }
    assert sum(len(pw.sensor_state(s)["w"]) for s in pw.sensors) > 0  # the test saw open panes


def test_packed_state_with_widened_sketch_counters() -> None:
    spec = WindowSpec(60_000, 0, 0, 30_000)
    pw = PartitionWindows(spec)
    slot = pw.register("s", "iot", "futian", {"power_kw": "kW", "load": ""})
    n = 70_000  # more values in one window than a uint16 counter holds
    ts = np.full(n, 1_000, dtype=np.int64)
    pw.add_columns(np.full(n, slot[0], dtype=np.int64), ts, np.full(n, 5.0))
    pw.add_columns(np.full(3, slot[1], dtype=np.int64), ts[:3], np.array([1.0, 2.0, -3.0]))
    pw.dirty.add("s")
    encoded = pw.sensor_states(["s"], encoded=True)
    docs = pw.take_dirty()
    assert docs["s"]["bw"] == 8
    assert orjson.dumps(encoded["s"]) == orjson.dumps(docs["s"])
    assert cells(restored(spec, docs, 0)) == cells(restored(spec, {"s": pw.sensor_state("s")}, 0))
    assert max(cells(restored(spec, docs, 0))[("s", "power_kw", 0, 0)][2]) == n


def test_encoded_document_follows_a_new_metric() -> None:
    """The encoded start of a document (partition, kind, zone, units) is rebuilt when a metric is added."""
    pw = PartitionWindows(WindowSpec(60_000, 0, 0, 30_000), 2)
    ts = np.array([1_000], dtype=np.int64)
    first = pw.register("s", "iot", "futian", {"power_kw": "kW"})
    pw.add_columns(np.array(first), ts, np.array([1.5]))
    before = decoded(pw.sensor_states(["s"], encoded=True)["s"])
    second = pw.register("s", "iot", "futian", {"power_kw": "kW", "load": "%"})
    pw.add_columns(np.array(second[1:]), ts, np.array([7.0]))
    after = pw.sensor_states(["s"], encoded=True)["s"]
    assert before["u"] == {"power_kw": "kW"} and before["p"] == 2
    assert orjson.dumps(after) == orjson.dumps(pw.sensor_states(["s"])["s"])
    assert decoded(after)["u"] == {"power_kw": "kW", "load": "%"}


def test_rows_take_keeps_each_rows_values() -> None:
    raws = city_payloads(12, 2)
    raws[3] = raws[3].replace(b'"metrics":{', b'"metrics": {')  # a slow-path row between fast ones
    rows, errors = parse_batch(raws, now_ms=NOW)
    assert not errors and len(rows) == len(raws)
    ks = [5, 3, 0, len(rows) - 1]
    part = rows.take(ks)
    assert [part.reading(j) for j in range(len(ks))] == [rows.reading(k) for k in ks]
    assert [parse_reading(raws[i], now_ms=NOW) for i in part.index] == [rows.reading(k) for k in ks]


def plain_records(pw: PartitionWindows, wdef: WindowDef, closed: Any, *, final: bool) -> list[dict[str, Any]]:
    """The straightforward ``PartitionWindows._records``."""
    cols = {k: v.tolist() for k, v in closed.columns().items()}
    slot, start, end = closed.slot.tolist(), closed.start_ms.tolist(), closed.end_ms.tolist()
    rows = []
    for i, s in enumerate(slot):
        sid, metric = pw.slot_sensor[s], pw.slot_metric[s]
        meta = pw.sensors[sid]
        rec: dict[str, Any] = {
            "v": 1, "sensor_id": sid, "kind": meta.kind, "zone": meta.zone, "metric": metric,
            "unit": meta.units.get(metric, ""), "window": wdef.kind, "size_ms": wdef.size_ms,
            "hop_ms": wdef.hop_ms, "start_ms": start[i], "end_ms": end[i], "final": final,
        }
        for name, col in cols.items():
            rec[name] = col[i]
        rows.append(((end[i], sid, metric, start[i]), rec))
    rows.sort(key=lambda x: x[0])
    return [r for _, r in rows]


@pytest.mark.parametrize("extra", [(), (WindowDef.parse("hopping:5m/1m"),)])
def test_closed_records_equal_the_straightforward_ones(extra: tuple[WindowDef, ...]) -> None:
    """``_records`` (lexsort on slot ranks, constant-key dicts) gives the bytes of the straightforward
    records (one dict per cell, then a sort on a tuple key), also while sensors keep arriving in an
    order that is not their sort order."""
    city = build_city(80, seed=3)
    messages = []
    for batch in generate(city, start_ms=NOW - 3_600_000, interval_ms=10_000, steps=40, seed=7):
        messages.extend(batch.to_messages())
    late_ids = {s.sensor_id for s in city.sensors[::3]}  # a third of the sensors start reporting halfway
    half = len(messages) // 2
    readings = [
        parse_reading(p, now_ms=NOW) for i, (t, p) in enumerate(messages)
        if i >= half or t.rsplit("/", 1)[-1] not in late_ids
    ]
    pw = PartitionWindows(WindowSpec(extra=extra), 1)
    fast = pw._records
    compared: list[int] = []

    def both(wdef: WindowDef, closed: object, *, final: bool) -> list[dict[str, object]]:
        got = fast(wdef, closed, final=final)  # type: ignore[arg-type]
        want = plain_records(pw, wdef, closed, final=final)
        assert orjson.dumps(got) == orjson.dumps(want)
        compared.append(len(got))
        return got

    pw._records = both  # type: ignore[method-assign]
    for lo in range(0, len(readings), 211):
        chunk = readings[lo : lo + 211]
        pw.add_batch(chunk, list(range(lo, lo + len(chunk))), NOW)
        pw.close_ready()
    assert len(compared) > 5 and sum(compared) > 1_000
