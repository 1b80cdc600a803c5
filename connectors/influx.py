"""Time-series sinks: InfluxDB 1.x (HTTP ``/write``), InfluxDB 2.x (influxdb-client) and SQLite.

All sinks take :class:`~connectors.lineprotocol.Point` batches; the layout of the ``window_agg``
and ``alert`` measurements is documented in :mod:`connectors.lineprotocol`. Both Influx sinks
send the bytes of :func:`~connectors.lineprotocol.encode_lines` with precision ``ms``, split
into requests of at most ``batch_size`` points. Every request body of a batch is encoded before
the first is sent, so a point that cannot be encoded stops the whole batch.

Ordering (InfluxDB 1.x): a ``write`` returns only when all of its requests succeeded. It sends up
to ``max_in_flight`` of them at once, but only when no series and timestamp appears in two of its
requests (a later value of a point must win); otherwise it sends them one at a time, in order.
Calls to ``write`` never overlap inside the sink's callers (the outage buffer serialises them), so
points of one series reach the server in the order given.

Retry policy (both Influx sinks): connection errors, timeouts, HTTP 5xx and 429 are retried
``max_retries`` times with exponential backoff plus jitter; any other 4xx fails at once. Either
way the caller gets :class:`~streams.errors.SinkError` naming the status, the server's error
text and the first line of the rejected request; requests of the batch still in flight are
cancelled, and the caller writes the whole batch again (InfluxDB overwrites a point with the same
series and timestamp, so a repeated request is harmless). Credentials never appear in logs or
messages.
"""

from __future__ import annotations

import asyncio
import functools
import gzip as gzip_lib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import aiohttp
import orjson
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from pydantic import SecretStr

from connectors.lineprotocol import Point, encode_lines, series_key
from connectors.store import SqliteStore
from streams.errors import SinkError

if TYPE_CHECKING:
    from streams.settings import Settings

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

DEFAULT_BATCH_SIZE: Final = 5000
#: gzip level 1: 30x smaller line protocol for a quarter of the CPU of level 5 (35x).
DEFAULT_GZIP_LEVEL: Final = 1
#: One request at a time by default: a slow store never sees more than one request from a worker.
DEFAULT_MAX_IN_FLIGHT: Final = 1
_MAX_SHOWN_CHARS: Final = 300


class TimeSeriesSink(Protocol):
    """Where aggregate and alert points go."""

    async def write(self, points: Sequence[Point]) -> None:
        """Store the points; raise :class:`~streams.errors.SinkError` when that fails."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...


class _HttpStatusError(Exception):
    """A non-2xx answer, kept inside this module."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(status, text)
        self.status = status
        self.text = text


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _HttpStatusError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | OSError)


def _server_text(body: bytes | str | None) -> str:
    """The ``error``/``message`` of an Influx JSON error body, else the body itself."""
    if not body:
        return ""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        text = doc.get("error") or doc.get("message")
        if text:
            return str(text)
    raw = body.decode(errors="replace") if isinstance(body, bytes) else body
    return raw.strip()


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS] + "..."


