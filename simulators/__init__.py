"""Seeded, deterministic city feeds and a malformed-message corpus (pure).

The I/O adapters live in :mod:`simulators.publish`; import them from there so that importing
this package never pulls in paho-mqtt or confluent-kafka.
"""

from __future__ import annotations

from simulators.city import City, Sensor, build_city
from simulators.generators import Batch, Incident, generate
from simulators.malformed import malformed_corpus

__all__ = ["Batch", "City", "Incident", "Sensor", "build_city", "generate", "malformed_corpus"]
