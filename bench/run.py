"""Benchmark runner: our server against the reference Parsec 2.0.0 server, side by side.

    .venv/bin/python bench/run.py [--connections 1 10 100] [--duration 3]
                                  [--servers ours,reference] [--client-processes 2]
                                  [--json FILE]

For each server and each N (number of concurrent client connections) a fresh server is
started as a subprocess (`parsec backend run --dev`, in memory, no TLS, on a free port of
127.0.0.1), an organization is created and bootstrapped, then:

- the server's RSS is read when idle, then again once N authenticated connections are open;
- pings/s: each of those N connections sends `ping` as soon as it has the previous reply;
- handshakes/s: N concurrent loops of connect + API 2 authenticated handshake + close.

The server's CPU time (utime + stime from /proc/<pid>/stat, including any child process) is
read at the start and at the end of each measured window and divided by the number of
operations completed in that window. The load comes from `--client-processes` worker
processes (our client library, asyncio + uvloop) whose counts are summed.

This is a program that prints figures, not a test; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api.addr import BackendAddr
from parsec_server.api.ids import UserProfile
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import bootstrap_organization, create_organization

REPO = Path(__file__).resolve().parent.parent
OUR_PYTHON = REPO / ".venv" / "bin" / "python"
OUR_PARSEC = REPO / ".venv" / "bin" / "parsec"
REFERENCE_PARSEC = Path("/tmp/parsec-peer-venv/bin/parsec")
HOST = "127.0.0.1"  # the only address this program ever connects to
ADMINISTRATION_TOKEN = "s3cr3t"  # the `--dev` one, on both servers
ORGANIZATION_ID = "BenchOrg"

SERVER_START_TIMEOUT = 60.0  # seconds for a server to accept TCP connections
OP_TIMEOUT = 10.0  # seconds for one handshake or one ping
MAX_OPS_PER_LOOP = 1_000_000  # bound on every load loop, on top of the time bound
OPEN_CONCURRENCY = 50  # simultaneous handshakes per worker while opening connections
START_SLACK = 0.3  # seconds between sending a job and its start, for all workers to be ready
MAX_ERRORS_KEPT = 5
MIN_CONNECTIONS_FOR_MARGINAL = 100  # below, the RSS difference is mostly page-size noise

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the servers -------------------------------------------------------------------------

_OURS_FALLBACK = """
import logging, sys, tempfile
from pathlib import Path
import structlog
from parsec_server.api.addr import BackendAddr
from parsec_server.backend.config import BackendConfig, MockedBlockstoreConfig, MockedEmailConfig
from parsec_server.backend.server import run_server
port = int(sys.argv[1])
# As the CLI does by default: warnings and errors only (per-command debug logs cost CPU).
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
run_server(BackendConfig(
    db_url="MOCKED",
    blockstore=MockedBlockstoreConfig(),
    administration_token="s3cr3t",
    backend_addr=BackendAddr.from_url(f"parsec://127.0.0.1:{port}?no_ssl=true"),
    email=MockedEmailConfig(sender="x@y", tmpdir=Path(tempfile.mkdtemp())),
    host="127.0.0.1",
    port=port,
))
"""


def _our_cli_works() -> bool:
    if not OUR_PARSEC.exists():
        return False
    try:
        done = subprocess.run(
            [str(OUR_PARSEC), "backend", "run", "--help"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def server_command(server: str, port: int, our_cli: bool) -> list[str]:
    """How a server is started; both the same way when our CLI exists."""
    args = ["backend", "run", "--dev", "-H", HOST, "-P", str(port)]
    if server == "reference":
        return [str(REFERENCE_PARSEC), *args]
    if our_cli:
        return [str(OUR_PARSEC), *args]
    return [str(OUR_PYTHON), "-c", _OURS_FALLBACK, str(port)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningServer:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def addr(self) -> BackendAddr:
        return BackendAddr.from_url(f"parsec://{HOST}:{self.port}?no_ssl=true")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _wait_for_port(server: RunningServer) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} server exited with {server.process.returncode}:\n"
                f"{server.log_tail()}"
            )
        try:
            with socket.create_connection((HOST, server.port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} server not listening after {SERVER_START_TIMEOUT} s")


@contextmanager
def running_server(name: str, our_cli: bool, log_dir: Path) -> Iterator[RunningServer]:
    port = free_port()
    log_path = log_dir / f"{name}-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARSEC_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            server_command(name, port, our_cli),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = RunningServer(name=name, port=port, process=process, log_path=log_path)
    try:
        _wait_for_port(server)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


# --- /proc -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat from the 3rd one (state) on; `comm` may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _process_tree(pid: int) -> list[int]:
    """pid and its live descendants (in case a server runs its work in child processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree (all threads included)."""
    ticks = 0
    for p in _process_tree(pid):
        try:
            fields = _stat_fields(p)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / CLK_TCK


def rss_bytes(pid: int) -> int:
    total = 0
    for p in _process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


# --- the load generator (worker processes) ---------------------------------------------


@dataclass(frozen=True)
class DeviceSpec:
    """A LocalDevice as plain bytes, to hand it to worker processes."""

    addr_url: str
    organization_id: str
    device_id: str
    signing_seed: bytes
    private_key: bytes
    root_verify_key: bytes

    @classmethod
    def of(cls, device: LocalDevice) -> DeviceSpec:
        return cls(
            addr_url=device.backend_addr.to_url(),
            organization_id=device.organization_id,
            device_id=device.device_id,
            signing_seed=bytes(device.signing_key),
            private_key=bytes(device.private_key),
            root_verify_key=device.root_verify_key,
        )

    def device(self) -> LocalDevice:
        return LocalDevice(
            backend_addr=BackendAddr.from_url(self.addr_url),
            organization_id=self.organization_id,
            device_id=self.device_id,
            device_label=None,
            human_handle=None,
            profile=UserProfile.ADMIN,
            signing_key=SigningKey(self.signing_seed),
            private_key=PrivateKey(self.private_key),
            root_verify_key=self.root_verify_key,
        )


@dataclass(frozen=True)
class Window:
    """Load starts at `t0`; operations completed in [start, end) are counted.
    Times are time.monotonic() values, which are shared by all processes on Linux."""

    t0: float
    warmup: float
    duration: float

    @property
    def start(self) -> float:
        return self.t0 + self.warmup

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class OpenJob:
    spec: DeviceSpec
    n: int


@dataclass(frozen=True)
class PingJob:
    window: Window


@dataclass(frozen=True)
class HandshakeJob:
    spec: DeviceSpec
    n: int
    window: Window


@dataclass(frozen=True)
class CloseJob:
    pass


@dataclass(frozen=True)
class StopJob:
    pass


Job = OpenJob | PingJob | HandshakeJob | CloseJob | StopJob


@dataclass
class WorkerResult:
    count: int = 0  # operations completed in the window (or connections opened)
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    client_cpu: float = 0.0  # this worker's CPU seconds during the window

    def error(self, exc: BaseException | str) -> None:
        self.errors += 1
        if len(self.first_errors) < MAX_ERRORS_KEPT:
            self.first_errors.append(exc if isinstance(exc, str) else repr(exc))


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _client_cpu_during(window: Window, result: WorkerResult) -> None:
    await _sleep_until(window.start)
    before = time.process_time()
    await _sleep_until(window.end)
    result.client_cpu = time.process_time() - before


class LoadWorker:
    """Lives in a worker process; keeps the connections open between jobs."""

    def __init__(self) -> None:
        self.connections: list[BackendConnection] = []

    async def run(self, job: Job) -> WorkerResult:
        match job:
            case OpenJob():
                return await self.open(job)
            case PingJob():
                return await self.ping(job)
            case HandshakeJob():
                return await self.handshake(job)
            case CloseJob() | StopJob():
                return await self.close()

    async def open(self, job: OpenJob) -> WorkerResult:
        result = WorkerResult()
        device = job.spec.device()
        semaphore = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one() -> None:
            async with semaphore:
                try:
                    async with asyncio.timeout(OP_TIMEOUT):
                        self.connections.append(await device.connect())
                except Exception as exc:
                    result.error(exc)
                else:
                    result.count += 1

        await asyncio.gather(*(one() for _ in range(job.n)))
        return result

    async def ping(self, job: PingJob) -> WorkerResult:
        result = WorkerResult()
        window = job.window

        async def loop(conn: BackendConnection) -> None:
            await _sleep_until(window.t0)
            for _ in range(MAX_OPS_PER_LOOP):
                if time.monotonic() >= window.end:
                    return
                try:
                    async with asyncio.timeout(OP_TIMEOUT):
                        reply = await conn.cmd("ping", ping="x")
                except Exception as exc:
                    result.error(exc)
                    return  # this connection is out of step (or dead): stop using it
                if reply.get("status") != "ok":
                    result.error(f"ping reply: {reply}")
                    continue
                if window.start <= time.monotonic() < window.end:
                    result.count += 1

        await asyncio.gather(
            _client_cpu_during(window, result), *(loop(c) for c in self.connections)
        )
        return result

    async def handshake(self, job: HandshakeJob) -> WorkerResult:
        result = WorkerResult()
        window = job.window
        device = job.spec.device()

        async def loop() -> None:
            await _sleep_until(window.t0)
            for _ in range(MAX_OPS_PER_LOOP):
                if time.monotonic() >= window.end:
                    return
                try:
                    async with asyncio.timeout(OP_TIMEOUT):
                        conn = await device.connect()  # TCP, WebSocket, API 2 handshake
                        await conn.close()
                except Exception as exc:
                    result.error(exc)
                    await asyncio.sleep(0.01)  # no busy loop on a refusing server
                    continue
                if window.start <= time.monotonic() < window.end:
                    result.count += 1

        await asyncio.gather(_client_cpu_during(window, result), *(loop() for _ in range(job.n)))
        return result

    async def close(self) -> WorkerResult:
        result = WorkerResult()
        connections, self.connections = self.connections, []
        for conn in connections:
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    await conn.close()
            except Exception as exc:
                result.error(exc)
            else:
                result.count += 1
        return result


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def worker_main(pipe: Connection) -> None:
    _raise_nofile_limit()
    worker = LoadWorker()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        while True:
            job: Job = pipe.recv()
            try:
                result = runner.run(worker.run(job))
            except Exception as exc:
                result = WorkerResult()
                result.error(f"worker failed: {exc!r}")
            pipe.send(result)
            if isinstance(job, StopJob):
                return


class ClientPool:
    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for i in range(processes):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main, args=(theirs,), name=f"bench-client-{i}", daemon=True
            )
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(process)

    def __len__(self) -> int:
        return len(self.pipes)

    def split(self, n: int) -> list[int]:
        """n connections over the workers, as evenly as possible."""
        size = len(self.pipes)
        return [n // size + (1 if i < n % size else 0) for i in range(size)]

    def send(self, jobs: list[Job | None]) -> list[int]:
        busy = []
        for i, (pipe, job) in enumerate(zip(self.pipes, jobs, strict=True)):
            if job is not None:
                pipe.send(job)
                busy.append(i)
        return busy

    def collect(self, busy: list[int], timeout: float) -> WorkerResult:
        total = WorkerResult()
        deadline = time.monotonic() + timeout
        for i in busy:
            pipe = self.pipes[i]
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"client worker {i} did not answer in {timeout:.0f} s")
            part: WorkerResult = pipe.recv()
            total.count += part.count
            total.errors += part.errors
            total.client_cpu += part.client_cpu
            for err in part.first_errors:
                if len(total.first_errors) < MAX_ERRORS_KEPT:
                    total.first_errors.append(err)
        return total

    def run(self, jobs: list[Job | None], timeout: float) -> WorkerResult:
        return self.collect(self.send(jobs), timeout)

    def stop(self) -> None:
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            try:
                pipe.send(StopJob())
                if pipe.poll(OP_TIMEOUT + 5):
                    pipe.recv()
            except (OSError, EOFError):
                pass
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


# --- measurements ------------------------------------------------------------------------


@dataclass
class Measure:
    """One server, one N."""

    server: str
    connections: int
    rss_idle_bytes: int = 0
    rss_open_bytes: int = 0  # once N authenticated connections are open
    connections_opened: int = 0
    pings: int = 0
    pings_per_s: float = 0.0
    ping_server_cpu_s: float = 0.0
    ping_client_cpu_s: float = 0.0
    ping_errors: int = 0
    handshakes: int = 0
    handshakes_per_s: float = 0.0
    handshake_server_cpu_s: float = 0.0
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
        data["rss_per_connection_bytes"] = self.rss_per_connection_bytes
        data["connections_per_gib_marginal"] = self.connections_per_gib
        data["ping_server_cpu_per_op_s"] = self.ping_cpu_per_op_s
        data["handshake_server_cpu_per_op_s"] = self.handshake_cpu_per_op_s
        return data


def _sleep_until_blocking(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def measured_window(
    pool: ClientPool,
    pid: int,
    make_job: Callable[[int, Window], Job | None],
    warmup: float,
    duration: float,
) -> tuple[WorkerResult, float]:
    """Runs one job per worker over a common window; returns the summed worker results
    and the server's CPU seconds over the window."""
    window = Window(t0=time.monotonic() + START_SLACK, warmup=warmup, duration=duration)
    busy = pool.send([make_job(i, window) for i in range(len(pool))])
    _sleep_until_blocking(window.start)
    cpu_before = cpu_seconds(pid)
    _sleep_until_blocking(window.end)
    cpu_after = cpu_seconds(pid)
    result = pool.collect(busy, timeout=START_SLACK + warmup + duration + OP_TIMEOUT + 30)
    return result, cpu_after - cpu_before


async def _setup_organization(addr: BackendAddr) -> LocalDevice:
    token = await create_organization(addr, ADMINISTRATION_TOKEN, ORGANIZATION_ID)
    return await bootstrap_organization(
        addr, ORGANIZATION_ID, token, human_handle=("a@x.com", "A"), device_label="d"
    )


def measure(
    server_name: str,
    n: int,
    pool: ClientPool,
    args: argparse.Namespace,
    our_cli: bool,
    log_dir: Path,
) -> Measure:
    m = Measure(server=server_name, connections=n, duration_s=args.duration)
    shares = pool.split(n)
    with running_server(server_name, our_cli, log_dir) as server:
        spec = DeviceSpec.of(asyncio.run(_setup_organization(server.addr)))
        time.sleep(0.2)
        m.rss_idle_bytes = rss_bytes(server.pid)

        # N authenticated connections, kept open: memory, then pings on them.
        opened = pool.run(
            [OpenJob(spec, k) if k else None for k in shares],
            timeout=OP_TIMEOUT * (1 + n / OPEN_CONCURRENCY) + 30,
        )
        m.connections_opened = opened.count
        m.errors.extend(opened.first_errors)
        time.sleep(0.2)
        m.rss_open_bytes = rss_bytes(server.pid)

        pinged, m.ping_server_cpu_s = measured_window(
            pool,
            server.pid,
            lambda i, w: PingJob(w) if shares[i] else None,
            args.warmup,
            args.duration,
        )
        m.pings, m.ping_errors = pinged.count, pinged.errors
        m.pings_per_s = pinged.count / args.duration
        m.ping_client_cpu_s = pinged.client_cpu
        m.errors.extend(pinged.first_errors)
        closed = pool.run([CloseJob() if k else None for k in shares], timeout=OP_TIMEOUT + 30)
        m.errors.extend(closed.first_errors)

        # N concurrent loops of connect + handshake + close.
        shaken, m.handshake_server_cpu_s = measured_window(
            pool,
            server.pid,
            lambda i, w: HandshakeJob(spec, shares[i], w) if shares[i] else None,
            args.warmup,
            args.duration,
        )
        m.handshakes, m.handshake_errors = shaken.count, shaken.errors
        m.handshakes_per_s = shaken.count / args.duration
        m.handshake_client_cpu_s = shaken.client_cpu
        m.errors.extend(shaken.first_errors)
        if server.process.poll() is not None:
            m.errors.append(f"server exited during the run:\n{server.log_tail()}")
    return m


# --- output ------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _ratio(ours: float | None, ref: float | None) -> str:
    if ours is None or ref is None or ref == 0:
        return "n/a"
    return f"{ours / ref:.2f}"


Row = tuple[str, Callable[[Measure], float | None], str]

ROWS: list[Row] = [
    ("handshakes/s (higher is better)", lambda m: m.handshakes_per_s, ",.0f"),
    (
        "  server CPU ms/handshake",
        lambda m: None if m.handshake_cpu_per_op_s is None else m.handshake_cpu_per_op_s * 1e3,
        ".3f",
    ),
    (
        "  server CPU busy %",
        lambda m: 100 * m.handshake_server_cpu_s / m.duration_s,
        ".0f",
    ),
    (
        "  clients CPU busy % (all procs)",
        lambda m: 100 * m.handshake_client_cpu_s / m.duration_s,
        ".0f",
    ),
    ("pings/s (higher is better)", lambda m: m.pings_per_s, ",.0f"),
    (
        "  server CPU us/ping",
        lambda m: None if m.ping_cpu_per_op_s is None else m.ping_cpu_per_op_s * 1e6,
        ".1f",
    ),
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
    ns = sorted({m.connections for m in results})
    both = "ours" in servers and "reference" in servers
    label_width = max(len(r[0]) for r in ROWS) + 2
    header = f"{'':<{label_width}}" + "".join(f"{s:>14}" for s in servers)
    if both:
        header += f"{'ours/ref':>10}"
    for n in ns:
        print()
        print(f"N = {n} concurrent connection{'s' if n > 1 else ''}")
        print(header)
        print("-" * len(header))
        for label, get, spec in ROWS:
            values = [get(by_key[(s, n)]) if (s, n) in by_key else None for s in servers]
            line = f"{label:<{label_width}}" + "".join(f"{_fmt(v, spec):>14}" for v in values)
            if both and "busy" not in label:
                ours, ref = values[servers.index("ours")], values[servers.index("reference")]
                line += f"{_ratio(ours, ref):>10}"
            print(line)
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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(client_processes: int) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "client_processes": client_processes,
    }


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Handshakes/s, pings/s, CPU per operation and RSS: ours vs reference."
    )
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[1, 10, 100],
        metavar="N",
        help="numbers of concurrent client connections (default: 1 10 100)",
    )
    parser.add_argument(
        "--duration", type=float, default=3.0, help="measured window, seconds (default: 3)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="load before each measured window, seconds (default: 0.5)",
    )
    parser.add_argument(
        "--servers",
        default="ours,reference",
        help="comma-separated, among: ours, reference (default: ours,reference)",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        metavar="P",
        help="load generator worker processes, figures are summed (default: 2)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in args.servers:
        if s not in ("ours", "reference"):
            parser.error(f"unknown server {s!r} (expected ours or reference)")
    if not args.servers:
        parser.error("no server to measure")
    if any(n < 1 for n in args.connections):
        parser.error("--connections must be >= 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    if args.client_processes < 1:
        parser.error("--client-processes must be >= 1")
    if "reference" in args.servers and not REFERENCE_PARSEC.exists():
        parser.error(
            f"{REFERENCE_PARSEC} not found: run /work/shared/tools/setup-reference-parsec.sh "
            "or pass --servers ours"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_nofile_limit()  # inherited by the servers and the workers
    our_cli = "ours" in args.servers and _our_cli_works()
    info = machine_info(args.client_processes)
    print(f"Parsec server benchmark, {info['date']}")
    print(f"CPU: {info['cpu_model']}, {info['cores']} cores ({info['usable_cores']} usable)")
    print(
        f"Load: {args.client_processes} client process(es) (our client library, asyncio + uvloop), "
        f"window {args.duration:g} s after {args.warmup:g} s warm-up, connections "
        f"{', '.join(map(str, args.connections))}"
    )
    if "ours" in args.servers:
        how = "`parsec backend run --dev`" if our_cli else "python -c run_server(...) fallback"
        print(f"Our server started with {how}")
    if info["usable_cores"] <= args.client_processes:
        print(
            f"NOTE: the {args.client_processes} client process(es) and the server share "
            f"{info['usable_cores']} core(s), so they compete for CPU: rates are lower bounds "
            "of the server's capacity; CPU per operation is the steadier figure to compare."
        )
    print("Each (server, N) runs on a freshly started server; ratio = ours / reference.")
    sys.stdout.flush()

    results: list[Measure] = []
    pool = ClientPool(args.client_processes)
    try:
        with tempfile.TemporaryDirectory(prefix="parsec-bench-") as tmp:
            for n in args.connections:
                for server_name in args.servers:
                    started = time.monotonic()
                    print(f"  measuring {server_name}, N={n} ...", end="", flush=True)
                    try:
                        m = measure(server_name, n, pool, args, our_cli, Path(tmp))
                    except RuntimeError as exc:
                        print(f" failed: {exc}")
                        m = Measure(server=server_name, connections=n, duration_s=args.duration)
                        m.errors.append(str(exc))
                    else:
                        print(f" done in {time.monotonic() - started:.1f} s", flush=True)
                    results.append(m)
    finally:
        pool.stop()

    print_table(results, args.servers)
    if args.json:
        payload = {
            "machine": info,
            "settings": {
                "connections": args.connections,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "servers": args.servers,
                "our_server_via_cli": our_cli,
            },
            "results": [m.as_json() for m in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
