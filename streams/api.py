"""HTTP query API on the worker's web server (Faust web, aiohttp driver).

Routes (all ``GET``, JSON unless noted):

=============================  ===============================================================
``/api/v1/series``             series of a sensor, zone, kind or the city (:class:`SeriesParams`)
``/api/v1/top-zones``          top-N zones by a metric (:class:`TopParams`)
``/api/v1/alerts``             alerts in a period with their evidence (:class:`AlertParams`)
``/api/v1/plot.png``           PNG plot of one sensor's metric (what the alert board links to)
``/api/openapi.json``          the OpenAPI 3.1 description of the above
=============================  ===============================================================

Validation is strict: unknown or repeated query parameters, bad values, time ranges longer
than :class:`~connectors.history.Limits` allows and too many rows or buckets are answered with
``400 {"error": "...", "detail": [...]}`` naming the parameter. A store failure is ``502``.
Queries block (sockets, SQLite), so they run in a thread, never on the event loop.

:func:`register_api` adds the routes to a Faust app; :func:`create_web_app` builds a plain
aiohttp application with the same handlers (tests, or serving the API without a worker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import orjson
from pydantic import BaseModel, Field, ValidationError

from connectors.history import (
    METRIC_PATTERN,
    NAME_PATTERN,
    AlertParams,
    Limits,
    SeriesParams,
    TimeParams,
    TopParams,
    iter_alerts,
    iter_series,
    top_zones,
    validation_message,
)
from streams.errors import UrbanSensingError

if TYPE_CHECKING:
    import faust
    from aiohttp import web

    from streams.settings import Settings

logger = logging.getLogger(__name__)

Clock = Callable[[], int]
OPENAPI_PATH: Final = "/api/openapi.json"
API_LIMITS: Final = Limits()


class PlotParams(TimeParams):
    """Plot of one sensor's metric (``GET /api/v1/plot.png``)."""

    sensor: str = Field(pattern=NAME_PATTERN, description="Sensor id.")
    metric: str = Field(pattern=METRIC_PATTERN, description="Metric name, e.g. pm25.")
    since: str = Field("7d", description="Start: now, 30m/7d back from now, today, yesterday or ISO 8601.")


#: path -> (operation id, parameter model, summary)
ENDPOINTS: Final[dict[str, tuple[str, type[BaseModel], str]]] = {
    "/api/v1/series": ("series", SeriesParams, "Stored windows or downsampled buckets of a metric"),
    "/api/v1/top-zones": ("topZones", TopParams, "Zones with the largest aggregate of a metric"),
    "/api/v1/alerts": ("alerts", AlertParams, "Alert events in a period, with their evidence"),
    "/api/v1/plot.png": ("plot", PlotParams, "PNG plot: window means, min/max band, anomaly score, alerts"),
}


@dataclass(frozen=True)
class ApiResponse:
    """A framework-free response."""

    status: int
    body: bytes
    content_type: str = "application/json"


def wall_ms() -> int:
    """The adapter's clock."""
    return time.time_ns() // 1_000_000


def _json(status: int, doc: Any) -> ApiResponse:
    return ApiResponse(status, orjson.dumps(doc))


def _error(status: int, message: str, detail: Sequence[Any] = ()) -> ApiResponse:
    return _json(status, {"error": message, "detail": list(detail)})


def _params(model: type[BaseModel], pairs: Sequence[tuple[str, str]]) -> BaseModel:
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key in seen:
            msg = f"{key}: given more than once"
            raise ValueError(msg)
        seen[key] = value
    return model.model_validate(seen)


def _rows(it: Any, limit: int) -> tuple[list[dict[str, Any]], bool]:
    rows = []
    for row in it:
        if len(rows) == limit:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            return rows, True
        rows.append(row)
    return rows, False


