"""Mergeable accumulators for window aggregates (pure).

An accumulator is a flat list so it serialises cheaply into a Faust table value::

    [count, sum, mean, m2, min, max, first_ts_ms, first, last_ts_ms, last]

``mean``/``m2`` follow Welford's update and Chan et al.'s merge, so the variance stays
accurate for large offsets. ``first``/``last`` are by event time (ties: earliest/latest arrival),
so they do not depend on arrival order.
"""

from __future__ import annotations

import math
from typing import Final

Acc = list[float]
FIELDS: Final = ("count", "sum", "mean", "min", "max", "std", "first", "last", "first_ts_ms", "last_ts_ms")


def acc_new(ts_ms: int, value: float) -> Acc:
    """Start an accumulator from one value.

    >>> acc_result(acc_new(5, 2.0))["mean"]
    2.0
    """
    return [1, value, value, 0.0, value, value, ts_ms, value, ts_ms, value]


def acc_add(a: Acc, ts_ms: int, value: float) -> None:
    """Add one value in place."""
    n = a[0] + 1
    a[0] = n
    a[1] += value
    delta = value - a[2]
    a[2] += delta / n
    a[3] += delta * (value - a[2])
    if value < a[4]:
        a[4] = value
    if value > a[5]:
        a[5] = value
    if ts_ms < a[6]:
        a[6] = ts_ms
        a[7] = value
    if ts_ms >= a[8]:
        a[8] = ts_ms
        a[9] = value


def acc_merge(a: Acc, b: Acc) -> Acc:
    """Merge two accumulators into a new one (``a`` is the earlier-arriving side).

    >>> x = acc_new(1, 1.0); acc_add(x, 2, 3.0)
    >>> y = acc_new(3, 5.0)
    >>> r = acc_result(acc_merge(x, y)); (r["count"], r["mean"], r["first"], r["last"])
    (3, 3.0, 1.0, 5.0)
    """
    na, nb = a[0], b[0]
    n = na + nb
    delta = b[2] - a[2]
    mean = a[2] + delta * nb / n
    m2 = a[3] + b[3] + delta * delta * na * nb / n
    first_ts, first = (a[6], a[7]) if a[6] <= b[6] else (b[6], b[7])
    last_ts, last = (b[8], b[9]) if b[8] >= a[8] else (a[8], a[9])
    return [n, a[1] + b[1], mean, m2, min(a[4], b[4]), max(a[5], b[5]), first_ts, first, last_ts, last]


def acc_result(a: Acc) -> dict[str, float | int]:
    """Final values: count, sum, mean (sum/count), min, max, population std, first, last, and the
    event times of the first and last readings."""
    n = int(a[0])
    return {
        "count": n,
        "sum": a[1],
        "mean": a[1] / n,
        "min": a[4],
        "max": a[5],
        "std": math.sqrt(max(a[3], 0.0) / n),
        "first": a[7],
        "last": a[9],
        "first_ts_ms": int(a[6]),
        "last_ts_ms": int(a[8]),
    }
