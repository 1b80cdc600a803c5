from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from models import nab
from models.errors import BenchmarkDataError

STD = nab.Profile("standard", 1.0, 0.11, 1.0)


@pytest.mark.parametrize(
    ("y", "expected"),
    [(-1.0, 0.986614298), (0.0, 0.0), (3.0, 2.0 / (1.0 + np.exp(15.0)) - 1.0), (3.0001, -1.0), (50.0, -1.0)],
)
def test_scaled_sigmoid(y: float, expected: float) -> None:
    assert float(nab.scaled_sigmoid(y)) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("n", "p"), [(100, 15), (1127, 169), (2499, 374), (5000, 750), (22695, 750)])
def test_probation(n: int, p: int) -> None:
    assert nab.probation_rows(n) == p


def _file(n: int, flags: list[int], windows: list[tuple[int, int]]) -> nab.ScoredFile:
    s = np.zeros(n)
    s[flags] = 1.0
    return nab.ScoredFile(
        "f", s, np.array([w[0] for w in windows], dtype=np.int64), np.array([w[1] for w in windows], dtype=np.int64)
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], -1.0),  # missed window
        ([50], 1.0),  # first row of the window is worth A_TP
        ([50, 51, 59], 1.0),  # later flags in the same window add nothing
        ([59], float(nab.scaled_sigmoid(-1 / 10)) / float(nab.scaled_sigmoid(-1.0))),  # last row
        ([10], -1.0),  # inside probation (P = 15): ignored
        ([30], -1.0 - 0.11),  # before the first window: -A_FP
        ([60], -1.0 + 0.11 * float(nab.scaled_sigmoid(1 / 9))),  # just after the window
        ([95], -1.0 - 0.11),  # far after the window: y > 3
    ],
)
def test_raw_score_rules(flags: list[int], expected: float) -> None:
    f = _file(100, flags, [(50, 59)])
    assert nab.raw_score(f, STD, 0.5).raw == pytest.approx(expected, abs=1e-12)


def test_sweep_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    files = []
    for n in (300, 500, 800):
        s = np.round(rng.random(n), 2)  # ties on purpose
        files.append(nab.ScoredFile(f"f{n}", s, np.array([n // 2, n // 2 + 60]), np.array([n // 2 + 20, n // 2 + 90])))
    for prof in (STD, nab.Profile("fn", 1.0, 0.11, 2.0)):
        res = nab.sweep(files, prof)
        cands = np.unique(np.concatenate([f.scores for f in files]))
        brute = max(sum(nab.raw_score(f, prof, t).raw for f in files) for t in [*cands, 1.1])
        assert res.raw == pytest.approx(brute, abs=1e-9)


def test_normalise_null_and_perfect() -> None:
    assert nab.normalise(-25.0, 25, STD) == 0.0
    assert nab.normalise(25.0, 25, STD) == 100.0
    with pytest.raises(BenchmarkDataError):
        nab.normalise(0.0, 0, STD)


def test_reproduces_published_per_file_scores(nab_root: Path) -> None:
    corpus = nab.load_corpus(nab_root)
    profiles = nab.load_profiles(nab_root / "config" / "profiles.json")
    published = nab.published_per_file(nab_root)
    checked = 0
    for det in ("ARTime", "numenta"):
        for f in corpus:
            scored = nab.load_reference_scores(nab_root, det, f)
            for prof in nab.PROFILE_NAMES:
                threshold, raw = published[(det, prof, f.name)]
                assert nab.raw_score(scored, profiles[prof], threshold).raw == pytest.approx(raw, abs=1e-6), (
                    det,
                    prof,
                    f.name,
                )
                checked += 1
    assert checked == 60


def test_sweep_matches_subset_scores(nab_root: Path) -> None:
    corpus = nab.load_corpus(nab_root)
    profiles = nab.load_profiles(nab_root / "config" / "profiles.json")
    with (nab_root / "reference" / "subset_scores.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["subset"] == "urban_all" and r["detector"] in ("ARTime", "numenta")]
    assert len(rows) == 6
    for det in ("ARTime", "numenta"):
        scored = [nab.load_reference_scores(nab_root, det, f) for f in corpus]
        for r in (r for r in rows if r["detector"] == det):
            res = nab.sweep(scored, profiles[r["profile"]])
            assert res.n_windows == 25
            assert res.raw == pytest.approx(float(r["raw_subset_optimal"]), abs=1e-4)
            assert res.normalised == pytest.approx(float(r["norm_subset_optimal"]), abs=0.005)
            at_pub = nab.score_at(
                scored,
                profiles[r["profile"]],
                float(nab.published_per_file(nab_root)[(det, r["profile"], corpus[0].name)][0]),
            )
            assert at_pub.normalised == pytest.approx(float(r["norm_at_published_threshold"]), abs=0.005)


def test_window_endpoint_must_be_a_row(tmp_path: Path) -> None:
    ms = np.array([0, 60_000, 120_000], dtype=np.int64)
    with pytest.raises(BenchmarkDataError, match="not a row timestamp"):
        nab.window_rows("x.csv", ms, [["1970-01-01 00:00:30.000000", "1970-01-01 00:02:00.000000"]])


def test_scores_out_of_range_rejected(nab_root: Path) -> None:
    f = nab.load_corpus(nab_root)[0]
    with pytest.raises(BenchmarkDataError, match=r"\[0, 1\]"):
        f.with_scores(np.full(f.values.shape, 1.5))


def test_leave_one_file_out_scores_each_file_at_the_others_threshold() -> None:
    from benchmarks.nab import _leave_one_file_out

    def scored(name: str, hit: int, score: float) -> nab.ScoredFile:
        s = np.zeros(100)
        s[hit] = score
        return nab.ScoredFile(name, s, np.array([50]), np.array([59]))

    # a and b detect their window at 0.9; c only at 0.5, which the other two never need
    files = [scored("a", 50, 0.9), scored("b", 50, 0.9), scored("c", 50, 0.5)]
    out = _leave_one_file_out(files, STD)
    assert out["raw_per_file"]["a"] == pytest.approx(1.0)
    assert out["raw_per_file"]["c"] == pytest.approx(-1.0)  # the others' threshold (0.9) misses c's window
    assert out["standard"] == pytest.approx(nab.normalise(1.0 + 1.0 - 1.0, 3, STD), abs=1e-4)
