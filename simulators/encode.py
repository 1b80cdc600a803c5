"""Fast, byte-exact encoding of generated readings as payloads, JSON lines or CSV rows (pure).

Each sensor gets a ``%``-template, built once from ``orjson`` output so that the static parts
(ids, location, units) are exactly what :func:`streams.schema.encode_reading` writes. Values are
rounded to their metric's decimals, so the shortest-round-trip text of every value is looked up
in a table indexed by ``round(value * 10**decimals)`` instead of formatting floats one by one:
this is what makes the generator fast enough for a file sink.

>>> from simulators.city import build_city
>>> import numpy as np
>>> city = build_city(1, seed=1)
>>> r = Renderer(city, "csv")
>>> cells = r.cells({"traffic": {"flow": np.array([[12.5]]), "speed": np.array([[40.0]]),
...     "occupancy": np.array([[7.0]])}})
>>> r.render(0, cells, 0)[0].split(",")[:3] + r.render(0, cells, 0)[0].split(",")[6:9]
['1970-01-01T00:00:00.000Z', 'trf-futian-0000', 'traffic', '12.5', '40.0', '7.0']
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any, Final, Literal, get_args

import numpy as np
import orjson

from simulators.city import METRICS, City, MetricSpec
from streams.schema import SCHEMA_VERSION, format_ts

__all__ = ["FORMATS", "Format", "Renderer", "csv_header"]

#: ``message``: ``(topic, payload, ts_ms)`` tuples; ``jsonl``: lines as written by
#: :func:`simulators.publish.write_jsonl`; ``csv``: rows under :func:`csv_header`.
Format = Literal["message", "jsonl", "csv"]
FORMATS: Final[tuple[str, ...]] = get_args(Format)

_TS: Final = "@@TS@@"
_V: Final = "@@V@@"
#: Metrics whose full lookup table would exceed this many entries use int + fraction tables.
_MAX_TABLE: Final = 200_001
#: CSV metric columns: every metric of every kind, in :data:`~simulators.city.METRICS` order.
_CSV_METRICS: Final[tuple[str, ...]] = tuple(m.name for specs in METRICS.values() for m in specs)


def csv_header() -> str:
    """The CSV header line (with newline): time, sensor columns, then one column per metric."""
    return ",".join(("ts", "sensor_id", "kind", "zone", "lat", "lon", *_CSV_METRICS)) + "\n"


@functools.cache
def _table(spec: MetricSpec) -> tuple[int, list[str]]:
    scale = 10**spec.decimals
    lo, hi = round(spec.lo * scale), round(spec.hi * scale)
    return lo, [repr(k / scale) for k in range(lo, hi + 1)]


@functools.cache
def _split_tables(spec: MetricSpec) -> tuple[list[str], list[str]]:
    scale = 10**spec.decimals
    ints = [str(k) for k in range(int(spec.hi) + 1)]
    fracs = [".0"] + ["." + f"{k:0{spec.decimals}d}".rstrip("0") for k in range(1, scale)]
    return ints, fracs


def value_texts(spec: MetricSpec, values: np.ndarray) -> list[str]:
    """Shortest round-trip text (as ``repr``/orjson print it) of each rounded value, flattened.

    ``values`` must already be clipped to the spec's bounds and rounded to its decimals.

    >>> from simulators.city import METRICS
    >>> value_texts(METRICS["environment"][4], np.array([-3.25, 0.0, 21.1]))
    ['-3.25', '0.0', '21.1']
    """
    scale = 10**spec.decimals
    k = np.rint(values.ravel() * scale).astype(np.int64)
    if (round(spec.hi * scale) - round(spec.lo * scale)) < _MAX_TABLE:
        lo, table = _table(spec)
        return list(map(table.__getitem__, (k - lo).tolist()))
    ints, fracs = _split_tables(spec)  # only for metrics with lo >= 0
    ip, fp = np.divmod(k, scale)
    return list(map(operator.add, map(ints.__getitem__, ip.tolist()), map(fracs.__getitem__, fp.tolist())))


class Renderer:
    """Turns per-kind value chunks into encoded readings, one list per tick, in sensor order.

    Args:
        city: the sensors.
        fmt: one of :data:`FORMATS`.
        topic_root: first segment of each sensor's topic (``city`` by default).
    """

    __slots__ = ("_flat_topics", "_fmt", "_groups", "_perm", "_topics", "_where")

    def __init__(self, city: City, fmt: Format = "message", topic_root: str = "city") -> None:
        if fmt not in FORMATS:
            msg = f"renderer fmt: expected one of {FORMATS}, got {fmt!r}"
            raise ValueError(msg)
        self._fmt = fmt
        self._topics = [topic_root + s.topic[4:] for s in city.sensors]
        groups: list[tuple[str, np.ndarray, tuple[MetricSpec, ...], list[str], list[str]]] = []
        where: dict[int, tuple[int, int]] = {}
        order: list[int] = []
        for kind, specs in METRICS.items():
            idx = [i for i, s in enumerate(city.sensors) if s.kind == kind]
            if not idx:
                continue
            templates = [self._template(city, i, specs) for i in idx]
            for pos, i in enumerate(idx):
                where[i] = (len(groups), pos)
            order.extend(idx)
            groups.append((kind, np.asarray(idx, dtype=np.intp), specs, templates, [self._topics[i] for i in idx]))
        self._groups = groups
        self._where = where
        self._flat_topics = [t for g in groups for t in g[4]]
        # Position in the kind-by-kind concatenation of each sensor, in sensor order.
        perm = [0] * len(order)
        for flat, i in enumerate(order):
            perm[i] = flat
        self._perm = None if perm == list(range(len(perm))) else perm

    @property
    def fmt(self) -> Format:
        """The output format."""
        return self._fmt

    def _template(self, city: City, i: int, specs: tuple[MetricSpec, ...]) -> str:
        s = city.sensors[i]
        if self._fmt == "csv":
            own = {m.name for m in specs}
            cells = [_V if name in own else "" for name in _CSV_METRICS]
            text = ",".join((_TS, s.sensor_id, s.kind, s.zone, repr(s.lat), repr(s.lon), *cells)) + "\n"
            return text.replace("%", "%%").replace(_TS, "%s").replace(_V, "%s")
        doc: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "sensor_id": s.sensor_id,
            "kind": s.kind,
            "zone": s.zone,
            "location": {"lat": s.lat, "lon": s.lon},
            "ts": _TS,
            "metrics": {m.name: {"value": _V, "unit": m.unit} for m in specs},
        }
        payload = orjson.dumps(doc).decode().replace(f'"{_V}"', _V)
        if self._fmt == "jsonl":
            line = orjson.dumps({"topic": self._topics[i], "payload": payload}).decode()
            return line[:-1].replace("%", "%%").replace(_TS, "%s").replace(_V, "%s") + ',"ts_ms":%d}\n'
        return payload.replace("%", "%%").replace(_TS, "%s").replace(_V, "%s")

    def cells(self, values: Mapping[str, Mapping[str, np.ndarray]]) -> list[list[list[str]]]:
        """Value texts of a chunk: per kind group, per metric, flattened (ticks x sensors of the kind).

        Args:
            values: kind -> metric -> (ticks, sensors of that kind) array, clipped and rounded.
        """
        return [[value_texts(spec, values[kind][spec.name]) for spec in specs] for kind, _, specs, _, _ in self._groups]

    def render(self, ts_ms: int, cells: Sequence[Sequence[Sequence[str]]], row: int) -> list[Any]:
        """Encoded readings of tick ``row`` of a chunk, in sensor order, stamped ``ts_ms``."""
        ts = format_ts(ts_ms)
        mod = operator.mod
        out: list[str] = []
        for (_, idx, _, templates, _), cols in zip(self._groups, cells, strict=True):
            n = len(idx)
            at = slice(row * n, row * n + n)
            if self._fmt == "jsonl":
                out.extend(map(mod, templates, zip(repeat(ts), *[c[at] for c in cols], repeat(ts_ms))))
            else:
                out.extend(map(mod, templates, zip(repeat(ts), *[c[at] for c in cols])))
        if self._fmt == "message":
            items: list[Any] = list(zip(self._flat_topics, map(str.encode, out), repeat(ts_ms)))
        else:
            items = out
        if self._perm is not None:
            items = [items[j] for j in self._perm]
        return items

    def render_one(self, i: int, ts_ms: int, cells: Sequence[Sequence[Sequence[str]]], row: int) -> Any:
        """Encoded reading of sensor ``i`` at tick ``row`` of a chunk, stamped ``ts_ms``."""
        g, pos = self._where[i]
        _, idx, _, templates, _ = self._groups[g]
        at = row * len(idx) + pos
        args: tuple[Any, ...] = (format_ts(ts_ms), *[c[at] for c in cells[g]])
        if self._fmt == "jsonl":
            args += (ts_ms,)
        text = templates[pos] % args
        if self._fmt == "message":
            return (self._topics[i], text.encode(), ts_ms)
        return text
