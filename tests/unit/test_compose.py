"""docker-compose.yml is checked statically (CI has no Docker engine)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ("kafka", "mosquitto", "influxdb")
APPS = ("worker", "bridge", "simulator")
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    svcs: dict[str, Any] = compose["services"]
    return svcs


def settings_env_names(model: type[BaseModel] = Settings, prefix: str = "URBAN_") -> set[str]:
    """Every variable name Settings reads: URBAN_<FIELD> and URBAN_<SECTION>__<FIELD>."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names |= settings_env_names(ann, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def published(service: dict[str, Any]) -> set[int]:
    """Host ports a service publishes ("HOST:CONTAINER" or "IP:HOST:CONTAINER")."""
    return {int(str(p).split(":")[-2]) for p in service.get("ports", [])}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form so anchors can be merged"
    return {k: str(v) for k, v in env.items()}


def resolve_defaults(value: str) -> str:
    """What compose substitutes when the variable is unset: ``${X:-d}`` -> ``d``."""
    return _DEFAULTED.sub(lambda m: m.group(2), value)


def test_all_services_present(services: dict[str, Any]) -> None:
    assert set(INFRA + APPS) <= set(services)


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("kafka", "apache/kafka:3.8.0"),
        ("mosquitto", "eclipse-mosquitto:2"),
        ("influxdb", "influxdb:2.7"),
    ],
)
def test_infra_images(services: dict[str, Any], name: str, image: str) -> None:
    assert services[name]["image"] == image


def test_apps_are_built_from_the_repo(services: dict[str, Any]) -> None:
    assert (ROOT / "Dockerfile").is_file()
    for name in APPS:
        assert services[name]["build"] == "."


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("worker", ["urbansense", "worker"]),
        ("bridge", ["urbansense", "bridge"]),
        ("simulator", ["urbansense", "simulate", "--transport", "mqtt"]),
    ],
)
def test_app_commands(services: dict[str, Any], name: str, command: list[str]) -> None:
    assert services[name]["command"][: len(command)] == command


def test_ports(services: dict[str, Any]) -> None:
    assert 1883 in published(services["mosquitto"])
    assert 8086 in published(services["influxdb"])
    assert 6066 in published(services["worker"])
    # The apps use the in-network listener kafka:9092; the host gets its own listener.
    assert "9092" in [str(p) for p in services["kafka"]["expose"]]
    assert 9094 in published(services["kafka"])
    kenv = services["kafka"]["environment"]
    assert "PLAINTEXT://kafka:9092" in kenv["KAFKA_ADVERTISED_LISTENERS"]
    assert "HOST://localhost:9094" in kenv["KAFKA_ADVERTISED_LISTENERS"]


def test_kafka_runs_kraft_single_node(services: dict[str, Any]) -> None:
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert len(env["CLUSTER_ID"]) == 22  # a base64-encoded UUID, as kafka-storage requires


def test_influxdb_is_set_up_with_the_token_the_apps_use(services: dict[str, Any]) -> None:
    env = services["influxdb"]["environment"]
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    for name in APPS:
        app = env_of(services[name])
        assert app["URBAN_INFLUX__TOKEN"] == env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
        assert app["URBAN_INFLUX__ORG"] == env["DOCKER_INFLUXDB_INIT_ORG"]
        assert app["URBAN_INFLUX__BUCKET"] == env["DOCKER_INFLUXDB_INIT_BUCKET"]


@pytest.mark.parametrize("name", INFRA)
def test_infra_has_health_checks(services: dict[str, Any], name: str) -> None:
    test = services[name]["healthcheck"]["test"]
    assert test[0] in {"CMD", "CMD-SHELL"}
    probe = " ".join(test[1:])
    expected = {"kafka": "kafka-topics.sh", "mosquitto": "mosquitto_sub", "influxdb": "influx ping"}
    assert expected[name] in probe


@pytest.mark.parametrize("name", APPS)
def test_apps_wait_for_healthy_infra(services: dict[str, Any], name: str) -> None:
    deps = services[name]["depends_on"]
    for infra in INFRA:
        assert deps[infra] == {"condition": "service_healthy"}


