from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from parsec_server.backend.audit import STREAM_ONLY, AuditLog
from parsec_server.backend.blockstore.factory import blockstore_factory
from parsec_server.backend.config import BackendConfig
from parsec_server.backend.events import EventWaiters, MemoryEventBus
from parsec_server.backend.invite_email import InvitationMailer
from parsec_server.backend.metrics import NULL_METRICS, Metrics
from parsec_server.backend.storage.components import StorageComponents
from parsec_server.backend.storage.sqlite.apiv1_invite import SQLiteAPIV1InviteComponent
from parsec_server.backend.storage.sqlite.block import SQLiteBlockComponent
from parsec_server.backend.storage.sqlite.database import sqlite_database
from parsec_server.backend.storage.sqlite.invite import SQLiteInviteComponent
from parsec_server.backend.storage.sqlite.message import SQLiteMessageComponent
from parsec_server.backend.storage.sqlite.organization import SQLiteOrganizationComponent
from parsec_server.backend.storage.sqlite.readiness import SQLiteDatabaseProbe
from parsec_server.backend.storage.sqlite.realm import SQLiteRealmComponent
from parsec_server.backend.storage.sqlite.user import SQLiteUserComponent
from parsec_server.backend.storage.sqlite.vlob import SQLiteVlobComponent
from parsec_server.backend.webhooks import BootstrapWebhook


@contextlib.asynccontextmanager
async def sqlite_components(
    config: BackendConfig, metrics: Metrics = NULL_METRICS, audit: AuditLog = STREAM_ONLY
) -> AsyncIterator[StorageComponents]:
    """One process: its events stay in it (`MemoryEventBus`)."""
    path = config.sqlite_path
    assert path is not None
    async with (
        sqlite_database(path, config.sqlite_synchronous) as database,
        blockstore_factory(config.blockstore, None, metrics=metrics) as blockstore,
    ):
        event_bus = MemoryEventBus(metrics)
        webhook = BootstrapWebhook(
            config.organization_bootstrap_webhook, config.organization_bootstrap_webhook_timeout
        )
        organization = SQLiteOrganizationComponent(database, event_bus, webhook, audit)
        user = SQLiteUserComponent(database, event_bus, audit)
        yield StorageComponents(
            event_bus=event_bus,
            organization=organization,
            user=user,
            invite=SQLiteInviteComponent(
                database, organization, event_bus, InvitationMailer(config, metrics)
            ),
            apiv1_invite=SQLiteAPIV1InviteComponent(
                database, event_bus, EventWaiters(event_bus), user
            ),
            realm=SQLiteRealmComponent(database, event_bus),
            vlob=SQLiteVlobComponent(database, event_bus),
            block=SQLiteBlockComponent(database, blockstore),
            message=SQLiteMessageComponent(database),
            database=SQLiteDatabaseProbe(database),
            blockstore=blockstore,
        )
