"""What a serving process does besides serving: react to SIGTERM and SIGINT, and tell its
supervisor (systemd, or the parent process with `--workers`) how it is doing.

First SIGTERM or SIGINT: graceful shutdown (`asgi.server.serve`), bounded by
`--shutdown-timeout`; if it still is not over `HARD_EXIT_MARGIN` seconds later (a close
that hangs), the process exits at once with status 1. A second signal: exit at once with
status 128 + the signal number (130 for SIGINT, 143 for SIGTERM), without waiting for
anything; except in a worker process, where the parent decides (a second signal to the
parent kills the workers): systemd (`KillMode=control-group`) and a terminal's Ctrl-C
signal every process of the service at once, so a worker may receive one signal from them
and the same from its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from multiprocessing.connection import Connection

import structlog

from parsec_server.backend.asgi.systemd import SystemdNotifier

logger = structlog.get_logger("parsec.server")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Seconds past the shutdown timeout after which a shutdown that still runs (closing the
# database or the blockstore hangs) gives up: the process exits at once with status 1.
HARD_EXIT_MARGIN = 5.0
# Messages of a worker to its parent (one byte each).
WORKER_READY = b"R"
WORKER_ALIVE = b"A"


def exit_now(status: int) -> None:
    """Exit at once (no cleanup, no waiting), after flushing what was written."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed stream: nothing to flush
            stream.flush()
    logging.shutdown()
    os._exit(status)


def drain_time(shutdown_timeout: float) -> float:
    """Of the shutdown timeout, the seconds given to requests in progress: the rest (a
    tenth, at most 1 s) is kept for closing the database and the blockstore."""
    return max(0.0, shutdown_timeout - min(1.0, shutdown_timeout / 10))


class ShutdownSignals:
    """SIGTERM and SIGINT while `serve` runs, through the event loop."""

    def __init__(self, shutdown_timeout: float, *, force_on_second: bool) -> None:
        self.received: int | None = None
        self._shutdown_timeout = shutdown_timeout
        self._force_on_second = force_on_second
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._stop = asyncio.Event()
        self._serving = False
        self._hard_exit: threading.Timer | None = None
        self._received_at = 0.0

    def install(self) -> None:
        for signum in HANDLED_SIGNALS:
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        # A worker starts with them blocked (see asgi.workers): now they can be handled.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

    def uninstall(self) -> None:
        for signum in HANDLED_SIGNALS:
            self._loop.remove_signal_handler(signum)
        if self._hard_exit is not None:
            self._hard_exit.cancel()

    def serving(self) -> None:
        """From now on a signal starts the graceful shutdown (before, it cancels the
        start-up)."""
        self._serving = True

    async def wait(self) -> None:
        await self._stop.wait()

    def drain_deadline(self) -> float:
        """Loop time by which the requests in progress must be done."""
        return self._received_at + drain_time(self._shutdown_timeout)

    def interrupted(self) -> bool:
        """Called on CancelledError: whether it is ours (a signal during start-up); the
        task's cancellation is then withdrawn."""
        if self.received is None or self._serving or self._task is None:
            return False
        self._task.uncancel()
        return True

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            self._received_at = self._loop.time()
            logger.info("Shutting down", signal=name, shutdown_timeout=self._shutdown_timeout)
            self._hard_exit = threading.Timer(
                self._shutdown_timeout + HARD_EXIT_MARGIN, self._give_up
            )
            self._hard_exit.daemon = True
            self._hard_exit.start()
            if self._serving:
                self._stop.set()
            elif self._task is not None:
                self._task.cancel()
        elif self._force_on_second:
            logger.warning("Second signal: exiting at once", signal=name)
            exit_now(128 + signum)
        else:
            logger.info("Already shutting down: signal ignored", signal=name)

    def _give_up(self) -> None:
        logger.error(
            "Shutdown still not over after the timeout: exiting at once",
            shutdown_timeout=self._shutdown_timeout,
        )
        exit_now(1)


class ProcessRole:
    """How a serving process reports to its supervisor (default: to nobody)."""

    # Whether a second signal exits at once (see the module's docstring).
    force_on_second_signal = True
    # Seconds between two `alive` calls (None: not called).
    alive_interval: float | None = None

    def ready(self, status: str) -> None:
        """The process listens."""

    def stopping(self, status: str) -> None:
        """The graceful shutdown starts."""

    def alive(self) -> None:
        """The event loop runs (called every `alive_interval` seconds)."""

    def close(self) -> None:
        pass


class StandaloneProcess(ProcessRole):
    """The only server process: systemd is its supervisor."""

    def __init__(self, notifier: SystemdNotifier) -> None:
        self._notifier = notifier
        self.alive_interval = notifier.watchdog_interval

    def ready(self, status: str) -> None:
        self._notifier.ready(status)

    def stopping(self, status: str) -> None:
        self._notifier.stopping(status)

    def alive(self) -> None:
        self._notifier.watchdog()

    def close(self) -> None:
        self._notifier.close()


class WorkerProcess(ProcessRole):
    """A worker of `--workers`: its parent is its supervisor (and systemd's main process)."""

    force_on_second_signal = False

    def __init__(self, parent: Connection, alive_interval: float | None) -> None:
        self._parent = parent
        self.alive_interval = alive_interval

    def _send(self, message: bytes) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: its death signal stops us
            self._parent.send_bytes(message)

    def ready(self, status: str) -> None:
        self._send(WORKER_READY)

    def alive(self) -> None:
        self._send(WORKER_ALIVE)

    def close(self) -> None:
        self._parent.close()


async def keep_alive(role: ProcessRole) -> None:
    """Call `role.alive()` every `role.alive_interval` seconds (from the event loop: a
    blocked loop stops the calls, which is what a watchdog is for)."""
    interval = role.alive_interval
    if interval is None:
        return
    while True:
        role.alive()
        await asyncio.sleep(interval)
