"""A device's workspaces, kept in its user manifest as the 2.0.0 client keeps them.

The user manifest lives in the realm (and vlob) whose id is the device's
`user_manifest_id`, at encryption revision 1, encrypted with `user_manifest_key`; the
first write creates that realm. Creating a workspace creates its realm (owner role
certificate) and its empty workspace manifest (version 1), then adds its entry (name, id,
key, encryption revision) to the user manifest: the 2.0.0 client sees it at its next sync.

Sharing sends a role certificate with a `sharing.granted` (`sharing.revoked`) message for
the recipient; a recipient learns of a workspace shared with it, or of a new key after a
re-encryption, by processing its messages (`process_messages`), which updates its user
manifest as the 2.0.0 client does (`last_processed_message`, entries merged).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import msgspec

from parsec_server.api.certificates import (
    CertificateError,
    RealmRoleCertificate,
    unsecure_load,
    verify_and_load,
)
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import RealmRole, user_id_of
from parsec_server.client.certificates import realm_role_certificate
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.directory import Directory, TrustError
from parsec_server.client.fs_errors import (
    FSConflictError,
    FSError,
    FSNoAccessError,
    FSNotFoundError,
)
from parsec_server.client.manifests import (
    UserManifest,
    WorkspaceEntry,
    WorkspaceManifest,
    check_entry_name,
    dump_manifest,
    expect_kind,
    load_manifest,
)
from parsec_server.client.messages import (
    SharingGranted,
    SharingRevoked,
    dump_message,
    load_message,
)
from parsec_server.client.organization import CommandFailed
from parsec_server.client.signed_data import DataError

USER_MANIFEST_ENCRYPTION_REVISION = 1
_MAX_ATTEMPTS = 10
_SHARERS = (RealmRole.OWNER, RealmRole.MANAGER)


def merge_workspace_entry(current: WorkspaceEntry, incoming: WorkspaceEntry) -> WorkspaceEntry:
    """The 2.0.0 client's merge of an entry it knows with a new one: the known name stays,
    the key of the highest encryption revision wins, the most recently cached role wins."""
    newest_key = incoming if incoming.encryption_revision > current.encryption_revision else current
    if incoming.role == current.role:
        role, cached_on = incoming.role, max(incoming.role_cached_on, current.role_cached_on)
    elif incoming.role_cached_on > current.role_cached_on:
        role, cached_on = incoming.role, incoming.role_cached_on
    else:
        role, cached_on = current.role, current.role_cached_on
    return msgspec.structs.replace(
        current,
        key=newest_key.key,
        encryption_revision=newest_key.encryption_revision,
        encrypted_on=newest_key.encrypted_on,
        role=role,
        role_cached_on=cached_on,
    )


def with_entry(manifest: UserManifest, entry: WorkspaceEntry) -> tuple[WorkspaceEntry, ...]:
    """The workspaces with `entry` added, or merged into the one of the same id."""
    current = manifest.workspace(entry.id)
    if current is None:
        return (*manifest.workspaces, entry)
    merged = merge_workspace_entry(current, entry)
    return tuple(merged if w.id == entry.id else w for w in manifest.workspaces)


def current_roles(certificates: list[RealmRoleCertificate]) -> dict[str, RealmRole]:
    """Each user's role once the certificates are replayed in timestamp order."""
    roles: dict[str, RealmRole] = {}
    for certificate in sorted(certificates, key=lambda c: c.timestamp):
        if certificate.role is None:
            roles.pop(certificate.user_id, None)
        else:
            roles[certificate.user_id] = certificate.role
    return roles


