"""Prometheus metrics: the `Metrics` implementation used with `--metrics-address`.

The metrics are listed in docs/deployment.md (Monitoring). Where they are exposed
(`metrics_server.py`): by this process itself when it is the only one; with `--workers N`
by the parent process, which reads what the workers write to a shared directory
(prometheus_client's multiprocess mode).

The per-command measurement is on the hot path, so it only touches plain Python
counters (a dict increment, a list increment): a prometheus_client counter increment
takes a lock (and in multiprocess mode writes to a memory-mapped file), several times
what the rest of the measurement costs. The counters are moved into the Prometheus
metrics every `FLUSH_INTERVAL` seconds by a task of the event loop (so a scrape may be
that much late), and once more when the server stops. Everything else (connections,
handshakes, events sent, blockstore calls, e-mails) is rare enough to update the
Prometheus metrics directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, get_args

import prometheus_client
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.process_collector import ProcessCollector

from parsec_server.api.handshake import HandshakeResult
from parsec_server.backend.client_context import (
    CLOSE_EVENTS_MISSED,
    CLOSE_EVENTS_OVERFLOW,
    AdministrationClientContext,
    AnonymousClientContext,
    AuthenticatedClientContext,
    ClientContext,
    CloseConnection,
    InvitedClientContext,
)
from parsec_server.backend.config import BackendConfig
from parsec_server.backend.events import AnyEvent, Event
from parsec_server.backend.metrics import (
    HANDSHAKE_TIMEOUT,
    NULL_METRICS,
    BlockstoreOperation,
    BlockstoreResult,
    CommandHandler,
    EmailResult,
    Metrics,
    PoolStats,
)

if TYPE_CHECKING:
    from parsec_server.backend.asgi.metrics_server import MetricsListener

logger = structlog.get_logger("parsec.metrics")

# Seconds between two moves of the per-command counters into the Prometheus metrics (and
# two readings of the database pool).
FLUSH_INTERVAL = 1.0

# Our commands take from tens of microseconds (memory) to a few milliseconds (PostgreSQL).
COMMAND_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
BLOCKSTORE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

# Every reply status a command handler or the dispatcher produces (kept complete by
# tests/backend/test_metrics.py, which reads the sources). Anything else is counted as
# `other`; `exception`: the handler raised (the connection is closed with 1011);
# `closed`: the handler closed the connection instead of replying.
REPLY_STATUSES = frozenset(
    {
        "ok", "active_users_limit_reached", "already_bootstrapped", "already_deleted",
        "already_exists", "already_granted", "already_revoked", "bad_encryption_revision",
        "bad_message", "bad_timestamp",
        "bad_user_id", "bad_version", "denied", "in_maintenance", "incompatible_profile",
        "invalid_certification", "invalid_data", "invalid_msg_format", "invalid_state",
        "maintenance_error", "no_events", "not_allowed", "not_available", "not_found",
        "not_in_maintenance", "participants_mismatch", "timeout", "unknown_command",
    }
)  # fmt: skip
STATUS_EXCEPTION = "exception"
STATUS_CLOSED = "closed"
STATUS_OTHER = "other"
_CLOSE_STATUS = "__close__"  # CLOSE_CONNECTION

# (handshake, api_version) of the open connections; `pending`: handshake not done yet.
CONNECTION_KINDS = (
    ("pending", "none"),
    ("authenticated", "2"),
    ("authenticated", "1"),
    ("invited", "2"),
    ("anonymous", "1"),
    ("administration", "1"),
)
HANDSHAKE_RESULTS = (*(result.value for result in HandshakeResult), HANDSHAKE_TIMEOUT)
EVENT_NAMES = tuple(str(event.__struct_config__.tag) for event in get_args(AnyEvent))
EMAIL_RESULTS: tuple[EmailResult, ...] = ("sent", "failed", "mocked")
EVENTS_CLOSE_REASONS = {
    CLOSE_EVENTS_OVERFLOW: "slow_consumer",
    CLOSE_EVENTS_MISSED: "events_missed",
}
# API 1 invitation commands waiting for the peer (the API 2 ones say it in their names).
_APIV1_RENDEZVOUS = {
    "user_invite": "greeter",
    "device_invite": "greeter",
    "user_claim": "claimer",
    "device_claim": "claimer",
}


_STATUS_LABELS = REPLY_STATUSES | {STATUS_EXCEPTION, STATUS_CLOSED}


def status_label(status: object) -> str:
    if isinstance(status, str):
        if status in _STATUS_LABELS:
            return status
        if status == _CLOSE_STATUS:
            return STATUS_CLOSED
    return STATUS_OTHER


def rendezvous_role(command_name: str) -> str | None:
    """`greeter` or `claimer` for a command waiting for the other side of an invitation."""
    if command_name.startswith("invite_"):
        if "_greeter_" in command_name:
            return "greeter"
        if "_claimer_" in command_name:
            return "claimer"
    return _APIV1_RENDEZVOUS.get(command_name)


def connection_kind(client: ClientContext | None) -> tuple[str, str]:
    match client:
        case AuthenticatedClientContext():
            return ("authenticated", "2" if client.api_major == 2 else "1")
        case InvitedClientContext():
            return ("invited", "2")
        case AnonymousClientContext():
            return ("anonymous", "1")
        case AdministrationClientContext():
            return ("administration", "1")
    return ("pending", "none")


def add_to_histogram(child: Histogram, bucket_counts: list[float]) -> None:
    """Add to a histogram's child what many `observe` calls would have added:
    `bucket_counts[i]` observations in bucket i (the `+Inf` one last), then their sum.
    prometheus_client has no such call: this uses the child's own per-bucket counters
    (`_buckets`, not cumulative) and `_sum`, which `observe` increments (checked against
    `observe` by tests/backend/test_metrics.py)."""
    buckets = child._buckets
    assert len(buckets) == len(bucket_counts) - 1
    for value, count in zip(buckets, bucket_counts, strict=False):
        if count:
            value.inc(count)
    child._sum.inc(bucket_counts[-1])


class _CommandStats:
    """A command's counts since the last flush: replies by status, and (commands that do
    not wait) observations per latency bucket then their sum."""

    __slots__ = ("counters", "counts", "histogram", "latency", "name")

    def __init__(self, name: str, measure_latency: bool) -> None:
        self.name = name
        self.counts: dict[object, int] = {}
        self.latency: list[float] | None = (
            [0.0] * (len(COMMAND_BUCKETS) + 2) if measure_latency else None
        )
        # The label children they go to, bound at their first flush.
        self.counters: dict[object, Counter] = {}
        self.histogram: Histogram | None = None


class PrometheusMetrics:
    """The metrics of one server process. `registry`: where they are exposed (single
    process); None in a worker of `--workers N` (its values go to the multiprocess
    directory, read by the parent)."""

    enabled = True

    def __init__(self, registry: CollectorRegistry | None) -> None:
        # The `_created` series double the output for nothing a dashboard uses (and the
        # multiprocess mode has none): off, so both modes expose the same series.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        r = registry
        self._connections = Gauge(
            "parsec_connections_open",
            "Open websocket connections, by handshake type (pending: handshake not done "
            "yet) and API version",
            ["handshake", "api_version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._connection_children = {
            kind: self._connections.labels(*kind) for kind in CONNECTION_KINDS
        }
        handshakes = Counter("parsec_handshakes", "Handshakes, by result", ["result"], registry=r)
        self._handshakes = {result: handshakes.labels(result) for result in HANDSHAKE_RESULTS}
        self._commands = Counter(
            "parsec_commands",
            "Commands answered (or failed), by command and reply status",
            ["command", "status"],
            registry=r,
        )
        self._command_duration = Histogram(
            "parsec_command_duration_seconds",
            "Time to process a command, by command (not for the commands that wait: "
            "events_listen and the invitation steps)",
            ["command"],
            registry=r,
            buckets=COMMAND_BUCKETS,
        )
        # By (command name, whether it waits): a name is shared by the tables of the
        # handshake types (and API versions) that have it.
        self._command_stats: dict[tuple[str, bool], _CommandStats] = {}
        self._refused_counts: dict[object, int] = {}
        self._refused = Counter(
            "parsec_requests_refused",
            "Requests answered without reaching a command (unknown command, invalid "
            "message, profile not allowed...), by reply status",
            ["status"],
            registry=r,
        )
        self._rendezvous = Gauge(
            "parsec_invitation_waiting",
            "Invitation steps waiting for the other side, by role",
            ["role"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._rendezvous_children = {
            role: self._rendezvous.labels(role) for role in ("greeter", "claimer")
        }
        events_sent = Counter(
            "parsec_events_sent", "Events published by this server, by type", ["event"], registry=r
        )
        self._events_sent = {name: events_sent.labels(name) for name in EVENT_NAMES}
        self._events_delivered = Counter(
            "parsec_events_delivered",
            "Events handed to clients (events_listen replies), by type",
            ["event"],
            registry=r,
        )
        self._delivered_counts: dict[str, int] = {}
        events_closed = Counter(
            "parsec_events_closed_connections",
            "Connections closed because they could miss events: slow_consumer (1013, "
            "queue full), events_missed (1012, the event listener was lost)",
            ["reason"],
            registry=r,
        )
        self._events_closed = {
            code: events_closed.labels(reason) for code, reason in EVENTS_CLOSE_REASONS.items()
        }
        self._blockstore_calls = Counter(
            "parsec_blockstore_calls",
            "Block store calls, by store, operation and result",
            ["backend", "operation", "result"],
            registry=r,
        )
        self._blockstore_duration = Histogram(
            "parsec_blockstore_call_duration_seconds",
            "Time of the block store calls, by store and operation",
            ["backend", "operation"],
            registry=r,
            buckets=BLOCKSTORE_BUCKETS,
        )
        emails = Counter(
            "parsec_invitation_emails", "Invitation e-mails, by result", ["result"], registry=r
        )
        self._emails = {result: emails.labels(result) for result in EMAIL_RESULTS}
        pool_connections = Gauge(
            "parsec_postgresql_pool_connections",
            "Connections of the PostgreSQL pools, by state (in_use, idle)",
            ["state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._pool_in_use = pool_connections.labels("in_use")
        self._pool_idle = pool_connections.labels("idle")
        self._pool_waiting = Gauge(
            "parsec_postgresql_pool_waiting",
            "Queries and transactions waiting for a connection of the PostgreSQL pools",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._pool_max = Gauge(
            "parsec_postgresql_pool_max_connections",
            "Connections the PostgreSQL pools may open (--db-max-connections per process)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._pools: list[Callable[[], PoolStats]] = []
        # Where they are served, when this process serves them (see `running_metrics`).
        self.listener: MetricsListener | None = None

    # Connections and handshakes.

    def connection_opened(self) -> None:
        self._connection_children[CONNECTION_KINDS[0]].inc()

    def connection_identified(self, client: ClientContext) -> None:
        self._connection_children[CONNECTION_KINDS[0]].dec()
        self._connection_children[connection_kind(client)].inc()

    def connection_closed(self, client: ClientContext | None) -> None:
        self._connection_children[connection_kind(client)].dec()

    def connection_closed_by_server(self, code: int) -> None:
        child = self._events_closed.get(code)
        if child is not None:
            child.inc()

    def handshake_done(self, result: str) -> None:
        child = self._handshakes.get(result)
        if child is not None:
            child.inc()

    # Commands.

    def instrument_command(
        self, name: str, handler: CommandHandler, *, waits: bool
    ) -> CommandHandler:
        stats = self._command_stats.get((name, waits))
        if stats is None:
            stats = _CommandStats(name, measure_latency=not waits)
            self._command_stats[(name, waits)] = stats
        counts = stats.counts
        latency = stats.latency
        if latency is None:
            role = rendezvous_role(name)
            waiting = self._rendezvous_children[role] if role is not None else None
            return _measured_waiting(handler, counts, waiting)
        return _measured(handler, counts, latency)

    def request_refused(self, status: str) -> None:
        counts = self._refused_counts
        counts[status] = counts.get(status, 0) + 1

    # Events.

    def event_sent(self, event: Event) -> None:
        child = self._events_sent.get(event.__struct_config__.tag)  # type: ignore[arg-type]
        if child is not None:
            child.inc()

    def event_delivered(self, event_name: str) -> None:
        counts = self._delivered_counts
        counts[event_name] = counts.get(event_name, 0) + 1

    # Storage and outside services.

    def blockstore_call(
        self,
        backend: str,
        operation: BlockstoreOperation,
        result: BlockstoreResult,
        seconds: float,
    ) -> None:
        self._blockstore_calls.labels(backend, operation, result).inc()
        self._blockstore_duration.labels(backend, operation).observe(seconds)

    def email_sent(self, result: EmailResult) -> None:
        self._emails[result].inc()

    @contextlib.contextmanager
    def watching_pool(self, stats: Callable[[], PoolStats]) -> Iterator[None]:
        self._pools.append(stats)
        self.sample_pools()
        try:
            yield
        finally:
            self._pools.remove(stats)
            self.sample_pools()

    # Moving the counters into the Prometheus metrics (in the event loop's thread).

    def sample_pools(self) -> None:
        samples = [stats() for stats in self._pools]
        self._pool_in_use.set(sum(s.in_use for s in samples))
        self._pool_idle.set(sum(s.idle for s in samples))
        self._pool_waiting.set(sum(s.waiting for s in samples))
        self._pool_max.set(sum(s.max_size for s in samples))

    def flush(self) -> None:
        for stats in self._command_stats.values():
            if stats.counts:
                counters = stats.counters
                for status, count in stats.counts.items():
                    counter = counters.get(status)
                    if counter is None:
                        label = status_label(status)
                        counter = counters[status] = self._commands.labels(stats.name, label)
                    counter.inc(count)
                stats.counts.clear()
            latency = stats.latency
            if latency is not None and any(latency[:-1]):
                if stats.histogram is None:
                    stats.histogram = self._command_duration.labels(stats.name)
                add_to_histogram(stats.histogram, latency)
                latency[:] = [0.0] * len(latency)  # in place: the handlers hold this list
        if self._refused_counts:
            for status, count in self._refused_counts.items():
                self._refused.labels(status_label(status)).inc(count)
            self._refused_counts.clear()
        if self._delivered_counts:
            for event_name, count in self._delivered_counts.items():
                label = event_name if event_name in EVENT_NAMES else STATUS_OTHER
                self._events_delivered.labels(label).inc(count)
            self._delivered_counts.clear()

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                self.flush()
                self.sample_pools()
            except Exception:  # a bug: the metrics go on, the server is not concerned
                logger.exception("metrics update failed")


def _measured(
    handler: CommandHandler, counts: dict[object, int], latency: list[float]
) -> CommandHandler:
    perf_counter = time.perf_counter
    bounds = COMMAND_BUCKETS

    async def measured(client: Any, req: Any) -> dict[str, Any]:
        started = perf_counter()
        try:
            rep = await handler(client, req)
        except Exception as exc:
            failure = STATUS_CLOSED if isinstance(exc, CloseConnection) else STATUS_EXCEPTION
            counts[failure] = counts.get(failure, 0) + 1
            raise
        elapsed = perf_counter() - started
        latency[bisect_left(bounds, elapsed)] += 1
        latency[-1] += elapsed
        status = rep.get("status")
        counts[status] = counts.get(status, 0) + 1
        return rep

    return measured


def _measured_waiting(
    handler: CommandHandler, counts: dict[object, int], waiting: Gauge | None
) -> CommandHandler:
    """A command that waits (events, the other side of an invitation): counted when it
    replies (not when abandoned), and shown as waiting meanwhile."""

    async def measured(client: Any, req: Any) -> dict[str, Any]:
        if waiting is not None:
            waiting.inc()
        try:
            rep = await handler(client, req)
        except Exception as exc:
            failure = STATUS_CLOSED if isinstance(exc, CloseConnection) else STATUS_EXCEPTION
            counts[failure] = counts.get(failure, 0) + 1
            raise
        finally:
            if waiting is not None:
                waiting.dec()
        status = rep.get("status")
        counts[status] = counts.get(status, 0) + 1
        return rep

    return measured


@contextlib.asynccontextmanager
async def running_metrics(config: BackendConfig) -> AsyncIterator[Metrics]:
    """The metrics of this server process, for the duration of the block: NULL_METRICS
    without `--metrics-address`; else exposed on that address by this process when it is
    the only one, or recorded for the parent to expose (a worker of `--workers N`)."""
    if config.metrics_address is None:
        yield NULL_METRICS
        return
    from parsec_server.backend.asgi.metrics_server import MULTIPROC_DIR_ENV, MetricsListener

    listener: MetricsListener | None = None
    if config.workers > 1:
        if not os.environ.get(MULTIPROC_DIR_ENV):
            raise RuntimeError("a worker's metrics need the parent's multiprocess directory")
        metrics = PrometheusMetrics(registry=None)
    else:
        if os.environ.get(MULTIPROC_DIR_ENV):
            # Set by whoever started us: one process keeps its values in its own memory.
            values.ValueClass = values.MutexValue
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        metrics = PrometheusMetrics(registry)
        host, port = config.metrics_address
        listener = MetricsListener(host, port, registry)
        listener.start()
        logger.info("Serving metrics", url=listener.url)
    flusher = asyncio.create_task(metrics.flush_forever())
    try:
        metrics.listener = listener
        yield metrics
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        metrics.flush()
        if listener is not None:
            await asyncio.to_thread(listener.close)
