"""Prometheus metrics (`--metrics-address`, docs/deployment.md "Monitoring"): a server
with metrics is driven, its metrics listener scraped over HTTP and parsed with
prometheus_client's own parser, and the counters checked."""

from __future__ import annotations

import ast
import asyncio
import bisect
import contextlib
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import parsec_server
from parsec_server.api import codec
from parsec_server.api.codec import ID
from parsec_server.api.handshake import API_V1, HandshakeResult
from parsec_server.api.ids import InvitationType
from parsec_server.backend import client_events
from parsec_server.backend.asgi.commands import CommandTables
from parsec_server.backend.asgi.metrics import (
    COMMAND_BUCKETS,
    REPLY_STATUSES,
    PrometheusMetrics,
    add_to_histogram,
    status_label,
)
from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.blockstore.factory import blockstore_factory
from parsec_server.backend.blockstore.measured import MeasuredBlockStore
from parsec_server.backend.client_context import CLOSE_CONNECTION, CloseConnection
from parsec_server.backend.config import (
    MockedBlockstoreConfig,
    PostgreSQLBlockstoreConfig,
    RaidBlockstoreConfig,
    StartupError,
)
from parsec_server.backend.metrics import NULL_METRICS
from parsec_server.client.connection import BackendConnection, InvitedAuth
from parsec_server.client.realm import create_realm
from tests.backend.common import (
    administration_ws,
    anonymous_ws,
    assert_closed_without_reply,
    authenticated_ws,
    send_cmd,
)
from tests.backend.test_invite_email import Mailbox, smtp_config, smtp_server
from tests.fixtures import free_port
from tests.fixtures.raw import raw_connect, raw_handshake
from tests.fixtures.servers import (
    Organization,
    RunningServer,
    ServerFactory,
    create_org,
    make_config,
    running_server,
)

METRICS_ADDRESS = ("127.0.0.1", 0)  # a free port


# Scraping


@dataclass
class Scrape:
    """The samples of one scrape: (sample name, labels) -> value."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    types: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {}
        types = {}
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(samples, types)

    def get(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (0 if absent)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples having at least these labels."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == name and wanted <= sample_labels
        )

    def has(self, name: str) -> bool:
        return any(sample == name for sample, _ in self.samples)


def http_get(url: str) -> tuple[int, str, str]:
    """(status, content type, body)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read().decode()


def metrics_of(server: RunningServer) -> PrometheusMetrics:
    metrics = server.app.metrics
    assert isinstance(metrics, PrometheusMetrics)
    return metrics


def metrics_url(server: RunningServer, path: str = "/metrics") -> str:
    listener = metrics_of(server).listener
    assert listener is not None
    host, port = listener.address
    return f"http://{host}:{port}{path}"


async def scrape(server: RunningServer) -> Scrape:
    """What Prometheus would read now (the per-command counters flushed first, as the
    server does every second)."""
    metrics = metrics_of(server)
    metrics.flush()
    metrics.sample_pools()
    status, content_type, body = await asyncio.to_thread(http_get, metrics_url(server))
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    return Scrape.parse(body)


async def eventually(read: Callable[[], Awaitable[object]], expected: object) -> None:
    """Wait until `read()` gives `expected` (for what the server does in the background)."""
    async with asyncio.timeout(10):
        while await read() != expected:  # noqa: ASYNC110 (nothing to wait on but a scrape)
            await asyncio.sleep(0.02)


@pytest.fixture
async def mserver(server_factory: ServerFactory) -> AsyncIterator[RunningServer]:
    """A server with metrics, on memory and on PostgreSQL."""
    async with server_factory(metrics_address=METRICS_ADDRESS) as running:
        yield running


@pytest.fixture
async def morg(mserver: RunningServer) -> Organization:
    return await create_org(mserver)


@contextlib.asynccontextmanager
async def memory_mserver(**overrides: Any) -> AsyncIterator[RunningServer]:
    config = make_config(**{"metrics_address": METRICS_ADDRESS, **overrides})
    async with running_server(config) as server:
        yield server


