"""Error hierarchy. Every UrbanSense error derives from :class:`UrbanSensingError`."""

from __future__ import annotations


class UrbanSensingError(Exception):
    """Root of all UrbanSense errors."""


class ConfigError(UrbanSensingError, ValueError):
    """Configuration is missing or invalid (names the setting and the file or variable)."""


class InvalidReading(UrbanSensingError, ValueError):  # noqa: N818 - domain name, like faust.ValidationError
    """A message failed the reading contract.

    Attributes:
        reason: short machine-readable code (``bad_json``, ``missing_field``, ...).
        detail: human-readable message naming the field, expectation and value.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SinkError(UrbanSensingError):
    """A time-series or alert sink failed after its retries."""
