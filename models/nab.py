"""NAB (Numenta Anomaly Benchmark) scoring, implemented from ``SCORING.md`` (pure, numpy).

The scorer works on row indices: a file is ``n`` rows, its label windows are inclusive row ranges
``[l_k, r_k]`` and the detector gives one score in [0, 1] per row. Reading CSV/JSON files and
turning timestamps into row indices lives in :func:`load_corpus` and friends at the bottom, so the
numeric core never touches the file system.

Example:
    >>> prof = Profile("standard", a_tp=1.0, a_fp=0.11, a_fn=1.0)
    >>> f = ScoredFile("f.csv", scores=np.r_[np.zeros(20), 1.0, np.zeros(9)], starts=np.array([20]),
    ...                ends=np.array([24]))
    >>> round(raw_score(f, prof, threshold=0.5).raw, 6)
    1.0
    >>> sweep([f], prof).normalised
    100.0
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from models.errors import BenchmarkDataError

logger = logging.getLogger(__name__)

__all__ = [
    "BenchmarkDataError",
    "CorpusFile",
    "load_reference_scores",
    "parse_timestamp_ms",
    "published_per_file",
    "read_series",
    "reference_detectors",
    "score_at",
    "PROFILE_NAMES",
    "FileScore",
    "Profile",
    "ScoredFile",
    "SweepResult",
    "load_corpus",
    "load_profiles",
    "normalise",
    "probation_rows",
    "raw_score",
    "row_values",
    "scaled_sigmoid",
    "sweep",
]

PROFILE_NAMES: tuple[str, ...] = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
NOTHING_FLAGGED = 1.1  # sweep candidate above every score in [0, 1]
_SIGMA_MINUS_ONE = 2.0 / (1.0 + np.exp(-5.0)) - 1.0  # sigma(-1) = 0.986614...


@dataclass(frozen=True)
class Profile:
    """A NAB cost profile (``config/profiles.json``): weights of TP, FP and FN."""

    name: str
    a_tp: float
    a_fp: float
    a_fn: float


@dataclass(frozen=True)
class ScoredFile:
    """One data file: the detector's per-row scores and its label windows as inclusive row ranges."""

    name: str
    scores: NDArray[np.float64]
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]

    @property
    def n_rows(self) -> int:
        """Number of rows in the file."""
        return int(self.scores.shape[0])


@dataclass(frozen=True)
class FileScore:
    """Raw NAB score of one file at one threshold, with the detection counts behind it."""

    name: str
    raw: float
    tp_windows: int
    fn_windows: int
    fp_rows: int
    missed_windows: tuple[int, ...]
    fp_costs: tuple[tuple[int, float], ...]  # (row, value) of each flagged row outside windows


@dataclass(frozen=True)
class SweepResult:
    """Best corpus-wide threshold for one profile and the scores it gives."""

    profile: Profile
    threshold: float
    raw: float
    normalised: float
    n_windows: int
    files: tuple[FileScore, ...] = field(default=())


