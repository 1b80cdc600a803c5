"""The anomaly scorer's baselines in the window table: a restored worker scores as if never stopped.

A simulated city feed goes through :class:`~streams.pipeline.Pipeline` with the shipped models,
once without interruption and once cut in two: at the cut the table is what the first worker wrote
(the last document per key, through JSON as the changelog gives it back), and a fresh pipeline with
a fresh scorer restores every partition from it and takes the rest of the feed.
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

import models
from models.stream import StreamScorer
from simulators import Incident, build_city, generate
from streams.engine import WindowSpec
from streams.pipeline import SCORER_KEY_PREFIXES, WATERMARK_KEY, Pipeline, Record

ARTIFACTS = Path(models.__file__).parent / "artifacts"
SPEC = WindowSpec(60_000, 5_000, 0, 30_000)
PARTITIONS = 2
START_MS = 1_800_000_000_000 + 20 * 60_000  # 20 minutes past an hour: a season bucket spans the cut
STEP_MS = 10_000
STEPS = 150 * 6  # 150 one-minute windows per series
CUT = 85 * 6 // 3  # batch index of the cut: 85 minutes in, past the warm-up, mid-hour
INCIDENT = (START_MS + 78 * 60_000, START_MS + 92 * 60_000)  # anomalous windows on both sides of the cut

Batch = tuple[int, list[Record]]
Table = dict[str, Any]


@functools.cache
def feed() -> tuple[Batch, ...]:
    """Micro-batches of three ticks (30 s): ``(now_ms, records)``, keyed to partitions by sensor id."""
    city = build_city(16, seed=5)
    zone = city.of_kind("traffic")[0].zone
    incidents = [Incident("traffic", zone, *INCIDENT, magnitude=3.0)]
    offsets = [0] * PARTITIONS
    out: list[Batch] = []
    records: list[Record] = []
    for k, batch in enumerate(generate(city, start_ms=START_MS, interval_ms=STEP_MS, steps=STEPS, seed=7,
                                       incidents=incidents)):
        for topic, payload in batch.to_messages():
            sid = topic.rsplit("/", 1)[-1].encode()
            p = zlib.crc32(sid) % PARTITIONS
            records.append(Record(p, offsets[p], payload, sid, "urban.readings.v1"))
            offsets[p] += 1
        if k % 3 == 2:
            out.append((batch.ts_ms + 250, records))
            records = []
    return tuple(out)


def pipeline() -> Pipeline:
    return Pipeline(SPEC, (), scorer=StreamScorer.from_folder(ARTIFACTS, size_ms=SPEC.size_ms))


def run(p: Pipeline, batches: tuple[Batch, ...], table: Table | None = None) -> tuple[list[dict[str, Any]], Table]:
    """Feed ``batches``; the aggregates, and the table writes (last document per key) after ``table``."""
    aggregates: list[dict[str, Any]] = []
    written: Table = dict(table or {})
    for now, records in batches:
        out = p.process(records, now, written.items())
        aggregates += out.aggregates
        written.update((key, value) for _, key, value in [*out.state, *p.closed_state()])
    written.update((key, value) for _, key, value in p.take_state())  # the offset commit's
    return aggregates, written


def changelog(table: Table) -> Table:
    """The table as a restarted worker reads it back from the changelog (JSON, no encoded fragments)."""
    return orjson.loads(orjson.dumps(table))


@functools.cache
def uninterrupted() -> tuple[dict[str, Any], ...]:
    return tuple(run(pipeline(), feed())[0])


@functools.cache
def first_half() -> tuple[int, Table]:
    """How many aggregates the first worker emitted, and its table at the cut."""
    aggregates, table = run(pipeline(), feed()[:CUT])
    return len(aggregates), changelog(table)


def scored(aggregates: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[tuple[Any, ...]]:
    return [
        (a["sensor_id"], a["metric"], a["start_ms"], a["score"], a["top_features"], a["model_version"])
        for a in aggregates
        if "score" in a
    ]


def test_restored_partitions_score_exactly_as_an_uninterrupted_run() -> None:
    n_first, table = first_half()
    streaks = [d for k, d in table.items() if k.startswith(SCORER_KEY_PREFIXES[0]) and d.get("s")]
    assert streaks  # the incident runs across the cut: anomaly streaks are part of what is restored
    second, _ = run(pipeline(), feed()[CUT:], table)
    expected = list(uninterrupted()[n_first:])
    assert len(scored(second)) > 1000
    assert scored(second) == scored(expected)
    assert second == expected  # the windows restore exactly too


def test_without_the_scorer_documents_a_restart_is_cold_and_scores_differently() -> None:
    """A table written before the scorer's documents existed still restores (a cold scorer)."""
    n_first, table = first_half()
    old = {k: v for k, v in table.items() if not k.startswith(SCORER_KEY_PREFIXES)}
    assert len(old) < len(table)
    second, _ = run(pipeline(), feed()[CUT:], old)
    expected = list(uninterrupted()[n_first:])
    strip = [{k: v for k, v in a.items() if k not in ("score", "top_features")} for a in second]
    assert strip == [{k: v for k, v in a.items() if k not in ("score", "top_features")} for a in expected]
    differ = [a for a, b in zip(scored(second), scored(expected), strict=True) if a != b]
    assert len(differ) > 100


