"""Scenario `connections`: handshakes/s, pings/s and RSS per connection, on a freshly
started server for each N."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchkit.common import MAX_ERRORS_KEPT, print_side_by_side, rss_bytes
from benchkit.servers import StorageEnv, running_server
from benchkit.setup import setup_organization
from benchkit.workers import ClientPool, DeviceSpec, HandshakeJob, LoadJob, measured_window

MIN_CONNECTIONS_FOR_MARGINAL = 100  # below, the RSS difference is mostly page-size noise


@dataclass
class Measure:
    """One server, one N."""

    server: str
    connections: int
    storage: str = "memory"
    rss_idle_bytes: int = 0
    rss_open_bytes: int = 0  # once N authenticated connections are open
    connections_opened: int = 0
    pings: int = 0
    pings_per_s: float = 0.0
    ping_server_cpu_s: float = 0.0
    ping_storage_cpu_s: float | None = None
    ping_client_cpu_s: float = 0.0
    ping_errors: int = 0
    handshakes: int = 0
    handshakes_per_s: float = 0.0
    handshake_server_cpu_s: float = 0.0
    handshake_storage_cpu_s: float | None = None
    handshake_client_cpu_s: float = 0.0
    handshake_errors: int = 0
    duration_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def rss_per_connection_bytes(self) -> float | None:
        delta = self.rss_open_bytes - self.rss_idle_bytes
        if self.connections_opened < MIN_CONNECTIONS_FOR_MARGINAL or delta <= 0:
            return None
        return delta / self.connections_opened

    @property
    def connections_per_gib(self) -> float | None:
        per = self.rss_per_connection_bytes
        return None if per is None else (1 << 30) / per

    @property
    def ping_cpu_per_op_s(self) -> float | None:
        return self.ping_server_cpu_s / self.pings if self.pings else None

    @property
    def handshake_cpu_per_op_s(self) -> float | None:
        return self.handshake_server_cpu_s / self.handshakes if self.handshakes else None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["scenario"] = "connections"
        data["rss_per_connection_bytes"] = self.rss_per_connection_bytes
        data["connections_per_gib_marginal"] = self.connections_per_gib
        data["ping_server_cpu_per_op_s"] = self.ping_cpu_per_op_s
        data["handshake_server_cpu_per_op_s"] = self.handshake_cpu_per_op_s
        return data


def measure(
    server_name: str,
    n: int,
    pool: ClientPool,
    args: argparse.Namespace,
    our_cli: bool,
    log_dir: Path,
    storage: StorageEnv,
) -> Measure:
    m = Measure(server=server_name, connections=n, storage=storage.kind, duration_s=args.duration)
    shares = pool.split(n)
    with running_server(server_name, our_cli, log_dir, storage) as server:
        storage_pids = server.backing.storage_pids
        spec = DeviceSpec.of(asyncio.run(setup_organization(server.addr)))
        time.sleep(0.2)
        m.rss_idle_bytes = rss_bytes(server.pid)

        # N authenticated connections, kept open: memory, then pings on them.
        opened = pool.open(spec, n)
        m.connections_opened = opened.count
        m.errors.extend(opened.first_errors)
        time.sleep(0.2)
        m.rss_open_bytes = rss_bytes(server.pid)

        pinged = measured_window(
            pool,
            server.pid,
            storage_pids,
            lambda i, w: LoadJob("ping", w) if shares[i] else None,
            args.warmup,
            args.duration,
        )
        m.ping_server_cpu_s = pinged.server_cpu
        m.ping_storage_cpu_s = pinged.storage_cpu
        m.pings, m.ping_errors = pinged.result.count, pinged.result.errors
        m.pings_per_s = pinged.result.count / args.duration
        m.ping_client_cpu_s = pinged.result.client_cpu
        m.errors.extend(pinged.result.first_errors)
        m.errors.extend(pool.close().first_errors)

        # N concurrent loops of connect + handshake + close.
        shaken = measured_window(
            pool,
            server.pid,
            storage_pids,
            lambda i, w: HandshakeJob(spec, shares[i], w) if shares[i] else None,
            args.warmup,
            args.duration,
        )
        m.handshake_server_cpu_s = shaken.server_cpu
        m.handshake_storage_cpu_s = shaken.storage_cpu
        m.handshakes, m.handshake_errors = shaken.result.count, shaken.result.errors
        m.handshakes_per_s = shaken.result.count / args.duration
        m.handshake_client_cpu_s = shaken.result.client_cpu
        m.errors.extend(shaken.result.first_errors)
        if server.process.poll() is not None:
            m.errors.append(f"server exited during the run:\n{server.log_tail()}")
    return m


Row = tuple[str, Callable[[Measure], float | None], str]


def _per(total: float | None, count: int, unit: float) -> float | None:
    return None if total is None or not count else total / count * unit


ROWS: list[Row] = [
    ("handshakes/s (higher is better)", lambda m: m.handshakes_per_s, ",.0f"),
    (
        "  server CPU ms/handshake",
        lambda m: _per(m.handshake_server_cpu_s, m.handshakes, 1e3),
        ".3f",
    ),
    (
        "  storage CPU ms/handshake",
        lambda m: _per(m.handshake_storage_cpu_s, m.handshakes, 1e3),
        ".3f",
    ),
    ("  server CPU busy %", lambda m: 100 * m.handshake_server_cpu_s / m.duration_s, ".0f"),
    (
        "  clients CPU busy % (all procs)",
        lambda m: 100 * m.handshake_client_cpu_s / m.duration_s,
        ".0f",
    ),
    ("pings/s (higher is better)", lambda m: m.pings_per_s, ",.0f"),
    ("  server CPU us/ping", lambda m: _per(m.ping_server_cpu_s, m.pings, 1e6), ".1f"),
    ("  storage CPU us/ping", lambda m: _per(m.ping_storage_cpu_s, m.pings, 1e6), ".1f"),
    ("  server CPU busy %", lambda m: 100 * m.ping_server_cpu_s / m.duration_s, ".0f"),
    (
        "  clients CPU busy % (all procs)",
        lambda m: 100 * m.ping_client_cpu_s / m.duration_s,
        ".0f",
    ),
    ("RSS MiB, idle", lambda m: m.rss_idle_bytes / (1 << 20), ".1f"),
    ("RSS MiB, N connections open", lambda m: m.rss_open_bytes / (1 << 20), ".1f"),
    (
        "  KiB/connection (over idle)",
        lambda m: None if m.rss_per_connection_bytes is None else m.rss_per_connection_bytes / 1024,
        ".1f",
    ),
    ("  connections/GiB (marginal)", lambda m: m.connections_per_gib, ",.0f"),
]


def print_table(results: list[Measure], servers: list[str]) -> None:
    by_key = {(m.server, m.connections): m for m in results}
    storage = results[0].storage if results else "memory"
    for n in sorted({m.connections for m in results}):
        rows = []
        for label, get, spec in ROWS:
            # No storage process of its own (SQLite works inside the server's).
            if "storage CPU" in label and storage in ("memory", "sqlite"):
                continue
            values = {s: get(by_key[(s, n)]) for s in servers if (s, n) in by_key}
            rows.append((label, values, spec, "busy" not in label))
        title = f"connections: N = {n} ({storage})"
        print_side_by_side(title, rows, servers)
        for s in servers:
            m = by_key.get((s, n))
            if m is None:
                continue
            problems = []
            if m.connections_opened != n:
                problems.append(f"{m.connections_opened}/{n} connections opened")
            if m.handshake_errors or m.ping_errors:
                problems.append(
                    f"{m.handshake_errors} handshake errors, {m.ping_errors} ping errors"
                )
            if problems or m.errors:
                print(f"  ! {s}: {'; '.join(problems)}")
                for err in m.errors[:MAX_ERRORS_KEPT]:
                    print(f"      {err}")
