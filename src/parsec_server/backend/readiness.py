"""Readiness: whether this server process can serve its clients right now.

Each piece of storage the server depends on is a `ReadinessProbe`: the database (reachable
and migrated), the event listener (PostgreSQL: its LISTEN connection is up), the blockstore
(S3 HeadBucket, Swift HEAD container, PostgreSQL `SELECT 1`, RAID: each node). `Readiness`
runs them all concurrently, each bounded by a short timeout, and makes a report for the
transport's `GET /readyz` (docs/deployment.md).

What a probe reports is served without authentication: it never holds a secret (no URL,
user name, token or raw error message of a library, which may contain any of them), only
booleans, counts, our own words and exception class names. The full errors go to the log,
when a check starts failing.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

logger = structlog.get_logger("parsec.readiness")

# Seconds each check may take (they run concurrently: a report takes at most about this).
CHECK_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """One check's result. `details` are JSON values shown to anyone: never secrets."""

    ok: bool
    details: Mapping[str, Any] = field(default_factory=dict)
    # For the log only (never served): what went wrong, in full.
    log_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.details}


def failed(error: str, log_error: str | None = None, **details: Any) -> CheckOutcome:
    """A failed check; `error` is served, so it must be our own words or a class name."""
    return CheckOutcome(False, {"error": error, **details}, log_error or error)


def exception_outcome(exc: BaseException, **details: Any) -> CheckOutcome:
    """A check that raised: served as the exception's class name only (its message may
    name hosts, users or paths), logged in full."""
    if isinstance(exc, TimeoutError):
        return failed("timeout", **details)
    return failed(type(exc).__name__, f"{type(exc).__name__}: {exc}", **details)


class ReadinessProbe(ABC):
    @abstractmethod
    async def check_ready(self, within: float) -> CheckOutcome:
        """Whether this dependency works now; should answer within `within` seconds (the
        caller cuts it off a little later anyway)."""


class AlwaysReady(ReadinessProbe):
    """A dependency that cannot fail on its own (the memory storage)."""

    def __init__(self, **details: Any) -> None:
        self._outcome = CheckOutcome(True, details)

    async def check_ready(self, within: float) -> CheckOutcome:
        return self._outcome


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    checks: Mapping[str, CheckOutcome]

    @property
    def ready(self) -> bool:
        return all(outcome.ok for outcome in self.checks.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "not_ready",
            "checks": {name: outcome.to_json() for name, outcome in self.checks.items()},
        }


class Readiness:
    """The probes of one server process, checked together."""

    def __init__(
        self, probes: Mapping[str, ReadinessProbe], timeout: float = CHECK_TIMEOUT
    ) -> None:
        self._probes = dict(probes)
        self._timeout = timeout
        self._failing: set[str] = set()

    async def check(self) -> ReadinessReport:
        names = list(self._probes)
        outcomes = await asyncio.gather(*(self._check_one(name) for name in names))
        report = ReadinessReport(dict(zip(names, outcomes, strict=True)))
        self._log_changes(report)
        return report

    async def _check_one(self, name: str) -> CheckOutcome:
        started = time.perf_counter()
        try:
            # A probe gets its timeout and answers by then; the slack only cuts off one
            # that does not.
            async with asyncio.timeout(self._timeout + 0.25):
                outcome = await self._probes[name].check_ready(self._timeout)
        except Exception as exc:
            outcome = exception_outcome(exc)
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        return CheckOutcome(
            outcome.ok, {**outcome.details, "duration_ms": duration_ms}, outcome.log_error
        )

    def _log_changes(self, report: ReadinessReport) -> None:
        # Only the transitions: a load balancer asks every few seconds.
        for name, outcome in report.checks.items():
            if not outcome.ok and name not in self._failing:
                self._failing.add(name)
                logger.warning("readiness check failed", check=name, error=outcome.log_error)
            elif outcome.ok and name in self._failing:
                self._failing.discard(name)
                logger.info("readiness check passes again", check=name)
