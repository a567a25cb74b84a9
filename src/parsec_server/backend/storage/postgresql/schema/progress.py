"""Progress lines for the long steps of migrate and downgrade (index builds, backfills,
conversion): a step still running after `DELAY` seconds is reported every `INTERVAL`
seconds, then once done, so that a big database shows it is working and a small one
prints nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

__all__ = ["Progress", "ProgressStep"]

DELAY = 2.0
INTERVAL = 10.0


class ProgressStep:
    def __init__(self, what: str) -> None:
        self.what = what
        self.detail = ""  # e.g. "40000 of 100000 devices", updated by the step


class Progress:
    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        self._report = report

    @contextlib.asynccontextmanager
    async def step(self, what: str) -> AsyncIterator[ProgressStep]:
        step = ProgressStep(what)
        if self._report is None:
            yield step
            return
        start = time.monotonic()
        ticker = asyncio.create_task(self._tick(step, start))
        try:
            yield step
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        elapsed = time.monotonic() - start
        if elapsed >= DELAY:
            self._line(step, f"done in {elapsed:.1f}s")

    async def _tick(self, step: ProgressStep, start: float) -> None:
        await asyncio.sleep(DELAY)
        while True:
            self._line(step, f"running for {time.monotonic() - start:.0f}s")
            await asyncio.sleep(INTERVAL)

    def _line(self, step: ProgressStep, status: str) -> None:
        assert self._report is not None
        detail = f", {step.detail}" if step.detail else ""
        self._report(f"{step.what} ({status}{detail})")