# Commands


async def test_commands_are_counted_by_name_and_status(
    mserver: RunningServer, morg: Organization
) -> None:
    before = await scrape(mserver)
    async with await morg.alice.connect() as conn:
        for _ in range(3):
            assert (await conn.cmd("ping", ping="p"))["status"] == "ok"
        rep = await conn.cmd("realm_status", realm_id=ID.new())
        assert rep["status"] == "not_found"
    ws = await authenticated_ws(morg.alice)
    assert (await send_cmd(ws, "no_such_command"))["status"] == "unknown_command"
    assert (await send_cmd(ws, "ping"))["status"] == "bad_message"  # `ping` field missing
    await ws.close()
    after = await scrape(mserver)

    def delta(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    assert delta("parsec_commands_total", command="ping", status="ok") == 3
    assert delta("parsec_commands_total", command="realm_status", status="not_found") == 1
    assert delta("parsec_command_duration_seconds_count", command="ping") == 3
    assert delta("parsec_command_duration_seconds_bucket", command="ping", le="+Inf") == 3
    assert delta("parsec_command_duration_seconds_sum", command="ping") > 0
    assert after.types["parsec_command_duration_seconds"] == "histogram"
    assert delta("parsec_requests_refused_total", status="unknown_command") == 1
    assert delta("parsec_requests_refused_total", status="bad_message") == 1
    # No organization, user or device anywhere in the labels.
    for (_, labels), _value in after.samples.items():
        for _label, value in labels:
            assert morg.organization_id not in value
            assert "alice" not in value


async def test_waiting_commands_are_counted_without_latency(
    mserver: RunningServer, morg: Organization
) -> None:
    bob_ws = await authenticated_ws(morg.bob)
    assert await send_cmd(bob_ws, "events_subscribe") == {"status": "ok"}
    async with await morg.alice.connect() as conn:
        await conn.cmd("ping", ping="for bob")
    rep = await send_cmd(bob_ws, "events_listen")
    assert rep["event"] == "pinged"
    await bob_ws.close()
    after = await scrape(mserver)
    assert after.get("parsec_commands_total", command="events_listen", status="ok") == 1
    assert not after.total("parsec_command_duration_seconds_count", command="events_listen")


def test_every_reply_status_of_the_server_is_a_label() -> None:
    """REPLY_STATUSES holds every status a handler or the dispatcher writes (else a new
    status would be counted as `other`)."""
    found: set[str] = set()
    backend = Path(parsec_server.__file__).parent / "backend"
    # asgi/health.py's JSON documents have a `status` too, but are not replies.
    for path in [
        *(path for path in backend.rglob("*.py") if path.name != "health.py"),
        Path(parsec_server.__file__).parent / "api/protocol/base.py",
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "error"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(node.args[0].value)
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "status"
                        and isinstance(value, ast.Constant)
                    ):
                        found.add(value.value)
    assert {"ok", "not_found", "bad_message", "__close__"} <= found  # the scan works
    assert found - {"__close__"} <= REPLY_STATUSES, found - REPLY_STATUSES


def test_unexpected_statuses_are_bounded() -> None:
    assert status_label("not_found") == "not_found"
    assert status_label("something_new") == "other"
    assert status_label(None) == "other"
    assert status_label(CLOSE_CONNECTION["status"]) == "closed"


async def test_handler_failures_are_counted_as_exception_or_closed() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)

    async def weird(client: object, req: object) -> dict[str, Any]:
        return {"status": f"weird-{uuid.uuid4()}"}

    async def failing(client: object, req: object) -> dict[str, Any]:
        raise RuntimeError("bug")

    async def closing(client: object, req: object) -> dict[str, Any]:
        raise CloseConnection(1000)

    for name, handler, exc in [
        ("weird", weird, None),
        ("failing", failing, RuntimeError),
        ("closing", closing, CloseConnection),
    ]:
        measured = metrics.instrument_command(name, handler, waits=False)
        for _ in range(2):
            if exc is None:
                await measured(None, None)
            else:
                with pytest.raises(exc):
                    await measured(None, None)
    metrics.flush()

    def count(command: str, status: str) -> float | None:
        labels = {"command": command, "status": status}
        return registry.get_sample_value("parsec_commands_total", labels)

    assert count("weird", "other") == 2
    assert count("failing", "exception") == 2
    assert count("closing", "closed") == 2


