"""Metrics with `--workers 2` (docs/deployment.md "Monitoring"): `parsec backend run` as a
subprocess on PostgreSQL; the parent serves the metrics of both workers, summed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from websockets.asyncio.client import ClientConnection

from parsec_server.api.addr import BackendAddr
from tests.backend.common import administration_ws, send_cmd
from tests.backend.test_metrics import Scrape, http_get
from tests.fixtures import free_port
from tests.fixtures.servers import ADMINISTRATION_TOKEN

T = TypeVar("T")
DB_MAX_CONNECTIONS = 3


def eventually(read: Callable[[], T], check: Callable[[T], bool], timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if check(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def per_worker(directory: Path, kind: str, name: str, **labels: str) -> dict[int, float]:
    """What each worker process wrote of a sample (its own file: `<kind>_<pid>.db`)."""
    found: dict[int, float] = {}
    for path in directory.glob(f"{kind}_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for metric in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    found[pid] = found.get(pid, 0) + sample.value
    return found


@pytest.fixture
def workers_server(migrated_postgresql_url: str, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """(port, metrics port) of `parsec backend run --workers 2`; its temporary files
    (the metrics directory among them) go to `tmp_path`."""
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "PARSEC_DB": migrated_postgresql_url,
        "PARSEC_DB_MIN_CONNECTIONS": "1",
        "PARSEC_DB_MAX_CONNECTIONS": str(DB_MAX_CONNECTIONS),
        "PARSEC_BLOCKSTORE": "POSTGRESQL",
        "PARSEC_ADMINISTRATION_TOKEN": ADMINISTRATION_TOKEN,
        "PARSEC_BACKEND_ADDR": f"parsec://127.0.0.1:{port}?no_ssl=true",
        "PARSEC_EMAIL_HOST": "MOCKED",
        "PARSEC_PORT": str(port),
        "TMPDIR": str(tmp_path),
    }
    parsec = Path(sys.executable).parent / "parsec"
    proc = subprocess.Popen(
        [str(parsec), "backend", "run", "--workers", "2", "--metrics-address",
         f"127.0.0.1:{metrics_port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield port, metrics_port
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode is not None, output
    # The parent removed its metrics directory.
    assert not list(tmp_path.glob("parsec-metrics-*")), output


def test_workers_metrics_are_summed_by_the_parent(
    workers_server: tuple[int, int], tmp_path: Path
) -> None:
    port, metrics_port = workers_server
    addr = BackendAddr("127.0.0.1", port, False)

    def scrape() -> Scrape:
        try:
            status, _, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        except OSError:
            return Scrape({}, {})
        assert status == 200
        return Scrape.parse(body)

    first = eventually(scrape, lambda s: s.total("parsec_worker_up") == 2)
    assert first.get("parsec_worker_up", worker="0") == 1
    assert first.get("parsec_worker_up", worker="1") == 1
    (directory,) = tmp_path.glob("parsec-metrics-*")
    # Both workers are serving their pools: the maxima add up (`livesum`).
    pool_max = eventually(
        scrape, lambda s: s.get("parsec_postgresql_pool_max_connections") == 2 * DB_MAX_CONNECTIONS
    )
    assert pool_max.get("parsec_postgresql_pool_max_connections") == 2 * DB_MAX_CONNECTIONS

    async def drive() -> None:
        # Connections are opened until both workers hold some (the kernel hands each
        # new connection to whichever worker accepts first).
        opened: list[ClientConnection] = []
        served: dict[int, float] = {}
        while len(served) < 2:
            assert len(opened) < 200, served
            opened += await asyncio.gather(*(administration_ws(addr) for _ in range(10)))
            await asyncio.sleep(0.05)
            held = per_worker(
                directory, "gauge_livesum", "parsec_connections_open", handshake="administration"
            )
            served = {pid: count for pid, count in held.items() if count}
        for ws in opened:
            assert (await send_cmd(ws, "ping", ping="p"))["status"] == "ok"
        pings = len(opened)

        # Every worker flushes its command counters within a second.
        def flushed() -> dict[int, float]:
            return per_worker(
                directory, "counter", "parsec_commands_total", command="ping", status="ok"
            )

        async with asyncio.timeout(10):
            while sum(flushed().values()) != pings:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        by_worker = flushed()
        assert sorted(by_worker) == sorted(served)  # both workers served pings
        assert all(by_worker.values())

        summed = scrape()
        assert summed.get("parsec_commands_total", command="ping", status="ok") == pings
        assert summed.get("parsec_command_duration_seconds_count", command="ping") == pings
        assert summed.get("parsec_handshakes_total", result="ok") == pings
        assert (
            summed.get("parsec_connections_open", handshake="administration", api_version="1")
            == pings
        )
        # Each worker's CPU and memory, and the parent's own.
        for worker in ("0", "1"):
            assert summed.get("parsec_worker_process_cpu_seconds_total", worker=worker) > 0
            assert summed.get("parsec_worker_process_resident_memory_bytes", worker=worker) > 0
        assert summed.has("process_cpu_seconds_total")

        for ws in opened:
            await ws.close()

    asyncio.run(drive())
