"""Scoring throughput: ``python -m benchmarks scoring [--json] [--batch N] [--repeat R]``.

Scores simulated feature micro-batches with a shipped model (``models/artifacts/<kind>/<version>``)
and reports windows scored per second on one process (median of ``--repeat`` runs). Feature extraction
is timed separately (``features_windows_per_s``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from models.errors import ModelLoadError
from models.features import FEATURE_NAMES
from models.registry import ARTIFACTS_ROOT, load_model
from models.scoring import Scorer


def main(argv: list[str]) -> int:
    """Entry point used by ``python -m benchmarks scoring``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks scoring")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--kind", default="traffic")
    parser.add_argument("--version", default="1")
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS_ROOT)
    parser.add_argument("--batch", type=int, default=2000, help="windows per micro-batch")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        model = load_model(args.artifacts / args.kind / args.version)
    except ModelLoadError as exc:
        sys.stderr.write(f"scoring benchmark: {exc}\n")
        return 2
    scorer = Scorer(model)
    rng = np.random.default_rng(0)
    batches = [rng.normal(0.0, 1.0, (args.batch, len(FEATURE_NAMES))) for _ in range(args.batches)]
    rates = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for b in batches:
            scorer.score(b)
        rates.append(args.batch * args.batches / (time.perf_counter() - t0))
    report = {
        "windows_per_s": round(statistics.median(rates), 1),
        "windows_per_s_runs": [round(r, 1) for r in rates],
        "batch": args.batch,
        "model_version": scorer.version,
    }
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(f"{report['windows_per_s']:.0f} windows/s (batch {args.batch}, model {scorer.version})\n")
    return 0