class _Retrying:
    """Backoff policy shared by the Influx sinks."""

    def __init__(
        self,
        target: str,
        max_retries: int,
        base_delay_ms: int,
        max_delay_ms: int,
        sleep: Sleep,
        secrets: Sequence[str] = (),
    ) -> None:
        if max_retries < 0 or base_delay_ms < 0 or max_delay_ms < base_delay_ms:
            msg = (
                f"{target}: expected max_retries >= 0 and 0 <= base_delay_ms <= max_delay_ms, got "
                f"{max_retries}, {base_delay_ms}, {max_delay_ms}"
            )
            raise ValueError(msg)
        self.target = target
        self.max_retries = max_retries
        self.base_delay_ms = base_delay_ms
        self.max_delay_ms = max_delay_ms
        self.sleep = sleep
        self._secrets = [s for s in secrets if s]

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def delay_s(self, attempt: int) -> float:
        """Equal jitter: half the capped exponential delay plus a random share of the other half."""
        ceiling_ms = min(self.max_delay_ms, self.base_delay_ms << attempt)
        return ceiling_ms * (0.5 + random.random() / 2) / 1000  # noqa: S311 - jitter, not crypto

    async def run(self, op: Callable[[], Awaitable[T]], what: str, first_line: str) -> T:
        attempt = 0
        while True:
            try:
                return await op()
            except Exception as exc:
                if _retryable(exc) and attempt < self.max_retries:
                    delay_s = self.delay_s(attempt)
                    attempt += 1
                    logger.warning(
                        "influx retry target=%s op=%s attempt=%d delay_ms=%d error=%s",
                        self.target,
                        what,
                        attempt,
                        delay_s * 1000,
                        self._describe(exc),
                    )
                    await self.sleep(delay_s)
                    continue
                msg = self._failure(exc, what, first_line, attempt)
                # error, not exception: a traceback could carry request headers
                logger.error("influx failed %s", msg)
                raise SinkError(msg) from exc

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, _HttpStatusError):
            return self.redact(f"HTTP {exc.status}: {_shorten(exc.text)}")
        return self.redact(f"{type(exc).__name__}: {_shorten(str(exc))}")

    def _failure(self, exc: BaseException, what: str, first_line: str, attempt: int) -> str:
        tries = f"after {attempt + 1} attempt(s)"
        shown = self.redact(_shorten(first_line))
        return f"{what} to {self.target} failed {tries}: {self._describe(exc)}; first line: {shown}"


def _encoded_chunks(points: Sequence[Point], size: int) -> list[tuple[int, bytes]]:
    """Encode every request body first, so a bad point stops the batch before anything is sent."""
    chunks = [points[i : i + size] for i in range(0, len(points), size)]
    return [(len(chunk), encode_lines(chunk)) for chunk in chunks]


#: Below this many points a batch is encoded on the event loop (a thread hop costs more).
THREAD_MIN_POINTS = 2000


async def encoded_chunks(points: Sequence[Point], size: int) -> list[tuple[int, bytes]]:
    """:func:`_encoded_chunks`, off the event loop for large batches.

    A window close of 10,000 sensors is 35,000 points (about 0.13 s of encoding); on the loop it
    would hold up every other agent of the worker, the alert path among them. In a thread it still
    takes the GIL, but the loop gets it back every switch interval (5 ms).
    """
    if len(points) < THREAD_MIN_POINTS:
        return _encoded_chunks(points, size)
    return await asyncio.to_thread(_encoded_chunks, points, size)


def _first_line(body: bytes) -> str:
    return body.split(b"\n", 1)[0].decode(errors="replace")