@pytest.mark.parametrize("name", APPS)
def test_app_env_vars(services: dict[str, Any], name: str) -> None:
    env = env_of(services[name])
    assert env["URBAN_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["URBAN_MQTT__HOST"] == "mosquitto"
    assert env["URBAN_INFLUX__URL"] == "http://influxdb:8086"
    assert env["URBAN_INFLUX__VERSION"] == "2"
    assert {"URBAN_INFLUX__TOKEN", "URBAN_INFLUX__ORG", "URBAN_INFLUX__BUCKET"} <= set(env)


def test_every_urban_variable_is_a_settings_field(services: dict[str, Any]) -> None:
    known = settings_env_names()
    assert "URBAN_KAFKA__BOOTSTRAP_SERVERS" in known  # the walk itself works
    for name, svc in services.items():
        for var in env_of(svc):
            if var.startswith("URBAN_"):
                assert var in known, f"service {name}: {var} is not a field of Settings"


@pytest.mark.parametrize("name", APPS)
def test_app_env_builds_valid_settings(
    services: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in list(os.environ):
        if var.startswith("URBAN_"):
            monkeypatch.delenv(var)
    env = {var: resolve_defaults(value) for var, value in env_of(services[name]).items()}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    s = Settings()
    assert s.kafka.bootstrap_servers == "kafka:9092"
    assert s.influx.version == 2 and s.influx.token is not None
    if name == "worker":
        assert s.web_port == 6066


# --- Grafana ------------------------------------------------------------------------------------


def test_grafana_is_provisioned_from_the_repo(services: dict[str, Any]) -> None:
    g = services["grafana"]
    assert g["image"].startswith("grafana/grafana")
    assert 3000 in published(g)
    assert g["depends_on"]["influxdb"] == {"condition": "service_healthy"}
    assert "api/health" in " ".join(g["healthcheck"]["test"][1:])
    mounts = {m.split(":")[0]: m.split(":")[1] for m in g["volumes"] if m.startswith("./")}
    assert mounts == {"./grafana/provisioning": "/etc/grafana/provisioning",
                      "./grafana/dashboards": "/var/lib/grafana/dashboards"}  # fmt: skip
    for host in mounts:
        assert (ROOT / host).is_dir()
    home = env_of(g)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "grafana/dashboards" / Path(home).name).is_file()


def test_grafana_datasource_uses_the_influx_token_and_org(services: dict[str, Any]) -> None:
    ds_file = ROOT / "grafana/provisioning/datasources/influxdb.yml"
    [ds] = yaml.safe_load(ds_file.read_text())["datasources"]
    influx = services["influxdb"]["environment"]
    assert ds["type"] == "influxdb" and ds["jsonData"]["version"] == "Flux"
    assert ds["url"] == "http://influxdb:8086"
    assert ds["jsonData"]["organization"] == influx["DOCKER_INFLUXDB_INIT_ORG"]
    assert ds["jsonData"]["defaultBucket"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert ds["secureJsonData"]["token"] == "$INFLUX_TOKEN"  # noqa: S105 - a reference, not a secret
    assert env_of(services["grafana"])["INFLUX_TOKEN"] == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]


# --- Prometheus ---------------------------------------------------------------------------------


def test_prometheus_image_is_pinned(services: dict[str, Any]) -> None:
    image = services["prometheus"]["image"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", image), image
    assert 9090 in published(services["prometheus"])
    assert "/-/ready" in " ".join(services["prometheus"]["healthcheck"]["test"][1:])


def test_prometheus_scrapes_the_worker_metrics(services: dict[str, Any]) -> None:
    prom = services["prometheus"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in prom["volumes"] if m.startswith("./")}
    assert mounts == {"./grafana/prometheus.yml": "/etc/prometheus/prometheus.yml"}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    config = yaml.safe_load((ROOT / "grafana/prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"  # streams.metrics.register_metrics' default path
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    worker_port = next(iter(published(services["worker"])))
    assert targets == [f"worker:{worker_port}"]
    assert "--web-port" in services["worker"]["command"]
    assert services["worker"]["command"][services["worker"]["command"].index("--web-port") + 1] == str(worker_port)
    assert "0.0.0.0" in services["worker"]["command"]  # reachable from the prometheus container


def test_grafana_reads_prometheus(services: dict[str, Any]) -> None:
    [ds] = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus"
    host, port = ds["url"].removeprefix("http://").split(":")
    assert host in services and host == "prometheus"
    assert int(port) in published(services[host])
    assert services["grafana"]["depends_on"]["prometheus"] == {"condition": "service_healthy"}
    assert "prometheus-data" in {m.split(":")[0] for m in services["prometheus"]["volumes"]}
