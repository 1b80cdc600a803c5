"""Errors of the simulators package."""

from __future__ import annotations

from streams.errors import ConfigError, UrbanSensingError

__all__ = ["ReplayError", "ScenarioError"]


class ScenarioError(ConfigError):
    """A scenario file is unreadable or invalid; the message names the file, line and field."""


class ReplayError(UrbanSensingError, ValueError):
    """A recording cannot be replayed (unreadable file, bad row, bad mapping option)."""
