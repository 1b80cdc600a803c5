"""The HTTP query API (plain aiohttp and the Faust worker's web server) and the plot."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors.history import Limits
from connectors.lineprotocol import aggregate_point, alert_point
from connectors.store import SqliteStore
from streams.api import OPENAPI_PATH, create_web_app, handle, openapi_document, register_api
from streams.settings import Settings
from tests.unit.connectors.test_history_queries import HOUR, MINUTE, T0, make

NOW = T0 + 3 * HOUR


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    aggs, alerts = make(seed=9)
    store = SqliteStore(tmp_path_factory.mktemp("api") / "u.db")
    store.write_sync([aggregate_point(a) for a in aggs] + [alert_point(a) for a in alerts])
    store.close_sync()
    return Settings(store={"path": store.path}, influx={"url": ""})


def call(application: web.Application, fn: Callable[[TestClient], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with TestClient(TestServer(application)) as client:
            return await fn(client)

    return asyncio.run(run())


def get(settings: Settings, path: str, **params: Any) -> tuple[int, Any]:
    resp = handle(settings, path, [(k, str(v)) for k, v in params.items()], NOW, Limits(max_rows=50))
    return resp.status, orjson.loads(resp.body) if resp.content_type == "application/json" else resp.body


def test_series_buckets_and_truncation(settings: Settings) -> None:
    status, doc = get(
        settings, "/api/v1/series", zone="a", metric="m", since="3h", every="1h", agg="p95", group_by="sensor_id"
    )
    assert status == 200 and not doc["truncated"] and len(doc["rows"]) == 6
    assert doc["query"]["since_ms"] == NOW - 3 * HOUR and doc["query"]["every_ms"] == HOUR
    assert set(doc["rows"][0]) == {"time_ms", "sensor_id", "value"}
    status, doc = get(settings, "/api/v1/series", zone="a", metric="m", since="3h")
    assert status == 200 and doc["truncated"] and len(doc["rows"]) == 50  # Limits(max_rows=50)
    status, doc = get(settings, "/api/v1/series", zone="a", metric="m", since="3h", limit=7)
    assert doc["truncated"] and len(doc["rows"]) == 7


def test_top_and_alerts(settings: Settings) -> None:
    status, doc = get(settings, "/api/v1/top-zones", metric="m", since="3h", n=2, agg="max")
    assert status == 200 and [r["rank"] for r in doc["rows"]] == [1, 2]
    status, doc = get(settings, "/api/v1/alerts", since="3h", zone="a", evidence="2m")
    assert status == 200 and doc["rows"] and all(r["zone"] == "a" and r["evidence"] for r in doc["rows"])


@pytest.mark.parametrize(
    ("path", "params", "needle"),
    [
        ("/api/v1/series", {"metric": "m", "sensorr": "x"}, "sensorr: unknown parameter"),
        ("/api/v1/series", {"metric": "m", "since": "60d"}, "at most 31 days"),
        ("/api/v1/series", {"metric": "m", "since": "365d", "every": "1m"}, "buckets"),
        ("/api/v1/series", {"metric": "m", "limit": 51}, "limit: at most 50"),
        ("/api/v1/series", {"metric": "m", "limit": "many"}, "limit"),
        ("/api/v1/series", {}, "metric"),
        ("/api/v1/series", {"metric": "m", "since": "last tuesday"}, "time: expected"),
        ("/api/v1/top-zones", {"metric": "m", "n": 0}, "n:"),
        ("/api/v1/alerts", {"evidence": "2d"}, "evidence: at most 1d"),
        ("/api/v1/alerts", {"severity": "LOUD!"}, "severity"),
        ("/api/openapi.json", {"x": 1}, "no parameters"),
    ],
)
def test_bad_requests_are_400_and_name_the_parameter(
    settings: Settings, path: str, params: dict[str, Any], needle: str
) -> None:
    status, doc = get(settings, path, **params)
    assert status == 400 and needle in doc["error"], doc


def test_repeated_parameter_and_unknown_path(settings: Settings) -> None:
    resp = handle(settings, "/api/v1/series", [("metric", "m"), ("metric", "n")], NOW)
    assert resp.status == 400 and b"given more than once" in resp.body
    assert handle(settings, "/api/v1/nothing", [], NOW).status == 404


def test_store_failure_is_502(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"garbage" * 100)
    resp = handle(Settings(store={"path": bad}, influx={"url": ""}), "/api/v1/series", [("metric", "m")], NOW)
    assert resp.status == 502 and b"sqlite store" in resp.body


def test_openapi_document() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    series = doc["paths"]["/api/v1/series"]["get"]
    params = {p["name"]: p for p in series["parameters"]}
    assert params["metric"]["required"] and not params["zone"]["required"]
    assert params["agg"]["schema"]["enum"][:3] == ["mean", "min", "max"]
    assert params["zone"]["schema"]["anyOf"][0]["pattern"]
    assert set(series["responses"]) == {"200", "400", "502"}
    assert set(doc["paths"]) == {
        "/api/v1/series",
        "/api/v1/top-zones",
        "/api/v1/alerts",
        "/api/v1/plot.png",
        OPENAPI_PATH,
    }
    orjson.dumps(doc)  # serialisable as served


def test_plain_aiohttp_app(settings: Settings) -> None:
    async def fn(client: TestClient) -> None:
        resp = await client.get("/api/openapi.json")
        assert resp.status == 200 and (await resp.json())["info"]["title"]
        resp = await client.get(
            "/api/v1/series", params={"sensor": "s-a1", "metric": "m", "since": "2h", "until": "1h"}
        )
        assert resp.status == 200 and len((await resp.json())["rows"]) > 30
        resp = await client.get("/api/v1/series", params={"metric": "m", "bogus": "1"})
        assert resp.status == 400 and resp.content_type == "application/json"

    call(create_web_app(settings, clock=lambda: NOW), fn)


def test_faust_worker_serves_the_api(settings: Settings) -> None:
    import faust

    app = faust.App("urbansense-api-test", web_enabled=True)  # the server is not started
    register_api(app, settings, clock=lambda: NOW)
    paths = {r.resource.canonical for r in app.web.web_app.router.routes() if r.resource is not None}
    assert {"/api/v1/series", "/api/v1/top-zones", "/api/v1/alerts", "/api/v1/plot.png", OPENAPI_PATH} <= paths

    async def fn(client: TestClient) -> None:
        resp = await client.get("/api/v1/top-zones", params={"metric": "m", "since": "3h"})
        assert resp.status == 200 and len((await resp.json())["rows"]) == 3
        resp = await client.get("/api/v1/top-zones", params={"metric": "m", "top": "3"})
        assert resp.status == 400 and "top: unknown parameter" in (await resp.json())["error"]

    call(app.web.web_app, fn)


# --- plots --------------------------------------------------------------------------------------


def test_plot_png_via_api_and_cli(settings: Settings, tmp_path: Path) -> None:
    from streams.plot import load_plot_data, run_plot_cli

    data = load_plot_data(settings, "s-a1", "m", T0, T0 + 3 * HOUR)
    assert data.every_ms is None and len(data.times) > 100 and data.scores and data.alerts
    assert all(lo <= m <= hi for lo, m, hi in zip(data.low, data.mean, data.high, strict=True))
    status, png = get(settings, "/api/v1/plot.png", sensor="s-a1", metric="m", since="3h", tz="Asia/Shanghai")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "plots" / "s.png"
    err = io.StringIO()
    assert run_plot_cli(settings, sensor="s-a1", metric="m", since="3h", out=str(out), now_ms=NOW, err=err) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert run_plot_cli(settings, sensor="bad id", metric="m", out=str(out), now_ms=NOW, err=err) == 2
    assert "sensor" in err.getvalue()
    # long ranges are downsampled before drawing; an empty period still draws
    long = load_plot_data(settings, "s-a1", "m", T0 - 30 * 24 * HOUR, T0 + 3 * HOUR)
    assert long.every_ms is not None and long.every_ms % MINUTE == 0 and len(long.times) <= 5000
    assert all(lo <= m <= hi for lo, m, hi in zip(long.low, long.mean, long.high, strict=True))
    assert run_plot_cli(settings, sensor="nobody", metric="m", since="1h", out=str(out), now_ms=NOW, err=err) == 0