def test_batched_latency_is_what_observe_gives() -> None:
    """`add_to_histogram` (the flush) exposes what `observe` would have."""
    durations = [0.00005, 0.0001, 0.0003, 0.0003, 0.002, 0.7, 11.0, 42.0]
    observed, batched = CollectorRegistry(), CollectorRegistry()
    by_observe = Histogram("h", "h", ["command"], registry=observed, buckets=COMMAND_BUCKETS)
    by_batch = Histogram("h", "h", ["command"], registry=batched, buckets=COMMAND_BUCKETS)
    counts = [0.0] * (len(COMMAND_BUCKETS) + 2)
    for seconds in durations:
        by_observe.labels("ping").observe(seconds)
        counts[bisect.bisect_left(COMMAND_BUCKETS, seconds)] += 1
        counts[-1] += seconds
    add_to_histogram(by_batch.labels("ping"), counts)
    assert generate_latest(batched) == generate_latest(observed)


# Handshakes and connections


async def test_handshakes_are_counted_by_result(mserver: RunningServer, morg: Organization) -> None:
    before = await scrape(mserver)
    ws = await authenticated_ws(morg.alice)
    await ws.close()
    refused = await raw_handshake(
        mserver.addr,
        {
            "handshake": "answer",
            "type": "ADMINISTRATION",
            "client_api_version": list(API_V1),
        },
    )
    assert refused["result"] == "bad_protocol"
    refused = await raw_handshake(
        mserver.addr,
        {
            "handshake": "answer",
            "type": "administration",
            "client_api_version": list(API_V1),
            "token": "wrong",
        },
    )
    assert refused["result"] == "bad_admin_token"
    refused = await raw_handshake(
        mserver.addr,
        {
            "handshake": "answer",
            "type": "anonymous",
            "client_api_version": list(API_V1),
            "organization_id": "NoSuchOrganization",
        },
    )
    assert refused["result"] == "bad_identity"
    after = await scrape(mserver)

    def delta(result: str) -> float:
        return after.get("parsec_handshakes_total", result=result) - before.get(
            "parsec_handshakes_total", result=result
        )

    assert (delta("ok"), delta("bad_protocol"), delta("bad_admin_token")) == (1, 1, 1)
    assert delta("bad_identity") == 1
    # Every result has its series from the start.
    for result in [*HandshakeResult, "timeout"]:
        assert ("parsec_handshakes_total", frozenset({("result", str(result))})) in after.samples


async def test_handshake_timeout_is_counted() -> None:
    async with memory_mserver(handshake_timeout=0.2) as server:
        ws = await raw_connect(server.addr)
        await ws.recv()  # the challenge, never answered
        assert await assert_closed_without_reply(ws) == 1008
        after = await scrape(server)
        assert after.get("parsec_handshakes_total", result="timeout") == 1


