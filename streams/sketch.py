"""Mergeable quantile sketch: DDSketch's logarithmic mapping over a small dense store (pure).

Keys come from the ``ddsketch`` library's :class:`~ddsketch.mapping.LogarithmicMapping` (relative
accuracy ``ALPHA`` = 2 %), computed here with numpy for whole micro-batches; its ``value`` turns
keys back into values. Positive and negative values share one signed key space::

    skey(v) = key(|v|) + BIAS  (v > 0),   0  (|v| < 1e-9),   -(key(|v|) + BIAS)  (v < 0)

Each window keeps a dense store of ``K`` = 64 counters covering ``[offset, offset + K)``. A key above
the range slides the store up; counts that fall below it are collapsed into the lowest counter (as
DDSketch's collapsing-lowest store does), so memory is fixed at 256 bytes per window.

Error bound: a quantile whose rank lies above the collapsed counter is within 2 % relative error of
the exact value (|v| >= 1e-9). 64 counters span a factor of 1.0408^64 ~ 12.9 between the smallest
and largest value kept exactly; ranks below that range report the lowest kept value.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from ddsketch.mapping import LogarithmicMapping

ALPHA: Final = 0.02
K: Final = 64
BIAS: Final = 2048
QUANTILES: Final = (0.5, 0.95, 0.99)
_MAPPING: Final = LogarithmicMapping(ALPHA)
_MULT: Final = 1.0 / math.log1p(2 * ALPHA / (1 - ALPHA)) * math.log(2)
_TINY: Final = 1e-9


def skeys(values: np.ndarray) -> np.ndarray:
    """Signed sketch keys of ``values`` (vectorised ``LogarithmicMapping.key``)."""
    a = np.abs(values)
    with np.errstate(divide="ignore"):
        k = np.ceil(np.log(np.maximum(a, _TINY)) / math.log(2) * _MULT).astype(np.int64) + BIAS
    return np.where(a < _TINY, 0, np.where(values < 0, -k, k))


def skey(value: float) -> int:
    """Signed sketch key of one value (the library's mapping)."""
    a = abs(value)
    if a < _TINY:
        return 0
    k = _MAPPING.key(a) + BIAS
    return -k if value < 0 else k


def key_value(key: int) -> float:
    """Representative value of a signed key."""
    if key == 0:
        return 0.0
    v = float(_MAPPING.value(abs(key) - BIAS))
    return -v if key < 0 else v


def new_store(key: int) -> tuple[int, np.ndarray]:
    """An empty store centred on ``key``."""
    return key - K // 2, np.zeros(K, dtype=np.int64)


def add(offset: int, counts: np.ndarray, key: int, n: int = 1) -> int:
    """Add ``n`` at ``key`` in place; return the (possibly moved) offset."""
    if key >= offset + K:
        shift = key - (offset + K) + 1
        offset = _slide(counts, offset, shift)
    i = key - offset
    counts[i if i > 0 else 0] += n
    return offset


def _slide(counts: np.ndarray, offset: int, shift: int) -> int:
    if shift >= K:
        total = counts.sum()
        counts[:] = 0
        counts[0] = total
    else:
        low = counts[: shift + 1].sum()
        counts[:-shift] = counts[shift:]
        counts[-shift:] = 0
        counts[0] = low
    return offset + shift


def merge(a: tuple[int, np.ndarray], b: tuple[int, np.ndarray]) -> tuple[int, np.ndarray]:
    """Merge two stores into a new one.

    >>> o, c = new_store(skey(10.0))
    >>> o = add(o, c, skey(10.0)); o2, c2 = new_store(skey(20.0)); o2 = add(o2, c2, skey(20.0))
    >>> o3, c3 = merge((o, c), (o2, c2)); int(c3.sum())
    2
    """
    top = max(a[0], b[0])
    out = np.zeros(K, dtype=np.int64)
    for off, cnt in (a, b):
        shift = top - off
        if shift >= K:
            out[0] += cnt.sum()
        elif shift > 0:
            out[0] += cnt[: shift + 1].sum()
            out[1 : K - shift] += cnt[shift + 1 :]
        else:
            out += cnt
    return top, out


def quantiles(offset: int, counts: np.ndarray, qs: tuple[float, ...] = QUANTILES) -> list[float]:
    """Quantiles (DDSketch rank convention ``q * (n - 1)``).

    >>> o, c = new_store(skey(1.0))
    >>> for v in range(1, 101):
    ...     o = add(o, c, skey(float(v)))
    >>> [round(x) for x in quantiles(o, c)]
    [49, 94, 98]
    """
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out = []
    for q in qs:
        rank = q * (n - 1)
        i = int(np.searchsorted(cum, rank, side="right"))
        out.append(key_value(offset + min(i, K - 1)))
    return out
