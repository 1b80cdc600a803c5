"""Work that can wait lets the alert path go first (``streams.alert_agents.AlertPathActivity``),
and the commit hooks of the stages run in turn (``streams.app.before_commit``), with what they
keep for the commit written by ``stash``/``persist_pending``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from streams.alert_agents import AlertPathActivity
from streams.app import before_commit, persist_pending, stash


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_waits_for_the_quiet_period_after_the_last_touch() -> None:
    clock = Clock()
    a = AlertPathActivity(quiet_s=0.2, max_wait_s=2.0, clock=clock)
    assert a.wait_s(started=clock.t) == 0.0  # never touched: nothing to wait for
    a.touch()
    assert a.wait_s(started=clock.t) == pytest.approx(0.2)
    clock.t += 0.15
    assert a.wait_s(started=clock.t - 0.15) == pytest.approx(0.05)
    clock.t += 0.05
    assert a.wait_s(started=clock.t - 0.2) == 0.0


def test_a_busy_alert_path_is_waited_for_at_most_max_wait() -> None:
    clock = Clock()
    a = AlertPathActivity(quiet_s=0.2, max_wait_s=1.0, clock=clock)
    started = clock.t
    for _ in range(7):  # touched every 0.125 s: never quiet
        clock.t += 0.125
        a.touch()
        assert a.wait_s(started) > 0
    clock.t += 0.125
    a.touch()
    assert a.wait_s(started) == 0.0  # 1.0 s waited: go on regardless


def test_aggregates_on_their_way_to_the_router_keep_the_alert_path_busy() -> None:
    """A pause in a close's aggregates longer than quiet_s is not quiet while some are still coming."""
    clock = Clock()
    a = AlertPathActivity(quiet_s=0.15, max_wait_s=2.0, clock=clock)
    started = clock.t
    a.expect(35_000)
    clock.t += 0.1
    a.arrived(20_000)
    clock.t += 0.4  # a long pause between two fetches: 15,000 still on their way
    assert a.wait_s(started) == pytest.approx(0.15)
    a.arrived(15_000)
    assert a.in_flight == 0 and a.wait_s(started) == pytest.approx(0.15)  # now the quiet period
    clock.t += 0.15
    assert a.wait_s(started) == 0.0
    a.arrived(10)  # more than was counted (another worker's aggregates): never below nothing
    assert a.in_flight == 0


def test_counts_that_never_meet_end_the_wait_at_max_wait_and_start_again() -> None:
    async def run() -> tuple[float, int, int]:
        a = AlertPathActivity(quiet_s=0.02, max_wait_s=0.1)
        a.expect(100)
        a.arrived(40)  # the other 60 went to a router elsewhere
        t0 = asyncio.get_running_loop().time()
        await a.quiet()
        return asyncio.get_running_loop().time() - t0, a.in_flight, a.gave_up

    waited, in_flight, gave_up = asyncio.run(run())
    assert 0.09 <= waited < 0.5 and in_flight == 0 and gave_up == 1


def test_nothing_waits_while_the_input_has_a_backlog() -> None:
    clock = Clock()
    a = AlertPathActivity(quiet_s=0.2, max_wait_s=2.0, clock=clock)
    a.touch()
    a.backlog = True
    assert a.wait_s(started=clock.t) == 0.0


def test_quiet_sleeps_until_the_alert_path_has_been_idle() -> None:
    async def run() -> tuple[float, float]:
        a = AlertPathActivity(quiet_s=0.05, max_wait_s=1.0)
        loop = asyncio.get_running_loop()

        async def busy() -> None:  # the alert path, working for 0.2 s
            for _ in range(10):
                a.touch()
                await asyncio.sleep(0.02)

        task = asyncio.ensure_future(busy())
        await asyncio.sleep(0)
        t0 = loop.time()
        await a.quiet()
        waited = loop.time() - t0
        await task
        return waited, a.waited_s

    waited, total = asyncio.run(run())
    assert 0.2 <= waited < 0.6
    assert total == pytest.approx(waited, abs=0.05)


class Table:
    def __init__(self, fail_at: int | None = None) -> None:
        self.data: dict[str, Any] = {}
        self.sent: list[tuple[int, str, Any]] = []
        self.fail_at = fail_at


@pytest.fixture
def sent_via(monkeypatch: pytest.MonkeyPatch) -> None:
    """``persist`` records what it would send to the changelog (or fails where the table says)."""

    async def fake_persist(table: Table, partition: int, key: str, value: Any) -> None:
        if table.fail_at is not None and len(table.sent) == table.fail_at:
            raise ConnectionError("broker gone")
        table.sent.append((partition, key, value))

    monkeypatch.setattr("streams.app.persist", fake_persist)


@pytest.mark.usefixtures("sent_via")
def test_stash_then_persist_pending_writes_the_current_documents_and_deletes() -> None:
    table, pending = Table(), {}
    stash(table, pending, [(0, "a", {"v": 1}), (1, "b", {"v": 1}), (1, "c", {"v": 1})])
    stash(table, pending, [(0, "a", {"v": 2}), (1, "c", None)])  # newer, and a delete
    assert table.data == {"a": {"v": 2}, "b": {"v": 1}}
    table.data["b"] = {"v": 3}  # written meanwhile (a window closed): the current one goes out
    asyncio.run(persist_pending(table, pending))
    assert table.sent == [(0, "a", {"v": 2}), (1, "b", {"v": 3}), (1, "c", None)]
    assert pending == {}


@pytest.mark.usefixtures("sent_via")
def test_persist_pending_keeps_what_was_not_written() -> None:
    table, pending = Table(fail_at=1), {}
    stash(table, pending, [(0, "a", {"v": 1}), (0, "b", {"v": 1}), (0, "c", {"v": 1})])
    with pytest.raises(ConnectionError):
        asyncio.run(persist_pending(table, pending))
    assert table.sent == [(0, "a", {"v": 1})]
    assert set(pending) == {"b", "c"}  # the next commit writes them


def test_before_commit_keeps_every_hook_in_turn() -> None:
    app = SimpleNamespace()

    async def engine() -> None:
        return None

    async def windows() -> None:
        return None

    before_commit(app, engine)  # type: ignore[arg-type]
    before_commit(app, windows)  # type: ignore[arg-type]
    # streams.app.flush_before_commit awaits them in this order (test_changelog_persist)
    assert app.urbansense_before_commit == [engine, windows]
