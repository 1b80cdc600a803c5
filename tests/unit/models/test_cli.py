from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from models.cli import score_csv
from models.detector import score_series
from models.errors import ScoringError
from models.nab import read_series


def test_score_csv_one_score_per_row_in_order(nab_root: Path, tmp_path: Path) -> None:
    src = nab_root / "data" / "realTraffic" / "speed_7578.csv"
    out = tmp_path / "out.csv"
    assert score_csv(src, out) == 1127
    with src.open(newline="") as a, out.open(newline="") as b:
        rin, rout = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [r["timestamp"] for r in rout] == [r["timestamp"] for r in rin]
    assert [r["value"] for r in rout] == [r["value"] for r in rin]
    scores = np.array([float(r["anomaly_score"]) for r in rout])
    assert np.all((scores >= 0) & (scores <= 1))
    _, ms, values = read_series(src)
    assert np.allclose(scores, score_series(ms, values), atol=5e-7)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("time,value\n2015-01-01 00:00:00,1\n", "expected columns"),
        ("timestamp,value\nnot-a-time,1\n", "line 2"),
        ("timestamp,value\n2015-01-01 00:00:00,abc\n", "line 2"),
        ("timestamp,value\n2015-01-01 00:00:00,nan\n", "finite"),
    ],
)
def test_score_csv_rejects_bad_input(tmp_path: Path, text: str, match: str) -> None:
    src = tmp_path / "in.csv"
    src.write_text(text)
    with pytest.raises(ScoringError, match=match):
        score_csv(src, tmp_path / "out.csv")