def scaled_sigmoid(y: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """NAB's scaled sigmoid: ``2/(1+exp(5y)) - 1`` for ``y <= 3`` and ``-1`` above.

    Example:
        >>> float(np.round(scaled_sigmoid(-1.0), 6))
        0.986614
        >>> float(scaled_sigmoid(3.5))
        -1.0
    """
    y_arr = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        out = 2.0 / (1.0 + np.exp(5.0 * np.minimum(y_arr, 3.0))) - 1.0
    return np.where(y_arr > 3.0, -1.0, out)


def probation_rows(n_rows: int) -> int:
    """Rows at the start of a file that are never scored: ``min(floor(0.15 n), 750)``.

    Example:
        >>> probation_rows(2499), probation_rows(22695)
        (374, 750)
    """
    return min(int(np.floor(0.15 * n_rows)), 750)


def row_values(
    n_rows: int, starts: NDArray[np.int64], ends: NDArray[np.int64], profile: Profile
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Value ``v_i`` of flagging each row, and the window index of each row (``-1`` outside windows).

    Args:
        n_rows: rows in the file.
        starts: first row of each window (sorted, non-overlapping).
        ends: last row of each window, inclusive.
        profile: the cost profile.

    Returns:
        ``(values, window_of_row)``, both of length ``n_rows``.
    """
    idx = np.arange(n_rows, dtype=np.int64)
    values = np.full(n_rows, -profile.a_fp, dtype=np.float64)
    window_of = np.full(n_rows, -1, dtype=np.int64)
    if len(starts) == 0:
        return values, window_of
    widths = (ends - starts + 1).astype(np.float64)
    # last window starting at or before i; i is inside it when i <= its end
    k = np.searchsorted(starts, idx, side="right") - 1
    has_prev = k >= 0
    kk = np.where(has_prev, k, 0)
    inside = has_prev & (idx <= ends[kk])
    window_of[inside] = kk[inside]
    y_in = -(ends[kk] - idx + 1) / widths[kk]
    values[inside] = profile.a_tp * scaled_sigmoid(y_in[inside]) / _SIGMA_MINUS_ONE
    after = has_prev & ~inside  # outside, with window kk the last one that ended before i
    with np.errstate(divide="ignore"):
        y_out = (idx - ends[kk]) / (widths[kk] - 1.0)  # a one-row window gives +inf, i.e. sigma = -1
    values[after] = profile.a_fp * scaled_sigmoid(y_out[after])
    return values, window_of


def _scored_windows(f: ScoredFile, probation: int) -> NDArray[np.bool_]:
    """Windows that have at least one row at or after probation (the others are left out)."""
    return f.ends >= probation


def raw_score(f: ScoredFile, profile: Profile, threshold: float) -> FileScore:
    """Raw NAB score of one file when every row ``i >= P`` with ``score >= threshold`` is flagged.

    Example:
        >>> prof = Profile("standard", 1.0, 0.11, 1.0)
        >>> f = ScoredFile("f", np.zeros(30), np.array([20]), np.array([24]))
        >>> raw_score(f, prof, 0.5).raw
        -1.0
    """
    n = f.n_rows
    p = probation_rows(n)
    values, window_of = row_values(n, f.starts, f.ends, profile)
    flagged = f.scores >= threshold
    flagged[:p] = False
    keep = _scored_windows(f, p)
    outside = flagged & (window_of < 0)
    fp_rows = np.flatnonzero(outside)
    total = float(values[fp_rows].sum())
    tp = 0
    missed: list[int] = []
    for k in np.flatnonzero(keep):
        hits = np.flatnonzero(flagged[f.starts[k] : f.ends[k] + 1])
        if hits.size:
            total += float(values[f.starts[k] + hits[0]])
            tp += 1
        else:
            total -= profile.a_fn
            missed.append(int(k))
    return FileScore(
        name=f.name,
        raw=total,
        tp_windows=tp,
        fn_windows=len(missed),
        fp_rows=int(fp_rows.size),
        missed_windows=tuple(missed),
        fp_costs=tuple((int(i), float(values[i])) for i in fp_rows),
    )


def normalise(raw: float, n_windows: int, profile: Profile) -> float:
    """``100 (S - S_null) / (S_perfect - S_null)`` with ``S_perfect = A_TP N`` and ``S_null = -A_FN N``.

    Example:
        >>> normalise(0.0, 25, Profile("standard", 1.0, 0.11, 1.0))
        50.0
    """
    if n_windows <= 0:
        msg = f"NAB normalisation: expected at least one label window, got n_windows={n_windows}"
        raise BenchmarkDataError(msg)
    s_perfect = profile.a_tp * n_windows
    s_null = -profile.a_fn * n_windows
    return 100.0 * (raw - s_null) / (s_perfect - s_null)


def sweep(files: Sequence[ScoredFile], profile: Profile) -> SweepResult:
    """Choose the single corpus-wide threshold that maximises the summed raw score (exhaustive sweep).

    Every distinct score of a scored row is a candidate, plus 1.1 (nothing flagged). On ties the highest
    threshold wins. Per-file scores at the chosen threshold are recomputed with :func:`raw_score`.
    """
    scores_parts: list[NDArray[np.float64]] = []
    delta_parts: list[NDArray[np.float64]] = []
    n_windows = 0
    for f in files:
        n = f.n_rows
        p = probation_rows(n)
        values, window_of = row_values(n, f.starts, f.ends, profile)
        keep = _scored_windows(f, p)
        n_windows += int(keep.sum())
        a = f.scores[p:]
        v = values[p:]
        w = window_of[p:]
        delta = np.where(w < 0, v, 0.0)
        # inside a window only an improvement of the window's best value counts: walk its rows by
        # descending score and take the increments of the running maximum (which starts at -A_FN)
        for k in np.flatnonzero(keep):
            rows = np.flatnonzero(w == k)
            order = rows[np.argsort(-a[rows], kind="stable")]
            run = np.maximum.accumulate(np.maximum(v[order], -profile.a_fn))
            delta[order] = np.diff(np.r_[-profile.a_fn, run])
        scores_parts.append(a)
        delta_parts.append(delta)
    all_scores = np.concatenate(scores_parts) if scores_parts else np.empty(0)
    all_delta = np.concatenate(delta_parts) if delta_parts else np.empty(0)
    base = -profile.a_fn * n_windows
    best_threshold, best_raw = NOTHING_FLAGGED, base
    if all_scores.size:
        order = np.argsort(-all_scores, kind="stable")
        s_sorted = all_scores[order]
        cum = base + np.cumsum(all_delta[order])
        run_end = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # last row of each run of equal scores
        cand_s, cand_raw = s_sorted[run_end], cum[run_end]
        i = int(np.argmax(cand_raw))  # first maximum: the highest threshold among ties
        if cand_raw[i] > best_raw:
            best_threshold, best_raw = float(cand_s[i]), float(cand_raw[i])
    per_file = tuple(raw_score(f, profile, best_threshold) for f in files)
    raw = float(sum(fs.raw for fs in per_file))
    return SweepResult(
        profile=profile,
        threshold=best_threshold,
        raw=raw,
        normalised=normalise(raw, n_windows, profile) if n_windows else float("nan"),
        n_windows=n_windows,
        files=per_file,
    )


def score_at(files: Sequence[ScoredFile], profile: Profile, threshold: float) -> SweepResult:
    """Corpus score at a fixed threshold (for example NAB's published one)."""
    per_file = tuple(raw_score(f, profile, threshold) for f in files)
    n_windows = sum(int(_scored_windows(f, probation_rows(f.n_rows)).sum()) for f in files)
    raw = float(sum(fs.raw for fs in per_file))
    return SweepResult(profile, threshold, raw, normalise(raw, n_windows, profile), n_windows, per_file)


# --- loading (file system) -------------------------------------------------------------------------


def parse_timestamp_ms(text: str) -> int:
    """NAB timestamp (``YYYY-MM-DD HH:MM:SS[.ffffff]``, naive, read as UTC) as epoch ms.

    Example:
        >>> parse_timestamp_ms("1970-01-01 00:00:01.500000")
        1500
    """
    dt = datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)
    return int(round(dt.timestamp() * 1000))


def read_series(path: Path) -> tuple[list[str], NDArray[np.int64], NDArray[np.float64]]:
    """Read a NAB data CSV (``timestamp,value``): raw timestamp strings, epoch ms and values."""
    return _read_two_columns(path, "value")


def read_scores(path: Path) -> tuple[list[str], NDArray[np.int64], NDArray[np.float64]]:
    """Read a detector output CSV with ``timestamp`` and ``anomaly_score`` columns."""
    return _read_two_columns(path, "anomaly_score")


def _read_two_columns(path: Path, column: str) -> tuple[list[str], NDArray[np.int64], NDArray[np.float64]]:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "timestamp" not in reader.fieldnames or column not in reader.fieldnames:
                msg = f"NAB file {path}: expected columns 'timestamp' and '{column}', got {reader.fieldnames}"
                raise BenchmarkDataError(msg)
            stamps: list[str] = []
            vals: list[float] = []
            for line_no, row in enumerate(reader, start=2):
                try:
                    vals.append(float(row[column]))
                    stamps.append(row["timestamp"])
                except (TypeError, ValueError) as exc:
                    msg = f"NAB file {path} line {line_no}: expected a number in '{column}', got {row[column]!r}"
                    raise BenchmarkDataError(msg) from exc
    except OSError as exc:
        msg = f"NAB file {path}: cannot read ({exc})"
        raise BenchmarkDataError(msg) from exc
    ms = np.fromiter((parse_timestamp_ms(s) for s in stamps), dtype=np.int64, count=len(stamps))
    return stamps, ms, np.asarray(vals, dtype=np.float64)


def window_rows(
    name: str, stamps_ms: NDArray[np.int64], windows: Iterable[Sequence[str]]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Map ``[[start, end], ...]`` timestamp windows to inclusive row ranges; endpoints must be row stamps."""
    starts: list[int] = []
    ends: list[int] = []
    for w in windows:
        bounds = []
        for text in w:
            hits = np.flatnonzero(stamps_ms == parse_timestamp_ms(text))  # real files hold a few out-of-order rows
            if hits.size == 0:
                msg = f"NAB labels for {name}: window endpoint {text!r} is not a row timestamp of the data file"
                raise BenchmarkDataError(msg)
            bounds.append(hits)
        starts.append(int(bounds[0][0]))
        ends.append(int(bounds[1][-1]))
    s_arr, e_arr = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    if np.any(e_arr < s_arr) or np.any(s_arr[1:] <= e_arr[:-1]):
        pairs = list(zip(starts, ends, strict=True))
        msg = f"NAB labels for {name}: expected sorted, non-overlapping windows, got rows {pairs}"
        raise BenchmarkDataError(msg)
    return s_arr, e_arr


def load_profiles(path: Path) -> dict[str, Profile]:
    """Read ``config/profiles.json`` into :class:`Profile` objects keyed by name."""
    try:
        raw = json.loads(path.read_text())
        return {
            name: Profile(
                name,
                float(c["CostMatrix"]["tpWeight"]),
                float(c["CostMatrix"]["fpWeight"]),
                float(c["CostMatrix"]["fnWeight"]),
            )
            for name, c in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"NAB profiles {path}: expected {{name: {{CostMatrix: {{tpWeight, fpWeight, fnWeight}}}}}} ({exc!r})"
        raise BenchmarkDataError(msg) from exc


def load_windows(path: Path) -> dict[str, list[list[str]]]:
    """Read ``labels/combined_windows.json``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        msg = f"NAB labels {path}: cannot read JSON ({exc!r})"
        raise BenchmarkDataError(msg) from exc
    if not isinstance(data, dict):
        msg = f"NAB labels {path}: expected an object keyed by '<category>/<file>.csv', got {type(data).__name__}"
        raise BenchmarkDataError(msg)
    return data


@dataclass(frozen=True)
class CorpusFile:
    """A data file of the corpus with its windows as row ranges."""

    name: str  # "<category>/<file>.csv"
    path: Path
    stamps: list[str]
    stamps_ms: NDArray[np.int64]
    values: NDArray[np.float64]
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]

    def with_scores(self, scores: NDArray[np.float64]) -> ScoredFile:
        """Attach one detector's per-row scores (must be one per row, all in [0, 1])."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != self.values.shape:
            msg = f"NAB file {self.name}: expected {self.values.shape[0]} scores, got {scores.shape[0]}"
            raise BenchmarkDataError(msg)
        if scores.size and not (np.all(np.isfinite(scores)) and scores.min() >= 0.0 and scores.max() <= 1.0):
            msg = f"NAB file {self.name}: expected anomaly scores in [0, 1], got [{scores.min()}, {scores.max()}]"
            raise BenchmarkDataError(msg)
        return ScoredFile(self.name, scores, self.starts, self.ends)


def load_corpus(root: Path) -> list[CorpusFile]:
    """Load every file listed in ``labels/combined_windows.json`` from ``root/data``, sorted by name."""
    labels = load_windows(root / "labels" / "combined_windows.json")
    out: list[CorpusFile] = []
    for name in sorted(labels):
        path = root / "data" / name
        stamps, ms, values = read_series(path)
        starts, ends = window_rows(name, ms, labels[name])
        out.append(CorpusFile(name, path, stamps, ms, values, starts, ends))
    logger.debug("nab corpus loaded root=%s files=%d", root, len(out))
    return out


def detector_output_path(root: Path, detector: str, name: str) -> Path:
    """Path of a reference detector's output for data file ``name`` (``<cat>/<detector>_<file>``)."""
    category, _, fname = name.partition("/")
    return root / "reference" / "detector_outputs" / detector / category / f"{detector}_{fname}"


def load_reference_scores(root: Path, detector: str, f: CorpusFile) -> ScoredFile:
    """Load a reference detector's per-row scores for ``f``; its timestamps must match the data rows."""
    path = detector_output_path(root, detector, f.name)
    stamps, ms, scores = read_scores(path)
    if len(stamps) != len(f.stamps) or not np.array_equal(ms, f.stamps_ms):
        msg = f"NAB detector output {path}: expected the {len(f.stamps)} timestamps of {f.path}, got {len(stamps)}"
        raise BenchmarkDataError(msg)
    return f.with_scores(scores)


def reference_detectors(root: Path) -> list[str]:
    """Names of the detectors under ``reference/detector_outputs`` (empty when absent)."""
    base = root / "reference" / "detector_outputs"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def published_per_file(root: Path) -> dict[tuple[str, str, str], tuple[float, float]]:
    """``(detector, profile, file) -> (published_threshold, raw_score)`` from ``per_file_scores.csv``."""
    path = root / "reference" / "per_file_scores.csv"
    out: dict[tuple[str, str, str], tuple[float, float]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            out[(row["detector"], row["profile"], row["file"])] = (
                float(row["published_threshold"]),
                float(row["raw_score"]),
            )
    return out


def by_name(files: Iterable[CorpusFile]) -> Mapping[str, CorpusFile]:
    """Index corpus files by their ``<category>/<file>.csv`` name."""
    return {f.name: f for f in files}
