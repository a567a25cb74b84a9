"""Mutated request frames of every command over real sessions on PostgreSQL: every frame
gets a reply, or invalid_msg_format then a close, never a server error (1011) nor silence
(docs/frame-outcomes.md). bench/fuzz_frames.py runs the same fuzzer for a million frames."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from parsec_server.backend.asgi import connection
from tests.fixtures.servers import ADMINISTRATION_TOKEN, RunningServer
from tests.protocol_fuzzer import fuzz, server_serves, setup_targets

FRAMES = 3000


class _RecordingLogger:
    """Stands for the connection logger: keeps the exception of each failed connection."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped
        self.failures: list[BaseException] = []

    def exception(self, *args: Any, **kwargs: Any) -> None:
        failure = sys.exc_info()[1]
        if failure is not None:
            self.failures.append(failure)
        self._wrapped.exception(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def _describe(failure: BaseException) -> str:
    chain = []
    current: BaseException | None = failure
    while current is not None:
        chain.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return " <- ".join(chain)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_mutated_frames_get_a_reply_or_invalid_msg_format_never_a_server_error(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _RecordingLogger(connection.logger)
    monkeypatch.setattr(connection, "logger", recorder)
    targets = await setup_targets(server.addr, ADMINISTRATION_TOKEN)

    stats = await fuzz(targets, FRAMES, seed=20261204)

    print(stats.summary())
    assert stats.frames >= FRAMES
    assert stats.outcomes["reply"] > FRAMES // 4
    assert stats.outcomes["invalid_msg_format then close"] > 0
    server_errors = [_describe(failure) for failure in recorder.failures]
    assert server_errors == []
    bugs = {k: v for k, v in stats.outcomes.items() if k.startswith("BUG")}
    assert bugs == {}, (bugs, stats.examples)
    assert await server_serves(targets)
