"""Seeded, deterministic city feeds and a malformed-message corpus (pure).

The I/O adapters live in :mod:`simulators.publish` and :mod:`simulators.replay`; import them
from there so that importing this package never pulls in paho-mqtt or confluent-kafka.
"""

from __future__ import annotations

from simulators.city import City, Sensor, build_city, plan_city
from simulators.feed import Plan, feed
from simulators.generators import Batch, Incident, generate
from simulators.malformed import malformed_corpus
from simulators.scenario import Scenario, load_scenario

__all__ = [
    "Batch",
    "City",
    "Incident",
    "Plan",
    "Scenario",
    "Sensor",
    "build_city",
    "feed",
    "generate",
    "load_scenario",
    "malformed_corpus",
    "plan_city",
]
