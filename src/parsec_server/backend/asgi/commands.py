"""The command tables: which commands each kind of connection may run, and their handlers
in the domain components."""

from __future__ import annotations

from dataclasses import replace

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
from parsec_server.api.protocol.base import Req
from parsec_server.backend.apiv1_invite import require_admin_v1_invite
from parsec_server.backend.app import BackendApp
from parsec_server.backend.asgi.dispatch import Command, CommandTable, Handler
from parsec_server.backend.client_context import (
    AdministrationClientContext,
    AnonymousClientContext,
    AuthenticatedClientContext,
    ClientContext,
    InvitedClientContext,
)
from parsec_server.backend.metrics import Metrics
from parsec_server.backend.realm import refuse_outsider_realm_creation
from parsec_server.backend.user import refuse_outsider, require_admin


class CommandTables:
    """Built once per app: one table per handshake type (and API version)."""

    def __init__(self, app: BackendApp) -> None:
        # The commands of each handshake type (also walked by the field-limits tests).
        self.commands = _commands(app)
        self.tables = {
            kind: CommandTable(_measured(commands, app.metrics), app.message_check_threads)
            for kind, commands in self.commands.items()
        }

    def for_client(self, client: ClientContext) -> CommandTable:
        if isinstance(client, AuthenticatedClientContext):
            return self.tables["authenticated_v2" if client.api_major == 2 else "authenticated_v1"]
        if isinstance(client, InvitedClientContext):
            return self.tables["invited"]
        if isinstance(client, AnonymousClientContext):
            return self.tables["anonymous"]
        assert isinstance(client, AdministrationClientContext)
        return self.tables["administration"]


def _measured(commands: list[Command], metrics: Metrics) -> list[Command]:
    """With monitoring on, the commands with their handlers measured (nothing added to
    a command's path otherwise)."""
    if not metrics.enabled:
        return commands
    return [
        replace(
            command,
            handler=metrics.instrument_command(
                command.name, command.handler, waits=command.breathing or command.waits_for_peer
            ),
        )
        for command in commands
    ]


def _step(req_type: type[Req], handler: Handler) -> Command:
    """A rendezvous step: it waits for the peer, and is abandoned if the connection closes."""
    return Command(req_type, handler, waits_for_peer=True)


def _commands(app: BackendApp) -> dict[str, list[Command]]:
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
        _step(invite_proto.Invite1GreeterWaitPeerReq, inv.api_invite_1_greeter_wait_peer),
        _step(
            invite_proto.Invite2aGreeterGetHashedNonceReq,
            inv.api_invite_2a_greeter_get_hashed_nonce,
        ),
        _step(invite_proto.Invite2bGreeterSendNonceReq, inv.api_invite_2b_greeter_send_nonce),
        _step(
            invite_proto.Invite3aGreeterWaitPeerTrustReq, inv.api_invite_3a_greeter_wait_peer_trust
        ),
        _step(invite_proto.Invite3bGreeterSignifyTrustReq, inv.api_invite_3b_greeter_signify_trust),
        _step(invite_proto.Invite4GreeterCommunicateReq, inv.api_invite_4_greeter_communicate),
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
        _step(invite_proto.Invite1ClaimerWaitPeerReq, inv.api_invite_1_claimer_wait_peer),
        _step(
            invite_proto.Invite2aClaimerSendHashedNonceReq,
            inv.api_invite_2a_claimer_send_hashed_nonce,
        ),
        _step(invite_proto.Invite2bClaimerSendNonceReq, inv.api_invite_2b_claimer_send_nonce),
        _step(invite_proto.Invite3aClaimerSignifyTrustReq, inv.api_invite_3a_claimer_signify_trust),
        _step(
            invite_proto.Invite3bClaimerWaitPeerTrustReq, inv.api_invite_3b_claimer_wait_peer_trust
        ),
        _step(invite_proto.Invite4ClaimerCommunicateReq, inv.api_invite_4_claimer_communicate),
    ]
    return {
        "authenticated_v2": authenticated_v2,
        "authenticated_v1": authenticated_v1,
        "invited": invited,
        "anonymous": anonymous,
        "administration": administration,
    }
