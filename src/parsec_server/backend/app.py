"""The server's application object: configuration, storage components, event bus and
connections. Everything with a lifetime is owned here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from parsec_server.backend.apiv1_invite import BaseAPIV1InviteComponent
from parsec_server.backend.audit import STREAM_ONLY, AuditLog, open_audit_log
from parsec_server.backend.block import BaseBlockComponent
from parsec_server.backend.client_context import ClientContext, InvitedClientContext
from parsec_server.backend.config import BackendConfig
from parsec_server.backend.connections import ConnectionRegistry
from parsec_server.backend.events import EventBus
from parsec_server.backend.events_commands import EventsComponent
from parsec_server.backend.invite import BaseInviteComponent
from parsec_server.backend.message import BaseMessageComponent
from parsec_server.backend.metrics import NULL_METRICS, Metrics
from parsec_server.backend.organization import BaseOrganizationComponent
from parsec_server.backend.ping import PingComponent
from parsec_server.backend.readiness import Readiness
from parsec_server.backend.realm import BaseRealmComponent
from parsec_server.backend.storage.components import StorageComponents
from parsec_server.backend.user import BaseUserComponent
from parsec_server.backend.vlob import BaseVlobComponent


@dataclass
class BackendApp:
    config: BackendConfig
    event_bus: EventBus
    organization: BaseOrganizationComponent
    user: BaseUserComponent
    invite: BaseInviteComponent
    apiv1_invite: BaseAPIV1InviteComponent
    realm: BaseRealmComponent
    vlob: BaseVlobComponent
    block: BaseBlockComponent
    message: BaseMessageComponent
    ping: PingComponent
    events: EventsComponent
    connections: ConnectionRegistry
    # What is measured (docs/deployment.md, Monitoring); does nothing without monitoring.
    metrics: Metrics = NULL_METRICS
    # The checks of `GET /readyz` (database, event listener, blockstore).
    readiness: Readiness = field(default_factory=lambda: Readiness({}))
    # Where costly messages are checked, off the event loop (docs/frame-outcomes.md);
    # None: the event loop's default executor (apps not built by `backend_app_factory`).
    message_check_threads: Executor | None = None
    # Administration actions and security events (docs/audit-log.md); its file, if any, is
    # closed by `backend_app_factory`.
    audit: AuditLog = STREAM_ONLY

    def __post_init__(self) -> None:
        self.event_bus.connect(self.connections.dispatch)
        self.event_bus.connect_events_missed(self.connections.on_events_missed)

    async def on_client_connected(self, client: ClientContext) -> None:
        if isinstance(client, InvitedClientContext):
            await self.invite.on_claimer_connected(client)

    async def on_client_disconnected(self, client: ClientContext) -> None:
        if isinstance(client, InvitedClientContext):
            await self.invite.on_claimer_disconnected(client)


@contextlib.asynccontextmanager
async def backend_app_factory(
    config: BackendConfig, metrics: Metrics = NULL_METRICS
) -> AsyncIterator[BackendApp]:
    """Build the app on the configured storage; raises StartupError before yielding if
    the database cannot be used."""
    # Two threads: a hostile message keeps at most these busy, never the event loop.
    with (
        open_audit_log(config.audit_log) as audit,
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="message-check") as threads,
    ):
        if config.db_type == "MOCKED":
            from parsec_server.backend.storage.memory.factory import memory_components

            async with memory_components(config, metrics, audit) as components:
                yield _assemble(config, components, metrics, threads, audit)
        elif config.db_type == "SQLITE":
            from parsec_server.backend.storage.sqlite.factory import sqlite_components

            async with sqlite_components(config, metrics, audit) as components:
                yield _assemble(config, components, metrics, threads, audit)
        else:
            from parsec_server.backend.storage.postgresql.factory import postgresql_components

            async with postgresql_components(config, metrics, audit) as components:
                yield _assemble(config, components, metrics, threads, audit)


def _assemble(
    config: BackendConfig,
    components: StorageComponents,
    metrics: Metrics,
    message_check_threads: Executor,
    audit: AuditLog,
) -> BackendApp:
    connections = ConnectionRegistry()
    return BackendApp(
        config=config,
        message_check_threads=message_check_threads,
        event_bus=components.event_bus,
        organization=components.organization,
        user=components.user,
        invite=components.invite,
        apiv1_invite=components.apiv1_invite,
        realm=components.realm,
        vlob=components.vlob,
        block=components.block,
        message=components.message,
        ping=PingComponent(components.event_bus),
        events=EventsComponent(components.realm.realms_of_user, connections, metrics),
        connections=connections,
        metrics=metrics,
        audit=audit,
        readiness=Readiness(
            {
                "database": components.database,
                "events": components.event_bus,
                "blockstore": components.blockstore,
            }
        ),
    )
