"""Anomaly models: the causal NAB detector, NAB scoring and the pre-trained per-kind window models."""

from __future__ import annotations

from models.detector import CausalDetector, DetectorConfig, score_series
from models.errors import ModelLoadError, ScoringError

__all__ = ["CausalDetector", "DetectorConfig", "ModelLoadError", "ScoringError", "score_series"]
