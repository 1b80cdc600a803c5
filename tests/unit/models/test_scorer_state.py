"""The scorer's per-series state as table documents: exact round trip, kept across a model swap."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path
from typing import Any

import orjson

from models.features import FeatureState
from models.stream import StreamScorer
from tests.unit.models.test_stream_scoring import ARTIFACTS, agg, simulated_windows


def restored(docs: list[tuple[str, int | None, dict[str, Any]]]) -> StreamScorer:
    """A fresh scorer loaded from ``docs`` after a trip through JSON (the changelog's encoding)."""
    s = StreamScorer.from_folder(ARTIFACTS, size_ms=60_000)
    for sid, bucket, doc in orjson.loads(orjson.dumps(docs)):
        if bucket is None:
            s.restore_series(sid, doc)
        else:
            s.restore_season(sid, bucket, doc)
    return s


def held(s: StreamScorer) -> dict[str, Any]:
    return {k: {key: vars(x) for key, x in st._series.items()} for k, st in s.features.items()}


def with_spike(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``recs`` and three anomalous windows of one sensor after them (an anomaly streak at the end)."""
    last = recs[-1]
    spikes = [
        {**last, "start_ms": last["start_ms"] + i * 60_000, "end_ms": last["end_ms"] + i * 60_000,
         "mean": last["mean"] * 8, "min": last["mean"] * 7, "max": last["mean"] * 9}
        for i in (1, 2, 3)
    ]
    return [*recs, *spikes]


def test_state_docs_restore_the_exact_state_and_the_same_scores() -> None:
    recs = with_spike(simulated_windows(hours=2))
    a = StreamScorer.from_folder(ARTIFACTS, size_ms=60_000)
    docs = []
    for lo in range(0, len(recs), 40):
        a.score(recs[lo : lo + 40])
        docs += a.state_docs(recs[lo : lo + 40])
    assert a._streak  # the spike is still going on
    b = restored(docs)  # the last document per key wins, as in the table
    assert held(b) == held(a) and b._streak == a._streak
    assert held(pickle.loads(pickle.dumps(b))) == held(b)  # noqa: S301 - our own object, round-trip check
    nxt = [{**r, "start_ms": r["start_ms"] + 3_600_000, "end_ms": r["end_ms"] + 3_600_000} for r in recs[-60:]]
    copies = [dict(r) for r in nxt]
    a.score(nxt)
    b.score(copies)
    assert [(r["score"], r["top_features"]) for r in nxt] == [(r["score"], r["top_features"]) for r in copies]
    assert held(b) == held(a) and b._streak == a._streak


def test_state_docs_cover_only_scored_windows_and_their_season_buckets() -> None:
    s = StreamScorer.from_folder(ARTIFACTS, size_ms=60_000)
    batch = [agg(0, 5.0), agg(61, 6.0), {**agg(1, 5.0), "final": False}, {**agg(2, 5.0, "other"), "window": "hopping"}]
    s.score(batch)
    docs = s.state_docs(batch)
    assert [(sid, bucket) for sid, bucket, _ in docs] == [("trf-futian-0001", None), ("trf-futian-0001", 0),
                                                          ("trf-futian-0001", 1)]
    series, b0, b1 = (d for _, _, d in docs)
    assert series == {"k": "traffic", "m": {"speed": [5.5, 0.25, 1.0, 2, [5.0, 6.0]]}}  # no streak: no "s"
    assert b0 == {"k": "traffic", "v": {"speed": 5.0}} and b1 == {"k": "traffic", "v": {"speed": 6.0}}
    json.dumps(docs, allow_nan=False)  # plain JSON


def test_restoring_a_series_replaces_what_is_held() -> None:
    """After a rebalance a worker may hold an older state of a sensor: the table's wins, streak included."""
    s = StreamScorer.from_folder(ARTIFACTS, size_ms=60_000)
    s._streak[("trf-futian-0001", "speed")] = 4
    s.score([agg(0, 5.0)])
    doc = {"k": "traffic", "m": {"speed": [7.0, 1.5, 2.0, 30, [7.0, 7.5]]}}
    s.restore_series("trf-futian-0001", doc)
    got = s.features["traffic"]._series[("trf-futian-0001", "speed")]
    assert (got.mean, got.var, got.std_level, got.n, got.recent) == (7.0, 1.5, 2.0, 30, [7.0, 7.5])
    assert got.season == {0: 5.0}  # buckets come in their own documents
    assert ("trf-futian-0001", "speed") not in s._streak
    got.recent.append(8.0)
    assert doc["m"]["speed"][4] == [7.0, 7.5]  # the table's document is not aliased


def test_a_season_bucket_before_its_series_and_a_nan_mean_round_trip() -> None:
    st = FeatureState()
    st.restore_season("s", 5, {"m": 1.25})
    doc = orjson.loads(orjson.dumps(st.series_doc("s")))  # mean is NaN until learned: JSON null
    assert doc == {"m": [None, 0.0, 0.0, 0, []]}
    back = FeatureState()
    back.restore_series("s", doc)
    back.restore_season("s", 5, st.season_doc("s", 5))
    s = back._series[("s", "m")]
    assert math.isnan(s.mean) and s.season == {5: 1.25} and back.seen("s", "m") == 0


def test_a_model_swap_keeps_the_baselines(tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(ARTIFACTS, root)
    s = StreamScorer.from_folder(root, size_ms=60_000)
    recs = with_spike(simulated_windows(hours=1))
    s.score(recs)
    before, streak, features = held(s), dict(s._streak), s.features
    shutil.copytree(root / "traffic" / "1", root / "traffic" / "2")
    sidecar = root / "traffic" / "2" / "sidecar.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "version": "2"}))
    assert s.reload(root) == ["traffic"]
    assert s.features is features and held(s) == before and s._streak == streak
