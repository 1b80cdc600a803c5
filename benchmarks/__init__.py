"""Benchmarks: ``python -m benchmarks <name> [--json]``. Each prints JSON; quote medians."""

from __future__ import annotations
