"""CAP 1.2 documents from alert records, validated against the OASIS schema with lxml (libxml2)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from lxml import etree

from alerting.cap import CAP_MEDIA_TYPE, CATEGORY, MSG_TYPE, CapArea, CapSink, cap_time, to_cap
from alerting.notifiers import verify_signature
from tests.unit.alerting_sinks.records import KINDS, SEVERITIES, STATES, T0_MS, make_alert, zone_alert

XSD = Path(__file__).resolve().parents[3] / "alerting" / "schemas" / "CAP-v1.2.xsd"
NS = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
SECRET = "cap-shared-secret-0123456789"  # noqa: S105 - a test secret


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD)))  # noqa: S320 - our own vendored schema


def parse_valid(schema: etree.XMLSchema, doc: bytes) -> etree._Element:
    # Documents we just generated; entity resolution and network access are off anyway.
    root = etree.fromstring(doc, etree.XMLParser(resolve_entities=False, no_network=True))  # noqa: S320
    assert schema.validate(root), schema.error_log
    return root


def text(root: etree._Element, path: str) -> str | None:
    return root.findtext(path, namespaces=NS)


def test_schema_is_the_oasis_cap_1_2_schema() -> None:
    tree = etree.parse(str(XSD))  # noqa: S320 - our own vendored schema
    assert tree.getroot().get("targetNamespace") == NS["cap"]
    assert tree.getroot().get("version") == "1.2"
    assert b"Copyright OASIS Open 2010" in XSD.read_bytes()


@pytest.mark.parametrize(("state", "severity", "kind"), list(itertools.product(STATES, SEVERITIES, (*KINDS, "other"))))
def test_every_state_severity_and_kind_is_valid_cap(
    schema: etree.XMLSchema, state: str, severity: str, kind: str
) -> None:
    acked_by = "op-li" if state == "acknowledged" else None
    alert = make_alert(seq=3, state=state, severity=severity, kind=kind, acked_by=acked_by)
    root = parse_valid(schema, to_cap(alert, sender="urbansense@city.example"))
    assert text(root, "cap:identifier") == "a-2f82c14509cd4f2f.3"
    assert text(root, "cap:sender") == "urbansense@city.example"
    assert text(root, "cap:status") == "Actual"
    assert text(root, "cap:scope") == "Public"
    assert text(root, "cap:msgType") == MSG_TYPE[state]
    assert text(root, "cap:incidents") == "a-2f82c14509cd4f2f"
    assert text(root, "cap:info/cap:category") == CATEGORY.get(kind, "Other")
    assert text(root, "cap:info/cap:event") == "pm25_very_unhealthy"
    assert text(root, "cap:info/cap:area/cap:areaDesc") == "nanshan"
    urgency = text(root, "cap:info/cap:urgency")
    if state in ("cleared", "suppressed"):
        assert urgency == "Past"
        assert text(root, "cap:info/cap:responseType") == "AllClear"
    else:
        assert urgency == {"critical": "Immediate", "warning": "Expected", "info": "Future"}[severity]
    cap_severity = {"critical": "Severe", "warning": "Moderate", "info": "Minor"}[severity]
    certainty = {"critical": "Observed", "warning": "Likely", "info": "Possible"}[severity]
    assert text(root, "cap:info/cap:severity") == cap_severity
    assert text(root, "cap:info/cap:certainty") == certainty


def test_msg_type_mapping() -> None:
    assert MSG_TYPE == {
        "raised": "Alert",
        "updated": "Update",
        "escalated": "Update",
        "acknowledged": "Update",
        "cleared": "Cancel",
        "suppressed": "Cancel",
    }
    assert CATEGORY == {"traffic": "Transport", "environment": "Env", "iot": "Infra", "crowd": "Safety"}


def test_sent_is_rfc3339_with_offset(schema: etree.XMLSchema) -> None:
    root = parse_valid(schema, to_cap(make_alert(ts_ms=T0_MS + 999)))
    assert text(root, "cap:sent") == "2026-11-29T04:52:00+00:00"
    shenzhen = timezone(timedelta(hours=8))
    root = parse_valid(schema, to_cap(make_alert(), tz=shenzhen))
    assert text(root, "cap:sent") == "2026-11-29T12:52:00+08:00"
    assert text(root, "cap:info/cap:effective") == "2026-11-29T12:52:00+08:00"
    assert text(root, "cap:info/cap:onset") == cap_time(T0_MS - 175_000, shenzhen)
    assert cap_time(0, timezone(-timedelta(hours=5, minutes=30))) == "1969-12-31T18:30:00-05:30"


def test_hostile_text_is_escaped_and_control_characters_removed(schema: etree.XMLSchema) -> None:
    evil = "<script>alert(1)</script>&<img src=x onerror=alert(2)>\x00\x07\ufffe"
    alert = make_alert(sensor_id=evil, message=evil, rule="r<&>", zone="z<&", alert_id="a-<x>&,1 2")
    root = parse_valid(schema, to_cap(alert))
    assert "<script>alert(1)</script>&<img src=x onerror=alert(2)>" in (text(root, "cap:info/cap:headline") or "")
    assert root.find(".//{*}script") is None and root.find(".//{*}img") is None
    ident = text(root, "cap:identifier") or ""
    assert not set(ident) & set(" ,<&")
    assert text(root, "cap:info/cap:area/cap:areaDesc") == "z<&"


def test_zone_area_circle_and_polygon(schema: etree.XMLSchema) -> None:
    areas = {
        "futian": CapArea(circle=(22.5431, 114.0579, 4.0), polygon=((22.50, 114.00), (22.58, 114.00), (22.58, 114.10))),
    }
    root = parse_valid(schema, to_cap(zone_alert(), areas=areas))
    area = root.find("cap:info/cap:area", NS)
    assert area is not None
    assert area.findtext("cap:areaDesc", namespaces=NS) == "futian"
    assert area.findtext("cap:circle", namespaces=NS) == "22.543100,114.057900 4"
    polygon = (area.findtext("cap:polygon", namespaces=NS) or "").split()
    assert len(polygon) == 4 and polygon[0] == polygon[-1]
    # A sensor alert with its own location gets a small circle around the sensor instead.
    located = make_alert(zone="futian", location={"lat": 22.54, "lon": 114.05})
    root = parse_valid(schema, to_cap(located, areas=areas, sensor_radius_km=0.25))
    assert text(root, "cap:info/cap:area/cap:circle") == "22.540000,114.050000 0.25"
    # No coordinates known: areaDesc only.
    root = parse_valid(schema, to_cap(make_alert(zone="elsewhere"), areas=areas))
    assert root.find("cap:info/cap:area/cap:circle", NS) is None


def test_evidence_parameters_and_references(schema: etree.XMLSchema) -> None:
    alert = make_alert(seq=4, state="escalated", escalation_level=2)
    alert["evidence"].update(score=0.973, model_version="iforest-env/3")
    ref = "urbansense,a-2f82c14509cd4f2f.1,2026-11-29T04:52:00+00:00"
    root = parse_valid(schema, to_cap(alert, references=[ref, ref]))
    assert text(root, "cap:references") == ref
    params = {
        p.findtext("cap:valueName", namespaces=NS): p.findtext("cap:value", namespaces=NS)
        for p in root.iterfind("cap:info/cap:parameter", NS)
    }
    assert params["urbansense:score"] == "0.973"
    assert params["urbansense:model_version"] == "iforest-env/3"
    assert params["urbansense:escalation_level"] == "2"
    assert params["urbansense:sensor_id"] == "env-nanshan-0005"
    assert "escalated to level 2" in (text(root, "cap:note") or "")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [({"state": "open"}, "field 'state'"), ({"severity": "major"}, "field 'severity'")],
)
def test_bad_records_are_refused(overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        to_cap(make_alert(**overrides))
    with pytest.raises(ValueError, match="sender"):
        to_cap(make_alert(), sender="urban sense")
    with pytest.raises(ValueError, match="polygon"):
        CapArea(polygon=((1.0, 2.0), (1.0, 3.0)))


def test_cap_sink_posts_signed_cap_with_references(schema: etree.XMLSchema) -> None:
    async def main() -> list[tuple[dict[str, str], bytes]]:
        seen: list[tuple[dict[str, str], bytes]] = []

        async def handler(request: web.Request) -> web.Response:
            seen.append((dict(request.headers), await request.read()))
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/cap", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        sink = CapSink(f"http://127.0.0.1:{port}/cap", SECRET, sender="urbansense@city.example")
        try:
            # A suppressed record of an alert never announced is not sent.
            await sink.send(make_alert("a-quiet", state="suppressed"))
            for seq, state in enumerate(("raised", "acknowledged", "cleared"), start=1):
                await sink.send(make_alert(seq=seq, state=state, acked_by="op" if seq > 1 else None))
        finally:
            await sink.close()
            await runner.cleanup()
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 3
    roots = []
    for headers, body in seen:
        assert headers["Content-Type"] == CAP_MEDIA_TYPE
        assert verify_signature(
            SECRET,
            body,
            headers["X-UrbanSense-Timestamp"],
            headers["X-UrbanSense-Signature"],
            now_s=int(headers["X-UrbanSense-Timestamp"]),
        )
        roots.append(parse_valid(schema, body))
    assert [text(r, "cap:msgType") for r in roots] == ["Alert", "Update", "Cancel"]
    first = "urbansense@city.example,a-2f82c14509cd4f2f.1,2026-11-29T04:52:00+00:00"
    assert text(roots[0], "cap:references") is None
    assert text(roots[1], "cap:references") == first
    second = "urbansense@city.example,a-2f82c14509cd4f2f.2,2026-11-29T04:52:01+00:00"
    assert text(roots[2], "cap:references") == f"{first} {second}"
