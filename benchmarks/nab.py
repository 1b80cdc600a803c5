"""NAB benchmark: ``python -m benchmarks nab [--json] [--data DIR] [--jobs N]``.

Scores every data file listed in ``labels/combined_windows.json`` with the project's causal detector
(:mod:`models.detector`), chooses the single corpus-wide threshold per profile (:func:`models.nab.sweep`)
and prints the normalised NAB scores next to the reference detectors found under
``reference/detector_outputs`` (re-swept on the same files), with per-file details: missed windows and the
costliest false positives, and a leave-one-file-out check of the threshold (each file scored at the threshold
swept on the other nine). Data is read in place, never copied; the default folder is
``../shared/benchmarks/nab`` relative to the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from models import nab
from models.detector import DetectorConfig, score_series

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "nab"


def _score_file(args: tuple[np.ndarray, np.ndarray, DetectorConfig]) -> np.ndarray:
    ts_ms, values, config = args
    return score_series(ts_ms, values, config)


def _file_details(f: nab.CorpusFile, fs: nab.FileScore, scores: np.ndarray, worst: int) -> dict[str, Any]:
    missed = [
        {
            "window": k,
            "start": f.stamps[f.starts[k]],
            "end": f.stamps[f.ends[k]],
            "max_score_in_window": round(float(scores[f.starts[k] : f.ends[k] + 1].max()), 4),
        }
        for k in fs.missed_windows
    ]
    fps = sorted(fs.fp_costs, key=lambda rc: rc[1])[:worst]
    return {
        "file": f.name,
        "rows": int(f.values.shape[0]),
        "windows": int(f.starts.shape[0]),
        "raw": round(fs.raw, 6),
        "detected": fs.tp_windows,
        "missed": missed,
        "false_positives": fs.fp_rows,
        "false_positive_cost": round(sum(c for _, c in fs.fp_costs), 6),
        "worst_false_positives": [
            {"row": i, "timestamp": f.stamps[i], "score": round(float(scores[i]), 4), "cost": round(c, 6)}
            for i, c in fps
        ],
    }


def _leave_one_file_out(files: list[nab.ScoredFile], profile: nab.Profile) -> dict[str, Any]:
    """Each file scored at the threshold swept on the other files: how well the one threshold carries over.

    The normalised total is over all windows, like the in-sample score; the gap between the two shows how
    much of the in-sample score depends on fitting the threshold to the file itself.
    """
    per_file: dict[str, float] = {}
    for k, f in enumerate(files):
        threshold = nab.sweep([*files[:k], *files[k + 1 :]], profile).threshold
        per_file[f.name] = round(nab.raw_score(f, profile, threshold).raw, 6)
    n_windows = sum(int(f.starts.shape[0]) for f in files)
    return {
        profile.name: round(nab.normalise(sum(per_file.values()), n_windows, profile), 4),
        "raw_per_file": per_file,
    }


def run(data: Path, jobs: int, worst: int = 3) -> dict[str, Any]:
    """Score the corpus under ``data`` and return the report (see module docstring)."""
    corpus = nab.load_corpus(data)
    profiles = nab.load_profiles(data / "config" / "profiles.json")
    config = DetectorConfig()
    t0 = time.perf_counter()
    work = [(f.stamps_ms, f.values, config) for f in corpus]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            scores = list(ex.map(_score_file, work))
    else:
        scores = [_score_file(w) for w in work]
    seconds = time.perf_counter() - t0
    ours = [f.with_scores(s) for f, s in zip(corpus, scores, strict=True)]
    report: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    results: dict[str, nab.SweepResult] = {}
    for name in nab.PROFILE_NAMES:
        res = nab.sweep(ours, profiles[name])
        results[name] = res
        report[name] = round(res.normalised, 4)
        thresholds[name] = res.threshold
    report["threshold"] = thresholds
    report["raw"] = {name: round(r.raw, 6) for name, r in results.items()}
    report["n_files"] = len(corpus)
    report["n_windows"] = results["standard"].n_windows
    report["rows"] = int(sum(f.values.shape[0] for f in corpus))
    report["detector_seconds"] = round(seconds, 3)
    report["rows_per_s"] = round(report["rows"] / seconds, 1) if seconds > 0 else None
    reference: dict[str, dict[str, float]] = {}
    for det in nab.reference_detectors(data):
        try:
            ref = [nab.load_reference_scores(data, det, f) for f in corpus]
        except (nab.BenchmarkDataError, OSError):
            continue  # a reference detector without outputs for every file cannot be compared
        reference[det] = {p: round(nab.sweep(ref, profiles[p]).normalised, 4) for p in nab.PROFILE_NAMES}
    report["reference"] = reference
    report["leave_one_file_out"] = _leave_one_file_out(ours, profiles["standard"])
    report["per_file_standard"] = [
        _file_details(f, fs, s, worst) for f, fs, s in zip(corpus, results["standard"].files, scores, strict=True)
    ]
    report["config"] = {k: getattr(config, k) for k in config.__dataclass_fields__}
    return report


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"NAB on {report['n_files']} files, {report['n_windows']} windows, {report['rows']} rows "
        f"(detector {report['detector_seconds']} s)",
        "",
    ]
    lines.append(f"{'detector':<14}" + "".join(f"{p:>22}" for p in nab.PROFILE_NAMES))
    lines.append(f"{'urbansense':<14}" + "".join(f"{report[p]:>22.2f}" for p in nab.PROFILE_NAMES))
    for det, vals in report["reference"].items():
        lines.append(f"{det:<14}" + "".join(f"{vals[p]:>22.2f}" for p in nab.PROFILE_NAMES))
    loo = report["leave_one_file_out"]
    lines += [
        "",
        f"thresholds: {report['threshold']}",
        f"leave one file out (threshold swept on the other files): standard {loo['standard']:.2f}",
        "",
        "per file (standard profile):",
    ]
    for fd in report["per_file_standard"]:
        lines.append(
            f"  {fd['file']:<55} raw={fd['raw']:7.3f} (left out {loo['raw_per_file'][fd['file']]:7.3f}) "
            f"detected={fd['detected']}/{fd['windows']} "
            f"FP={fd['false_positives']} (cost {fd['false_positive_cost']:.2f})"
        )
        for m in fd["missed"]:
            lines.append(
                f"      missed window {m['window']}: {m['start']} .. {m['end']} "
                f"(max score in window {m['max_score_in_window']})"
            )
        for fp in fd["worst_false_positives"]:
            lines.append(f"      false positive {fp['timestamp']} score={fp['score']} cost={fp['cost']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point used by ``python -m benchmarks nab``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks nab", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"NAB folder (default {DEFAULT_DATA})")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="processes scoring files")
    parser.add_argument("--worst", type=int, default=3, help="false positives listed per file")
    args = parser.parse_args(argv)
    try:
        report = run(args.data, max(1, args.jobs), args.worst)
    except nab.BenchmarkDataError as exc:
        sys.stderr.write(f"nab benchmark: {exc}\n")
        return 2
    sys.stdout.write((json.dumps(report, indent=2) if args.json else _table(report)) + "\n")
    return 0
