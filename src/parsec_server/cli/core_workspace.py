"""`parsec core list_users|create_workspace|list_workspaces|share_workspace|status`: a
device's workspaces, as the 2.0.0 client keeps them (client/workspaces.py)."""

from __future__ import annotations

from typing import Any

import click

from parsec_server.api.ids import RealmRole
from parsec_server.cli.workspace_common import SessionArgs, run_session, session_options
from parsec_server.client.directory import UserInfo
from parsec_server.client.directory import list_users as fetch_users
from parsec_server.client.fs_errors import FSError, FSNotFoundError
from parsec_server.client.reencryption import reencrypt_workspace as reencrypt
from parsec_server.client.workspaces import Session

__all__ = [
    "create_workspace",
    "list_users",
    "list_workspaces",
    "reencrypt_workspace",
    "share_workspace",
    "status",
]

_ROLES = [role.value for role in RealmRole] + ["NONE"]


def _user_json(user: UserInfo) -> dict[str, Any]:
    email, label = user.human_handle if user.human_handle else (None, None)
    return {
        "user_id": user.user_id,
        "email": email,
        "name": label,
        "profile": user.profile.value,
        "revoked": user.revoked,
    }


@click.command("list_users", short_help="List the users of the organization")
@session_options
def list_users(**kwargs: Any) -> None:
    """List the users of the device's organization: id, name, profile, revocation."""
    args = SessionArgs(**kwargs)

    async def main(session: Session) -> list[UserInfo]:
        return await fetch_users(session.conn, session.directory)

    users = run_session(args, main)
    args.output.result(
        [_user_json(u) for u in users],
        [
            f"{u.user_id} - {u.display} - {u.profile.value}" + (" (revoked)" if u.revoked else "")
            for u in users
        ],
    )


@click.command("create_workspace", short_help="Create a workspace")
@session_options
@click.argument("name")
def create_workspace(name: str, **kwargs: Any) -> None:
    """Create the workspace NAME (its owner: the device's user)."""
    args = SessionArgs(**kwargs)

    async def main(session: Session) -> str:
        entry = await session.create_workspace(name)
        return entry.id.hex

    workspace_id = run_session(args, main)
    args.output.result(
        {"id": workspace_id, "name": name}, [f"Workspace `{name}` created ({workspace_id})"]
    )


@click.command("list_workspaces", short_help="List the device's workspaces")
@session_options
def list_workspaces(**kwargs: Any) -> None:
    """List the workspaces the device's user has access to, with its role."""
    args = SessionArgs(**kwargs)

    async def main(session: Session) -> list[dict[str, Any]]:
        return [
            {
                "id": w.id.hex,
                "name": w.name,
                "role": w.role.value if w.role else None,
                "encryption_revision": w.encryption_revision,
            }
            for w in await session.workspaces()
            if w.role is not None
        ]

    workspaces = run_session(args, main)
    args.output.result(workspaces, [f"{w['name']} - {w['role']} - {w['id']}" for w in workspaces])


async def _find_user(session: Session, text: str) -> UserInfo:
    """A user by id or by email."""
    for user in await fetch_users(session.conn, session.directory):
        email = user.human_handle[0] if user.human_handle else None
        if text in (user.user_id, email):
            return user
    raise FSNotFoundError(f"No user `{text}` (see `parsec core list_users`)")


@click.command("share_workspace", short_help="Give a user a role in a workspace")
@session_options
@click.argument("workspace")
@click.argument("user")
@click.argument("role", type=click.Choice(_ROLES, case_sensitive=False))
def share_workspace(workspace: str, user: str, role: str, **kwargs: Any) -> None:
    """Give USER (id or email) ROLE in WORKSPACE (name or id): OWNER, MANAGER,
    CONTRIBUTOR, READER, or NONE to take the user's access away."""
    args = SessionArgs(**kwargs)
    new_role = None if role.upper() == "NONE" else RealmRole(role.upper())

    async def main(session: Session) -> str:
        entry = await session.workspace_entry(workspace)
        recipient = await _find_user(session, user)
        await session.share(entry, recipient.user_id, new_role)
        return recipient.display

    display = run_session(args, main)
    shown = new_role.value if new_role else "no access"
    args.output.result(
        {"workspace": workspace, "user": user, "role": new_role.value if new_role else None},
        [f"{display} now has {shown} in `{workspace}`"],
    )


@click.command("reencrypt_workspace", short_help="Re-encrypt a workspace with a new key")
@session_options
@click.argument("workspace")
def reencrypt_workspace(workspace: str, **kwargs: Any) -> None:
    """Re-encrypt WORKSPACE (name or id) with a new key, as after removing someone's
    access: every user having a role receives the new key. Owners only."""
    args = SessionArgs(**kwargs)

    async def main(session: Session) -> dict[str, Any]:
        entry = await session.workspace_entry(workspace)
        seen = 0
        with args.output.progress(f"Re-encrypting {entry.name}", None, unit=" versions") as advance:

            def progress(done: int, _total: int) -> None:
                nonlocal seen
                advance(done - seen)
                seen = done

            done = await reencrypt(session, entry, progress=progress)
        return {
            "workspace": entry.id.hex,
            "encryption_revision": done.encryption_revision,
            "versions": done.vlobs,
        }

    info = run_session(args, main)
    args.output.result(
        info,
        [
            f"Workspace `{workspace}` re-encrypted: revision {info['encryption_revision']}, "
            f"{info['versions']} manifest versions"
        ],
    )


@click.command("status", short_help="Show the device, its server and its workspaces")
@session_options
def status(**kwargs: Any) -> None:
    """Connect with the device and show who it is and what it has access to."""
    args = SessionArgs(**kwargs)

    async def main(session: Session) -> dict[str, Any]:
        manifest = await session.process_messages()
        me = await session.directory.user(session.device.user_id)
        if me.revoked:
            raise FSError("This device's user is revoked")
        return {
            "server": session.device.backend_addr.to_url(),
            "organization": session.device.organization_id,
            "device": session.device.device_id,
            "user": me.display,
            "profile": me.profile.value,
            "user_manifest_version": manifest.version,
            "workspaces": len([w for w in manifest.workspaces if w.role is not None]),
        }

    info = run_session(args, main)
    args.output.result(info, [f"{key}: {value}" for key, value in info.items()])