async def test_open_connections_are_counted_by_handshake_type_and_api_version(
    mserver: RunningServer, morg: Organization
) -> None:
    def connections(scrape: Scrape) -> dict[tuple[str, str], float]:
        return {
            (dict(labels)["handshake"], dict(labels)["api_version"]): value
            for (name, labels), value in scrape.samples.items()
            if name == "parsec_connections_open"
        }

    async def open_connections() -> dict[tuple[str, str], float]:
        return {k: v for k, v in connections(await scrape(mserver)).items() if v}

    async def wait_for(expected: dict[tuple[str, str], float]) -> None:
        await eventually(open_connections, expected)

    await wait_for({})  # the organization's creation is over
    async with await morg.alice.connect() as alice:
        rep = await alice.cmd("invite_new", type="DEVICE", send_email=False)
        auth = InvitedAuth(morg.organization_id, InvitationType.DEVICE, rep["token"])
        opened = [
            await authenticated_ws(morg.alice),
            await authenticated_ws(morg.bob),
            await authenticated_ws(morg.bob, API_V1),
            await anonymous_ws(mserver.addr, morg.organization_id),
            await administration_ws(mserver.addr),
        ]
        async with await BackendConnection.connect(mserver.addr, auth):
            pending = await raw_connect(mserver.addr)
            await pending.recv()  # the challenge: its handshake is not done
            await wait_for(
                {
                    ("authenticated", "2"): 3,  # `alice` above included
                    ("authenticated", "1"): 1,
                    ("anonymous", "1"): 1,
                    ("administration", "1"): 1,
                    ("invited", "2"): 1,
                    ("pending", "none"): 1,
                }
            )
            await pending.close()
        for ws in opened:
            await ws.close()
    await wait_for({})


# Events


async def test_events_sent_and_delivered_are_counted(
    mserver: RunningServer, morg: Organization
) -> None:
    before = await scrape(mserver)
    bob_ws = await authenticated_ws(morg.bob)
    assert await send_cmd(bob_ws, "events_subscribe") == {"status": "ok"}
    async with await morg.alice.connect() as conn:
        await conn.cmd("ping", ping="one")
        await conn.cmd("ping", ping="two")
    for ping in ("one", "two"):
        assert await send_cmd(bob_ws, "events_listen") == {
            "status": "ok",
            "event": "pinged",
            "ping": ping,
        }
    await bob_ws.close()
    after = await scrape(mserver)

    def delta(name: str, event: str) -> float:
        return after.get(name, event=event) - before.get(name, event=event)

    assert delta("parsec_events_sent_total", "pinged") == 2
    assert delta("parsec_events_delivered_total", "pinged") == 2
    # Every event type has its series from the start.
    assert ("parsec_events_sent_total", frozenset({("event", "realm.vlobs_updated")})) in (
        after.samples
    )


async def test_connections_closed_because_of_events_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_events, "MAX_PENDING_EVENTS", 2)
    async with memory_mserver() as server:
        org = await create_org(server)
        slow = await authenticated_ws(org.bob)
        assert await send_cmd(slow, "events_subscribe") == {"status": "ok"}
        async with await org.alice.connect() as conn:
            for i in range(3):
                await conn.cmd("ping", ping=str(i))
        assert await assert_closed_without_reply(slow) == 1013

        missing = await authenticated_ws(org.bob)
        assert await send_cmd(missing, "events_subscribe") == {"status": "ok"}
        server.app.event_bus.notify_events_missed("test")
        assert await assert_closed_without_reply(missing) == 1012

        after = await scrape(server)
        closed = "parsec_events_closed_connections_total"
        assert after.get(closed, reason="slow_consumer") == 1
        assert after.get(closed, reason="events_missed") == 1


# Storage and outside services


async def test_blockstore_calls_are_counted_by_backend_and_result(db_url: str) -> None:
    on_postgresql = db_url.startswith("postgresql")
    blockstore = PostgreSQLBlockstoreConfig() if on_postgresql else MockedBlockstoreConfig()
    backend = "postgresql" if on_postgresql else "memory"
    config = make_config(db_url, metrics_address=METRICS_ADDRESS, blockstore=blockstore)
    async with running_server(config) as server:
        org = await create_org(server)
        block_id = ID.new()
        async with await org.alice.connect() as conn:
            realm_id = await create_realm(conn, org.alice)
            rep = await conn.cmd("block_create", block_id=block_id, realm_id=realm_id, block=b"x")
            assert rep == {"status": "ok"}
            assert (await conn.cmd("block_read", block_id=block_id))["status"] == "ok"
        after = await scrape(server)
    calls = "parsec_blockstore_calls_total"
    assert after.get(calls, backend=backend, operation="create", result="ok") == 1
    assert after.get(calls, backend=backend, operation="read", result="ok") == 1
    duration = "parsec_blockstore_call_duration_seconds_count"
    assert after.get(duration, backend=backend, operation="create") == 1


