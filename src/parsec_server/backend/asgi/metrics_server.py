"""Exposing the metrics: the `--metrics-address` listener, and the parent's side of
`--workers N`.

The listener is prometheus_client's WSGI server in a thread of its own (it answers
`GET /metrics`, and 404 elsewhere): it is never the public port, and a scrape never waits
for the event loop (nor the loop for the scrape, beyond the GIL).

With `--workers N` the parent process, which serves no client, exposes the metrics of
all its workers (prometheus_client's multiprocess mode):

- before forking, it creates a directory of its own for this run and names it in
  `PROMETHEUS_MULTIPROC_DIR`; the metrics the workers create then write their values to
  memory-mapped files there, one set per worker process;
- it listens on the metrics address and, at each scrape, merges those files: counters and
  histograms are summed over the workers (those of a worker that died included: a counter
  never goes back), gauges are summed over the live workers (`livesum`: the files of a
  worker that exited are removed, `mark_process_dead`, noticed at the next scrape);
- the CPU and memory of each worker come from `/proc/<pid>`, read by the parent, as
  `parsec_worker_process_*{worker="<0..N-1>"}`; the usual `process_*` are the parent's;
- the directory is removed when the server stops.

Without workers the server process exposes its own metrics and `process_*` are its own.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import shutil
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import CollectorRegistry, values
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from parsec_server.backend.config import BackendConfig, StartupError

logger = structlog.get_logger("parsec.metrics")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"
# How long stopping the listener may take (its thread checks for it this often).
_POLL_INTERVAL = 0.2


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _metrics_app(registry: Collector) -> Callable[..., Iterable[bytes]]:
    prometheus_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not Found: the metrics are at /metrics\n"]
        result: Iterable[bytes] = prometheus_app(environ, start_response)
        return result

    return app


# Listeners of this process: a child forked while they listen closes its copy at once
# (a worker must not keep the parent's metrics port open).
_listeners: weakref.WeakSet[MetricsListener] = weakref.WeakSet()


def _close_inherited_listeners() -> None:
    for listener in list(_listeners):
        listener.server.socket.close()
    _listeners.clear()


os.register_at_fork(after_in_child=_close_inherited_listeners)


class MetricsListener:
    """Listens at once (StartupError if it cannot); serves from `start()` until `close()`."""

    def __init__(self, host: str, port: int, registry: Collector) -> None:
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]

            class Server(ThreadingWSGIServer):
                address_family = family

            self.server = make_server(
                str(sockaddr[0]),
                port,
                _metrics_app(registry),
                Server,
                handler_class=_SilentHandler,
            )
        except OSError as exc:
            raise StartupError(
                f"Cannot listen on the metrics address {host}:{port}: {exc}"
            ) from exc
        self.address: tuple[str, int] = self.server.server_address[:2]  # type: ignore[assignment]
        self._thread: threading.Thread | None = None
        _listeners.add(self)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}{METRICS_PATH}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name="parsec-metrics",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Blocks until the listener stopped (at most a fraction of a second)."""
        _listeners.discard(self)
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
            self._thread = None
        self.server.server_close()


def _process_collector(pid: int | None) -> ProcessCollector:
    return ProcessCollector(namespace="parsec_worker", pid=lambda: str(pid), registry=None)


class WorkersCollector:
    """What the parent knows of its workers: whether each is alive, and its process
    figures (CPU, memory, descriptors) labelled with its index. Also removes the gauge
    files of the workers that exited."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._workers: list[tuple[str, multiprocessing.process.BaseProcess]] = []
        self._collectors: list[tuple[str, ProcessCollector]] = []
        self._dead: set[int] = set()
        self._lock = threading.Lock()

    def set_workers(self, workers: Sequence[multiprocessing.process.BaseProcess]) -> None:
        with self._lock:
            self._workers = [(str(index), worker) for index, worker in enumerate(workers)]
            self._collectors = [
                (index, _process_collector(worker.pid)) for index, worker in self._workers
            ]

    def mark_dead_workers(self) -> None:
        """The live gauges of a worker that exited are its last values: drop them (its
        counters stay, a counter never goes back)."""
        with self._lock:
            for _, worker in self._workers:
                pid = worker.pid
                if pid is None or pid in self._dead:
                    continue
                # The sentinel is readable once the process ended (without reaping it,
                # which is the main thread's business).
                if multiprocessing.connection.wait([worker.sentinel], timeout=0):
                    mark_process_dead(pid, self._directory)  # type: ignore[no-untyped-call]
                    self._dead.add(pid)

    def collect(self) -> Iterable[Metric]:
        self.mark_dead_workers()
        with self._lock:
            up = GaugeMetricFamily(
                "parsec_worker_up", "1 while the worker process runs", labels=["worker"]
            )
            merged: dict[str, Metric] = {}
            for (index, worker), (_, collector) in zip(
                self._workers, self._collectors, strict=True
            ):
                up.add_metric([index], 0.0 if worker.pid in self._dead else 1.0)
                for family in collector.collect():
                    target = merged.get(family.name)
                    if target is None:
                        target = merged[family.name] = Metric(
                            family.name, family.documentation, family.type
                        )
                    for sample in family.samples:
                        labels = {**sample.labels, "worker": index}
                        target.add_sample(sample.name, labels, sample.value)
        return [up, *merged.values()]


class MultiprocessMetrics:
    """The parent's side of `--workers N` (see the module's docstring)."""

    def __init__(self, config: BackendConfig) -> None:
        assert config.metrics_address is not None
        self.directory = tempfile.mkdtemp(prefix="parsec-metrics-")
        self._previous_env = os.environ.get(MULTIPROC_DIR_ENV)
        self._previous_value_class = values.ValueClass
        os.environ[MULTIPROC_DIR_ENV] = self.directory
        # prometheus_client picks where values live when it is imported: the metrics
        # created from now on (in the workers, after the fork) write to the directory.
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        self.workers = WorkersCollector(self.directory)
        registry = CollectorRegistry()
        registry.register(self.workers)  # first: removes the files of dead workers
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        ProcessCollector(registry=registry)
        host, port = config.metrics_address
        try:
            self.listener = MetricsListener(host, port, registry)
        except BaseException:
            self._restore()
            raise

    def serve(self, workers: Sequence[multiprocessing.process.BaseProcess]) -> None:
        """Start answering scrapes, once the workers are started."""
        self.workers.set_workers(workers)
        self.listener.start()
        logger.info("Serving metrics of the workers", url=self.listener.url, workers=len(workers))

    def close(self) -> None:
        self.listener.close()
        self._restore()

    def _restore(self) -> None:
        values.ValueClass = self._previous_value_class
        if self._previous_env is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
        else:
            os.environ[MULTIPROC_DIR_ENV] = self._previous_env
        shutil.rmtree(self.directory, ignore_errors=True)


def parent_metrics(config: BackendConfig) -> MultiprocessMetrics | None:
    """With `--metrics-address`, the metrics of the parent of `--workers N`: to create
    before the workers are forked, `serve(workers)` once they are, `close()` at exit."""
    if config.metrics_address is None:
        return None
    return MultiprocessMetrics(config)