def handle(
    settings: Settings, path: str, pairs: Sequence[tuple[str, str]], now_ms: int, limits: Limits = API_LIMITS
) -> ApiResponse:
    """Answer one API request (blocking).

    Args:
        settings: selects the store.
        path: one of :data:`ENDPOINTS` or :data:`OPENAPI_PATH`.
        pairs: the query string as (name, value) pairs, in order.
        now_ms: the clock, for relative times.
        limits: bounds of time ranges, rows and buckets.
    """
    if path == OPENAPI_PATH:
        if pairs:
            return _error(400, "the OpenAPI document takes no parameters")
        return _json(200, openapi_document(limits))
    if path not in ENDPOINTS:
        return _error(404, f"no such endpoint {path!r}", sorted(ENDPOINTS))
    name, model, _ = ENDPOINTS[path]
    try:
        params = _params(model, pairs)
        if isinstance(params, PlotParams):
            return _plot(settings, params, now_ms, limits)
        if isinstance(params, SeriesParams):
            q = params.to_query(now_ms, limits)
            limit = q.limit or 0
            rows, truncated = _rows(iter_series(settings, replace(q, limit=limit + 1)), limit)
            meta = {"since_ms": q.since_ms, "until_ms": q.until_ms, "every_ms": q.every_ms, "limit": limit}
        elif isinstance(params, TopParams):
            tq = params.to_query(now_ms, limits)
            rows, truncated = top_zones(settings, tq), False
            meta = {"since_ms": tq.since_ms, "until_ms": tq.until_ms, "n": tq.n}
        elif isinstance(params, AlertParams):
            aq = params.to_query(now_ms, limits)
            limit = aq.limit or 0
            rows, truncated = _rows(iter_alerts(settings, replace(aq, limit=limit + 1)), limit)
            meta = {"since_ms": aq.since_ms, "until_ms": aq.until_ms, "evidence_ms": aq.evidence_ms, "limit": limit}
        else:  # every endpoint's model is handled above
            return _error(500, f"endpoint {name} has no handler")
    except ValidationError as exc:
        return _error(400, validation_message(exc), [
            {"parameter": ".".join(str(x) for x in e["loc"]), "problem": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ])  # fmt: skip
    except UrbanSensingError as exc:  # the store failed: not the client's fault
        logger.error("api query failed endpoint=%s error=%s", name, exc)
        return _error(502, str(exc))
    except ValueError as exc:
        return _error(400, str(exc))
    params_doc = params.model_dump(exclude_none=True)
    return _json(200, {"query": {**params_doc, **meta}, "rows": rows, "truncated": truncated})


def _plot(settings: Settings, params: PlotParams, now_ms: int, limits: Limits) -> ApiResponse:
    from streams.plot import plot_png

    since_ms, until_ms = params.range_ms(now_ms, limits.max_range_ms)
    try:
        png = plot_png(settings, params.sensor, params.metric, since_ms, until_ms, params.zone_info())
    except ImportError:
        return _error(501, "plots need matplotlib (pip install 'matplotlib>=3.8')")
    return ApiResponse(200, png, "image/png")


# --- OpenAPI ------------------------------------------------------------------------------------


def _parameter(name: str, schema: dict[str, Any], required: bool) -> dict[str, Any]:
    schema = dict(schema)
    description = schema.pop("description", None)
    schema.pop("title", None)
    doc: dict[str, Any] = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        doc["description"] = description
    return doc


def openapi_document(limits: Limits = API_LIMITS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, generated from the parameter models."""
    error = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, Any] = {}
    for path, (op_id, model, summary) in ENDPOINTS.items():
        schema = model.model_json_schema()
        required = set(schema.get("required", []))
        params = [_parameter(n, s, n in required) for n, s in schema["properties"].items()]
        ok: dict[str, Any]
        if path.endswith(".png"):
            png = {"schema": {"type": "string", "format": "binary"}}
            ok = {"description": "PNG image", "content": {"image/png": png}}
        else:
            rows = {"schema": {"$ref": "#/components/schemas/Result"}}
            ok = {"description": "rows", "content": {"application/json": rows}}
        paths[path] = {
            "get": {
                "operationId": op_id,
                "summary": summary,
                "description": (model.__doc__ or "").strip(),
                "parameters": params,
                "responses": {
                    "200": ok,
                    "400": {"description": "invalid or unknown parameter, range or size over the limits",
                            "content": {"application/json": {"schema": error}}},
                    "502": {"description": "the time-series store failed",
                            "content": {"application/json": {"schema": error}}},
                },  # fmt: skip
            }
        }
    paths[OPENAPI_PATH] = {
        "get": {"operationId": "openapi", "summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "UrbanSense history API",
            "version": "1",
            "description": (
                "Queries over window aggregates, roll-ups and alerts. Times: now, a duration back from now "
                "(30m, 7d), today, yesterday or ISO 8601 (without offset: in tz). Limits: "
                f"{limits.max_rows} rows, {limits.max_buckets} buckets per series, "
                f"{(limits.max_raw_range_ms or 0) // 86_400_000} days of stored rows, "
                f"{(limits.max_range_ms or 0) // 86_400_000} days otherwise."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "array", "items": {}}},
                },
                "Result": {
                    "type": "object",
                    "required": ["query", "rows", "truncated"],
                    "properties": {
                        "query": {"type": "object", "description": "the validated query, times in epoch ms"},
                        "rows": {"type": "array", "items": {"type": "object"}},
                        "truncated": {"type": "boolean", "description": "more rows exist than limit"},
                    },
                },
            }
        },
    }


# --- wiring -------------------------------------------------------------------------------------


async def _answer(
    settings: Settings, path: str, pairs: list[tuple[str, str]], clock: Clock, limits: Limits
) -> ApiResponse:
    return await asyncio.to_thread(handle, settings, path, pairs, clock(), limits)


def register_api(app: faust.App, settings: Settings, *, limits: Limits = API_LIMITS, clock: Clock = wall_ms) -> None:
    """Add the API routes (and the OpenAPI document) to ``app``'s web server."""
    for path in [*ENDPOINTS, OPENAPI_PATH]:

        async def view(web_: Any, request: Any, _path: str = path) -> Any:
            resp = await _answer(settings, _path, list(request.query.items()), clock, limits)
            return web_.bytes(resp.body, content_type=resp.content_type, status=resp.status)

        name = "urbansense_api_" + path.rsplit("/", 1)[-1].replace(".", "_").replace("-", "_")
        view.__name__ = name
        app.page(path, name=name)(view)
    logger.info("history api registered paths=%d openapi=%s", len(ENDPOINTS) + 1, OPENAPI_PATH)


def create_web_app(settings: Settings, *, limits: Limits = API_LIMITS, clock: Clock = wall_ms) -> web.Application:
    """A plain aiohttp application serving the same routes."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        resp = await _answer(settings, request.path, list(request.query.items()), clock, limits)
        return web.Response(body=resp.body, status=resp.status, content_type=resp.content_type)

    application = web.Application()
    for path in [*ENDPOINTS, OPENAPI_PATH]:
        application.router.add_get(path, handler)
    return application


def register_retention(app: faust.App, settings: Settings, *, clock: Clock = wall_ms) -> None:
    """Create the analysis schema on start-up and run the embedded store's roll-up job.

    ``ensure_schema`` runs once when the worker starts (a failure is logged and retried by the
    next timer tick, never fatal); with the embedded store the roll-up/retention job runs every
    ``retention.maintenance_interval``.
    """
    from connectors.retention import ensure_schema, policy_of, sqlite_maintenance

    policy = policy_of(settings)
    state = {"ready": not policy.ensure_on_start}

    async def ensure() -> None:
        try:
            report = await asyncio.to_thread(ensure_schema, settings)
        except UrbanSensingError as exc:
            logger.error("schema not ready (retrying later) error=%s", exc)
            return
        state["ready"] = True
        logger.info("schema ready store=%s actions=%d", report.store, len(report.actions))

    @app.task
    async def urbansense_schema() -> None:
        if not state["ready"]:
            await ensure()

    @app.timer(interval=policy.maintenance_interval.total_seconds())
    async def urbansense_maintenance() -> None:
        if not state["ready"]:
            await ensure()
        if not settings.influx.url:
            try:
                await asyncio.to_thread(sqlite_maintenance, settings.store.path, policy, clock())
            except UrbanSensingError as exc:
                logger.error("sqlite maintenance failed error=%s", exc)
