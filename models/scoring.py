"""Batch scoring of window features with a loaded model (pure numpy + the verified estimator).

Example:
    >>> import numpy as np
    >>> calibrate(np.array([0.3, 0.5, 0.9]), np.array([0.4, 0.6, 0.8]))
    array([0.  , 0.25, 1.  ])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.errors import ScoringError
from models.features import FEATURE_NAMES
from models.registry import LoadedModel

logger = logging.getLogger(__name__)

__all__ = ["BatchScores", "Scorer", "calibrate"]


def calibrate(raw: NDArray[np.float64], quantiles: NDArray[np.float64]) -> NDArray[np.float64]:
    """Map raw scores to [0, 1] with the empirical CDF given by evenly spaced quantiles."""
    return np.interp(raw, quantiles, np.linspace(0.0, 1.0, quantiles.shape[0]))


def _average_path_length(n: NDArray[np.float64]) -> NDArray[np.float64]:
    """Expected path length of an unsuccessful BST search among ``n`` points (Isolation Forest's c(n))."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    big = n > 2
    out[n == 2] = 1.0
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class _FlatForest:
    """An IsolationForest's trees flattened into numpy arrays, traversed for all trees at once.

    Gives the same ``score_samples`` as scikit-learn (checked in the tests) without its per-tree Python loop.
    """

    def __init__(self, forest: object) -> None:
        feats, thr, left, right, leaf_val, roots = [], [], [], [], [], []
        offset = 0
        depth = 0
        for est, cols in zip(forest.estimators_, forest.estimators_features_, strict=True):  # type: ignore[attr-defined]
            t = est.tree_
            n_nodes = t.node_count
            is_leaf = t.children_left == -1
            node_depth = np.zeros(n_nodes, dtype=np.float64)
            for i in range(n_nodes):  # parents come before children in sklearn's node order
                if not is_leaf[i]:
                    node_depth[t.children_left[i]] = node_depth[i] + 1
                    node_depth[t.children_right[i]] = node_depth[i] + 1
            depth = max(depth, int(node_depth.max()))
            idx = np.arange(n_nodes)
            feats.append(np.where(is_leaf, 0, np.asarray(cols)[np.maximum(t.feature, 0)]))
            thr.append(np.where(is_leaf, np.inf, t.threshold))
            left.append(np.where(is_leaf, idx, t.children_left) + offset)
            right.append(np.where(is_leaf, idx, t.children_right) + offset)
            leaf_val.append(node_depth + _average_path_length(t.n_node_samples.astype(np.float64)))
            roots.append(offset)
            offset += n_nodes
        self._feat = np.concatenate(feats)
        self._thr = np.concatenate(thr)
        self._left = np.concatenate(left)
        self._right = np.concatenate(right)
        self._leaf = np.concatenate(leaf_val)
        self._roots = np.asarray(roots, dtype=np.int64)
        self._depth = depth
        self._norm = float(_average_path_length(np.array([float(forest.max_samples_)]))[0])  # type: ignore[attr-defined]

    def score_samples(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        node = np.broadcast_to(self._roots, (x.shape[0], self._roots.shape[0])).copy()
        rows = np.arange(x.shape[0])[:, None]
        for _ in range(self._depth):
            go_left = x[rows, self._feat[node]] <= self._thr[node]
            node = np.where(go_left, self._left[node], self._right[node])
        mean_path = self._leaf[node].mean(axis=1)
        return -(2.0 ** (-mean_path / self._norm))


@dataclass(frozen=True)
class BatchScores:
    """Scores of a micro-batch: ``score[i]`` in [0, 1], the model version and the top feature names."""

    score: NDArray[np.float64]
    model_version: str
    top_features: list[tuple[str, ...]]


class Scorer:
    """Scores feature matrices (columns in :data:`~models.features.FEATURE_NAMES` order) with one model."""

    def __init__(self, model: LoadedModel, top_k: int = 2) -> None:
        self.model = model
        self.version = f"{model.kind}/{model.version}"
        self._q = model.calibration
        self._center = np.asarray(model.sidecar["feature_center"], dtype=np.float64)
        self._spread = np.asarray(model.sidecar["feature_spread"], dtype=np.float64)
        self._top_k = top_k
        self._names = np.array(FEATURE_NAMES)
        self._forest = _FlatForest(model.estimator)

    def score(self, x: NDArray[np.float64]) -> BatchScores:
        """Score a ``(n, n_features)`` batch; top features are those furthest from the training median."""
        if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
            msg = f"scorer {self.version}: expected shape (n, {len(FEATURE_NAMES)}), got {x.shape}"
            raise ScoringError(msg)
        if not np.all(np.isfinite(x)):
            msg = (
                f"scorer {self.version}: expected finite features, got NaN/inf in {int((~np.isfinite(x)).sum())} cells"
            )
            raise ScoringError(msg)
        if x.shape[0] == 0:
            return BatchScores(np.zeros(0), self.version, [])
        raw = -self._forest.score_samples(x)
        score = calibrate(raw, self._q)
        dev = np.abs(x - self._center) / self._spread
        top = np.argsort(-dev, axis=1)[:, : self._top_k]
        names = self._names[top]
        return BatchScores(score, self.version, [tuple(r) for r in names.tolist()])