def _chunks_share_a_point(points: Sequence[Point], size: int) -> bool:
    """Whether one series and timestamp occurs in two of the ``size``-point chunks of ``points``."""
    first_chunk: dict[tuple[str, int], int] = {}
    for i, point in enumerate(points):
        if first_chunk.setdefault((series_key(point), int(point.time_ms)), i // size) != i // size:
            return True
    return False


class InfluxV1Sink:
    """Writes to InfluxDB 1.x over its HTTP API with aiohttp.

    The database is created (``CREATE DATABASE``, a no-op when it exists) before the first write.
    Basic auth is used when ``username`` is given, so the password never lands in a URL.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8086``.
        database: database to write to.
        username: optional user.
        password: optional password.
        timeout_ms: per-request timeout.
        max_retries: retries after the first attempt for retryable failures.
        gzip: compress request bodies (``Content-Encoding: gzip``).
        batch_size: most points per request.
        base_delay_ms: first backoff delay; doubles per retry.
        max_delay_ms: cap of the backoff delay.
        sleep: awaitable sleep, injectable for tests.
        gzip_level: zlib level 1-9 of the compressed bodies.
        max_in_flight: most requests of one ``write`` sent at once (see the module doc).
    """

    def __init__(  # noqa: PLR0913 - keyword-only tuning knobs
        self,
        url: str,
        database: str,
        username: str | None = None,
        password: SecretStr | None = None,
        *,
        timeout_ms: int = 10_000,
        max_retries: int = 5,
        gzip: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        base_delay_ms: int = 200,
        max_delay_ms: int = 10_000,
        sleep: Sleep = asyncio.sleep,
        gzip_level: int = DEFAULT_GZIP_LEVEL,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            msg = f"InfluxV1Sink url: expected http:// or https://, got {url!r}"
            raise ValueError(msg)
        if not database or timeout_ms <= 0 or batch_size <= 0:
            msg = (
                "InfluxV1Sink: expected a database name, timeout_ms > 0 and batch_size > 0, got "
                f"{database!r}, {timeout_ms}, {batch_size}"
            )
            raise ValueError(msg)
        if not 1 <= gzip_level <= 9 or max_in_flight < 1:  # noqa: PLR2004 - zlib's levels
            msg = (
                "InfluxV1Sink: expected 1 <= gzip_level <= 9 and max_in_flight >= 1, got "
                f"{gzip_level}, {max_in_flight}"
            )
            raise ValueError(msg)
        self.url = url.rstrip("/")
        self.database = database
        self.gzip = gzip
        self.gzip_level = gzip_level
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self._auth = (
            aiohttp.BasicAuth(username, password.get_secret_value() if password else "")
            if username
            else None
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        secrets = [password.get_secret_value()] if password else []
        self._retry = _Retrying(
            f"influxdb-v1 {self.url} db={database}",
            max_retries,
            base_delay_ms,
            max_delay_ms,
            sleep,
            secrets,
        )
        self._session: aiohttp.ClientSession | None = None
        self._database_ready = False
        self._write_params = {"db": database, "precision": "ms"}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(auth=self._auth, timeout=self._timeout)
        return self._session

    async def _post(
        self,
        path: str,
        data: bytes | dict[str, str],
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        url = f"{self.url}{path}"
        async with self._client().post(url, params=params, data=data, headers=headers) as resp:
            body = await resp.read()
            if resp.status >= 300:
                raise _HttpStatusError(resp.status, _server_text(body))
            if path == "/query":  # /query answers 200 with per-statement errors in the body
                doc = orjson.loads(body) if body else {}
                for result in doc.get("results", []):
                    if "error" in result:
                        raise _HttpStatusError(resp.status, str(result["error"]))

    async def _ensure_database(self) -> None:
        if self._database_ready:
            return
        name = self.database.replace("\\", "\\\\").replace('"', '\\"')
        statement = f'CREATE DATABASE "{name}"'
        await self._retry.run(
            functools.partial(self._post, "/query", {"q": statement}),
            "create database",
            statement,
        )
        self._database_ready = True
        logger.info("influx database ready url=%s database=%s", self.url, self.database)

    async def write(self, points: Sequence[Point]) -> None:
        """Write points, ``batch_size`` per request, up to ``max_in_flight`` requests at once.

        Raises:
            ValueError: a point cannot be encoded (nothing of the batch is sent).
            SinkError: the server refused a request or stayed unreachable.
        """
        bodies = await encoded_chunks(points, self.batch_size)
        if not bodies:
            return
        await self._ensure_database()
        lanes = min(self.max_in_flight, len(bodies))
        if lanes > 1 and _chunks_share_a_point(points, self.batch_size):
            logger.debug("influx write in order: a point repeats across requests points=%d", len(points))
            lanes = 1
        if lanes == 1:
            for count, body in bodies:
                await self._write_body(count, body)
            return
        queue = iter(bodies)

        async def lane() -> None:
            for count, body in queue:  # shared: each request is taken once, in order
                await self._write_body(count, body)

        tasks = [asyncio.ensure_future(lane()) for _ in range(lanes)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # the first failure (SinkError) propagates
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _write_body(self, count: int, body: bytes) -> None:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        data = body
        if self.gzip:
            data = gzip_lib.compress(body, compresslevel=self.gzip_level)
            headers["Content-Encoding"] = "gzip"
        await self._retry.run(
            functools.partial(self._post, "/write", data, self._write_params, headers),
            f"write of {count} points",
            _first_line(body),
        )
        logger.debug("influx wrote points=%d bytes=%d", count, len(data))

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class InfluxV2Sink:
    """Writes to InfluxDB 2.x (or 1.8+ ``/api/v2/write``) with influxdb-client's async API.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8086``.
        token: API token; only handed to the client, never logged.
        org: organisation name or id.
        bucket: bucket name.
        timeout_ms: per-request timeout.
        max_retries: retries after the first attempt for retryable failures.
        gzip: compress request bodies.
        batch_size: most points per request.
        base_delay_ms: first backoff delay; doubles per retry.
        max_delay_ms: cap of the backoff delay.
        sleep: awaitable sleep, injectable for tests.
    """

    def __init__(
        self,
        url: str,
        token: SecretStr,
        org: str,
        bucket: str,
        *,
        timeout_ms: int = 10_000,
        max_retries: int = 5,
        gzip: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        base_delay_ms: int = 200,
        max_delay_ms: int = 10_000,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            msg = f"InfluxV2Sink url: expected http:// or https://, got {url!r}"
            raise ValueError(msg)
        if not org or not bucket or timeout_ms <= 0 or batch_size <= 0:
            msg = (
                "InfluxV2Sink: expected org, bucket, timeout_ms > 0 and batch_size > 0, got "
                f"{org!r}, {bucket!r}, {timeout_ms}, {batch_size}"
            )
            raise ValueError(msg)
        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self.gzip = gzip
        self.batch_size = batch_size
        self.timeout_ms = timeout_ms
        self._token = token
        self._retry = _Retrying(
            f"influxdb-v2 {self.url} bucket={bucket}",
            max_retries,
            base_delay_ms,
            max_delay_ms,
            sleep,
            [token.get_secret_value()],
        )
        self._client: InfluxDBClientAsync | None = None

    def _write_api(self) -> WriteApiAsync:
        if self._client is None:  # the async client must be built inside a running loop
            self._client = InfluxDBClientAsync(
                url=self.url,
                token=self._token.get_secret_value(),
                org=self.org,
                timeout=self.timeout_ms,
                enable_gzip=self.gzip,
            )
        return self._client.write_api()

    async def _send(self, body: bytes) -> None:
        write_api = self._write_api()
        try:
            await write_api.write(
                bucket=self.bucket,
                org=self.org,
                record=body,
                write_precision=WritePrecision.MS,  # type: ignore[arg-type] # a str constant
            )
        except ApiException as exc:
            if not exc.status:  # the client's own request-building failure
                raise
            raise _HttpStatusError(int(exc.status), _server_text(exc.body)) from None

    async def write(self, points: Sequence[Point]) -> None:
        """Write points, ``batch_size`` per request.

        Raises:
            ValueError: a point cannot be encoded (nothing of the batch is sent).
            SinkError: the server refused a request or stayed unreachable.
        """
        for count, body in await encoded_chunks(points, self.batch_size):
            await self._retry.run(
                functools.partial(self._send, body), f"write of {count} points", _first_line(body)
            )
            logger.debug("influx wrote points=%d bytes=%d", count, len(body))

    async def close(self) -> None:
        """Close the client."""
        if self._client is not None:
            await self._client.close()
            self._client = None


def open_sink(settings: Settings) -> TimeSeriesSink:
    """The sink the settings select: InfluxDB 1.x/2.x when ``influx.url`` is set, else SQLite."""
    cfg = settings.influx
    if not cfg.url:
        logger.info("time-series sink kind=sqlite path=%s", settings.store.path)
        return SqliteStore(settings.store.path)
    logger.info("time-series sink kind=influxdb-v%d url=%s", cfg.version, cfg.url)
    if cfg.version == 1:
        return InfluxV1Sink(
            cfg.url,
            cfg.database,
            cfg.username,
            cfg.password,
            timeout_ms=cfg.timeout_ms,
            max_retries=cfg.max_retries,
            batch_size=cfg.batch_size,
        )
    if cfg.token is None:  # Settings already rejects this; keep the type checker honest
        msg = "URBAN_INFLUX__TOKEN is required for InfluxDB 2.x"
        raise SinkError(msg)
    return InfluxV2Sink(
        cfg.url,
        cfg.token,
        cfg.org,
        cfg.bucket,
        timeout_ms=cfg.timeout_ms,
        max_retries=cfg.max_retries,
        batch_size=cfg.batch_size,
    )
