from __future__ import annotations

from alerting.rules import ThresholdRule
from streams.engine import WindowSpec
from streams.pipeline import WATERMARK_KEY, Pipeline, Record
from streams.schema import encode_reading

NOW = 1_800_000_000_000
RULE = ThresholdRule("hot", "environment", "temperature", ">", 40.0, "max", "warning")


def payload(sid: str, ts: int, temp: float) -> bytes:
    return encode_reading(
        sensor_id=sid,
        kind="environment",
        zone="nanshan",
        lat=22.5,
        lon=113.9,
        ts_ms=ts,
        metrics={"temperature": (temp, "degC")},
    )


def test_batch_routes_valid_invalid_and_closes_windows() -> None:
    p = Pipeline(WindowSpec(60_000, 0, 0, 5_000), (RULE,))
    base = NOW - 600_000
    recs = [Record(0, i, payload("s1", base + i * 10_000, 35.0 + i)) for i in range(13)]
    recs.insert(3, Record(0, 99, b"{broken", b"k", "urban.readings.v1"))
    out = p.process(recs, NOW)
    assert [d.reason for d in out.dead_letters] == ["bad_json"]
    assert out.dead_letters[0].value == b"{broken"
    assert dict(out.dead_letters[0].headers)["urban.dlq.source"] == b"kafka:urban.readings.v1/0@99"
    closed = [(a["start_ms"] - base, a["count"]) for a in out.aggregates]
    assert closed[0][1] >= 1 and sum(c for _, c in closed) <= 13
    assert [a["rule"] for a in out.alerts] and all(a["value"] > 40 for a in out.alerts)
    keys = {k for _, k, _ in [*out.state, *p.closed_state()]}  # the batch closed windows: s1's state is due
    assert {"s1", WATERMARK_KEY.format(partition=0)} <= keys
    assert p.counters.readings_in == 14 and p.counters.dead_letters == 1


def test_sensor_documents_wait_for_a_close_or_the_commit() -> None:
    spec = WindowSpec(60_000, 0, 0, 5_000)
    p = Pipeline(spec, ())
    base = NOW - 600_000 - (NOW - 600_000) % 60_000
    first = p.process([Record(0, i, payload(f"s{i}", base + 1000, 1.0)) for i in range(3)], NOW)
    assert [k for _, k, _ in first.state] == [WATERMARK_KEY.format(partition=0)]  # no close: no sensor yet
    second = p.process([Record(0, 3, payload("s0", base + 2000, 2.0))], NOW)
    assert [k for _, k, _ in second.state] == [WATERMARK_KEY.format(partition=0)]
    taken = p.take_state()  # the commit: each sensor once, with every reading so far
    assert [(part, k) for part, k, _ in taken] == [(0, "s0"), (0, "s1"), (0, "s2")]
    assert p.take_state() == []
    p.process([Record(0, 4, payload("s1", base + 30_000, 3.0)), Record(0, 5, payload("s0", base + 55_000, 3.0))], NOW)
    closing = p.process([Record(0, 6, payload("s3", base + 62_000, 3.0))], NOW)  # closes the first window
    assert sorted(a["sensor_id"] for a in closing.aggregates) == ["s0", "s1", "s2"]
    assert closing.state == []  # its watermark waits for the closed sensors' documents
    assert p.closures_pending
    steps = [p.closed_state(2), p.closed_state(2), p.closed_state(2)]
    wm = WATERMARK_KEY.format(partition=0)
    assert [[k for _, k, _ in step] for step in steps] == [["s0", "s1"], ["s2", wm], []]  # in steps; s3 is not due
    assert not p.closures_pending
    last = p.take_state()
    assert [k for _, k, _ in last] == ["s3"]
    table = {k: v for _, k, v in [*taken, *first.state, *steps[0], *steps[1], *last]}
    restored = Pipeline(spec, ()).partition(0, table.items())
    pw = p.partitions[0]
    assert restored.open_windows == pw.open_windows == 1  # s3's
    assert {s: m.offset for s, m in restored.sensors.items()} == {s: m.offset for s, m in pw.sensors.items()}


