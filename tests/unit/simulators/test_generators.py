from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import numpy as np
import pytest
from confluent_kafka import KafkaError, Producer

from simulators.city import KIND_ORDER, METRICS, ZONES, build_city
from simulators.generators import Batch, Incident, generate
from simulators.malformed import malformed_corpus
from simulators.publish import Pacer, PublishError, publish_kafka, read_jsonl, write_jsonl
from streams.errors import ConfigError
from streams.frames import kafka_partition, split_frame
from streams.schema import encode_reading, parse_reading

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# 2026-06-01T00:00:00+08:00 (a Monday in Shenzhen) as UTC epoch ms.
MONDAY_MS = 1_780_243_200_000
HOUR_MS = 3_600_000


def batches(
    n_sensors: int = 48,
    *,
    steps: int = 5,
    seed: int = 1,
    city_seed: int = 7,
    interval_ms: int = 60_000,
    start_ms: int = MONDAY_MS,
    incidents: tuple[Incident, ...] = (),
) -> list[Batch]:
    city = build_city(n_sensors, city_seed)
    return list(
        generate(
            city,
            start_ms=start_ms,
            interval_ms=interval_ms,
            steps=steps,
            seed=seed,
            incidents=incidents,
        )
    )


def all_bytes(bs: list[Batch]) -> list[tuple[str, bytes]]:
    return [m for b in bs for m in b.to_messages()]


# --- city ----------------------------------------------------------------------------------


