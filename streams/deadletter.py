"""Dead-letter records: the original bytes plus why and where they were rejected.

A dead letter keeps the payload byte for byte as the record value (truncated only above
``max_value_bytes`` so it still fits a Kafka record) and carries its context in headers,
as Kafka Connect's dead-letter queues do:

=========================  =====================================================
header                     meaning
=========================  =====================================================
``urban.dlq.reason``       short code (``bad_json``, ``missing_field``, ...)
``urban.dlq.detail``       message naming the field, expectation and value
``urban.dlq.source``       ``mqtt:<topic>`` or ``kafka:<topic>/<partition>@<offset>``
``urban.dlq.size``         original payload size in bytes
``urban.dlq.truncated``    ``1`` when the value holds only the first bytes
``urban.dlq.at_ms``        processing time the message was rejected (epoch ms)
=========================  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.errors import InvalidReading

DLQ_MAX_VALUE_BYTES = 512 * 1024
Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message ready to produce."""

    key: bytes | None
    value: bytes
    headers: Headers
    reason: str


def dead_letter(
    raw: bytes,
    err: InvalidReading,
    *,
    source: str,
    now_ms: int,
    key: bytes | None = None,
    max_value_bytes: int = DLQ_MAX_VALUE_BYTES,
) -> DeadLetter:
    """Build the dead letter for ``raw`` rejected with ``err``.

    >>> dl = dead_letter(b"{oops", InvalidReading("bad_json", "x"), source="mqtt:city/a", now_ms=5)
    >>> dl.value, dict(dl.headers)["urban.dlq.reason"]
    (b'{oops', b'bad_json')
    """
    truncated = len(raw) > max_value_bytes
    headers: Headers = [
        ("urban.dlq.reason", err.reason.encode()),
        ("urban.dlq.detail", err.detail.encode("utf-8", "replace")[:2048]),
        ("urban.dlq.source", source.encode("utf-8", "replace")[:512]),
        ("urban.dlq.size", str(len(raw)).encode()),
        ("urban.dlq.truncated", b"1" if truncated else b"0"),
        ("urban.dlq.at_ms", str(now_ms).encode()),
    ]
    return DeadLetter(key, raw[:max_value_bytes] if truncated else raw, headers, err.reason)