def test_a_pipeline_without_scorer_skips_the_scorer_documents() -> None:
    _, table = first_half()
    old = {k: v for k, v in table.items() if not k.startswith(SCORER_KEY_PREFIXES)}
    for p in range(PARTITIONS):
        a = Pipeline(SPEC, ()).partition(p, table.items())
        b = Pipeline(SPEC, ()).partition(p, old.items())
        assert a.sensors.keys() == b.sensors.keys() and a.open_windows == b.open_windows
        assert a.max_ts_ms == b.max_ts_ms


def test_a_closure_writes_its_scorer_state_before_its_window_state_and_one_season_bucket() -> None:
    p = pipeline()
    run(p, feed()[:CUT])
    now, records = feed()[CUT]
    out = p.process(records, now)
    closed = {a["sensor_id"]: a["start_ms"] for a in out.aggregates if "score" in a}
    assert closed
    state = [*out.state, *p.closed_state()]
    keys = [k for _, k, _ in state]
    assert len(keys) == len(set(keys))
    for sid, start_ms in closed.items():
        series = keys.index(f"__f__:{sid}")
        season = [k for k in keys if k.startswith(f"__fs__:{sid}:")]
        assert season == [f"__fs__:{sid}:{(start_ms // 3_600_000) % 168}"]  # the bucket it learned into
        assert series < keys.index(season[0]) < keys.index(sid)  # before the window state it belongs to
    for part, key, doc in state:
        if key.startswith(SCORER_KEY_PREFIXES):
            assert doc["p"] == part and doc["k"] in ("traffic", "environment", "crowd", "iot")
    assert not {k for k in keys if k.startswith(SCORER_KEY_PREFIXES)} & {*closed, *p.partitions[0].sensors}
    assert WATERMARK_KEY.format(partition=0) in keys


def test_forget_drops_the_baselines_and_the_table_brings_them_back() -> None:
    """After a rebalance the scorer holds only what the partitions it restores wrote."""
    _, table = first_half()
    p = pipeline()
    p.partition(0, table.items())
    p.partition(1, table.items())
    scorer = p.scorer
    held = {k: vars(s).copy() for k, s in scorer.features["traffic"]._series.items()}
    assert held
    p.forget()
    assert not scorer.features["traffic"]._series and not p.partitions
    p.partition(0, table.items())
    back = scorer.features["traffic"]._series
    assert back and all(vars(s) == held[k] for k, s in back.items())
    assert len(back) < len(held)  # partition 1's sensors wait for partition 1


@pytest.mark.parametrize("sensor_id", ["s:1", "a.b-c_d"])
def test_scorer_keys_of_ids_with_separators_restore_to_the_right_sensor(sensor_id: str) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def restore_series(self, sid: str, doc: dict[str, Any]) -> None:
            self.calls.append(("series", sid, doc["k"]))

        def restore_season(self, sid: str, bucket: int, doc: dict[str, Any]) -> None:
            self.calls.append(("season", sid, bucket, doc["k"]))

    rec = Recorder()
    table = {
        f"__f__:{sensor_id}": {"p": 0, "k": "iot", "m": {}},
        f"__fs__:{sensor_id}:167": {"p": 0, "k": "iot", "v": {}},
        "__f__:other": {"p": 1, "k": "iot", "m": {}},  # another partition's
    }
    pw = Pipeline(SPEC, (), scorer=rec).partition(0, table.items())
    assert rec.calls == [("series", sensor_id, "iot"), ("season", sensor_id, 167, "iot")]
    assert not pw.sensors