class _FailingStore(BlockStore):
    async def create(self, organization_id: str, block_id: uuid.UUID, data: bytes) -> None:
        raise OSError("disk on fire")

    async def read(self, organization_id: str, block_id: uuid.UUID) -> BlockStoreBadOutcome:
        return BlockStoreBadOutcome.NOT_FOUND

    async def delete(
        self, organization_id: str, block_id: uuid.UUID
    ) -> BlockStoreBadOutcome | None:
        return BlockStoreBadOutcome.UNAVAILABLE


async def test_blockstore_results_and_raid_levels() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    store = MeasuredBlockStore(_FailingStore(), "s3", metrics)
    with pytest.raises(OSError, match="fire"):
        await store.create("Org", uuid.uuid4(), b"")
    assert await store.read("Org", uuid.uuid4()) is BlockStoreBadOutcome.NOT_FOUND
    assert await store.delete("Org", uuid.uuid4()) is BlockStoreBadOutcome.UNAVAILABLE
    raid = RaidBlockstoreConfig("RAID1", (MockedBlockstoreConfig(), MockedBlockstoreConfig()))
    async with blockstore_factory(raid, None, metrics=metrics) as raid_store:
        assert await raid_store.create("Org", uuid.uuid4(), b"data") is None

    def calls(backend: str, operation: str, result: str) -> float | None:
        labels = {"backend": backend, "operation": operation, "result": result}
        return registry.get_sample_value("parsec_blockstore_calls_total", labels)

    assert calls("s3", "create", "error") == 1
    assert calls("s3", "read", "not_found") == 1
    assert calls("s3", "delete", "unavailable") == 1
    assert calls("raid1", "create", "ok") == 1
    assert calls("memory", "create", "ok") == 2  # one per RAID node


async def test_blockstore_is_not_wrapped_without_metrics() -> None:
    async with blockstore_factory(MockedBlockstoreConfig(), None) as store:
        assert not isinstance(store, MeasuredBlockStore)


async def test_invitation_emails_are_counted_by_result() -> None:
    async def invite_by_email(server: RunningServer) -> None:
        org = await create_org(server)
        async with await org.alice.connect() as conn:
            rep = await conn.cmd(
                "invite_new", type="USER", claimer_email="zack@example.com", send_email=True
            )
            assert rep["status"] == "ok"

    mailbox = Mailbox()
    async with (
        smtp_server(mailbox) as smtp_port,
        memory_mserver(email=smtp_config(smtp_port)) as server,
    ):
        await invite_by_email(server)
        assert len(mailbox.mails) == 1
        sent = await scrape(server)
    async with memory_mserver(email=smtp_config(free_port())) as server:
        await invite_by_email(server)
        failed = await scrape(server)
    async with memory_mserver() as server:  # MOCKED
        await invite_by_email(server)
        mocked = await scrape(server)
    emails = "parsec_invitation_emails_total"
    assert [sent.get(emails, result=r) for r in ("sent", "failed", "mocked")] == [1, 0, 0]
    assert [failed.get(emails, result=r) for r in ("sent", "failed", "mocked")] == [0, 1, 0]
    assert [mocked.get(emails, result=r) for r in ("sent", "failed", "mocked")] == [0, 0, 1]


