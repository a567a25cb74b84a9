"""Scenario `events`: latency from a vlob_create reply (writer: alice's device) to the
`realm.vlobs_updated` event on a subscribed connection of another user (bob) sharing the
realm."""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from benchkit.common import MAX_ERRORS_KEPT, OP_TIMEOUT, print_side_by_side
from benchkit.servers import RunningServer
from benchkit.setup import setup_shared_realm
from benchkit.workers import ClientPool, DeviceSpec, LatencyJob

WARMUP_SAMPLES = 20


@dataclass
class LatencyMeasure:
    storage: str
    server: str
    latencies: list[float] = field(default_factory=list)  # seconds
    round_trips: list[float] = field(default_factory=list)  # vlob_create, seconds
    from_request: list[float] = field(default_factory=list)  # event - request sent, seconds
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": "events",
            "storage": self.storage,
            "server": self.server,
            "samples": len(self.latencies),
            "latency_median_s": _quantile(self.latencies, 0.5),
            "latency_p99_s": _quantile(self.latencies, 0.99),
            "latency_max_s": max(self.latencies, default=None),
            "from_request_median_s": _quantile(self.from_request, 0.5),
            "from_request_p99_s": _quantile(self.from_request, 0.99),
            "vlob_create_round_trip_median_s": _quantile(self.round_trips, 0.5),
            "errors": self.errors,
            "first_errors": self.first_errors,
        }


def _quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile (the p99 of 500 samples is the 495th smallest)."""
    if not values:
        return None
    if q == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_events(
    server: RunningServer, storage: str, pool: ClientPool, args: argparse.Namespace
) -> list[LatencyMeasure]:
    alice, bob, realm_id = asyncio.run(setup_shared_realm(server.addr))
    job = LatencyJob(
        writer=DeviceSpec.of(alice),
        listener=DeviceSpec.of(bob),
        realm_id=realm_id.hex,
        samples=args.event_samples,
        warmup_samples=WARMUP_SAMPLES,
        blob_size=args.blob_size,
    )
    result = pool.run_one(job, timeout=(WARMUP_SAMPLES + args.event_samples) * OP_TIMEOUT + 30)
    m = LatencyMeasure(
        storage, server.name, result.latencies, result.round_trips, result.from_request
    )
    m.errors, m.first_errors = result.errors, result.first_errors
    return [m]


def print_table(results: list[LatencyMeasure], servers: list[str]) -> None:
    if not results:
        return
    by_server = {m.server: m for m in results}

    def row(label: str, get: Any, spec: str) -> tuple[str, dict[str, float | None], str, bool]:
        return (label, {s: get(m) for s, m in by_server.items()}, spec, True)

    def ms(values: list[float], q: float) -> float | None:
        v = _quantile(values, q)
        return None if v is None else v * 1e3

    rows = [
        row("event after reply ms, median", lambda m: ms(m.latencies, 0.5), ".3f"),
        row("event after reply ms, p99", lambda m: ms(m.latencies, 0.99), ".3f"),
        row("  from request sent, median", lambda m: ms(m.from_request, 0.5), ".3f"),
        row("  from request sent, p99", lambda m: ms(m.from_request, 0.99), ".3f"),
        row("vlob_create round trip ms, median", lambda m: ms(m.round_trips, 0.5), ".3f"),
        row("samples", lambda m: len(m.latencies), "d"),
    ]
    print_side_by_side(f"events ({results[0].storage})", rows, servers)
    for s, m in by_server.items():
        if m.errors:
            print(f"  ! {s}: {m.errors} errors")
            for err in m.first_errors[:MAX_ERRORS_KEPT]:
                print(f"      {err}")
