"""What a storage implementation provides to the app."""

from __future__ import annotations

from dataclasses import dataclass, field

from parsec_server.backend.apiv1_invite import BaseAPIV1InviteComponent
from parsec_server.backend.block import BaseBlockComponent
from parsec_server.backend.events import EventBus
from parsec_server.backend.invite import BaseInviteComponent
from parsec_server.backend.message import BaseMessageComponent
from parsec_server.backend.organization import BaseOrganizationComponent
from parsec_server.backend.readiness import AlwaysReady, ReadinessProbe
from parsec_server.backend.realm import BaseRealmComponent
from parsec_server.backend.user import BaseUserComponent
from parsec_server.backend.vlob import BaseVlobComponent


@dataclass(frozen=True, slots=True)
class StorageComponents:
    event_bus: EventBus
    organization: BaseOrganizationComponent
    user: BaseUserComponent
    invite: BaseInviteComponent
    apiv1_invite: BaseAPIV1InviteComponent
    realm: BaseRealmComponent
    vlob: BaseVlobComponent
    block: BaseBlockComponent
    message: BaseMessageComponent
    # Readiness probes (`GET /readyz`); the event bus is the third one.
    database: ReadinessProbe = field(default_factory=AlwaysReady)
    blockstore: ReadinessProbe = field(default_factory=AlwaysReady)
