"""Replay without a broker: reading recordings, shifting time, pacing; and the simulate wiring."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from simulators.city import build_city
from simulators.errors import ReplayError
from simulators.generators import generate
from simulators.malformed import malformed_corpus
from simulators.publish import write_jsonl
from simulators.replay import CsvMapping, paced, read_recording
from streams.schema import parse_reading

NAB = Path("/work/shared/benchmarks/nab/data/realTraffic/speed_6005.csv")
T0 = 1_780_243_200_000


def nab_file(tmp_path: Path) -> Path:
    if NAB.exists():
        return NAB
    path = tmp_path / "speed_6005.csv"
    path.write_text("timestamp,value\n2015-09-01 11:58:00,58\n2015-09-01 12:03:00,63\n2015-09-01 12:13:00,61\n")
    return path


def test_nab_csv_becomes_readings(tmp_path: Path) -> None:
    path = nab_file(tmp_path)
    mapping = CsvMapping(sensor_id="trf-nab-6005", kind="traffic", zone="futian", metric="speed", unit="km/h")
    msgs = list(read_recording(path, mapping=mapping, limit=3))
    assert len(msgs) == 3
    topic, payload, ts = msgs[0]
    assert topic == "city/traffic/futian/trf-nab-6005"
    r = parse_reading(payload, now_ms=T0)
    assert (r.sensor_id, r.kind, r.ts_ms, r.units) == ("trf-nab-6005", "traffic", ts, {"speed": "km/h"})
    first_time, first_value = path.read_text().splitlines()[1].split(",")
    assert ts == int(datetime.fromisoformat(first_time).replace(tzinfo=UTC).timestamp() * 1000)  # naive = UTC
    assert r.metrics == {"speed": float(first_value)}
    assert [m[2] for m in msgs] == sorted(m[2] for m in msgs)


def test_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2015-01-01 00:00:00,1\n2015-01-01 00:05:00,oops\n")
    with pytest.raises(ReplayError, match=r"bad.csv:3: expected an ISO time and a number"):
        list(read_recording(bad))
    with pytest.raises(ReplayError, match=r"bad.csv:1: expected a column 'time'"):
        list(read_recording(bad, mapping=CsvMapping(time_column="time")))
    with pytest.raises(ReplayError, match="no such recording"):
        list(read_recording(tmp_path / "nope.csv"))
    with pytest.raises(ReplayError, match="kind"):
        CsvMapping(kind="weather")
    with pytest.raises(ReplayError, match="metric"):
        CsvMapping(metric="Speed-Kmh")


def test_jsonl_recordings_replay_byte_for_byte_and_shift(tmp_path: Path) -> None:
    city = build_city(8, seed=1)
    timed = [m for b in generate(city, start_ms=T0, interval_ms=10_000, steps=3, seed=1) for m in b.to_timed_messages()]
    plain = [(t, p) for t, p, _ in timed[:8]]
    bad = [(t, p) for t, p, _ in malformed_corpus(5, seed=1, now_ms=T0)]
    path = tmp_path / "rec.jsonl"
    write_jsonl([*timed, *plain, *bad], path)
    got = list(read_recording(path))
    assert got[: len(timed)] == timed
    assert got[len(timed) : len(timed) + 8] == [(t, p, T0) for t, p in plain]  # ts taken from the payload
    assert [m[1] for m in got[-5:]] == [p for _, p in bad]
    assert got[-5][2] == T0  # an unreadable payload keeps the previous time
    assert list(read_recording(path, topic_root="x"))[0][0] == "x" + timed[0][0][4:]

    shifted = list(read_recording(path, start_ms=T0 + 3_600_000, limit=len(timed)))
    for (t0, p0, ts0), (t1, p1, ts1) in zip(timed, shifted, strict=True):
        assert t1 == t0 and ts1 == ts0 + 3_600_000
        a, b = orjson.loads(p0), orjson.loads(p1)
        assert parse_reading(p1, now_ms=ts1).ts_ms == ts1
        assert {k: v for k, v in a.items() if k != "ts"} == {k: v for k, v in b.items() if k != "ts"}
    not_jsonl = tmp_path / "x.jsonl"
    not_jsonl.write_text("hello\n")
    with pytest.raises(ReplayError, match="not a JSON-lines recording"):
        list(read_recording(not_jsonl))


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_pacing_scales_original_timing() -> None:
    ts = [0, 60_000, 60_000, 180_000, 120_000, 600_000]
    msgs = [("city/iot/futian/s", b"", T0 + t) for t in ts]
    fc = FakeClock()
    sent_at = [fc.now for _ in paced(msgs, speed=60.0, clock=fc.clock, sleep=fc.sleep)]
    assert sent_at == pytest.approx([50.0, 51.0, 51.0, 53.0, 53.0, 60.0])  # backwards time: no wait
    fc = FakeClock()
    assert len(list(paced(msgs, speed=0.0, clock=fc.clock, sleep=fc.sleep))) == 6 and fc.sleeps == []
    stop = threading.Event()
    stop.set()
    assert list(paced(msgs, speed=1.0, stop=stop)) == []
    with pytest.raises(ReplayError, match="speed"):
        list(paced(msgs, speed=-1.0))


def test_simulate_scenario_to_files(tmp_path: Path) -> None:
    from simulators.run import run_simulation
    from streams.settings import Settings

    scenario = tmp_path / "small.toml"
    scenario.write_text(
        'start = "2026-06-01T00:00:00Z"\nduration = "6h"\ninterval = "5m"\n'
        "[sensors]\ntraffic = 12\nenvironment = 6\ncrowd = 6\niot = 6\n[random]\nincidents = 3\nfaults = 3\n"
    )
    common = {
        "transport": "file",
        "interval": None,
        "duration": None,
        "start": None,
        "speed": 0.0,
        "malformed_every": 0,
        "seed": None,
        "stop": threading.Event(),
        "scenario": str(scenario),
    }
    n = run_simulation(Settings(), sensors=None, out=str(tmp_path / "a.jsonl"), **common)  # type: ignore[arg-type]
    truth = [orjson.loads(line) for line in (tmp_path / "a.truth.jsonl").read_bytes().splitlines()]
    assert len(truth) == 6 and {r["class"] for r in truth} == {"incident", "fault"}
    assert abs(n - 72 * 30) < 200
    m = run_simulation(
        Settings(), sensors=60, out=str(tmp_path / "b.csv"), truth_out=str(tmp_path / "t.jsonl"), **common
    )  # type: ignore[arg-type]
    lines = (tmp_path / "b.csv").read_text().splitlines()
    assert lines[0].startswith("ts,sensor_id,kind,zone,lat,lon,flow") and len(lines) == m + 1
    assert abs(m - 72 * 60) < 400 and (tmp_path / "t.jsonl").exists()
