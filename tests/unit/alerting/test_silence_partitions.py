"""Silence is judged per (engine input partition, source partition): input partitions progress unevenly."""

from __future__ import annotations

from alerting.engine import AlertEngine
from alerting.rules import load_rules
from tests.unit.alerting.conftest import T0, W, make_agg

SILENT = '[[rule]]\nname = "silent"\ntype = "silence"\nsilent_for = "5m"\n'


def test_a_lagging_input_partition_does_not_make_its_sensors_look_silent() -> None:
    eng = AlertEngine(load_rules(text=SILENT))
    north, south = "env-futian-0001", "env-luohu-0002"  # both from source partition 0
    eng.process([make_agg(north, 0, 20, src=0)], T0 + W, partition=0)
    eng.process([make_agg(south, 0, 20, src=0, zone="luohu")], T0 + W, partition=1)
    # input partition 0 (zone futian) runs 20 windows ahead of input partition 1 (zone luohu)
    out = eng.process([make_agg(north, i, 20, src=0) for i in range(1, 20)], T0 + 20 * W, partition=0)
    assert out == [] and eng.tick(T0 + 20 * W) == []
    # input partition 1 catches up: the luohu sensor reported all along
    assert eng.process([make_agg(south, i, 20, src=0, zone="luohu") for i in range(1, 20)], T0 + 20 * W, 1) == []


def test_silence_is_still_raised_within_one_input_partition() -> None:
    eng = AlertEngine(load_rules(text=SILENT))
    quiet, busy = "env-futian-0001", "env-futian-0003"
    eng.process([make_agg(quiet, 0, 20, src=0), make_agg(busy, 0, 20, src=0)], T0 + W, partition=0)
    out = eng.process([make_agg(busy, i, 20, src=0) for i in range(1, 8)], T0 + 8 * W, partition=0)
    assert [(r["rule"], r["sensor_id"], r["state"]) for r in out] == [("silent", quiet, "raised")]


def test_a_sensor_alone_in_its_source_is_judged_on_the_sources_progress_markers() -> None:
    """A sensor that is the only one of its (input partition, source) pair stalls that pair's clock
    when it goes silent; the host's progress markers (how far each source has got) keep it moving."""
    eng = AlertEngine(load_rules(text=SILENT))
    alone, other = "env-futian-0001", "env-luohu-0002"  # both from source 0, routed to partitions 0 and 1
    eng.process([make_agg(alone, 0, 20, src=0)], T0 + W, partition=0)
    eng.process([make_agg(other, 0, 20, src=0, zone="luohu")], T0 + W, partition=1)
    out = []
    for i in range(1, 8):  # source 0 moves on: only the luohu sensor reports
        out += eng.process([make_agg(other, i, 20, src=0, zone="luohu")], T0 + W, partition=1)
        out += eng.tick(T0 + W)
    assert out == []  # without markers input partition 0 cannot tell the source has moved on
    out = eng.progress({0: T0 + 8 * W}, T0 + W, partition=0)
    assert [(r["rule"], r["sensor_id"], r["state"]) for r in out] == [("silent", alone, "raised")]
    assert out[0]["ts_ms"] == T0 + 8 * W and out[0]["latency_ms"] >= 0
    # a marker on another input partition says nothing about partition 0's sensors
    eng2 = AlertEngine(load_rules(text=SILENT))
    eng2.process([make_agg(alone, 0, 20, src=0)], T0 + W, partition=0)
    assert eng2.progress({0: T0 + 8 * W}, T0 + W, partition=1) == []
    # markers are idempotent and never move a source back
    assert eng.progress({0: T0 + 3 * W}, T0 + W, partition=0) == []
    assert eng.src_ms[(0, 0)] == T0 + 8 * W


def test_a_partition_still_catching_up_after_the_lead_finished_does_not_look_silent() -> None:
    """The broker evaluation's end: input partition 0 has read the whole feed and stands still,
    input partition 1 is ten hours behind and still being caught up, a window every second of
    host time. Its sensors' clock runs on from when their source last moved there, not from when
    the lead last moved: run on from the lead, every sensor caught up after the lead had stood
    still for 5 min looked silent as it came (244 false ``sensor_silent`` alerts in one broker
    run, and the zones' rate limits tripped and held incident alerts back)."""
    eng = AlertEngine(load_rules(text=SILENT))
    north, south = "env-futian-0001", "env-luohu-0002"  # the same source 0, routed to partitions 0 and 1
    host = 1_000_000
    eng.process([make_agg(north, i, 20, src=0) for i in range(600)], host, partition=0)  # the lead: done
    out = []
    for i in range(600):
        host += 1000
        out += eng.process([make_agg(south, i, 20, src=0, zone="luohu")], host, partition=1)
        out += eng.tick(host)
    assert [r["sensor_id"] for r in out if r["sensor_id"] == south] == []
    # the feed is over: on the host clock, 5 min after partition 0 last moved its sensor is silent
    [north_silent] = out
    assert north_silent["sensor_id"] == north and north_silent["state"] == "raised"
    assert north_silent["ts_ms"] - north_silent["evidence"]["last_reading_ts_ms"] == 5 * 60_000
    # ... and 5 min after partition 1 caught up, so is the south sensor
    assert eng.tick(host + 4 * 60_000) == []
    [south_silent] = eng.tick(host + 6 * 60_000)
    assert south_silent["sensor_id"] == south and south_silent["state"] == "raised"


