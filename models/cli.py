"""Command-line helpers of the ``models`` package (the lead wires them into ``streams/cli.py``).

``score_csv`` backs ``urbansense score-csv IN.csv OUT.csv``: it reads a NAB-format file
(``timestamp,value``) and writes ``timestamp,value,anomaly_score`` with one causal score per row.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from models.detector import CausalDetector, DetectorConfig
from models.errors import ScoringError
from models.nab import parse_timestamp_ms

logger = logging.getLogger(__name__)

__all__ = ["score_csv"]


def score_csv(in_path: str | Path, out_path: str | Path, config: DetectorConfig | None = None) -> int:
    """Score a ``timestamp,value`` CSV row by row and write ``timestamp,value,anomaly_score``.

    The detector is causal: the score of row i depends only on rows 0..i. Timestamp and value are
    copied through unchanged; the score is written with 6 decimals.

    Args:
        in_path: input CSV with a header containing ``timestamp`` and ``value``.
        out_path: output CSV (overwritten).
        config: detector settings; the defaults are the benchmarked ones.

    Returns:
        The number of rows scored.

    Raises:
        ScoringError: the input is missing a column, has an unparsable timestamp or a non-finite value.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    det = CausalDetector(config)
    rows = 0
    try:
        with in_path.open(newline="") as fin, out_path.open("w", newline="") as fout:
            reader = csv.DictReader(fin)
            names = reader.fieldnames or []
            if "timestamp" not in names or "value" not in names:
                msg = f"score-csv {in_path}: expected columns 'timestamp' and 'value', got {names}"
                raise ScoringError(msg)
            writer = csv.writer(fout, lineterminator="\n")
            writer.writerow(["timestamp", "value", "anomaly_score"])
            for line_no, row in enumerate(reader, start=2):
                stamp, text = row["timestamp"], row["value"]
                try:
                    ts_ms = parse_timestamp_ms(stamp)
                    value = float(text)
                except (TypeError, ValueError) as exc:
                    msg = f"score-csv {in_path} line {line_no}: expected 'timestamp,value', got {stamp!r},{text!r}"
                    raise ScoringError(msg) from exc
                if not math.isfinite(value):
                    msg = f"score-csv {in_path} line {line_no}: expected a finite value, got {text!r}"
                    raise ScoringError(msg)
                writer.writerow([stamp, text, f"{det.update(ts_ms, value):.6f}"])
                rows += 1
    except OSError as exc:
        msg = f"score-csv {in_path} -> {out_path}: {exc}"
        raise ScoringError(msg) from exc
    logger.info("score-csv done in_path=%s out_path=%s rows=%d", in_path, out_path, rows)
    return rows
