from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Service, run_influxd, run_mosquitto, run_tansu


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def tansu(service_dir: Path) -> Iterator[Service]:
    """A Tansu Kafka-protocol broker (in-memory storage). Use fresh topics and group ids per test."""
    with run_tansu(service_dir) as svc:
        yield svc


@pytest.fixture(scope="session")
def bootstrap(tansu: Service) -> str:
    return f"127.0.0.1:{tansu.port}"


@pytest.fixture(scope="session")
def mosquitto(service_dir: Path) -> Iterator[Service]:
    """A private Mosquitto with anonymous access on a free port."""
    with run_mosquitto(service_dir) as svc:
        yield svc


@pytest.fixture(scope="session")
def influxd(service_dir: Path) -> Iterator[Service]:
    """A real InfluxDB 1.x server on a free port with a temporary data directory."""
    with run_influxd(service_dir) as svc:
        yield svc


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault tests' no-loss tallies (sent, processed, dead-lettered, lost), passed or not."""
    import sys

    support = sys.modules.get("tests.integration.test_faults_support")
    lines = getattr(support, "FIGURES", None)
    if lines:
        terminalreporter.section("fault figures")
        for line in lines:
            terminalreporter.write_line(line)