def test_city_places_kinds_round_robin_over_zones() -> None:
    city = build_city(48, seed=3)
    assert len(city.sensors) == 48
    for i, s in enumerate(city.sensors):
        assert s.kind == KIND_ORDER[i % 4]
        assert s.zone == ZONES[(i // 4) % 6].zone_id
        assert ID_RE.fullmatch(s.sensor_id)
        assert s.topic == f"city/{s.kind}/{s.zone}/{s.sensor_id}"
    assert {(s.kind, s.zone) for s in city.sensors} == {
        (k, z.zone_id) for k in KIND_ORDER for z in ZONES
    }
    assert city.sensors[7].sensor_id == "iot-luohu-0007"


def test_zone_ids_are_lowercase_ascii_and_include_baoan() -> None:
    ids = [z.zone_id for z in ZONES]
    assert ids == ["futian", "luohu", "nanshan", "baoan", "longgang", "longhua"]
    assert all(re.fullmatch(r"[a-z]+", z) for z in ids)


def test_city_is_seeded() -> None:
    assert build_city(30, seed=1) == build_city(30, seed=1)
    assert build_city(30, seed=1) != build_city(30, seed=2)


def test_sensors_lie_near_their_zone_centre() -> None:
    centres = {z.zone_id: z for z in ZONES}
    for s in build_city(240, seed=5).sensors:
        z = centres[s.zone]
        km = float(
            np.hypot(
                (s.lat - z.lat) * 110.574, (s.lon - z.lon) * 111.32 * np.cos(np.radians(z.lat))
            )
        )
        assert km <= z.radius_km + 0.01


def test_traffic_sensors_form_a_chain_per_zone() -> None:
    city = build_city(96, seed=1)
    for s in city.sensors:
        if s.kind != "traffic":
            assert (s.upstream, s.downstream) == (None, None)
            continue
        for other_id in (s.upstream, s.downstream):
            if other_id is not None:
                other = city.sensor(other_id)
                assert (other.kind, other.zone) == ("traffic", s.zone)
        if s.downstream is not None:
            assert city.sensor(s.downstream).upstream == s.sensor_id
    heads = [s for s in city.of_kind("traffic") if s.upstream is None]
    assert len(heads) == 6


def test_metric_names_and_units() -> None:
    assert {m.name for m in METRICS["traffic"]} == {"flow", "speed", "occupancy"}
    assert {m.name for m in METRICS["environment"]} == {
        "pm25",
        "pm10",
        "no2",
        "o3",
        "temperature",
        "humidity",
        "noise",
    }
    assert [(m.name, m.unit) for m in METRICS["crowd"]] == [("people", "count")]
    assert {m.name: m.unit for m in METRICS["iot"]} == {
        "water_pressure": "bar",
        "power_load": "kW",
        "drain_level": "cm",
    }
    for specs in METRICS.values():
        for m in specs:
            assert NAME_RE.fullmatch(m.name)
            assert m.lo < m.hi


def test_build_city_rejects_empty() -> None:
    with pytest.raises(ValueError, match="n_sensors"):
        build_city(0, seed=1)


# --- generation ----------------------------------------------------------------------------


def test_same_seed_same_bytes() -> None:
    assert all_bytes(batches(seed=11)) == all_bytes(batches(seed=11))


@pytest.mark.parametrize("kwargs", [{"seed": 12}, {"city_seed": 8}])
def test_different_seed_different_bytes(kwargs: dict[str, int]) -> None:
    base = all_bytes(batches(seed=11))
    other = all_bytes(batches(**{"seed": 11, **kwargs}))
    assert len(base) == len(other)
    assert base != other


def test_output_does_not_depend_on_chunking() -> None:
    # 4000 sensors -> 2 ticks per numpy chunk; 24 sensors -> one chunk for all ticks.
    for n in (24, 4000):
        long = all_bytes(batches(n, steps=5))
        short = all_bytes(batches(n, steps=3))
        assert long[: len(short)] == short


def test_one_batch_per_tick_with_all_sensors() -> None:
    bs = batches(30, steps=4, interval_ms=1000)
    assert [b.ts_ms for b in bs] == [MONDAY_MS + k * 1000 for k in range(4)]
    for b in bs:
        assert len(b) == 30
        assert b.sensor_ids == b.city.sensor_ids
        assert len(b.to_messages()) == 30
        assert all(len(v) == 30 for v in b.values.values())


def test_payloads_parse_match_batch_and_equal_encode_reading() -> None:
    for b in batches(48, steps=3):
        messages = b.to_messages()
        timed = b.to_timed_messages()
        for i, ((topic, payload), sensor) in enumerate(zip(messages, b.city.sensors, strict=True)):
            assert topic == f"city/{sensor.kind}/{sensor.zone}/{sensor.sensor_id}"
            r = parse_reading(payload, now_ms=b.ts_ms)
            assert (r.sensor_id, r.kind, r.zone, r.ts_ms) == (
                sensor.sensor_id,
                sensor.kind,
                sensor.zone,
                b.ts_ms,
            )
            assert (r.lat, r.lon) == (sensor.lat, sensor.lon)
            assert r.metrics == b.metrics_of(i)
            assert r.units == {m.name: m.unit for m in METRICS[sensor.kind]}
            assert payload == encode_reading(
                sensor_id=sensor.sensor_id,
                kind=sensor.kind,
                zone=sensor.zone,
                lat=sensor.lat,
                lon=sensor.lon,
                ts_ms=b.ts_ms,
                metrics={m: (v, r.units[m]) for m, v in b.metrics_of(i).items()},
            )
            assert timed[i] == (topic, payload, b.ts_ms)


def test_values_only_for_the_sensors_kind() -> None:
    b = batches(24, steps=1)[0]
    for i, s in enumerate(b.city.sensors):
        own = {m.name for m in METRICS[s.kind]}
        for name, col in b.values.items():
            assert np.isnan(col[i]) == (name not in own)


def day_of_batches(n_sensors: int = 96, seed: int = 2) -> list[Batch]:
    return batches(n_sensors, steps=24 * 12, interval_ms=5 * 60_000, seed=seed)


def test_physical_bounds_hold_over_a_day() -> None:
    for b in day_of_batches():
        for kind, specs in METRICS.items():
            idx = [i for i, s in enumerate(b.city.sensors) if s.kind == kind]
            for spec in specs:
                v = b.values[spec.name][idx]
                assert np.all(np.isfinite(v))
                assert np.all((v >= spec.lo) & (v <= spec.hi)), spec.name
                assert np.all(np.round(v, spec.decimals) == v)
        people = b.values["people"][~np.isnan(b.values["people"])]
        assert np.all(people == np.floor(people))
        assert np.all(b.values["occupancy"][~np.isnan(b.values["occupancy"])] <= 100.0)
        assert np.all(b.values["flow"][~np.isnan(b.values["flow"])] >= 0.0)


def _mean_at(bs: list[Batch], metric: str, local_hour: float) -> float:
    ts = MONDAY_MS + int(local_hour * HOUR_MS)
    b = next(b for b in bs if b.ts_ms == ts)
    return float(np.nanmean(b.values[metric]))


def test_daily_cycles() -> None:
    bs = day_of_batches(240)
    assert _mean_at(bs, "flow", 8.5) > 2 * _mean_at(bs, "flow", 3.0)  # morning rush
    assert _mean_at(bs, "flow", 18.25) > 2 * _mean_at(bs, "flow", 3.0)  # evening rush
    assert _mean_at(bs, "speed", 8.5) < _mean_at(bs, "speed", 3.0)
    assert _mean_at(bs, "people", 18.0) > 3 * _mean_at(bs, "people", 3.0)
    assert _mean_at(bs, "temperature", 15.0) > _mean_at(bs, "temperature", 5.0) + 4
    assert _mean_at(bs, "humidity", 15.0) < _mean_at(bs, "humidity", 5.0)
    assert _mean_at(bs, "o3", 13.0) > _mean_at(bs, "o3", 2.0)


# --- incidents -----------------------------------------------------------------------------

INCIDENT_START = MONDAY_MS + 2 * 60_000
INCIDENT_END = MONDAY_MS + 5 * 60_000


@pytest.mark.parametrize(
    ("kind", "zone", "magnitude", "check"),
    [
        (
            "crowd",
            "futian",
            2.0,
            lambda before, after: np.allclose(after["people"], 3 * before["people"], atol=1),
        ),
        (
            "environment",
            "nanshan",
            1.5,
            lambda before, after: np.all(after["pm25"] > 2 * before["pm25"]),
        ),
        (
            "traffic",
            "baoan",
            1.0,
            lambda before, after: np.all(after["speed"] <= before["speed"] / 1.9)
            and np.all(after["occupancy"] >= before["occupancy"])
            and np.all(after["occupancy"] <= 100),
        ),
        (
            "iot",
            "longhua",
            1.0,
            lambda before, after: np.all(after["drain_level"] >= before["drain_level"] + 59),
        ),
    ],
)
def test_incident_shifts_only_its_zone_kind_and_window(
    kind: str, zone: str, magnitude: float, check: Callable[[dict[str, Any], dict[str, Any]], bool]
) -> None:
    incident = Incident(kind, zone, INCIDENT_START, INCIDENT_END, magnitude)
    base = batches(96, steps=8, seed=4)
    hit = batches(96, steps=8, seed=4, incidents=(incident,))
    target = [i for i, s in enumerate(base[0].city.sensors) if (s.kind, s.zone) == (kind, zone)]
    assert target
    for b0, b1 in zip(base, hit, strict=True):
        m0, m1 = b0.to_messages(), b1.to_messages()
        for i in range(len(m0)):
            if b0.ts_ms in range(INCIDENT_START, INCIDENT_END) and i in target:
                assert m0[i] != m1[i]
            else:
                assert m0[i] == m1[i]
        if incident.active(b0.ts_ms):
            before = {m.name: b0.values[m.name][target] for m in METRICS[kind]}
            after = {m.name: b1.values[m.name][target] for m in METRICS[kind]}
            assert check(before, after)


def test_incident_bounds_still_hold_at_extreme_magnitude() -> None:
    incidents = tuple(
        Incident(k, "futian", MONDAY_MS, MONDAY_MS + HOUR_MS, 1000.0) for k in KIND_ORDER
    )
    for b in batches(48, steps=3, incidents=incidents):
        for specs in METRICS.values():
            for spec in specs:
                v = b.values[spec.name][~np.isnan(b.values[spec.name])]
                assert np.all((v >= spec.lo) & (v <= spec.hi))
        for _, payload in b.to_messages():
            parse_reading(payload, now_ms=b.ts_ms)


@pytest.mark.parametrize(
    "args",
    [
        ("weather", "futian", 0, 1, 1.0),
        ("crowd", "futian", 5, 5, 1.0),
        ("crowd", "futian", 0, 1, -1.0),
        ("crowd", "futian", 0, 1, float("nan")),
    ],
)
def test_incident_validation(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match="incident"):
        Incident(*args)


@pytest.mark.parametrize(
    "kwargs",
    [{"interval_ms": 0}, {"steps": -1}, {"incidents": (Incident("iot", "atlantis", 0, 1),)}],
)
def test_generate_validation(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "start_ms": MONDAY_MS,
        "interval_ms": 1000,
        "steps": 1,
        "seed": 1,
        **kwargs,
    }
    with pytest.raises(ValueError, match="generate"):
        generate(build_city(4, 1), **args)


def test_zero_steps_and_single_kind_city() -> None:
    assert (
        list(generate(build_city(4, 1), start_ms=MONDAY_MS, interval_ms=1000, steps=0, seed=1))
        == []
    )
    (b,) = batches(1, steps=1)
    ((topic, payload),) = b.to_messages()
    assert topic.startswith("city/traffic/futian/")
    assert parse_reading(payload, now_ms=b.ts_ms).kind == "traffic"


# --- publishing helpers without a broker ---------------------------------------------------
# (Pure parts of simulators.publish: pacing, JSONL round trip, Kafka record shaping.)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_pacer_spaces_messages_without_drift() -> None:
    fc = FakeClock()
    pacer = Pacer(10.0, clock=fc.clock, sleep=fc.sleep)
    for _ in range(21):
        pacer.wait()
        fc.now += 0.01  # work per message does not add up: the schedule is absolute
    assert fc.now == pytest.approx(100.0 + 2.0 + 0.01)
    assert len(fc.sleeps) == 20
    assert all(s == pytest.approx(0.09) for s in fc.sleeps)


def test_pacer_catches_up_at_most_one_second_after_a_stall() -> None:
    fc = FakeClock()
    pacer = Pacer(100.0, clock=fc.clock, sleep=fc.sleep)
    pacer.wait()
    fc.now += 60.0
    for _ in range(95):
        pacer.wait()
    assert fc.sleeps == []  # a burst of at most 1 s of schedule (100 messages)
    for _ in range(20):
        pacer.wait()
    assert 10 <= len(fc.sleeps) <= 20
    assert fc.now == pytest.approx(160.0 + 0.15, abs=0.02)


def test_pacer_none_never_sleeps_and_bad_rates_fail() -> None:
    fc = FakeClock()
    pacer = Pacer(None, clock=fc.clock, sleep=fc.sleep)
    for _ in range(1000):
        pacer.wait()
    assert fc.sleeps == []
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="rate_per_s"):
            Pacer(bad)


def test_jsonl_round_trip_keeps_bytes(tmp_path: Path) -> None:
    now_ms = MONDAY_MS
    good = batches(8, steps=2)
    messages: list[Any] = [*good[0].to_messages(), *good[1].to_timed_messages()]
    messages += [(t, p) for t, p, _ in malformed_corpus(40, seed=1, now_ms=now_ms)]
    path = tmp_path / "feed.jsonl"
    assert write_jsonl(messages, path) == len(messages)
    assert list(read_jsonl(path)) == messages


FakeProducer = tuple[MagicMock, list[dict[str, Any]], Callable[[dict[str, Any]], Producer]]


def fake_producer(fail: bool = False) -> FakeProducer:
    producer = MagicMock(spec_set=Producer)
    err = KafkaError(KafkaError._MSG_TIMED_OUT) if fail else None

    def produce(topic: str, **kw: Any) -> None:
        kw["on_delivery"](err, None)

    producer.produce.side_effect = produce
    producer.flush.return_value = 0
    configs: list[dict[str, Any]] = []

    def factory(config: dict[str, Any]) -> Producer:
        configs.append(config)
        return producer

    return producer, configs, factory


def test_publish_kafka_keys_and_event_timestamps() -> None:
    producer, configs, factory = fake_producer()
    b0, b1 = batches(8, steps=2, interval_ms=1000)
    bad = malformed_corpus(3, seed=1, now_ms=MONDAY_MS)
    messages: list[Any] = [*b0.to_messages(), *b1.to_timed_messages(), *bad]
    n = publish_kafka(
        messages,
        producer_config={"bootstrap.servers": "x:1"},
        topic="t",
        producer_factory=factory,
        now_ms=lambda: MONDAY_MS + 42,
    )
    assert n == len(messages)
    calls = producer.produce.call_args_list
    assert [c.kwargs["key"] for c in calls] == [m[0].rsplit("/", 1)[1].encode() for m in messages]
    assert [c.kwargs["timestamp"] for c in calls] == [b0.ts_ms] * 8 + [b1.ts_ms] * 8 + [
        MONDAY_MS + 42
    ] * 3
    assert [c.kwargs["value"] for c in calls] == [m[1] for m in messages]
    assert configs[0]["acks"] == "all"
    assert configs[0]["enable.idempotence"] is True
    producer.flush.assert_called_once()


def test_publish_kafka_raises_on_delivery_error() -> None:
    _, _, factory = fake_producer(fail=True)
    with pytest.raises(PublishError, match="failed"):
        publish_kafka(
            batches(4, steps=1)[0].to_messages(),
            producer_config={},
            topic="t",
            producer_factory=factory,
        )


def test_publish_kafka_raises_when_flush_leaves_records() -> None:
    producer, _, factory = fake_producer()
    producer.produce.side_effect = None
    producer.flush.return_value = 2
    with pytest.raises(PublishError, match="undelivered"):
        publish_kafka(
            batches(4, steps=1)[0].to_messages(),
            producer_config={},
            topic="t",
            producer_factory=factory,
        )


@pytest.mark.parametrize("config", [{"acks": "1"}, {"acks": 0}, {"enable.idempotence": False}])
def test_publish_kafka_refuses_weaker_delivery(config: dict[str, Any]) -> None:
    _, _, factory = fake_producer()
    with pytest.raises(ConfigError, match="acks=all"):
        publish_kafka([], producer_config=config, topic="t", producer_factory=factory)


def test_publish_kafka_frames_readings_of_one_partition_and_event_time() -> None:
    producer, _, factory = fake_producer()
    producer.list_topics.return_value.topics = {"t": MagicMock(error=None, partitions={0: None, 1: None, 2: None})}
    b0, b1 = batches(40, steps=2, interval_ms=1000)
    messages: list[Any] = [*b0.to_timed_messages(), *b1.to_timed_messages()]
    n = publish_kafka(messages, producer_config={}, topic="t", producer_factory=factory, frame=8)
    assert n == len(messages) == 80  # delivered readings, not records
    calls = producer.produce.call_args_list
    assert len(calls) < 80 and all(c.kwargs["key"] is None for c in calls)
    got: dict[tuple[int, int], list[bytes]] = {}
    for c in calls:
        parts = split_frame(c.kwargs["value"])
        assert 1 <= len(parts) <= 8
        got.setdefault((c.kwargs["partition"], c.kwargs["timestamp"]), []).extend(parts)
    # every reading once, on its sensor's partition, in a frame of its own event time, in order
    want: dict[tuple[int, int], list[bytes]] = {}
    for topic, payload, ts in messages:
        want.setdefault((kafka_partition(topic.rsplit("/", 1)[1].encode(), 3), ts), []).append(payload)
    assert got == want


def test_publish_kafka_refuses_a_frame_size_out_of_range() -> None:
    _, _, factory = fake_producer()
    with pytest.raises(ConfigError, match="frame"):
        publish_kafka([], producer_config={}, topic="t", producer_factory=factory, frame=0)
