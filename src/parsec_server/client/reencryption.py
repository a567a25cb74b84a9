"""Re-encrypting a workspace with a new key, in the steps the 2.0.0 client takes, so that
either client reads the result:

1. `realm_start_reencryption_maintenance` at the next encryption revision, with a
   `sharing.reencrypted` message (new key) for every user having a role, ourselves
   included: whoever is interrupted later still finds the key in its messages;
2. the new key recorded in our user manifest (the entry's revision raised);
3. batches of `vlob_maintenance_get_reencryption_batch`: each manifest version decrypted
   with the old key and encrypted with the new one (the signed content is unchanged),
   saved with `vlob_maintenance_save_reencryption_batch`, until all are done;
4. `realm_finish_reencryption_maintenance`.

Blocks are encrypted with keys of their own (in the file manifests) and stay as they are.
An interrupted re-encryption leaves the realm in maintenance: not resumed here (the old
key is no longer in the user manifest once step 2 is done).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import RealmRole
from parsec_server.client.fs_errors import FSError, FSNoAccessError
from parsec_server.client.manifests import WorkspaceEntry
from parsec_server.client.messages import SharingReencrypted, dump_message
from parsec_server.client.organization import CommandFailed
from parsec_server.client.signed_data import DataError, secret_decrypt, secret_encrypt
from parsec_server.client.workspaces import Session, with_entry

DEFAULT_BATCH_SIZE = 100


@dataclass(frozen=True)
class ReencryptionDone:
    encryption_revision: int
    vlobs: int  # manifest versions re-encrypted


def reencrypt_blob(blob: bytes, old_key: bytes, new_key: bytes) -> bytes:
    try:
        return secret_encrypt(new_key, secret_decrypt(old_key, blob))
    except DataError as exc:
        raise FSError(f"A manifest does not decrypt with the workspace's key: {exc}") from exc


async def reencrypt_workspace(
    session: Session,
    entry: WorkspaceEntry,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> ReencryptionDone:
    """Re-encrypt the workspace of `entry` (its owner only); `progress(done, total)` after
    each batch."""
    roles = await session.realm_roles(entry.id)
    if roles.get(session.device.user_id) != RealmRole.OWNER:
        raise FSNoAccessError(f"Only an owner can re-encrypt workspace `{entry.name}`")
    now = DateTime.now()
    revision = entry.encryption_revision + 1
    new_entry = msgspec.structs.replace(
        entry, key=secrets.token_bytes(32), encryption_revision=revision, encrypted_on=now
    )
    message = SharingReencrypted(
        author=session.device.device_id,
        timestamp=now,
        name=entry.name,
        id=entry.id,
        encryption_revision=revision,
        encrypted_on=now,
        key=new_entry.key,
    )
    per_participant = {}
    for user_id in roles:
        user = await session.directory.user(user_id)
        per_participant[user_id] = dump_message(
            message, session.device.signing_key, user.public_key
        )
    reply = await session.cmd(
        "realm_start_reencryption_maintenance",
        realm_id=entry.id,
        encryption_revision=revision,
        timestamp=now,
        per_participant_message=per_participant,
    )
    if reply["status"] == "in_maintenance":
        raise FSError(f"Workspace `{entry.name}` is already being re-encrypted")
    if reply["status"] == "bad_encryption_revision":
        raise FSError(f"Workspace `{entry.name}` was re-encrypted meanwhile; try again")
    if reply["status"] != "ok":
        raise CommandFailed(reply)
    await session.update_user_manifest(
        lambda um: msgspec.structs.replace(um, workspaces=with_entry(um, new_entry))
    )
    done = 0
    while True:
        reply = await session.cmd(
            "vlob_maintenance_get_reencryption_batch",
            realm_id=entry.id,
            encryption_revision=revision,
            size=batch_size,
        )
        if reply["status"] != "ok":
            raise CommandFailed(reply)
        batch = [
            {
                "vlob_id": item["vlob_id"],
                "version": item["version"],
                "blob": reencrypt_blob(item["blob"], entry.key, new_entry.key),
            }
            for item in reply["batch"]
        ]
        reply = await session.cmd(
            "vlob_maintenance_save_reencryption_batch",
            realm_id=entry.id,
            encryption_revision=revision,
            batch=batch,
        )
        if reply["status"] != "ok":
            raise CommandFailed(reply)
        done = reply["done"]
        if progress is not None:
            progress(done, reply["total"])
        if reply["done"] >= reply["total"]:
            break
    reply = await session.cmd(
        "realm_finish_reencryption_maintenance", realm_id=entry.id, encryption_revision=revision
    )
    if reply["status"] != "ok":
        raise CommandFailed(reply)
    return ReencryptionDone(revision, done)
