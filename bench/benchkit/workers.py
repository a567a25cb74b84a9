"""The load generator: worker processes (asyncio on uvloop, our client library) that keep
connections open between jobs, and the pool that drives them over common time windows."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from benchkit.common import (
    MAX_ERRORS_KEPT,
    MAX_OPS_PER_LOOP,
    OP_TIMEOUT,
    OPEN_CONCURRENCY,
    START_SLACK,
    CpuMeter,
    Window,
    cpu_seconds,
    raise_nofile_limit,
    sleep_until_blocking,
)
from benchkit.ops import ENCRYPTION_REVISION, OPS, ConnState
from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import UserProfile
from parsec_server.client.device import LocalDevice
from parsec_server.client.realm import create_realm


@dataclass(frozen=True)
class DeviceSpec:
    """A LocalDevice as plain bytes, to hand it to worker processes."""

    addr_url: str
    organization_id: str
    device_id: str
    profile: str
    signing_seed: bytes
    private_key: bytes
    root_verify_key: bytes

    @classmethod
    def of(cls, device: LocalDevice) -> DeviceSpec:
        return cls(
            addr_url=device.backend_addr.to_url(),
            organization_id=device.organization_id,
            device_id=device.device_id,
            profile=device.profile.value,
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
            profile=UserProfile(self.profile),
            signing_key=SigningKey(self.signing_seed),
            private_key=PrivateKey(self.private_key),
            root_verify_key=self.root_verify_key,
        )


# --- jobs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenJob:
    """Open n authenticated connections of the device; with `realms`, each one creates
    its own realm (so that connections never write to the same realm)."""

    spec: DeviceSpec
    n: int
    realms: bool = False


@dataclass(frozen=True)
class LoadJob:
    """Every open connection runs `op` (a key of OPS) back to back over the window."""

    op: str
    window: Window
    size: int = 0  # blob or block size, bytes
    max_ops: int = 0  # > 0: each connection stops after that many operations in the window


@dataclass(frozen=True)
class HandshakeJob:
    spec: DeviceSpec
    n: int
    window: Window


@dataclass(frozen=True)
class LatencyJob:
    """`writer` creates vlobs in the realm one at a time; `listener` (another user, with
    a role in the realm) waits for the `realm.vlobs_updated` events."""

    writer: DeviceSpec
    listener: DeviceSpec
    realm_id: str  # hex
    samples: int
    warmup_samples: int
    blob_size: int


@dataclass(frozen=True)
class CloseJob:
    pass


@dataclass(frozen=True)
class StopJob:
    pass


Job = OpenJob | LoadJob | HandshakeJob | LatencyJob | CloseJob | StopJob


@dataclass
class WorkerResult:
    count: int = 0  # operations completed in the window (or connections opened)
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    client_cpu: float = 0.0  # this worker's CPU seconds during the window
    latencies: list[float] = field(default_factory=list)  # seconds (LatencyJob)
    round_trips: list[float] = field(default_factory=list)  # seconds (LatencyJob)
    from_request: list[float] = field(default_factory=list)  # seconds (LatencyJob)
    capped: int = 0  # loops that stopped at LoadJob.max_ops
    last_done: float = 0.0  # time.monotonic() when the last of those stopped

    def error(self, exc: BaseException | str) -> None:
        self.errors += 1
        if len(self.first_errors) < MAX_ERRORS_KEPT:
            self.first_errors.append(exc if isinstance(exc, str) else repr(exc))

    def add(self, part: WorkerResult) -> None:
        self.count += part.count
        self.errors += part.errors
        self.client_cpu += part.client_cpu
        self.latencies.extend(part.latencies)
        self.round_trips.extend(part.round_trips)
        self.from_request.extend(part.from_request)
        self.capped += part.capped
        self.last_done = max(self.last_done, part.last_done)
        for err in part.first_errors:
            if len(self.first_errors) < MAX_ERRORS_KEPT:
                self.first_errors.append(err)


# --- the worker --------------------------------------------------------------------------


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
        self.states: list[ConnState] = []

    async def run(self, job: Job) -> WorkerResult:
        match job:
            case OpenJob():
                return await self.open(job)
            case LoadJob():
                return await self.load(job)
            case HandshakeJob():
                return await self.handshake(job)
            case LatencyJob():
                return await latency(job)
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
                        conn = await device.connect()
                        state = ConnState(conn)
                        self.states.append(state)
                        if job.realms:
                            state.realm_id = await create_realm(conn, device)
                except Exception as exc:
                    result.error(exc)
                else:
                    result.count += 1

        await asyncio.gather(*(one() for _ in range(job.n)))
        return result

    async def load(self, job: LoadJob) -> WorkerResult:
        result = WorkerResult()
        window = job.window
        op = OPS[job.op]
        data = os.urandom(job.size)

        async def loop(state: ConnState) -> None:
            await _sleep_until(window.t0)
            counted = 0
            for _ in range(MAX_OPS_PER_LOOP):
                if time.monotonic() >= window.end:
                    return
                try:
                    async with asyncio.timeout(OP_TIMEOUT):
                        reply = await op(state, data)
                except Exception as exc:
                    result.error(exc)
                    return  # this connection is out of step (or dead): stop using it
                if reply.get("status") != "ok":
                    result.error(f"{job.op} reply: {_short(reply)}")
                    await asyncio.sleep(0.01)
                    continue
                done = time.monotonic()
                if window.start <= done < window.end:
                    result.count += 1
                    counted += 1
                    if counted == job.max_ops:
                        result.capped += 1
                        result.last_done = max(result.last_done, done)
                        return
            result.error(f"{job.op}: loop stopped after {MAX_OPS_PER_LOOP} operations")

        await asyncio.gather(_client_cpu_during(window, result), *(loop(s) for s in self.states))
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
        states, self.states = self.states, []

        async def one(state: ConnState) -> None:
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    await state.conn.close()
            except Exception as exc:
                result.error(exc)
            else:
                result.count += 1

        # all at once: a stuck server makes each close wait for its timeout
        await asyncio.gather(*(one(s) for s in states))
        return result


def _short(reply: dict[str, Any]) -> str:
    text = repr({k: v for k, v in reply.items() if not isinstance(v, bytes)})
    return text[:200]


async def latency(job: LatencyJob) -> WorkerResult:
    """Writes one vlob at a time and waits for its event before the next one, so that
    nothing queues: latency = event received - vlob_create reply received (negative when
    the event comes first), and event received - vlob_create request sent."""
    result = WorkerResult()
    realm_id = ID.from_hex(job.realm_id)
    blob = os.urandom(job.blob_size)
    loop = asyncio.get_running_loop()
    waiting: dict[ID, asyncio.Future[float]] = {}
    writer = await job.writer.device().connect()
    listener = await job.listener.device().connect()

    async def listen() -> None:
        while True:
            reply = await listener.cmd("events_listen", wait=True)
            received = time.monotonic()
            if reply.get("status") != "ok" or reply.get("event") != "realm.vlobs_updated":
                continue
            future = waiting.pop(reply.get("src_id"), None)  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(received)

    try:
        reply = await listener.cmd("events_subscribe")
        if reply.get("status") != "ok":
            result.error(f"events_subscribe reply: {_short(reply)}")
            return result
        listening = asyncio.create_task(listen())
        await asyncio.sleep(0.05)  # the first events_listen is in place
        for i in range(job.warmup_samples + job.samples):
            vlob_id = ID.new()
            future: asyncio.Future[float] = loop.create_future()
            waiting[vlob_id] = future
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    sent = time.monotonic()
                    reply = await writer.cmd(
                        "vlob_create",
                        realm_id=realm_id,
                        encryption_revision=ENCRYPTION_REVISION,
                        vlob_id=vlob_id,
                        timestamp=DateTime.now(),
                        blob=blob,
                    )
                    replied = time.monotonic()
                    if reply.get("status") != "ok":
                        raise RuntimeError(f"vlob_create reply: {_short(reply)}")
                    received = await future
            except Exception as exc:
                waiting.pop(vlob_id, None)
                result.error(exc if not isinstance(exc, TimeoutError) else "no event in time")
                if listening.done():
                    break
                continue
            if i >= job.warmup_samples:
                result.latencies.append(received - replied)
                result.round_trips.append(replied - sent)
                result.from_request.append(received - sent)
                result.count += 1
        if listening.done() and not listening.cancelled() and listening.exception():
            result.error(f"listener: {listening.exception()!r}")
        listening.cancel()
    finally:
        for conn in (writer, listener):
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    await conn.close()
            except Exception as exc:
                result.error(exc)
    return result


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def worker_main(pipe: Connection) -> None:
    raise_nofile_limit()
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


# --- the pool ----------------------------------------------------------------------------


class ClientPool:
    def __init__(self, processes: int) -> None:
        self.size = processes
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._spawn()

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes = [], []
        for i in range(self.size):
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
                # its answer would come later, as the answer to another job: start afresh
                self._terminate()
                self._spawn()
                raise RuntimeError(
                    f"client worker {i} did not answer in {timeout:.0f} s "
                    "(the client processes were restarted)"
                )
            part: WorkerResult = pipe.recv()
            total.add(part)
        return total

    def run(self, jobs: list[Job | None], timeout: float) -> WorkerResult:
        return self.collect(self.send(jobs), timeout)

    def run_one(self, job: Job, timeout: float) -> WorkerResult:
        """On the first worker only."""
        return self.run([job] + [None] * (len(self) - 1), timeout)

    def open(self, spec: DeviceSpec, n: int, realms: bool = False) -> WorkerResult:
        shares = self.split(n)
        return self.run(
            [OpenJob(spec, k, realms) if k else None for k in shares],
            timeout=OP_TIMEOUT * (1 + n / OPEN_CONCURRENCY) * (2 if realms else 1) + 30,
        )

    def close(self) -> WorkerResult:
        return self.run([CloseJob()] * len(self), timeout=OP_TIMEOUT + 30)

    def stop(self) -> None:
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            try:
                pipe.send(StopJob())
                if pipe.poll(OP_TIMEOUT + 5):
                    pipe.recv()
            except (OSError, EOFError):
                pass
            process.join(timeout=5)
        self._terminate()

    def _terminate(self) -> None:
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
            pipe.close()


@dataclass
class WindowResult:
    result: WorkerResult
    server_cpu: float
    storage_cpu: float | None  # None: no separate storage processes (memory)
    start: float  # the window's, time.monotonic()


def measured_window(
    pool: ClientPool,
    server_pid: int,
    storage_pids: Callable[[], list[int]] | None,
    make_job: Callable[[int, Window], Job | None],
    warmup: float,
    duration: float,
) -> WindowResult:
    """Runs one job per worker over a common window; returns the summed worker results
    and the CPU seconds of the server (and of its storage processes) over the window."""
    window = Window(t0=time.monotonic() + START_SLACK, warmup=warmup, duration=duration)
    busy = pool.send([make_job(i, window) for i in range(len(pool))])
    storage = CpuMeter(storage_pids) if storage_pids is not None else None
    sleep_until_blocking(window.start)
    cpu_before = cpu_seconds(server_pid)
    if storage is not None:
        storage.start()
    sleep_until_blocking(window.end)
    cpu_after = cpu_seconds(server_pid)
    storage_cpu = storage.stop() if storage is not None else None
    result = pool.collect(busy, timeout=START_SLACK + warmup + duration + OP_TIMEOUT + 30)
    return WindowResult(result, cpu_after - cpu_before, storage_cpu, window.start)
