"""Window math in integer epoch milliseconds, half-open ``[start, end)`` (pure)."""

from __future__ import annotations


def window_bounds(ts_ms: int, size_ms: int) -> tuple[int, int]:
    """The tumbling window ``[start, end)`` holding ``ts_ms``.

    >>> window_bounds(61_000, 60_000)
    (60000, 120000)
    >>> window_bounds(-1, 60_000)
    (-60000, 0)
    """
    start = ts_ms - ts_ms % size_ms
    return start, start + size_ms
