"""Scenarios `vlob` and `block`: vlob_create/read/update/poll_changes and
block_create/read per second on N connections, each connection in its own realm."""

from __future__ import annotations

import argparse
import asyncio
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from benchkit.common import MAX_ERRORS_KEPT, print_side_by_side
from benchkit.servers import RunningServer
from benchkit.setup import setup_organization
from benchkit.workers import ClientPool, DeviceSpec, LoadJob, measured_window

VLOB_OPS = ("vlob_create", "vlob_read", "vlob_update", "vlob_poll_changes")
BLOCK_OPS = ("block_create", "block_read")


@dataclass
class OpMeasure:
    """One operation, one server, one N, one payload size."""

    scenario: str
    storage: str
    server: str
    op: str
    connections: int
    size: int  # payload bytes per operation (blob or block); 0 for none
    duration_s: float  # the window
    elapsed_s: float = 0.0  # shorter when every connection reached its operation cap
    count: int = 0
    server_cpu_s: float = 0.0
    storage_cpu_s: float | None = None  # PostgreSQL backends or moto; None in memory
    client_cpu_s: float = 0.0
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.count / (self.elapsed_s or self.duration_s)

    @property
    def busy(self) -> float:
        return self.server_cpu_s / (self.elapsed_s or self.duration_s)

    @property
    def mb_per_s(self) -> float:
        return self.per_s * self.size / 1e6

    def per_op_us(self, cpu: float | None) -> float | None:
        return None if cpu is None or not self.count else cpu / self.count * 1e6

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_s"] = self.per_s
        data["mb_per_s"] = self.mb_per_s
        data["server_cpu_per_op_s"] = self.server_cpu_s / self.count if self.count else None
        data["storage_cpu_per_op_s"] = (
            self.storage_cpu_s / self.count if self.count and self.storage_cpu_s else None
        )
        return data


def _run_ops(
    scenario: str,
    ops: tuple[str, ...],
    server: RunningServer,
    storage: str,
    pool: ClientPool,
    args: argparse.Namespace,
    n: int,
    size: int,
    max_ops: dict[str, int] | None = None,
) -> list[OpMeasure]:
    """Opens n connections of a new organization, each with its own realm, then runs
    each op in turn over a measured window (`max_ops`: a cap of operations per connection
    for some ops), then closes them."""
    spec = DeviceSpec.of(asyncio.run(setup_organization(server.addr)))
    shares = pool.split(n)
    opened = pool.open(spec, n, realms=True)
    results = []
    storage_pids = server.backing.storage_pids
    for op in ops:
        cap = (max_ops or {}).get(op, 0)
        m = OpMeasure(scenario, storage, server.name, op, n, size, args.duration)
        m.first_errors.extend(opened.first_errors)
        m.errors += opened.errors
        window = measured_window(
            pool,
            server.pid,
            storage_pids,
            lambda i, w, op=op, cap=cap: (  # type: ignore[misc]
                LoadJob(op, w, size, cap) if shares[i] else None
            ),
            args.warmup,
            args.duration,
        )
        m.count = window.result.count
        if cap and window.result.capped == n:
            m.elapsed_s = window.result.last_done - window.start
        m.server_cpu_s = window.server_cpu
        m.storage_cpu_s = window.storage_cpu
        m.client_cpu_s = window.result.client_cpu
        m.errors += window.result.errors
        m.first_errors.extend(window.result.first_errors)
        if server.process.poll() is not None:
            m.first_errors.append(f"server exited during the run:\n{server.log_tail()}")
        results.append(m)
    pool.close()
    return results


def run_vlob(
    server: RunningServer, storage: str, pool: ClientPool, args: argparse.Namespace
) -> list[OpMeasure]:
    results = []
    for n in args.data_connections:
        results += _run_ops("vlob", VLOB_OPS, server, storage, pool, args, n, args.blob_size)
    return results


def run_block(
    server: RunningServer, storage: str, pool: ClientPool, args: argparse.Namespace
) -> list[OpMeasure]:
    results = []
    n = args.block_connections
    for size_kib in args.block_sizes:
        size = size_kib << 10
        # Stored volume bounded (--block-volume): see docs/benchmarks.md.
        cap = max(1, math.ceil((args.block_volume << 20) / max(size, 1) / n))
        results += _run_ops(
            "block", BLOCK_OPS, server, storage, pool, args, n, size, {"block_create": cap}
        )
    return results


def _size_label(size: int) -> str:
    return f"{size >> 10} KiB" if size % 1024 == 0 else f"{size} B"


def print_table(results: list[OpMeasure], servers: list[str]) -> None:
    if not results:
        return
    by_key = {(m.scenario, m.op, m.connections, m.size, m.server): m for m in results}
    groups = sorted(
        {(m.scenario, m.connections, m.size, m.storage) for m in results},
        key=lambda g: (g[0] != "vlob", g[1], g[2]),
    )
    for scenario, n, size, storage in groups:
        ops = VLOB_OPS if scenario == "vlob" else BLOCK_OPS
        rows: list[tuple[str, dict[str, float | None], str, bool]] = []
        for op in ops:
            ms = {s: by_key[k] for s in servers if (k := (scenario, op, n, size, s)) in by_key}
            if not ms:
                continue
            rows.append((f"{op}/s", {s: m.per_s for s, m in ms.items()}, ",.0f", True))
            if scenario == "block":
                rows.append(("  MB/s", {s: m.mb_per_s for s, m in ms.items()}, ",.1f", True))
            rows.append(
                (
                    "  server CPU us/op",
                    {s: m.per_op_us(m.server_cpu_s) for s, m in ms.items()},
                    ",.0f",
                    True,
                )
            )
            # SQLite works in the server's process: its CPU is in the server's line.
            if storage not in ("memory", "sqlite"):
                what = "PostgreSQL" if storage == "postgresql" else "moto (S3)"
                rows.append(
                    (
                        f"  {what} CPU us/op",
                        {s: m.per_op_us(m.storage_cpu_s) for s, m in ms.items()},
                        ",.0f",
                        True,
                    )
                )
            rows.append(
                (
                    "  server CPU busy %",
                    {s: 100 * m.busy for s, m in ms.items()},
                    ".0f",
                    False,
                )
            )
        payload = "blob" if scenario == "vlob" else "blocks"
        title = f"{scenario}: N = {n}, {_size_label(size)} {payload} ({storage})"
        print_side_by_side(title, rows, servers)
        for s in servers:
            mine = [
                m
                for m in results
                if m.server == s and (m.scenario, m.connections, m.size) == (scenario, n, size)
            ]
            count = sum(m.errors for m in mine)
            if count:
                print(f"  ! {s}: {count} errors")
                firsts = [e for m in mine for e in m.first_errors]
                for err in firsts[:MAX_ERRORS_KEPT]:
                    print(f"      {err}")