def test_one_message_per_engine_partition_keeps_a_fast_replay_from_looking_silent() -> None:
    """Why the route agent sends one message per engine partition and batch, not one per zone: a
    batch of a fast replay spans several windows, and the engine judges silence after each
    message on the clock of the sensor's source. Per zone, the first zone's windows move that
    clock on before the second zone's windows (same source, same batch) have arrived."""
    a, b = "env-futian-0001", "env-luohu-0002"  # two zones, one engine partition, one source
    first = [make_agg(a, i, 20, src=0) for i in range(3)] + [make_agg(b, i, 20, src=0, zone="luohu") for i in range(3)]
    later_a = [make_agg(a, i, 20, src=0) for i in range(3, 10)]
    later_b = [make_agg(b, i, 20, src=0, zone="luohu") for i in range(3, 10)]
    per_zone = AlertEngine(load_rules(text=SILENT))
    per_zone.process(first, T0 + 3 * W, partition=0)
    out = per_zone.process(later_a, T0 + 3 * W, partition=0) + per_zone.process(later_b, T0 + 3 * W, partition=0)
    assert [(r["sensor_id"], r["state"]) for r in out] == [(b, "raised"), (b, "cleared")]  # a false silence
    together = AlertEngine(load_rules(text=SILENT))
    together.process(first, T0 + 3 * W, partition=0)
    assert together.process(later_a + later_b, T0 + 3 * W, partition=0) == []


def _commit(eng: AlertEngine, table: dict[str, dict]) -> None:
    """What the worker writes to the changelog at an offset commit (the engine's table changes)."""
    for _p, key, doc in [*eng.take_state(), *eng.take_seen()]:
        if doc is None:
            table.pop(key, None)
        else:
            table[key] = doc


def test_a_rebalance_restores_silence_tracks_without_false_alarms() -> None:
    """Found in the two-worker rebalance test: after the revocation the survivor restored its
    sensors' silence tracks from the changelog, where a track was written only when it was created
    or changed state (so ``last_seen`` stood at the sensor's first window), while the clock of their
    source, kept in memory across ``forget``, stood at the newest window: 25 ``sensor_silent``
    alerts raised at once, each cleared by the sensor's next window."""
    eng = AlertEngine(load_rules(text=SILENT))
    sensors = [f"env-futian-{i:04d}" for i in range(1, 4)]
    table: dict[str, dict] = {}
    host = 1_000_000
    for i in range(20):
        host += 1000
        eng.process([make_agg(s, i, 20, src=0) for s in sensors], host, partition=0)
        eng.progress({0: T0 + (i + 1) * W}, host, partition=0)
        _commit(eng, table)
    eng.forget()  # revoked, then assigned again: the state comes back from the changelog
    assert eng.src_ms == {} and eng.src_wall == {} and eng.zone_src == {}  # the sources' clocks too
    assert eng.restore(table.items(), 0, host) == len(sensors)
    assert eng.tick(host) == [] and eng.tick(host + 30_000) == []
    # the next window (the input from the committed offset on) clears nothing and raises nothing
    assert eng.process([make_agg(s, 20, 20, src=0) for s in sensors], host + 30_000, partition=0) == []

    # another worker taking the partition over restores the same state: no alarm either
    other = AlertEngine(load_rules(text=SILENT))
    assert other.restore(table.items(), 0, host) == len(sensors)
    assert other.tick(host) == [] and other.tick(host + 30_000) == []


def test_a_sensor_silent_before_a_rebalance_is_still_raised_after_it() -> None:
    eng = AlertEngine(load_rules(text=SILENT))
    quiet, busy = "env-futian-0001", "env-futian-0003"
    table: dict[str, dict] = {}
    host = 1_000_000
    for i in range(12):
        host += 1000
        eng.process([make_agg(busy, i, 20, src=0)] + ([make_agg(quiet, i, 20, src=0)] if i < 10 else []),
                    host, partition=0)
        _commit(eng, table)
    eng.forget()
    eng.restore(table.items(), 0, host)
    out = []
    for i in range(12, 18):  # 8 windows without the quiet sensor by the end: silent for more than 5 min
        host += 1000
        out += eng.process([make_agg(busy, i, 20, src=0)], host, partition=0)
    assert [(r["rule"], r["sensor_id"], r["state"]) for r in out] == [("silent", quiet, "raised")]
    assert out[0]["evidence"]["last_reading_ts_ms"] == T0 + 9 * W + 51_000  # not the last record written


def test_the_newest_readings_go_to_the_table_once_per_commit_not_per_batch() -> None:
    """``take_state`` runs after every routed batch; the ``~seen|p`` document (a copy of every
    silence track of the partition) is built only by ``take_seen``, at the offset commit."""
    from alerting.engine import SEEN_PREFIX

    eng = AlertEngine(load_rules(text=SILENT))
    eng.process([make_agg("env-futian-0001", 0, 20, src=0)], T0 + W, partition=0)
    eng.process([make_agg("env-luohu-0002", 0, 20, src=0, zone="luohu")], T0 + W, partition=1)
    assert not any(k.startswith(SEEN_PREFIX) for _, k, _ in eng.take_state())
    docs = eng.take_seen()
    assert [(p, k) for p, k, _ in docs] == [(0, f"{SEEN_PREFIX}0"), (1, f"{SEEN_PREFIX}1")]
    assert docs[0][2] == {"p": 0, "seen": {"silent|env-futian-0001": T0 + 51_000}}
    assert eng.take_seen() == []  # nothing read on since
    eng.process([make_agg("env-futian-0001", 1, 20, src=0)], T0 + 2 * W, partition=0)
    assert [k for _, k, _ in eng.take_seen()] == [f"{SEEN_PREFIX}0"]