def test_a_worker_killed_before_its_closures_state_leaves_no_watermark_ahead_of_it() -> None:
    """A close's watermark reaches the changelog after the closed sensors' documents, not before.

    The worker sends those documents after the alert path's turn; killed in between, it left its
    successor a watermark newer than the sensors' state, and the readings delivered again from
    the committed offset were taken for late ones (counted by the dead worker, then refused).
    """
    spec = WindowSpec(60_000, 0, 0, 5_000)
    base = NOW - 600_000 - (NOW - 600_000) % 60_000
    recs = [Record(0, i, payload(f"s{i % 3}", base + (i // 3) * 5_000, float(i))) for i in range(60)]
    a = Pipeline(spec, ())
    first = a.process(recs[:15], NOW)
    table = {k: v for _, k, v in [*first.state, *a.take_state()]}  # the offset commit after record 14
    emitted = []
    for lo in range(15, 60, 5):  # the first window closes at record 36; no closure's documents are built
        out = a.process(recs[lo : lo + 5], NOW)
        emitted += out.aggregates
        table.update((k, v) for _, k, v in out.state)  # what went to the changelog with each batch
    assert sorted(x["sensor_id"] for x in emitted) == ["s0", "s1", "s2"]
    assert a.closures_pending
    b = Pipeline(spec, ())  # the successor: the table as the killed worker left it, input from the commit
    again = b.process(recs[15:], NOW, table.items())
    assert (b.counters.late, b.counters.duplicates, b.counters.readings_counted) == (0, 0, 45)
    assert {(x["sensor_id"], x["start_ms"], x["count"]) for x in again.aggregates} == {
        (x["sensor_id"], x["start_ms"], x["count"]) for x in emitted
    }  # closed again, the same windows (at least once)
    # once the closures' documents are written, the watermark follows them
    docs = a.closed_state()
    assert docs[-1][1] == WATERMARK_KEY.format(partition=0) and not a.closures_pending
    table.update((k, v) for _, k, v in docs)
    c = Pipeline(spec, ())
    c.process(recs[15:], NOW, table.items())
    assert (c.counters.late, c.counters.duplicates, c.counters.readings_counted) == (0, 45, 0)  # built now: all
    assert c.partitions[0].open_windows == a.partitions[0].open_windows == 3


def test_state_restores_from_table_rows_and_deduplicates() -> None:
    spec = WindowSpec(60_000, 0, 0, 5_000)
    a = Pipeline(spec, ())
    base = NOW - 600_000
    recs = [Record(1, i, payload("s1", base + i * 1000, 1.0)) for i in range(30)]
    out = a.process(recs[:20], NOW)
    table = {k: v for _, k, v in [*out.state, *a.take_state()]}  # what the offset commit wrote
    b = Pipeline(spec, ())  # a restarted worker: replays from the last committed offset (10)
    out2 = b.process(recs[10:], NOW, table.items())
    assert b.counters.duplicates == 10 and b.counters.readings_counted == 10
    b.partitions[1].max_ts_ms += 10**9
    total = b.tick(NOW + 10**9).aggregates + out2.aggregates + out.aggregates
    assert sum(x["count"] for x in total) == 30


def test_mixed_partitions_keep_input_order_of_dead_letters_and_counts() -> None:
    p = Pipeline(WindowSpec(60_000, 0, 0, 5_000), (), max_sensors_per_partition=2)
    base = NOW - 600_000
    recs = []
    for i in range(30):
        part = i % 3
        if i % 7 == 3:
            recs.append(Record(part, i, b"{broken", None, "t"))
        else:
            recs.append(Record(part, i, payload(f"s{i % 5}", base + i * 1000, float(i)), None, "t"))
    out = p.process(recs, NOW)
    sources = [dict(d.headers)["urban.dlq.source"] for d in out.dead_letters]
    offsets = [int(s.rsplit(b"@", 1)[1]) for s in sources]
    assert offsets == sorted(offsets) and len(offsets) == p.counters.dead_letters
    reasons = {d.reason for d in out.dead_letters}
    assert reasons == {"bad_json", "cardinality_limit"}
    c = p.counters
    assert c.readings_in == 30 and c.readings_counted + c.dead_letters == 30
    assert all(len(pw.sensors) <= 2 for pw in p.partitions.values())


def test_closes_are_level_once_every_partition_has_closed_the_same_windows() -> None:
    p = Pipeline(WindowSpec(60_000, 0, 0, 5_000), ())
    base = NOW - 600_000 - (NOW - 600_000) % 60_000
    p.process([Record(part, 0, payload(f"s{part}", base + 1000, 1.0)) for part in (0, 1)], NOW)
    assert p.closes_level  # both in the first window
    p.process([Record(1, 1, payload("s1", base + 30_000, 1.0))], NOW)
    assert p.closes_level  # further on, still in it
    out = p.process([Record(0, 1, payload("s0", base + 61_000, 1.0))], NOW)  # partition 0 closes the window
    assert [a["sensor_id"] for a in out.aggregates] == ["s0"]
    assert not p.closes_level  # partition 1's close is still to come
    out = p.process([Record(1, 2, payload("s1", base + 61_000, 1.0))], NOW)
    assert [a["sensor_id"] for a in out.aggregates] == ["s1"]
    assert p.closes_level
