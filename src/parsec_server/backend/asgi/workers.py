"""`--workers N`: the parent process forks N server processes sharing its listening socket,
then supervises them (docs/deployment.md).

* Readiness: each worker tells the parent when it listens; once all do, the parent (the
  service's main process for systemd) sends `READY=1` to `NOTIFY_SOCKET`.
* Watchdog (`WATCHDOG_USEC` set for the parent): each worker's event loop reports it is
  alive; the parent pings `WATCHDOG=1` only while every worker did so recently, so that a
  worker whose loop is stuck gets the service restarted.
* First SIGTERM or SIGINT: `STOPPING=1`, the parent closes its copy of the listening
  socket, passes the signal on to the workers as SIGTERM (each shuts down gracefully),
  and waits for them, up to the shutdown timeout plus `KILL_MARGIN`, then kills those
  left. It exits 0 if every worker did.
* Second signal: the workers are killed (SIGKILL) and the parent exits at once, with
  status 128 + the signal number. Workers ignore a second signal (see asgi/process.py).
* A worker that exits on its own (a crash) stops the others gracefully, and the parent
  fails (exit status 1): a supervisor configured to restart on failure restarts the
  whole server.
* Workers get SIGTERM when the parent dies (Linux's parent-death signal).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import structlog

from parsec_server.backend.asgi.process import (
    HANDLED_SIGNALS,
    HARD_EXIT_MARGIN,
    WORKER_READY,
    ProcessRole,
    WorkerProcess,
    exit_now,
)
from parsec_server.backend.asgi.systemd import SystemdNotifier
from parsec_server.backend.config import BackendConfig, StartupError

logger = structlog.get_logger("parsec.server")

# Seconds past the workers' own bound (shutdown timeout + their HARD_EXIT_MARGIN) after
# which the parent kills the workers still running.
KILL_MARGIN = HARD_EXIT_MARGIN + 5.0
# Longest sleep of the supervision loop (signals and worker messages wake it earlier).
_TICK = 1.0
_PR_SET_PDEATHSIG = 1

WorkerTarget = Callable[[BackendConfig, socket.socket, ProcessRole], None]


def _set_parent_death_signal() -> None:
    with contextlib.suppress(AttributeError, OSError):  # not Linux
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _worker_main(
    target: WorkerTarget,
    config: BackendConfig,
    sock: socket.socket,
    to_parent: Connection,
    alive_interval: float | None,
    parent_pid: int,
) -> None:
    # Forked with the parent's signal handling: start from the defaults. SIGTERM and
    # SIGINT stay blocked (as in the parent at fork time) until the worker handles them.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the death signal was set
        return
    target(config, sock, WorkerProcess(to_parent, alive_interval))


class _Worker:
    def __init__(self, index: int, process: BaseProcess, messages: Connection) -> None:
        self.index = index
        self.process = process
        self.messages: Connection | None = messages
        self.ready = False
        self.alive_at = time.monotonic()


class _Supervisor:
    def __init__(
        self, config: BackendConfig, notifier: SystemdNotifier, sock: socket.socket
    ) -> None:
        self.config = config
        self.notifier = notifier
        self.sock = sock
        self.workers: list[_Worker] = []
        self.received: int | None = None
        self.stop_deadline = 0.0
        self.failure: str | None = None
        self.all_ready = False
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        self._wakeup_read.setblocking(False)
        self._wakeup_write.setblocking(False)
        self._next_ping = time.monotonic()

    # Signals (Python handlers: they run in the main thread, between two instructions of
    # the loop below, which the wake-up fd then wakes up).

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._wakeup_write.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._on_signal)

    def restore_signal_handlers(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self._wakeup_read.close()
        self._wakeup_write.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            logger.info("Shutting down the workers", signal=name)
            self.stop_workers()
        else:
            logger.warning("Second signal: killing the workers, exiting at once", signal=name)
            for worker in self.workers:
                self._kill(worker)
            exit_now(128 + signum)

    def stop_workers(self) -> None:
        if self.stop_deadline:
            return
        self.notifier.stopping("Shutting down")
        self.stop_deadline = time.monotonic() + self.config.shutdown_timeout + KILL_MARGIN
        # Our copy of the listening socket would keep it open once the workers close
        # theirs: new connections would wait in its queue instead of being refused.
        self.sock.close()
        for worker in self.workers:
            pid = worker.process.pid
            if pid is not None and worker.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    @staticmethod
    def _kill(worker: _Worker) -> None:
        pid = worker.process.pid
        if pid is not None and worker.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # The loop.

    def supervise(self) -> None:
        while True:
            running = [w for w in self.workers if w.process.exitcode is None]
            if not running:
                return
            now = time.monotonic()
            if self.stop_deadline and now >= self.stop_deadline:
                logger.error("Workers still running after the shutdown timeout: killed")
                self.failure = self.failure or "workers killed after the shutdown timeout"
                for worker in running:
                    self._kill(worker)
                for worker in running:
                    worker.process.join()
                return
            self._ping_watchdog(now)
            waitables: list[Connection | socket.socket | int] = [self._wakeup_read]
            for worker in running:
                waitables.append(worker.process.sentinel)
                if worker.messages is not None:
                    waitables.append(worker.messages)
            ready = wait(waitables, timeout=self._sleep_time(now))
            if self._wakeup_read in ready:
                try:
                    while self._wakeup_read.recv(64):
                        pass
                except BlockingIOError:
                    pass
            for worker in running:
                if worker.messages is not None and worker.messages in ready:
                    self._read_messages(worker)
                if worker.process.sentinel in ready:
                    self._on_exit(worker)

    def _sleep_time(self, now: float) -> float:
        delay = _TICK
        if self.notifier.watchdog_interval is not None:
            delay = min(delay, max(0.0, self._next_ping - now))
        if self.stop_deadline:
            delay = min(delay, max(0.0, self.stop_deadline - now))
        return delay

    def _read_messages(self, worker: _Worker) -> None:
        assert worker.messages is not None
        try:
            while worker.messages.poll():
                message = worker.messages.recv_bytes()
                worker.alive_at = time.monotonic()
                if message == WORKER_READY:
                    worker.ready = True
        except (EOFError, OSError):
            worker.messages.close()
            worker.messages = None
            return
        if not self.all_ready and all(w.ready for w in self.workers):
            self.all_ready = True
            if not self.stop_deadline:
                logger.info("Every worker listens", workers=len(self.workers))
                self.notifier.ready(
                    f"Serving on {self.config.host}:{self.config.port} "
                    f"with {len(self.workers)} workers"
                )

    def _on_exit(self, worker: _Worker) -> None:
        worker.process.join()
        code = worker.process.exitcode
        if self.stop_deadline:  # stopping: every worker is expected to exit, with 0
            if code != 0:
                self.failure = self.failure or f"worker {worker.index} exited with status {code}"
            return
        if not worker.ready:
            self.failure = self.failure or f"worker {worker.index} failed to start (status {code})"
        else:
            self.failure = (
                self.failure or f"worker {worker.index} exited unexpectedly (status {code})"
            )
        logger.error("A worker stopped: stopping the others", worker=worker.index, status=code)
        self.stop_workers()

    def _ping_watchdog(self, now: float) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None or now < self._next_ping:
            return
        self._next_ping = now + interval
        # Alive: reported within the watchdog's whole period (twice the ping interval).
        if all(
            w.process.exitcode is None and now - w.alive_at <= 2 * interval for w in self.workers
        ):
            self.notifier.watchdog()


def run_workers(
    config: BackendConfig,
    sock: socket.socket,
    target: WorkerTarget,
    on_started: Callable[[list[BaseProcess]], None] | None = None,
) -> int | None:
    """Run `config.workers` processes, each `target(config, sock, role)`, until they are
    all over; returns the signal that stopped them. Raises StartupError if a worker failed
    to start, RuntimeError if one stopped on its own or did not stop cleanly."""
    notifier = SystemdNotifier.from_environment()
    # Workers report to the parent often enough for its watchdog pings.
    alive_interval = None
    if notifier.watchdog_interval is not None:
        alive_interval = min(1.0, notifier.watchdog_interval / 2)
    supervisor = _Supervisor(config, notifier, sock)
    context = multiprocessing.get_context("fork")
    # Signals blocked while forking: a worker handles them once it can (a signal sent to
    # it meanwhile waits), and the parent once its handlers are set.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        for index in range(config.workers):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker_main,
                args=(target, config, sock, sender, alive_interval, os.getpid()),
                name=f"parsec-worker-{index}",
            )
            process.start()
            sender.close()
            supervisor.workers.append(_Worker(index, process, receiver))
        supervisor.install_signal_handlers()
        if on_started is not None:
            on_started([worker.process for worker in supervisor.workers])
    except BaseException:
        for worker in supervisor.workers:
            supervisor._kill(worker)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    try:
        supervisor.supervise()
    finally:
        supervisor.restore_signal_handlers()
        for worker in supervisor.workers:
            if worker.messages is not None:
                worker.messages.close()
        notifier.close()
    if supervisor.failure is not None:
        if not supervisor.all_ready and supervisor.received is None:
            raise StartupError(f"Cannot start the workers: {supervisor.failure}")
        raise RuntimeError(supervisor.failure)
    return supervisor.received
