"""Alerting errors."""

from __future__ import annotations

from streams.errors import ConfigError


class RuleError(ConfigError):
    """A rule file is invalid; the message names the file, the rule and the field."""