async def test_postgresql_pool_is_shown(migrated_postgresql_url: str) -> None:
    config = make_config(
        migrated_postgresql_url, metrics_address=METRICS_ADDRESS, db_max_connections=4
    )
    async with running_server(config) as server:
        await create_org(server)
        after = await scrape(server)
        assert after.get("parsec_postgresql_pool_max_connections") == 4
        in_use = after.get("parsec_postgresql_pool_connections", state="in_use")
        idle = after.get("parsec_postgresql_pool_connections", state="idle")
        assert in_use == 0  # nothing is running now
        assert 1 <= in_use + idle <= 4
        assert after.get("parsec_postgresql_pool_waiting") == 0
        # Busy: one connection held, and a query waiting for the only other one.
        pool = server.app.user._pool  # type: ignore[attr-defined]
        async with pool.acquire(), pool.acquire(), pool.acquire(), pool.acquire():
            waiting = asyncio.ensure_future(pool.fetchval("SELECT 1"))
            await asyncio.sleep(0.05)
            busy = await scrape(server)
            assert busy.get("parsec_postgresql_pool_connections", state="in_use") == 4
            assert busy.get("parsec_postgresql_pool_waiting") == 1
        assert await waiting == 1


async def test_memory_server_has_no_pool_figures() -> None:
    async with memory_mserver() as server:
        after = await scrape(server)
        assert after.get("parsec_postgresql_pool_max_connections") == 0


async def test_invitation_steps_waiting_for_the_peer_are_shown() -> None:
    async with memory_mserver() as server:
        org = await create_org(server)
        async with await org.alice.connect() as alice:
            rep = await alice.cmd(
                "invite_new", type="USER", claimer_email="zack@example.com", send_email=False
            )
        greeter = await authenticated_ws(org.alice)
        await greeter.send(
            codec.encode(
                {
                    "cmd": "invite_1_greeter_wait_peer",
                    "token": rep["token"],
                    "greeter_public_key": b"G" * 32,
                }
            )
        )

        async def waiting(role: str) -> float:
            return (await scrape(server)).get("parsec_invitation_waiting", role=role)

        await eventually(lambda: waiting("greeter"), 1)
        assert await waiting("claimer") == 0
        await greeter.close()  # abandons the wait
        await eventually(lambda: waiting("greeter"), 0)


# The listener


async def test_public_port_does_not_serve_the_metrics(mserver: RunningServer) -> None:
    url = f"http://127.0.0.1:{mserver.addr.port}/metrics"
    status, _, body = await asyncio.to_thread(http_get, url)
    assert status == 404
    assert "parsec_" not in body


async def test_metrics_listener_serves_only_the_metrics_path() -> None:
    async with memory_mserver() as server:
        status, _, body = await asyncio.to_thread(http_get, metrics_url(server, "/"))
        assert status == 404
        status, _, body = await asyncio.to_thread(http_get, metrics_url(server))
        assert status == 200
        assert "parsec_commands_total" in body or "parsec_handshakes_total" in body
        assert "process_cpu_seconds_total" in body  # the process's own figures


async def test_metrics_listener_stops_with_the_server() -> None:
    async with memory_mserver() as server:
        url = metrics_url(server)
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(urllib.request.urlopen, url, timeout=2)


async def test_metrics_address_in_use_fails_at_start_up() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StartupError, match="metrics address"):
            async with memory_mserver(metrics_address=("127.0.0.1", port)):
                pass


async def test_without_metrics_address_nothing_is_measured(server: RunningServer) -> None:
    assert server.app.metrics is NULL_METRICS
    tables = CommandTables(server.app)
    table = tables.tables["administration"]
    assert table._by_name["ping"].handler == server.app.ping.api_ping  # not wrapped


async def test_with_metrics_address_commands_are_wrapped() -> None:
    async with memory_mserver() as server:
        tables = CommandTables(server.app)
        assert tables.tables["administration"]._by_name["ping"].handler != (
            server.app.ping.api_ping
        )
        # The command lists walked by the field-limits tests keep the original handlers.
        assert tables.commands["administration"][0].handler == server.app.ping.api_ping
