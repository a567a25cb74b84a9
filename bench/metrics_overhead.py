"""Added CPU per command of the Prometheus metrics (docs/deployment.md, Monitoring).

    .venv/bin/python bench/metrics_overhead.py [--calls 20000] [--rounds 15]

Times `ClientConnection._run` (the per-command hot path: handler call, plus whatever the
metrics add) on `ping` and on `organization_status` (memory storage), in three setups:

- off: no `--metrics-address` (the handlers are not wrapped at all);
- single: metrics on, one process (values in process memory);
- multi: metrics on, a worker of `--workers N` (values in prometheus_client's
  memory-mapped files).

The setups are measured in turn, round after round (the machine is shared and noisy);
the best round of each is printed, in µs per call, with its difference to `off`. The
periodic flush (once a second) is timed apart: its cost does not depend on the number of
commands since the previous one, only on the number of (command, status) seen.
This is a program that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry, values

from parsec_server.api import codec
from parsec_server.api.addr import BackendAddr
from parsec_server.backend.app import BackendApp, backend_app_factory
from parsec_server.backend.asgi.commands import CommandTables
from parsec_server.backend.asgi.connection import ClientConnection
from parsec_server.backend.asgi.dispatch import Command
from parsec_server.backend.asgi.metrics import PrometheusMetrics
from parsec_server.backend.client_context import AdministrationClientContext
from parsec_server.backend.config import BackendConfig, MockedBlockstoreConfig, MockedEmailConfig
from parsec_server.backend.metrics import NULL_METRICS, Metrics

CONFIG = BackendConfig(
    db_url="MOCKED",
    blockstore=MockedBlockstoreConfig(),
    administration_token="t",
    backend_addr=BackendAddr.from_url("parsec://127.0.0.1:6777?no_ssl=true"),
    email=MockedEmailConfig(sender="a@b.c", tmpdir=__import__("pathlib").Path("/tmp")),
)
REQUESTS = {
    "ping": {"cmd": "ping", "ping": "hello"},
    "organization_status": {"cmd": "organization_status", "organization_id": "NoSuchOrg"},
}


class Setup:
    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self.metrics = metrics
        self.stack = contextlib.AsyncExitStack()
        self.app: BackendApp
        self.conn: ClientConnection
        self.commands: dict[str, tuple[Command, Any]] = {}

    async def start(self) -> None:
        self.app = await self.stack.enter_async_context(backend_app_factory(CONFIG, self.metrics))
        tables = CommandTables(self.app)
        client = AdministrationClientContext()
        table = tables.for_client(client)
        self.conn = ClientConnection(self.app, tables, ws=None)  # type: ignore[arg-type]
        for name, request in REQUESTS.items():
            parsed = table.parse(codec.encode(request), client)
            assert not isinstance(parsed, dict), parsed
            self.commands[name] = parsed

    async def prime(self) -> None:
        """Start, and run each command once (the metrics bind their label children)."""
        await self.start()
        for name in REQUESTS:
            await self.time_calls(name, 1)
        if isinstance(self.metrics, PrometheusMetrics):
            self.metrics.flush()

    async def time_calls(self, name: str, calls: int) -> float:
        """µs per `_run` call."""
        command, req = self.commands[name]
        run = self.conn._run
        client = AdministrationClientContext()
        started = time.perf_counter()
        for _ in range(calls):
            await run(command, client, req)
        return (time.perf_counter() - started) / calls * 1e6


@contextlib.asynccontextmanager
async def setups() -> AsyncIterator[list[Setup]]:
    directory = tempfile.mkdtemp(prefix="parsec-metrics-bench-")
    result = [Setup("off", NULL_METRICS), Setup("single", PrometheusMetrics(CollectorRegistry()))]
    for setup in result:
        await setup.prime()
    # A worker's metrics: values in memory-mapped files (what the parent sets up). The
    # metrics above created their label children already, in process memory.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    result.append(Setup("multi", PrometheusMetrics(registry=None)))
    await result[-1].prime()
    try:
        yield result
    finally:
        for setup in result:
            await setup.stack.aclose()
        for entry in os.scandir(directory):
            os.unlink(entry.path)
        os.rmdir(directory)


async def main(calls: int, rounds: int) -> None:
    async with setups() as all_setups:
        for command in REQUESTS:
            best: dict[str, float] = {}
            samples: dict[str, list[float]] = {s.name: [] for s in all_setups}
            for setup in all_setups:  # warm-up
                await setup.time_calls(command, calls // 10)
            for _ in range(rounds):
                for setup in all_setups:
                    samples[setup.name].append(await setup.time_calls(command, calls))
            for name, values_ in samples.items():
                best[name] = min(values_)
            print(f"{command}: µs per _run call (best of {rounds} rounds of {calls})")
            for name, values_ in samples.items():
                extra = "" if name == "off" else f"  (+{best[name] - best['off']:.2f})"
                print(
                    f"  {name:7} best {best[name]:.2f}  median {statistics.median(values_):.2f}"
                    f"{extra}"
                )
        for setup in all_setups[1:]:
            assert isinstance(setup.metrics, PrometheusMetrics)
            for command in REQUESTS:
                await setup.time_calls(command, 100)
            started = time.perf_counter()
            setup.metrics.flush()
            print(
                f"flush ({setup.name}, {len(REQUESTS)} commands seen): "
                f"{(time.perf_counter() - started) * 1e6:.0f} µs, once a second"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
