"""Mergeable window accumulators (pure).

An accumulator is a flat list, cheap to serialise into a Faust table value::

    [count, sum, shift, sum_d, sum_d2, min, max, first_ts_ms, first, last_ts_ms, last]

``sum_d``/``sum_d2`` are sums of ``v - shift`` and ``(v - shift)**2`` where ``shift`` is the window's
first value (the "assumed mean" method): variance stays accurate for large offsets, and every field
is a plain sequential sum, min, max or arg-min/max, so the result depends only on the per-key order of
the readings, never on how they were batched. ``first``/``last`` are by event time (ties: earliest /
latest arrival). The columnar engine (:mod:`streams.panes`) keeps the same fields in numpy arrays.
"""

from __future__ import annotations

import math
from typing import Final

Acc = list[float]
N_FIELDS: Final = 11
FIELDS: Final = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "std",
    "first",
    "last",
    "first_ts_ms",
    "last_ts_ms",
    "rate_per_s",
)


def acc_new(ts_ms: int, value: float) -> Acc:
    """Start an accumulator from one value.

    >>> acc_result(acc_new(5, 2.0))["mean"]
    2.0
    """
    return [1, value, value, 0.0, 0.0, value, value, ts_ms, value, ts_ms, value]


def acc_add(a: Acc, ts_ms: int, value: float) -> None:
    """Add one value in place."""
    a[0] += 1
    a[1] += value
    d = value - a[2]
    a[3] += d
    a[4] += d * d
    if value < a[5]:
        a[5] = value
    if value > a[6]:
        a[6] = value
    if ts_ms < a[7]:
        a[7] = ts_ms
        a[8] = value
    if ts_ms >= a[9]:
        a[9] = ts_ms
        a[10] = value


def acc_merge(a: Acc, b: Acc) -> Acc:
    """Merge two accumulators into a new one (``a`` is the earlier-arriving side).

    >>> x = acc_new(1, 1.0); acc_add(x, 2, 3.0)
    >>> y = acc_new(3, 5.0)
    >>> r = acc_result(acc_merge(x, y)); (r["count"], r["mean"], r["first"], r["last"])
    (3, 3.0, 1.0, 5.0)
    """
    # Re-express b's shifted sums around a's shift: sum(v - ka) = sum(v - kb) + n_b (kb - ka).
    delta = b[2] - a[2]
    sd = b[3] + b[0] * delta
    sd2 = b[4] + 2 * delta * b[3] + b[0] * delta * delta
    first_ts, first = (a[7], a[8]) if a[7] <= b[7] else (b[7], b[8])
    last_ts, last = (b[9], b[10]) if b[9] >= a[9] else (a[9], a[10])
    return [
        a[0] + b[0],
        a[1] + b[1],
        a[2],
        a[3] + sd,
        a[4] + sd2,
        min(a[5], b[5]),
        max(a[6], b[6]),
        first_ts,
        first,
        last_ts,
        last,
    ]


def acc_result(a: Acc) -> dict[str, float | int]:
    """Final values: count, sum, mean (sum / count), min, max, population std, first, last, the
    event times of the first and last readings, and the rate of change (last - first) per second."""
    n = int(a[0])
    md = a[3] / n
    span_ms = a[9] - a[7]
    return {
        "count": n,
        "sum": a[1],
        "mean": a[1] / n,
        "min": a[5],
        "max": a[6],
        "std": math.sqrt(max(a[4] / n - md * md, 0.0)),
        "first": a[8],
        "last": a[10],
        "first_ts_ms": int(a[7]),
        "last_ts_ms": int(a[9]),
        "rate_per_s": (a[10] - a[8]) * 1000.0 / span_ms if span_ms > 0 else 0.0,
    }
