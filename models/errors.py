"""Errors of the ``models`` package."""

from __future__ import annotations

from streams.errors import UrbanSensingError

__all__ = ["BenchmarkDataError", "ModelLoadError", "ScoringError"]


class ModelLoadError(UrbanSensingError):
    """A model artifact is missing, corrupt, tampered with or does not match its sidecar or schema.

    The message names the file and the mismatch. The worker must stop: there is no default score.
    """


class BenchmarkDataError(UrbanSensingError, ValueError):
    """A benchmark data, label or detector-output file does not have the expected layout or content."""


class ScoringError(UrbanSensingError, ValueError):
    """Input to a scorer is malformed (wrong columns, non-finite values, unordered timestamps)."""
