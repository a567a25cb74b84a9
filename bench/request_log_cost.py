"""What the per-command request log line costs (docs/logging.md).

    .venv/bin/python bench/request_log_cost.py [--pings 30000] [--rounds 3]

1. Micro-benchmark (timeit, in this process): the check every command pays, with the
   default `--log-level WARNING`; then one request line, with `--log-level INFO` and
   `--log-format JSON` / `CONSOLE`, written to a file.
2. End to end: `parsec backend run --dev` as a subprocess, with the default level and with
   `--log-level INFO --log-file <file>`; one connection sends pings one after the other;
   the server's CPU time (utime + stime from /proc) per ping. The best of `--rounds` runs
   of each, interleaved (the machine may be shared).

This is a program that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from benchkit.common import cpu_seconds, free_port
from parsec_server.api.addr import BackendAddr
from parsec_server.backend.asgi import request_log
from parsec_server.cli.logging_setup import LogFormat, LogLevel, configure_logging
from parsec_server.client.connection import BackendConnection, BackendConnectionError
from parsec_server.client.organization import bootstrap_organization, create_organization

DEV_TOKEN = "s3cr3t"  # --dev's administration token
PARSEC = Path(sys.executable).parent / "parsec"


def per_call_us(function: Callable[[], object], number: int = 20_000, repeat: int = 5) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number * 1e6


def micro(folder: Path) -> None:
    def configure(level: LogLevel, log_format: LogFormat) -> None:
        configure_logging(level, log_format, folder / f"micro-{log_format}.log")

    configure("WARNING", "JSON")
    check = per_call_us(request_log.enabled, number=1_000_000)
    print(f"level check (WARNING, the default): {check:.3f} µs per command")
    for log_format in ("JSON", "CONSOLE"):
        configure("INFO", log_format)
        connection = request_log.ConnectionLog("192.0.2.1")
        connection._fields.update(
            peer="authenticated", organization="MyOrganization", device="a" * 32 + "@" + "b" * 32
        )

        def line(connection: request_log.ConnectionLog = connection) -> None:
            connection.command("vlob_read", "ok", time.perf_counter())

        print(f"request line (INFO, {log_format} to a file): {per_call_us(line):.1f} µs")
    logging.getLogger().handlers.clear()


async def _pings(port: int, pings: int, pid: int, connections: int = 1) -> float:
    """Server CPU µs per ping over `pings` pings, spread over `connections` connections
    each sending its pings one after the other."""
    addr = BackendAddr("127.0.0.1", port, use_ssl=False)
    organization = f"Bench{int(time.time() * 1000)}"
    token = await create_organization(addr, DEV_TOKEN, organization)
    device = await bootstrap_organization(addr, organization, token, None, "bench")
    conns = [await device.connect() for _ in range(connections)]

    async def ping(conn: BackendConnection, count: int) -> None:
        for _ in range(count):
            await conn.cmd("ping", ping="x")

    try:
        await asyncio.gather(*(ping(conn, 200) for conn in conns))  # warm up
        started = cpu_seconds(pid)
        await asyncio.gather(*(ping(conn, pings // connections) for conn in conns))
        return (cpu_seconds(pid) - started) / (pings // connections * connections) * 1e6
    finally:
        for conn in conns:
            await conn.close()


def end_to_end(folder: Path, extra_args: list[str], pings: int, connections: int) -> float:
    port = free_port()
    command = [str(PARSEC), "backend", "run", "--dev", "--port", str(port), *extra_args]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                return asyncio.run(_pings(port, pings, server.pid, connections))
            except (OSError, BackendConnectionError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pings", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--connections",
        default="1,50",
        help="comma-separated numbers of connections pinging at the same time",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        micro(folder)
        settings = {
            "WARNING (default)": [],
            "INFO, JSON file": ["--log-level", "INFO", "--log-file", str(folder / "info.log")],
        }
        for connections in (int(n) for n in args.connections.split(",")):
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                for name, extra in settings.items():
                    cost = end_to_end(folder, extra, args.pings, connections)
                    best[name] = min(best.get(name, cost), cost)
            print(
                f"end to end, server CPU per ping, {connections} connection(s) "
                f"(best of {args.rounds}, {args.pings} pings):"
            )
            for name, cost in best.items():
                print(f"  {name}: {cost:.1f} µs")
        lines = (folder / "info.log").read_text().count('"event": "Request"')
        print(f"({lines} request lines written with INFO)")


if __name__ == "__main__":
    main()
