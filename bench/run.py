"""Benchmark runner: our server against the reference Parsec 2.0.0 server, side by side.

    .venv/bin/python bench/run.py [--scenarios connections,vlob,block,events]
                                  [--storage memory|postgresql|s3|sqlite[,...]]
                                  [--servers ours,reference] [--duration 2] [--json FILE]

Both servers are started the same way, as subprocesses (`parsec backend run --dev` on a free
port of 127.0.0.1, plus `--db`/`-b` for the PostgreSQL and S3 storages), and loaded by the
same load generator: worker processes running our client library (asyncio + uvloop).

Scenarios (see docs/benchmarks.md for what each figure means):

- connections: handshakes/s, pings/s and RSS per connection, for each N of --connections,
  each on a freshly started server;
- vlob: vlob_create, vlob_read, vlob_update, vlob_poll_changes per second on N connections
  (--data-connections), each connection in its own realm, 1 KiB blobs;
- block: block_create and block_read per second and MB/s (--block-sizes, KiB) on
  --block-connections connections;
- events: latency from a vlob_create reply to the `realm.vlobs_updated` event received by
  another user's subscribed connection (median, p99).

The server's CPU time (utime + stime from /proc/<pid>/stat) is read at the start and at the
end of each measured window and divided by the operations completed in it; with PostgreSQL
the CPU of the database's backend processes serving that server, and with S3 that of the
moto server, are given beside it. This is a program that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchkit import connections, data, events
from benchkit.common import REFERENCE_PARSEC, machine_info, raise_nofile_limit
from benchkit.servers import STORAGES, StorageEnv, our_cli_works, running_server
from benchkit.workers import ClientPool

SCENARIOS = ("connections", "vlob", "block", "events")
DEFAULT_SCENARIOS = {
    "memory": ("connections", "vlob", "block", "events"),
    "postgresql": ("vlob", "block", "events"),
    "s3": ("block",),
    "sqlite": ("vlob", "block", "events"),
}
DEFAULT_POSTGRESQL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

DataScenario = Callable[[Any, str, ClientPool, argparse.Namespace], list[Any]]
DATA_SCENARIOS: dict[str, DataScenario] = {
    # in this order on each server: events first, on a server that has done nothing yet
    "events": events.run_events,
    "vlob": data.run_vlob,
    "block": data.run_block,
}


def _csv(allowed: tuple[str, ...], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {item!r} (expected: {', '.join(allowed)})"
                )
        if not items:
            raise argparse.ArgumentTypeError(f"no {what} given")
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Our Parsec server against the reference 2.0.0 one, side by side."
    )
    parser.add_argument(
        "--scenarios",
        type=_csv(SCENARIOS, "scenario"),
        metavar="LIST",
        help="comma-separated among: connections, vlob, block, events (default: all four "
        "on memory, vlob,block,events on postgresql and sqlite, block on s3)",
    )
    parser.add_argument(
        "--storage",
        type=_csv(STORAGES, "storage"),
        default=["memory"],
        metavar="LIST",
        help="comma-separated among: memory (--dev), postgresql (a fresh database per server "
        "start, migrated by that server), s3 (a moto server, a bucket per server start), "
        "sqlite (a fresh file per server start; ours only); each is run in turn "
        "(default: memory)",
    )
    parser.add_argument(
        "--servers",
        type=_csv(("ours", "reference"), "server"),
        default=["ours", "reference"],
        metavar="LIST",
        help="comma-separated, among: ours, reference (default: ours,reference)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[1, 10, 100],
        metavar="N",
        help="connections scenario: numbers of concurrent connections (default: 1 10 100)",
    )
    parser.add_argument(
        "--data-connections",
        type=int,
        nargs="+",
        default=[1, 10],
        metavar="N",
        help="vlob scenario: numbers of concurrent connections, each in its own realm "
        "(default: 1 10)",
    )
    parser.add_argument(
        "--block-connections",
        type=int,
        default=4,
        metavar="N",
        help="block scenario: concurrent connections (default: 4; the reference deadlocks "
        "from 7 on PostgreSQL, see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--block-sizes",
        type=int,
        nargs="+",
        default=[64, 512],
        metavar="KIB",
        help="block scenario: block sizes in KiB (default: 64 512)",
    )
    parser.add_argument(
        "--block-volume",
        type=int,
        default=512,
        metavar="MIB",
        help="block scenario: block_create stops after storing that much per block size "
        "(default: 512)",
    )
    parser.add_argument(
        "--blob-size",
        type=int,
        default=1024,
        metavar="BYTES",
        help="vlob blob size, vlob and events scenarios (default: 1024)",
    )
    parser.add_argument(
        "--event-samples",
        type=int,
        default=1000,
        metavar="K",
        help="events scenario: measured vlob writes (after 20 not counted; default: 1000)",
    )
    parser.add_argument(
        "--duration", type=float, default=2.0, help="measured window, seconds (default: 2)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="load before each measured window, seconds (default: 0.5)",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        metavar="P",
        help="load generator worker processes, figures are summed (default: 2)",
    )
    parser.add_argument(
        "--postgresql-url",
        default=DEFAULT_POSTGRESQL_URL,
        metavar="URL",
        help="PostgreSQL server where the databases are created and dropped "
        f"(default: {DEFAULT_POSTGRESQL_URL})",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    args = parser.parse_args(argv)
    if any(n < 1 for n in [*args.connections, *args.data_connections, args.block_connections]):
        parser.error("numbers of connections must be >= 1")
    if args.block_volume < 1:
        parser.error("--block-volume must be >= 1")
    if any(k < 0 or k > 1024 for k in args.block_sizes):
        parser.error("--block-sizes must be within 0 .. 1024 KiB (the protocol's limit)")
    if not 0 <= args.blob_size <= 1 << 20 or args.event_samples < 1:
        parser.error("--blob-size must be within 0 .. 1 MiB and --event-samples >= 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    if args.client_processes < 1:
        parser.error("--client-processes must be >= 1")
    if "reference" in args.servers and not REFERENCE_PARSEC.exists():
        parser.error(
            f"{REFERENCE_PARSEC} not found: run scripts/reference-parsec or pass --servers ours"
        )
    return args


def _print_header(args: argparse.Namespace, info: dict[str, Any], our_cli: bool) -> None:
    print(f"Parsec server benchmark, {info['date']}")
    print(f"CPU: {info['cpu_model']}, {info['cores']} cores ({info['usable_cores']} usable)")
    print(
        f"Load: {args.client_processes} client process(es) (our client library, asyncio + "
        f"uvloop); windows of {args.duration:g} s after {args.warmup:g} s warm-up"
    )
    if "ours" in args.servers:
        how = "`parsec backend run --dev`" if our_cli else "python -c run_server(...) fallback"
        print(f"Our server started with {how}; ratio = ours / reference")
    if info["usable_cores"] <= args.client_processes + 1:
        others = " (and PostgreSQL or moto, with those storages)"
        print(
            f"NOTE: this machine has {info['usable_cores']} usable core(s), shared by the "
            f"server, the {args.client_processes} client process(es){others}: they compete for "
            "CPU, so rates are lower bounds of a server's capacity and move by +-25 % from one "
            "run to the next; CPU per operation is the steadier figure to compare."
        )
    sys.stdout.flush()


def _progress(what: str, fn: Callable[[], list[Any]]) -> list[Any]:
    started = time.monotonic()
    print(f"  {what} ...", end="", flush=True)
    try:
        results = fn()
    except Exception as exc:
        print(f" failed: {exc!r}", flush=True)
        return []
    print(f" {time.monotonic() - started:.1f} s", flush=True)
    return results


def run_storage(
    storage: str,
    scenarios: list[str],
    args: argparse.Namespace,
    pool: ClientPool,
    our_cli: bool,
    log_dir: Path,
) -> list[Any]:
    results: list[Any] = []
    with StorageEnv(storage, args.postgresql_url, log_dir) as env:
        print(f"\nStorage: {env.describe()}; scenarios: {', '.join(scenarios)}", flush=True)
        if "connections" in scenarios:
            for n in args.connections:
                for name in args.servers:
                    results += _progress(
                        f"connections, {name}, N={n}",
                        lambda name=name, n=n: [  # type: ignore[misc]
                            connections.measure(name, n, pool, args, our_cli, log_dir, env)
                        ],
                    )
        selected = [s for s in DATA_SCENARIOS if s in scenarios]
        for name in args.servers if selected else []:
            try:
                with running_server(name, our_cli, log_dir, env) as server:
                    for scenario in selected:
                        run = DATA_SCENARIOS[scenario]
                        results += _progress(
                            f"{scenario}, {name}",
                            lambda run=run, server=server: run(  # type: ignore[misc]
                                server, storage, pool, args
                            ),
                        )
            except RuntimeError as exc:
                print(f"  {name} on {storage}: {exc}", flush=True)
    return results


def print_tables(results: list[Any], servers: list[str]) -> None:
    for storage in STORAGES:
        mine = [r for r in results if r.storage == storage]
        connections.print_table([r for r in mine if isinstance(r, connections.Measure)], servers)
        data.print_table([r for r in mine if isinstance(r, data.OpMeasure)], servers)
        events.print_table([r for r in mine if isinstance(r, events.LatencyMeasure)], servers)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()  # inherited by the servers and the workers
    our_cli = "ours" in args.servers and our_cli_works()
    info = machine_info(args.client_processes)
    _print_header(args, info, our_cli)
    started = time.monotonic()
    results: list[Any] = []
    pool = ClientPool(args.client_processes)
    try:
        with tempfile.TemporaryDirectory(prefix="parsec-bench-") as tmp:
            for storage in args.storage:
                scenarios = args.scenarios or list(DEFAULT_SCENARIOS[storage])
                try:
                    results += run_storage(storage, scenarios, args, pool, our_cli, Path(tmp))
                except Exception as exc:  # storage unusable (PostgreSQL down, no moto...)
                    print(f"\nStorage {storage} skipped: {exc!r}", flush=True)
    finally:
        pool.stop()
    print(f"\nTotal time: {time.monotonic() - started:.0f} s")
    print_tables(results, args.servers)
    if args.json:
        payload = {
            "machine": info,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "our_server_via_cli": our_cli,
            "results": [r.as_json() for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
