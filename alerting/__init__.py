"""Early-warning alerting: rule files, the stateful alert engine, and (I/O) sinks and the board."""

from __future__ import annotations

from alerting.engine import AlertEngine
from alerting.errors import RuleError
from alerting.rules import RuleSet, alert_id, load_rules

__all__ = ["AlertEngine", "RuleError", "RuleSet", "alert_id", "load_rules"]
