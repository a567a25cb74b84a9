"""The server's application object: configuration, storage components, event bus,
connections and the command tables. Everything with a lifetime is owned here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from parsec_server.api.protocol import apiv1_invite as apiv1_proto
from parsec_server.api.protocol import block as block_proto
from parsec_server.api.protocol import events as events_proto
from parsec_server.api.protocol import invite as invite_proto
from parsec_server.api.protocol import message as message_proto
from parsec_server.api.protocol import organization as org_proto
from parsec_server.api.protocol import ping as ping_proto
from parsec_server.api.protocol import realm as realm_proto
from parsec_server.api.protocol import user as user_proto
from parsec_server.api.protocol import vlob as vlob_proto
from parsec_server.backend.apiv1_invite import BaseAPIV1InviteComponent, require_admin_v1_invite
from parsec_server.backend.block import BaseBlockComponent
from parsec_server.backend.client_context import (
    AdministrationClientContext,
    AnonymousClientContext,
    AuthenticatedClientContext,
    ClientContext,
    InvitedClientContext,
)
from parsec_server.backend.config import BackendConfig
from parsec_server.backend.connections import ConnectionRegistry
from parsec_server.backend.dispatch import Command, CommandTable
from parsec_server.backend.events import EventBus
from parsec_server.backend.events_commands import EventsComponent
from parsec_server.backend.invite import BaseInviteComponent
from parsec_server.backend.message import BaseMessageComponent
from parsec_server.backend.organization import BaseOrganizationComponent
from parsec_server.backend.ping import PingComponent
from parsec_server.backend.realm import BaseRealmComponent, refuse_outsider_realm_creation
from parsec_server.backend.storage.components import StorageComponents
from parsec_server.backend.user import BaseUserComponent, refuse_outsider, require_admin
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
    # Handshake type ("authenticated_v2", "authenticated_v1", "invited", "anonymous",
    # "administration") -> the commands its connections may run.
    commands: dict[str, list[Command]] = field(init=False)

    def __post_init__(self) -> None:
        self.event_bus.connect(self.connections.dispatch)
        self.commands = _build_commands(self)
        self._tables = {kind: CommandTable(cmds) for kind, cmds in self.commands.items()}

    def command_table_for(self, client: ClientContext) -> CommandTable:
        if isinstance(client, AuthenticatedClientContext):
            return self._tables["authenticated_v2" if client.api_major == 2 else "authenticated_v1"]
        if isinstance(client, InvitedClientContext):
            return self._tables["invited"]
        if isinstance(client, AnonymousClientContext):
            return self._tables["anonymous"]
        assert isinstance(client, AdministrationClientContext)
        return self._tables["administration"]

    async def on_client_connected(self, client: ClientContext) -> None:
        if isinstance(client, InvitedClientContext):
            await self.invite.on_claimer_connected(client)

    async def on_client_disconnected(self, client: ClientContext) -> None:
        if isinstance(client, InvitedClientContext):
            await self.invite.on_claimer_disconnected(client)


def _build_commands(app: BackendApp) -> dict[str, list[Command]]:
    ping = Command(ping_proto.PingReq, app.ping.api_ping)
    shared_authenticated = [
        ping,
        Command(events_proto.EventsSubscribeReq, app.events.api_events_subscribe),
        Command(events_proto.EventsListenReq, app.events.api_events_listen, breathing=True),
        Command(user_proto.UserGetReq, app.user.api_user_get),
        Command(user_proto.UserRevokeReq, app.user.api_user_revoke, precheck=require_admin),
        Command(user_proto.HumanFindReq, app.user.api_human_find, precheck=refuse_outsider),
        Command(message_proto.MessageGetReq, app.message.api_message_get),
        Command(
            realm_proto.RealmCreateReq,
            app.realm.api_realm_create,
            precheck=refuse_outsider_realm_creation,
        ),
        Command(realm_proto.RealmStatusReq, app.realm.api_realm_status),
        Command(realm_proto.RealmStatsReq, app.realm.api_realm_stats),
        Command(realm_proto.RealmGetRoleCertificatesReq, app.realm.api_realm_get_role_certificates),
        Command(realm_proto.RealmUpdateRolesReq, app.realm.api_realm_update_roles),
        Command(
            realm_proto.RealmStartReencryptionMaintenanceReq,
            app.realm.api_realm_start_reencryption_maintenance,
        ),
        Command(
            realm_proto.RealmFinishReencryptionMaintenanceReq,
            app.realm.api_realm_finish_reencryption_maintenance,
        ),
        Command(vlob_proto.VlobCreateReq, app.vlob.api_vlob_create),
        Command(vlob_proto.VlobReadReq, app.vlob.api_vlob_read),
        Command(vlob_proto.VlobUpdateReq, app.vlob.api_vlob_update),
        Command(vlob_proto.VlobPollChangesReq, app.vlob.api_vlob_poll_changes),
        Command(vlob_proto.VlobListVersionsReq, app.vlob.api_vlob_list_versions),
        Command(
            vlob_proto.VlobMaintenanceGetReencryptionBatchReq,
            app.vlob.api_vlob_maintenance_get_reencryption_batch,
        ),
        Command(
            vlob_proto.VlobMaintenanceSaveReencryptionBatchReq,
            app.vlob.api_vlob_maintenance_save_reencryption_batch,
        ),
        Command(block_proto.BlockCreateReq, app.block.api_block_create),
        Command(block_proto.BlockReadReq, app.block.api_block_read),
    ]
    inv = app.invite
    authenticated_v2 = [
        *shared_authenticated,
        Command(user_proto.UserCreateReq, app.user.api_user_create, precheck=require_admin),
        Command(user_proto.DeviceCreateReq, app.user.api_device_create),
        Command(invite_proto.InviteNewReq, inv.api_invite_new),
        Command(invite_proto.InviteDeleteReq, inv.api_invite_delete),
        Command(invite_proto.InviteListReq, inv.api_invite_list),
        Command(invite_proto.Invite1GreeterWaitPeerReq, inv.api_invite_1_greeter_wait_peer),
        Command(
            invite_proto.Invite2aGreeterGetHashedNonceReq,
            inv.api_invite_2a_greeter_get_hashed_nonce,
        ),
        Command(invite_proto.Invite2bGreeterSendNonceReq, inv.api_invite_2b_greeter_send_nonce),
        Command(
            invite_proto.Invite3aGreeterWaitPeerTrustReq, inv.api_invite_3a_greeter_wait_peer_trust
        ),
        Command(
            invite_proto.Invite3bGreeterSignifyTrustReq, inv.api_invite_3b_greeter_signify_trust
        ),
        Command(invite_proto.Invite4GreeterCommunicateReq, inv.api_invite_4_greeter_communicate),
    ]
    v1inv = app.apiv1_invite
    authenticated_v1 = [
        *shared_authenticated,
        Command(
            apiv1_proto.APIV1UserInviteReq,
            v1inv.api_user_invite,
            precheck=require_admin_v1_invite,
            breathing=True,
        ),
        Command(
            apiv1_proto.APIV1UserCancelInvitationReq,
            v1inv.api_user_cancel_invitation,
            precheck=require_admin,
        ),
        Command(apiv1_proto.APIV1DeviceInviteReq, v1inv.api_device_invite, breathing=True),
        Command(apiv1_proto.APIV1DeviceCancelInvitationReq, v1inv.api_device_cancel_invitation),
        Command(user_proto.APIV1UserCreateReq, app.user.apiv1_user_create, precheck=require_admin),
        Command(user_proto.APIV1DeviceCreateReq, app.user.apiv1_device_create),
        Command(user_proto.APIV1UserFindReq, app.user.apiv1_user_find, precheck=refuse_outsider),
    ]
    anonymous = [
        ping,
        Command(
            apiv1_proto.APIV1UserGetInvitationCreatorReq, v1inv.api_user_get_invitation_creator
        ),
        Command(apiv1_proto.APIV1UserClaimReq, v1inv.api_user_claim, breathing=True),
        Command(
            apiv1_proto.APIV1DeviceGetInvitationCreatorReq,
            v1inv.api_device_get_invitation_creator,
        ),
        Command(apiv1_proto.APIV1DeviceClaimReq, v1inv.api_device_claim, breathing=True),
        Command(org_proto.OrganizationBootstrapReq, app.organization.api_organization_bootstrap),
    ]
    administration = [
        ping,
        Command(org_proto.OrganizationCreateReq, app.organization.api_organization_create),
        Command(org_proto.OrganizationStatusReq, app.organization.api_organization_status),
        Command(org_proto.OrganizationStatsReq, app.organization.api_organization_stats),
        Command(org_proto.OrganizationUpdateReq, app.organization.api_organization_update),
    ]
    invited = [
        ping,
        Command(invite_proto.InviteInfoReq, inv.api_invite_info),
        Command(invite_proto.Invite1ClaimerWaitPeerReq, inv.api_invite_1_claimer_wait_peer),
        Command(
            invite_proto.Invite2aClaimerSendHashedNonceReq,
            inv.api_invite_2a_claimer_send_hashed_nonce,
        ),
        Command(invite_proto.Invite2bClaimerSendNonceReq, inv.api_invite_2b_claimer_send_nonce),
        Command(
            invite_proto.Invite3aClaimerSignifyTrustReq, inv.api_invite_3a_claimer_signify_trust
        ),
        Command(
            invite_proto.Invite3bClaimerWaitPeerTrustReq, inv.api_invite_3b_claimer_wait_peer_trust
        ),
        Command(invite_proto.Invite4ClaimerCommunicateReq, inv.api_invite_4_claimer_communicate),
    ]
    return {
        "authenticated_v2": authenticated_v2,
        "authenticated_v1": authenticated_v1,
        "invited": invited,
        "anonymous": anonymous,
        "administration": administration,
    }


@contextlib.asynccontextmanager
async def backend_app_factory(config: BackendConfig) -> AsyncIterator[BackendApp]:
    """Build the app on the configured storage; raises StartupError before yielding if
    the database cannot be used."""
    if config.db_type == "MOCKED":
        from parsec_server.backend.storage.memory.factory import memory_components

        async with memory_components(config) as components:
            yield _assemble(config, components)
    else:
        from parsec_server.backend.storage.postgresql.factory import postgresql_components

        async with postgresql_components(config) as components:
            yield _assemble(config, components)


def _assemble(config: BackendConfig, components: StorageComponents) -> BackendApp:
    connections = ConnectionRegistry()
    return BackendApp(
        config=config,
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
        events=EventsComponent(components.realm.realms_of_user, connections),
        connections=connections,
    )
