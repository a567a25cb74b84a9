from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from parsec_server.backend.audit import STREAM_ONLY, AuditLog
from parsec_server.backend.blockstore.factory import blockstore_factory
from parsec_server.backend.config import BackendConfig
from parsec_server.backend.events import EventWaiters, MemoryEventBus
from parsec_server.backend.invite_email import InvitationMailer
from parsec_server.backend.metrics import NULL_METRICS, Metrics
from parsec_server.backend.readiness import AlwaysReady
from parsec_server.backend.storage.components import StorageComponents
from parsec_server.backend.storage.memory.apiv1_invite import MemoryAPIV1InviteComponent
from parsec_server.backend.storage.memory.block import MemoryBlockComponent
from parsec_server.backend.storage.memory.datamodel import MemoryDatamodel
from parsec_server.backend.storage.memory.invite import MemoryInviteComponent
from parsec_server.backend.storage.memory.message import MemoryMessageComponent
from parsec_server.backend.storage.memory.organization import MemoryOrganizationComponent
from parsec_server.backend.storage.memory.realm import MemoryRealmComponent
from parsec_server.backend.storage.memory.user import MemoryUserComponent
from parsec_server.backend.storage.memory.vlob import MemoryVlobComponent
from parsec_server.backend.webhooks import BootstrapWebhook


@contextlib.asynccontextmanager
async def memory_components(
    config: BackendConfig, metrics: Metrics = NULL_METRICS, audit: AuditLog = STREAM_ONLY
) -> AsyncIterator[StorageComponents]:
    data = MemoryDatamodel()
    event_bus = MemoryEventBus(metrics)
    webhook = BootstrapWebhook(
        config.organization_bootstrap_webhook, config.organization_bootstrap_webhook_timeout
    )
    organization = MemoryOrganizationComponent(data, event_bus, webhook, audit)
    user = MemoryUserComponent(data, event_bus, audit)
    async with blockstore_factory(config.blockstore, None, metrics=metrics) as blockstore:
        yield StorageComponents(
            event_bus=event_bus,
            organization=organization,
            user=user,
            invite=MemoryInviteComponent(
                data, organization, event_bus, InvitationMailer(config, metrics)
            ),
            apiv1_invite=MemoryAPIV1InviteComponent(data, event_bus, EventWaiters(event_bus), user),
            realm=MemoryRealmComponent(data, event_bus),
            vlob=MemoryVlobComponent(data, event_bus),
            block=MemoryBlockComponent(data, blockstore),
            message=MemoryMessageComponent(data),
            database=AlwaysReady(),
            blockstore=blockstore,
        )
