"""Anomaly scoring inside the stream: per-kind models over closed window aggregates.

:class:`StreamScorer` scores a micro-batch of closed windows per feed kind with numpy (one matrix per
kind), writes ``score``, ``model_version`` and ``top_features`` into each aggregate record, and only
then lets the windows that did not look anomalous update the baselines the features are computed
against (an anomaly must not become the new normal). Models are swapped without a restart by
:meth:`StreamScorer.reload`, which picks up a newer version directory under the models folder; the
baselines stay. They survive a restart as JSON documents the caller keeps with its window state
(:meth:`StreamScorer.state_docs`, loaded back by ``restore_series``/``restore_season``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ModelLoadError
from models.features import FeatureState
from models.registry import LoadedModel, load_model
from models.scoring import Scorer

logger = logging.getLogger(__name__)

KINDS = ("traffic", "environment", "crowd", "iot")


def latest_versions(root: Path) -> dict[str, Path]:
    """The newest version directory of each kind under ``root`` (``<kind>/<version>/``)."""
    out: dict[str, Path] = {}
    for kind in KINDS:
        base = root / kind
        versions = [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
        if versions:
            out[kind] = max(versions, key=lambda p: _version_key(p.name))
    return out


def _version_key(name: str) -> tuple[int, ...] | tuple[float, str]:
    parts = name.split(".")
    if all(x.isdigit() for x in parts):
        return tuple(int(x) for x in parts)
    return (float("inf"), name)


#: Windows a series learns from unconditionally before anomalies are kept out of its baselines.
WARMUP_WINDOWS = 10
#: Consecutive anomalous windows after which a shift is accepted into the baselines.
ACCEPT_AFTER = 10


class StreamScorer:
    """Scores closed windows of the primary tumbling window, per feed kind."""

    def __init__(self, models: dict[str, LoadedModel], *, window: str = "tumbling", size_ms: int | None = None) -> None:
        self.window = window
        self.size_ms = size_ms
        self.scorers = {k: Scorer(m) for k, m in models.items()}
        self.thresholds = {k: float(m.sidecar.get("default_threshold", 0.99)) for k, m in models.items()}
        self.paths = {k: m.path for k, m in models.items()}
        self._features: dict[str, FeatureState] = {k: FeatureState() for k in KINDS}
        self._streak: dict[tuple[str, str], int] = {}  # consecutive anomalous windows per series
        # The last window start's baseline updates, applied before anything reads the baselines
        # again (:meth:`_settle`): the aggregates leave for the alert path without waiting for them.
        self._unlearned: list[tuple[FeatureState, list[dict[str, Any]]]] = []

    @property
    def features(self) -> dict[str, FeatureState]:
        """The per-kind baselines, with every scored window's update applied."""
        self._settle()
        return self._features

    def _settle(self) -> None:
        """Apply the baseline updates :meth:`score` left (it leaves those of its last window start)."""
        for state, records in self._unlearned:
            state.learn(records)
        self._unlearned.clear()

    def _may_learn(self, state: FeatureState, rec: dict[str, Any], score: float, threshold: float) -> bool:
        """Whether a scored window may update its baselines.

        Normal windows do. Anomalous ones do not (the baseline must not drift towards the incident
        it is judged against), with two exceptions that stop a feedback loop of stale baselines:
        while a series is warming up (fewer than ``WARMUP_WINDOWS`` learned, its spread is not
        known yet), and once an anomaly has lasted ``ACCEPT_AFTER`` windows (a lasting level shift,
        such as a re-sited sensor, becomes the new normal; alert rules still see the scores).
        """
        key = (str(rec["sensor_id"]), str(rec["metric"]))
        if score < threshold:
            self._streak.pop(key, None)
            return True
        streak = self._streak[key] = self._streak.get(key, 0) + 1
        return state.seen(*key) < WARMUP_WINDOWS or streak >= ACCEPT_AFTER

    @classmethod
    def from_folder(cls, root: Path, *, size_ms: int | None = None) -> StreamScorer:
        """Load the newest version of every kind; a missing kind or a bad artifact stops start-up."""
        found = latest_versions(root)
        missing = [k for k in KINDS if k not in found]
        if missing:
            msg = f"models folder {root}: no artifact for kind(s) {missing} (expected <kind>/<version>/)"
            raise ModelLoadError(msg)
        models = {k: load_model(p) for k, p in found.items()}
        for k, m in models.items():
            logger.info("anomaly model loaded kind=%s version=%s path=%s", k, m.version, m.path)
        return cls(models, size_ms=size_ms)

    def versions(self) -> dict[str, str]:
        """Model version in use per kind."""
        return {k: s.version for k, s in self.scorers.items()}

    def reload(self, root: Path) -> list[str]:
        """Swap in newer model versions found under ``root``; keep the old model on any error."""
        swapped = []
        for kind, path in latest_versions(root).items():
            if self.paths.get(kind) == path:
                continue
            try:
                model = load_model(path)
            except ModelLoadError as exc:
                logger.error("model swap refused kind=%s path=%s error=%s", kind, path, exc)
                self.paths[kind] = path  # do not retry the same broken artifact every tick
                continue
            old = self.scorers[kind].version if kind in self.scorers else None
            self.scorers[kind] = Scorer(model)
            self.thresholds[kind] = float(model.sidecar.get("default_threshold", 0.99))
            self.paths[kind] = path
            logger.info("anomaly model swapped kind=%s from=%s to=%s", kind, old, self.scorers[kind].version)
            swapped.append(kind)
        return swapped

    def _scored(self, rec: dict[str, Any]) -> bool:
        """Whether :meth:`score` scores ``rec``: a final record of the primary window, of a kind with a model."""
        if rec.get("window") != self.window or not rec.get("final", True):
            return False
        if self.size_ms is not None and rec.get("size_ms") != self.size_ms:
            return False
        return rec["kind"] in self.scorers

    def score(self, aggregates: Sequence[dict[str, Any]]) -> None:
        """Add ``score``, ``model_version`` and ``top_features`` to the final primary-window records."""
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for rec in aggregates:
            if self._scored(rec):
                by_kind.setdefault(rec["kind"], []).append(rec)
        self._settle()
        for kind, recs in by_kind.items():
            scorer = self.scorers[kind]
            state = self._features[kind]
            threshold = self.thresholds[kind]
            # One window start at a time, in event-time order (as in training): window W's features
            # see the baselines learned up to W-1 and its zone peers closing at the same start, so a
            # score depends on the events, never on how a feed was cut into micro-batches.
            by_start: dict[int, list[dict[str, Any]]] = {}
            for rec in recs:
                by_start.setdefault(int(rec["start_ms"]), []).append(rec)
            starts = sorted(by_start)
            for start in starts:
                group = by_start[start]
                x = state.transform(group, learn=np.zeros(len(group), dtype=bool))
                res = scorer.score(x)
                scores = res.score.tolist()
                for rec, s, top in zip(group, scores, res.top_features, strict=True):
                    rec["score"] = s
                    rec["model_version"] = res.model_version
                    rec["top_features"] = list(top)
                normal = [r for r, s in zip(group, scores, strict=True) if self._may_learn(state, r, s, threshold)]
                if start == starts[-1]:
                    self._unlearned.append((state, normal))  # nothing reads them before _settle
                else:
                    state.learn(normal)  # the next start's features see them

    def state_docs(self, aggregates: Sequence[dict[str, Any]]) -> list[tuple[str, int | None, dict[str, Any]]]:
        """JSON documents of the state :meth:`score` changed scoring ``aggregates`` (call right after it).

        Per sensor with a scored record, ``(sensor_id, None, {"k": kind, "m": ..., "s": ...})``: per
        metric its baselines and recent means (:meth:`FeatureState.series_doc`) and, in ``"s"``, its
        running anomaly streak. Per hour-of-week season bucket those records fell into,
        ``(sensor_id, bucket, {"k": kind, "v": {metric: value}})``: a closure writes only the buckets
        it touched, never a sensor's whole profile. :meth:`restore_series` and :meth:`restore_season`
        load them back; the result scores exactly as the scorer that wrote them.
        """
        self._settle()
        touched: dict[tuple[str, str], set[int]] = {}  # (kind, sensor_id) -> season buckets
        for rec in aggregates:
            if self._scored(rec):
                buckets = touched.setdefault((rec["kind"], str(rec["sensor_id"])), set())
                buckets.add(FeatureState.bucket(int(rec["start_ms"])))
        out: list[tuple[str, int | None, dict[str, Any]]] = []
        for (kind, sid), buckets in touched.items():
            state = self._features[kind]
            series = state.series_doc(sid)
            streaks = {m: n for m in series if (n := self._streak.get((sid, m), 0))}
            out.append((sid, None, {"k": kind, "m": series, "s": streaks} if streaks else {"k": kind, "m": series}))
            for bucket in sorted(buckets):
                values = state.season_doc(sid, bucket)
                if values:
                    out.append((sid, bucket, {"k": kind, "v": values}))
        return out

    def restore_series(self, sensor_id: str, doc: dict[str, Any]) -> None:
        """Load a sensor's baselines and streaks written by :meth:`state_docs` (replacing what is held)."""
        series = doc["m"]
        self._settle()
        self._features[doc["k"]].restore_series(sensor_id, series)
        streaks = doc.get("s", {})
        for metric in series:
            n = int(streaks.get(metric, 0))
            if n:
                self._streak[(sensor_id, metric)] = n
            else:
                self._streak.pop((sensor_id, metric), None)

    def restore_season(self, sensor_id: str, bucket: int, doc: dict[str, Any]) -> None:
        """Load one season bucket of a sensor written by :meth:`state_docs`."""
        self._settle()
        self._features[doc["k"]].restore_season(sensor_id, bucket, doc["v"])

    def forget(self) -> None:
        """Drop all per-series state (after a rebalance: the owned partitions restore it from the table)."""
        self._unlearned.clear()
        self._features = {k: FeatureState() for k in KINDS}
        self._streak.clear()