class Session:
    """What a command knows while it runs: the device, its connection, the keys of the
    other devices, and the user manifest last read."""

    def __init__(self, conn: BackendConnection, device: LocalDevice) -> None:
        self.conn = conn
        self.device = device
        self.directory = Directory(conn, device)

    async def cmd(self, cmd: str, **fields: Any) -> dict[str, Any]:
        return await self.conn.cmd(cmd, **fields)

    # --- user manifest ------------------------------------------------------------------

    def _empty_user_manifest(self) -> UserManifest:
        now = DateTime.now()
        return UserManifest(
            author=self.device.device_id,
            timestamp=now,
            id=self.device.user_manifest_id,
            version=0,
            created=now,
            updated=now,
            last_processed_message=0,
            workspaces=(),
        )

    async def user_manifest(self) -> UserManifest:
        """The latest user manifest on the server (version 0 if never written)."""
        reply = await self.cmd(
            "vlob_read",
            encryption_revision=USER_MANIFEST_ENCRYPTION_REVISION,
            vlob_id=self.device.user_manifest_id,
            version=None,
            timestamp=None,
        )
        if reply["status"] == "not_found":
            return self._empty_user_manifest()
        if reply["status"] != "ok":
            raise CommandFailed(reply)
        try:
            manifest = load_manifest(
                reply["blob"],
                self.device.user_manifest_key,
                await self.directory.verify_key(reply["author"]),
                expected_author=reply["author"],
                expected_timestamp=reply["timestamp"],
                expected_id=self.device.user_manifest_id,
                expected_version=reply["version"],
            )
            return expect_kind(manifest, UserManifest)
        except (DataError, TrustError) as exc:
            raise FSError(f"Invalid user manifest: {exc}") from exc

    async def _ensure_realm(self, realm_id: ID) -> None:
        certificate = realm_role_certificate(
            self.device.signing_key,
            self.device.device_id,
            DateTime.now(),
            realm_id,
            self.device.user_id,
            RealmRole.OWNER,
        )
        reply = await self.cmd("realm_create", role_certificate=certificate)
        if reply["status"] not in ("ok", "already_exists"):
            raise CommandFailed(reply)

    async def _write_user_manifest(self, manifest: UserManifest) -> bool:
        """False when someone else wrote that version first."""
        now = manifest.timestamp
        blob = dump_manifest(manifest, self.device.signing_key, self.device.user_manifest_key)
        if manifest.version == 1:
            await self._ensure_realm(self.device.user_manifest_id)
            reply = await self.cmd(
                "vlob_create",
                realm_id=self.device.user_manifest_id,
                encryption_revision=USER_MANIFEST_ENCRYPTION_REVISION,
                vlob_id=self.device.user_manifest_id,
                timestamp=now,
                blob=blob,
            )
        else:
            reply = await self.cmd(
                "vlob_update",
                encryption_revision=USER_MANIFEST_ENCRYPTION_REVISION,
                vlob_id=self.device.user_manifest_id,
                timestamp=now,
                version=manifest.version,
                blob=blob,
            )
        if reply["status"] in ("already_exists", "bad_version"):
            return False
        if reply["status"] != "ok":
            raise CommandFailed(reply)
        return True

    async def update_user_manifest(
        self, change: Callable[[UserManifest], UserManifest | None]
    ) -> UserManifest:
        """Apply `change` to the latest user manifest and write the result as its next
        version (`change` returns None: nothing to write); applied again on the newer
        version when another device wrote first."""
        for _ in range(_MAX_ATTEMPTS):
            current = await self.user_manifest()
            changed = change(current)
            if changed is None:
                return current
            now = DateTime.now()
            new = msgspec.structs.replace(
                changed,
                author=self.device.device_id,
                timestamp=now,
                version=current.version + 1,
                updated=now,
            )
            if await self._write_user_manifest(new):
                return new
        raise FSConflictError("The user manifest keeps changing; try again")

    # --- workspaces ---------------------------------------------------------------------

    async def workspaces(self) -> tuple[WorkspaceEntry, ...]:
        """Every workspace of the user manifest (the messages processed first)."""
        manifest = await self.process_messages()
        return manifest.workspaces

    async def workspace_entry(self, name_or_id: str) -> WorkspaceEntry:
        """The accessible workspace of that name (or id, in hex)."""
        entries = [w for w in await self.workspaces() if w.role is not None]
        matching = [w for w in entries if w.name == name_or_id] or [
            w for w in entries if w.id.hex == name_or_id.replace("-", "")
        ]
        if not matching:
            raise FSNotFoundError(f"No workspace `{name_or_id}`")
        if len(matching) > 1:
            ids = ", ".join(w.id.hex for w in matching)
            raise FSError(f"Several workspaces are named `{name_or_id}` (give one id: {ids})")
        return matching[0]

    async def create_workspace(self, name: str) -> WorkspaceEntry:
        try:
            check_entry_name(name)
        except ValueError as exc:
            raise FSError(str(exc)) from exc
        now = DateTime.now()
        entry = WorkspaceEntry(
            name=name,
            id=ID.new(),
            key=secrets.token_bytes(32),
            encryption_revision=1,
            encrypted_on=now,
            role_cached_on=now,
            role=RealmRole.OWNER,
        )
        await self._ensure_realm(entry.id)
        manifest = WorkspaceManifest(
            author=self.device.device_id,
            timestamp=now,
            id=entry.id,
            version=1,
            created=now,
            updated=now,
            children={},
        )
        reply = await self.cmd(
            "vlob_create",
            realm_id=entry.id,
            encryption_revision=entry.encryption_revision,
            vlob_id=entry.id,
            timestamp=now,
            blob=dump_manifest(manifest, self.device.signing_key, entry.key),
        )
        if reply["status"] != "ok":
            raise CommandFailed(reply)
        await self.update_user_manifest(
            lambda um: msgspec.structs.replace(um, workspaces=with_entry(um, entry))
        )
        return entry

    async def realm_roles(self, realm_id: ID) -> dict[str, RealmRole]:
        """The current roles of the realm, from its verified role certificates."""
        reply = await self.cmd("realm_get_role_certificates", realm_id=realm_id, since=None)
        if reply["status"] == "not_allowed":
            raise FSNoAccessError(f"No access to workspace {realm_id.hex}")
        if reply["status"] != "ok":
            raise CommandFailed(reply)
        certificates = []
        try:
            for raw in reply["certificates"]:
                author = unsecure_load(RealmRoleCertificate, raw).author
                key = await self.directory.verify_key(author)
                certificates.append(verify_and_load(RealmRoleCertificate, raw, key, author))
        except (CertificateError, TrustError) as exc:
            raise FSError(f"Invalid role certificate in workspace {realm_id.hex}: {exc}") from exc
        return current_roles(certificates)

    async def share(self, entry: WorkspaceEntry, user_id: str, role: RealmRole | None) -> None:
        """Give `user_id` the role in the workspace (None: take its access away), with the
        message the 2.0.0 client sends along."""
        if user_id == self.device.user_id:
            raise FSError("Cannot share a workspace with oneself")
        recipient = await self.directory.user(user_id)
        if recipient.revoked:
            raise FSError(f"User {recipient.display} is revoked")
        now = DateTime.now()
        message: SharingGranted | SharingRevoked
        if role is None:
            message = SharingRevoked(author=self.device.device_id, timestamp=now, id=entry.id)
        else:
            message = SharingGranted(
                author=self.device.device_id,
                timestamp=now,
                name=entry.name,
                id=entry.id,
                encryption_revision=entry.encryption_revision,
                encrypted_on=entry.encrypted_on,
                key=entry.key,
            )
        certificate = realm_role_certificate(
            self.device.signing_key, self.device.device_id, now, entry.id, user_id, role
        )
        reply = await self.cmd(
            "realm_update_roles",
            role_certificate=certificate,
            recipient_message=dump_message(message, self.device.signing_key, recipient.public_key),
        )
        if reply["status"] == "not_allowed":
            raise FSNoAccessError("Only an owner or a manager of the workspace can share it")
        if reply["status"] not in ("ok", "already_granted"):
            raise CommandFailed(reply)

    # --- messages -----------------------------------------------------------------------

    async def process_messages(self) -> UserManifest:
        """Read the messages not processed yet and record what they say in the user
        manifest (written only when something changed); returns the user manifest."""
        manifest = await self.user_manifest()
        reply = await self.cmd("message_get", offset=manifest.last_processed_message)
        if reply["status"] != "ok":
            raise CommandFailed(reply)
        if not reply["messages"]:
            return manifest
        updates: list[WorkspaceEntry | ID] = []
        last = manifest.last_processed_message
        for item in reply["messages"]:
            update = await self._process_message(item, manifest)
            if update is not None:
                updates.append(update)
            last = max(last, item["count"])

        def change(um: UserManifest) -> UserManifest | None:
            if um.last_processed_message >= last:
                return None
            workspaces = um.workspaces
            for update in updates:
                current = msgspec.structs.replace(um, workspaces=workspaces)
                if isinstance(update, WorkspaceEntry):
                    workspaces = with_entry(current, update)
                else:
                    workspaces = tuple(
                        msgspec.structs.replace(w, role=None, role_cached_on=DateTime.now())
                        if w.id == update
                        else w
                        for w in workspaces
                    )
            return msgspec.structs.replace(um, workspaces=workspaces, last_processed_message=last)

        return await self.update_user_manifest(change)

    async def _process_message(
        self, item: dict[str, Any], manifest: UserManifest
    ) -> WorkspaceEntry | ID | None:
        """What a message changes: a workspace entry to merge, the id of a workspace whose
        access was lost, or nothing (messages that do not check are skipped, as the 2.0.0
        client does)."""
        sender = item["sender"]
        try:
            message = load_message(
                item["body"],
                self.device.private_key,
                await self.directory.verify_key(sender),
                expected_author=sender,
                expected_timestamp=item["timestamp"],
            )
        except (DataError, TrustError):
            return None
        if isinstance(message, SharingGranted):
            try:
                roles = await self.realm_roles(message.id)
            except FSNoAccessError:
                return None
            if roles.get(user_id_of(message.author)) not in _SHARERS:
                return None
            return WorkspaceEntry(
                name=message.name,
                id=message.id,
                key=message.key,
                encryption_revision=message.encryption_revision,
                encrypted_on=message.encrypted_on,
                role_cached_on=DateTime.now(),
                role=roles.get(self.device.user_id),
            )
        if isinstance(message, SharingRevoked):
            try:
                await self.realm_roles(message.id)
            except FSNoAccessError:
                return message.id if manifest.workspace(message.id) is not None else None
        return None
