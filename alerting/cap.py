"""OASIS Common Alerting Protocol 1.2 messages for public-warning systems.

:func:`to_cap` is pure (stdlib only): one alert record in, one CAP 1.2 ``<alert>`` document out,
valid against the OASIS schema (``alerting/schemas/CAP-v1.2.xsd``; the tests validate every
combination of state, severity and kind). :class:`CapSink` delivers the documents to an HTTP
endpoint with the signing, retry and back-pressure policy of :class:`~alerting.notifiers.WebhookSink`.

Mapping:

=====================  ==============================================================
CAP                    from the alert record
=====================  ==============================================================
identifier             ``<alert_id>.<seq>`` (one CAP message per lifecycle record)
sent                   ``ts_ms`` as RFC 3339 with an offset (``+00:00`` by default)
status / scope         ``Actual`` / ``Public``
msgType                raised: ``Alert``; updated, escalated, acknowledged: ``Update``;
                       cleared, suppressed: ``Cancel``
incidents              ``alert_id`` (groups every message of one alert)
references             earlier messages of the same alert, when the caller knows them
info/category          kind: traffic ``Transport``, environment ``Env``, iot ``Infra``,
                       crowd ``Safety``; anything else ``Other``
info/event             the rule name
urgency/severity/      critical: ``Immediate``/``Severe``/``Observed``;
certainty              warning: ``Expected``/``Moderate``/``Likely``;
                       info: ``Future``/``Minor``/``Possible``;
                       a cleared alert has urgency ``Past`` and response ``AllClear``
info/area              ``areaDesc`` = zone, plus a circle or polygon when coordinates are known
=====================  ==============================================================
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Final
from xml.etree.ElementTree import Element, SubElement, tostring  # building only; nothing is parsed

if TYPE_CHECKING:
    from pydantic import SecretStr

    from alerting.notifiers import Alert

logger = logging.getLogger(__name__)

CAP_NS: Final = "urn:oasis:names:tc:emergency:cap:1.2"
CAP_MEDIA_TYPE: Final = "application/cap+xml"

MSG_TYPE: Final[Mapping[str, str]] = {
    "raised": "Alert",
    "updated": "Update",
    "escalated": "Update",
    "acknowledged": "Update",
    "cleared": "Cancel",
    "suppressed": "Cancel",
}
CATEGORY: Final[Mapping[str, str]] = {
    "traffic": "Transport",
    "environment": "Env",
    "iot": "Infra",
    "crowd": "Safety",
}
#: our severity -> (urgency, severity, certainty)
GRADING: Final[Mapping[str, tuple[str, str, str]]] = {
    "critical": ("Immediate", "Severe", "Observed"),
    "warning": ("Expected", "Moderate", "Likely"),
    "info": ("Future", "Minor", "Possible"),
}

# XML 1.0 forbids most control characters even when escaped; ElementTree would write them anyway.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# CAP: identifiers and senders must not contain spaces, commas or the restricted characters < and &.
_NOT_ID = re.compile(r"[^A-Za-z0-9_.:@/-]")
_HEADLINE_MAX = 160


@dataclass(frozen=True, slots=True)
class CapArea:
    """Known coordinates of a zone (WGS 84): a circle, a polygon, or both.

    Attributes:
        circle: ``(lat, lon, radius_km)``.
        polygon: ``((lat, lon), ...)``, at least 3 distinct points; closed automatically.
    """

    circle: tuple[float, float, float] | None = None
    polygon: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.circle is not None:
            lat, lon, radius = self.circle
            _check_point(lat, lon)
            if not radius >= 0:
                msg = f"CapArea circle radius_km: expected >= 0, got {radius}"
                raise ValueError(msg)
        if self.polygon is not None:
            if len(self.polygon) < 3:
                msg = f"CapArea polygon: expected at least 3 points, got {len(self.polygon)}"
                raise ValueError(msg)
            for lat, lon in self.polygon:
                _check_point(lat, lon)


def _check_point(lat: float, lon: float) -> None:
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        msg = f"CapArea: expected lat in [-90, 90] and lon in [-180, 180], got ({lat}, {lon})"
        raise ValueError(msg)


def _text(value: Any) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def cap_time(ts_ms: int, tz: tzinfo = UTC) -> str:
    """RFC 3339 with a numeric offset and whole seconds, as the CAP 1.2 schema requires.

    >>> cap_time(1795927920123)
    '2026-11-29T04:52:00+00:00'
    >>> from datetime import timedelta, timezone
    >>> cap_time(1795927920123, timezone(timedelta(hours=8)))
    '2026-11-29T12:52:00+08:00'
    """
    dt = datetime.fromtimestamp(ts_ms // 1000, tz)
    offset = dt.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def cap_identifier(alert: Alert) -> str:
    """The CAP identifier of one alert record: ``<alert_id>.<seq>``, restricted characters replaced.

    >>> cap_identifier({"alert_id": "a-2f82c14509cd4f2f", "seq": 3})
    'a-2f82c14509cd4f2f.3'
    """
    return _NOT_ID.sub("_", f"{alert['alert_id']}.{alert['seq']}")


def cap_reference(sender: str, alert: Alert, tz: tzinfo = UTC) -> str:
    """The ``sender,identifier,sent`` triple other messages use to reference this one."""
    return f"{sender},{cap_identifier(alert)},{cap_time(int(alert['ts_ms']), tz)}"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _description(alert: Alert) -> str:
    lines = [str(alert.get("message") or "")]
    metric, value, threshold = alert.get("metric"), alert.get("value"), alert.get("threshold")
    if metric is not None and value is not None:
        lines.append(f"{metric} = {_num(value)}" + (f" (threshold {_num(threshold)})" if threshold is not None else ""))
    subject = alert.get("sensor_id") or f"zone {alert.get('zone')}"
    level = alert.get("escalation_level", 0)
    lines.append(f"subject: {subject}; state: {alert.get('state')}; escalation level: {level}")
    evidence = alert.get("evidence") or {}
    sensors = evidence.get("sensors") or []
    if sensors:
        lines.append(f"sensors in alarm ({len(sensors)}): " + ", ".join(str(s) for s in sensors[:50]))
    if evidence.get("score") is not None:
        lines.append(f"anomaly score {_num(evidence['score'])} (model {evidence.get('model_version')})")
    if alert.get("acked_by"):
        lines.append(f"acknowledged by {alert['acked_by']}")
    return "\n".join(line for line in lines if line)


def _parameters(alert: Alert) -> list[tuple[str, str]]:
    out = [
        ("urbansense:alert_id", alert["alert_id"]),
        ("urbansense:seq", alert["seq"]),
        ("urbansense:state", alert["state"]),
        ("urbansense:rule", alert.get("rule")),
        ("urbansense:category", alert.get("category")),
        ("urbansense:subject_type", alert.get("subject_type")),
        ("urbansense:sensor_id", alert.get("sensor_id")),
        ("urbansense:zone", alert.get("zone")),
        ("urbansense:kind", alert.get("kind")),
        ("urbansense:metric", alert.get("metric")),
        ("urbansense:value", alert.get("value")),
        ("urbansense:threshold", alert.get("threshold")),
        ("urbansense:escalation_level", alert.get("escalation_level")),
        ("urbansense:latency_ms", alert.get("latency_ms")),
    ]
    evidence = alert.get("evidence") or {}
    out += [("urbansense:score", evidence.get("score")), ("urbansense:model_version", evidence.get("model_version"))]
    return [(name, _num(value)) for name, value in out if value is not None]


def to_cap(
    alert: Alert,
    *,
    sender: str = "urbansense",
    sender_name: str = "UrbanSense city operations centre",
    areas: Mapping[str, CapArea] | None = None,
    references: Sequence[str] = (),
    language: str = "en-US",
    tz: tzinfo = UTC,
    sensor_radius_km: float = 0.5,
) -> bytes:
    """One alert record as a CAP 1.2 XML document (UTF-8, with an XML declaration).

    Args:
        alert: the alert record.
        sender: CAP sender id (no spaces, commas, ``<`` or ``&``), e.g. ``urbansense@city.example``.
        sender_name: human-readable sender.
        areas: known coordinates per zone; without one, the area has only ``areaDesc``.
        references: ``sender,identifier,sent`` of earlier messages of this alert.
        language: RFC 3066 language of the text.
        tz: offset used in the timestamps.
        sensor_radius_km: radius of the circle drawn around a record's ``location`` (lat/lon), if any.

    Returns:
        The document.

    >>> doc = to_cap({"alert_id": "a-1", "seq": 1, "state": "raised", "severity": "critical", "kind": "crowd",
    ...               "zone": "futian", "rule": "crowd_surge", "ts_ms": 1795927920000, "message": "surge"})
    >>> b"<msgType>Alert</msgType>" in doc and b"<category>Safety</category>" in doc
    True
    """
    state = str(alert["state"])
    if state not in MSG_TYPE:
        msg = f"alert {alert.get('alert_id')}: field 'state': expected one of {sorted(MSG_TYPE)}, got {state!r}"
        raise ValueError(msg)
    severity = str(alert["severity"])
    if severity not in GRADING:
        msg = f"alert {alert.get('alert_id')}: field 'severity': expected one of {sorted(GRADING)}, got {severity!r}"
        raise ValueError(msg)
    if not sender or _NOT_ID.search(sender):
        msg = f"CAP sender: expected no spaces, commas, '<' or '&', got {sender!r}"
        raise ValueError(msg)
    urgency, cap_severity, certainty = GRADING[severity]
    ended = MSG_TYPE[state] == "Cancel"
    if ended:
        urgency = "Past"

    root = Element("alert", xmlns=CAP_NS)

    def add(parent: Element, tag: str, value: Any) -> Element:
        child = SubElement(parent, tag)
        child.text = _text(value)
        return child

    add(root, "identifier", cap_identifier(alert))
    add(root, "sender", sender)
    add(root, "sent", cap_time(int(alert["ts_ms"]), tz))
    add(root, "status", "Actual")
    add(root, "msgType", MSG_TYPE[state])
    add(root, "source", f"urbansense rule {alert.get('rule')}")
    add(root, "scope", "Public")
    notes = {
        "acknowledged": f"acknowledged by {alert.get('acked_by') or 'an operator'}",
        "escalated": f"escalated to level {alert.get('escalation_level', 0)}",
        "cleared": "the condition has cleared",
        "suppressed": "suppressed by a maintenance window",
    }
    if state in notes:
        add(root, "note", notes[state])
    refs = [r for r in references if r and not re.search(r"\s", r)]
    if refs:
        add(root, "references", " ".join(dict.fromkeys(refs)))
    add(root, "incidents", _NOT_ID.sub("_", str(alert["alert_id"])))

    info = SubElement(root, "info")
    add(info, "language", language)
    add(info, "category", CATEGORY.get(str(alert.get("kind")), "Other"))
    add(info, "event", alert.get("rule") or "urbansense alert")
    add(info, "responseType", "AllClear" if ended else "Monitor")
    add(info, "urgency", urgency)
    add(info, "severity", cap_severity)
    add(info, "certainty", certainty)
    if alert.get("raised_ts_ms") is not None:
        add(info, "effective", cap_time(int(alert["raised_ts_ms"]), tz))
    if alert.get("first_reading_ts_ms") is not None:
        add(info, "onset", cap_time(int(alert["first_reading_ts_ms"]), tz))
    add(info, "senderName", sender_name)
    headline = str(alert.get("message") or alert.get("rule") or "")
    add(info, "headline", headline if len(headline) <= _HEADLINE_MAX else headline[: _HEADLINE_MAX - 1] + "…")
    add(info, "description", _description(alert))
    for name, value in _parameters(alert):
        param = SubElement(info, "parameter")
        add(param, "valueName", name)
        add(param, "value", value)

    area_el = SubElement(info, "area")
    zone = str(alert.get("zone") or "unknown")
    add(area_el, "areaDesc", zone)
    known = (areas or {}).get(zone)
    if known is not None and known.polygon is not None:
        points = list(known.polygon)
        if points[0] != points[-1]:
            points.append(points[0])
        add(area_el, "polygon", " ".join(f"{lat:.6f},{lon:.6f}" for lat, lon in points))
    circles = []
    location = alert.get("location")
    if alert.get("subject_type") != "zone" and isinstance(location, Mapping) and {"lat", "lon"} <= location.keys():
        circles.append((float(location["lat"]), float(location["lon"]), sensor_radius_km))
    elif known is not None and known.circle is not None:
        circles.append(known.circle)
    for lat, lon, radius in circles:
        add(area_el, "circle", f"{lat:.6f},{lon:.6f} {radius:g}")
    doc: bytes = tostring(root, encoding="utf-8", xml_declaration=True)
    return doc


class CapSink:
    """Deliver each alert record as a CAP 1.2 document (``application/cap+xml``) to an HTTP endpoint.

    Delivery is a :class:`~alerting.notifiers.WebhookSink` (same signature headers, retries and
    back-pressure). Updates and cancels reference the earlier messages of the same alert that this
    sink has sent (the first and the latest). A ``suppressed`` record of an alert this sink never
    announced is not sent: the public never saw it, so there is nothing to cancel.

    Args:
        url: the endpoint.
        secret: shared HMAC secret.
        sender: CAP sender id.
        areas: known coordinates per zone.
        tz: offset for timestamps.
        max_tracked: alerts whose earlier messages are remembered for ``references``.
        **webhook: further :class:`~alerting.notifiers.WebhookSink` options.
    """

    def __init__(
        self,
        url: str,
        secret: SecretStr | str,
        *,
        sender: str = "urbansense",
        areas: Mapping[str, CapArea] | None = None,
        tz: tzinfo = UTC,
        max_tracked: int = 10_000,
        **webhook: Any,
    ) -> None:
        from alerting.notifiers import WebhookSink  # the I/O half; to_cap stays importable without aiohttp

        if not sender or _NOT_ID.search(sender):
            msg = f"CapSink sender: expected no spaces, commas, '<' or '&', got {sender!r}"
            raise ValueError(msg)
        self.sender = sender
        self.areas = dict(areas or {})
        self.tz = tz
        self._max_tracked = max_tracked
        self._sent: OrderedDict[str, tuple[str, str]] = OrderedDict()  # alert_id -> (first ref, latest ref)
        self._webhook = WebhookSink(url, secret, content_type=CAP_MEDIA_TYPE, **webhook)

    async def send(self, alert: Alert) -> None:
        """Deliver one record as CAP (see the class docstring)."""
        alert_id = str(alert["alert_id"])
        known = self._sent.get(alert_id)
        if alert["state"] == "suppressed" and known is None:
            logger.debug("cap skipped suppressed alert never announced alert_id=%s", alert_id)
            return
        doc = to_cap(alert, sender=self.sender, areas=self.areas, references=known or (), tz=self.tz)
        await self._webhook.post(doc, f"{alert_id}.{alert['seq']}")
        ref = cap_reference(self.sender, alert, self.tz)
        if MSG_TYPE[str(alert["state"])] == "Cancel":
            self._sent.pop(alert_id, None)
            return
        self._sent[alert_id] = (known[0] if known else ref, ref)
        self._sent.move_to_end(alert_id)
        while len(self._sent) > self._max_tracked:
            self._sent.popitem(last=False)

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._webhook.close()
