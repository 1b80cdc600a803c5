"""A stream whose passive drainer ends while the worker runs is reported with its error; the worker exits."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest
from faust.streams import Stream

import streams.app
from streams.app import EXIT_STREAM_STALLED, report_stopped_drainers


class FakeStream:
    """What Faust's ``Stream._passive_drainer`` touches, with an iteration that fails."""

    def __init__(self, should_stop: bool) -> None:
        self.should_stop = False
        self.app = SimpleNamespace(should_stop=should_stop)  # the worker is shutting down
        self._passive_started = asyncio.Event()
        self._passive = True

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        raise RuntimeError("decode blew up")

    def _channel_stop_iteration(self, channel: Any) -> None:
        pass


class FakeChannel:
    def __init__(self) -> None:
        self.queue = SimpleNamespace(_errors=deque())

    async def throw(self, exc: BaseException) -> None:
        self.queue._errors.append(exc)

    def __repr__(self) -> str:
        return "<Topic readings>"


@pytest.mark.parametrize("should_stop", [False, True])
def test_a_drainer_that_ends_is_logged_with_its_error_and_the_worker_exits_unless_stopping(
    should_stop: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    exits: list[int] = []
    monkeypatch.setattr(streams.app, "_exit", exits.append)
    report_stopped_drainers()
    stream, channel = FakeStream(should_stop), FakeChannel()
    with caplog.at_level(logging.ERROR, logger="streams.app"):
        asyncio.run(Stream._passive_drainer(stream, channel))  # type: ignore[arg-type]  # noqa: SLF001
    reported = [r.getMessage() for r in caplog.records if "stopped draining" in r.getMessage()]
    if should_stop:
        assert reported == [] and exits == []
    else:
        assert reported and "channel=<Topic readings>" in reported[0] and "decode blew up" in reported[0]
        assert exits == [EXIT_STREAM_STALLED]
        assert any(r.levelno == logging.CRITICAL and "exits to be restarted" in r.getMessage() for r in caplog.records)
    assert stream._passive is False  # Faust's own clean-up still ran
