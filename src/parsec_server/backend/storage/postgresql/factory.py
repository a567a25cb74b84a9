from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial

from parsec_server.backend.audit import STREAM_ONLY, AuditLog
from parsec_server.backend.blockstore.factory import blockstore_factory
from parsec_server.backend.config import BackendConfig
from parsec_server.backend.events import EventWaiters
from parsec_server.backend.invite_email import InvitationMailer
from parsec_server.backend.metrics import NULL_METRICS, Metrics
from parsec_server.backend.storage.components import StorageComponents
from parsec_server.backend.storage.postgresql.apiv1_invite import PGAPIV1InviteComponent
from parsec_server.backend.storage.postgresql.block import PGBlockComponent
from parsec_server.backend.storage.postgresql.event_bus import postgresql_event_bus
from parsec_server.backend.storage.postgresql.invite import PGInviteComponent
from parsec_server.backend.storage.postgresql.message import PGMessageComponent
from parsec_server.backend.storage.postgresql.organization import PGOrganizationComponent
from parsec_server.backend.storage.postgresql.pool import pool_stats, postgresql_pool
from parsec_server.backend.storage.postgresql.readiness import PostgreSQLDatabaseProbe
from parsec_server.backend.storage.postgresql.realm import PGRealmComponent
from parsec_server.backend.storage.postgresql.user import PGUserComponent
from parsec_server.backend.storage.postgresql.vlob import PGVlobComponent
from parsec_server.backend.webhooks import BootstrapWebhook


@contextlib.asynccontextmanager
async def postgresql_components(
    config: BackendConfig, metrics: Metrics = NULL_METRICS, audit: AuditLog = STREAM_ONLY
) -> AsyncIterator[StorageComponents]:
    async with (
        postgresql_pool(config) as pool,
        postgresql_event_bus(config, pool, metrics) as event_bus,
        blockstore_factory(config.blockstore, pool, metrics=metrics) as blockstore,
    ):
        webhook = BootstrapWebhook(
            config.organization_bootstrap_webhook, config.organization_bootstrap_webhook_timeout
        )
        organization = PGOrganizationComponent(pool, event_bus, webhook, audit)
        user = PGUserComponent(pool, event_bus, audit)
        components = StorageComponents(
            event_bus=event_bus,
            organization=organization,
            user=user,
            invite=PGInviteComponent(
                pool, organization, event_bus, InvitationMailer(config, metrics)
            ),
            apiv1_invite=PGAPIV1InviteComponent(pool, event_bus, EventWaiters(event_bus), user),
            realm=PGRealmComponent(pool, event_bus),
            vlob=PGVlobComponent(pool, event_bus),
            block=PGBlockComponent(pool, blockstore),
            message=PGMessageComponent(pool),
            database=PostgreSQLDatabaseProbe(pool),
            blockstore=blockstore,
        )
        with metrics.watching_pool(partial(pool_stats, pool)):
            yield components
