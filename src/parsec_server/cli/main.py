"""The `parsec` command: `parsec backend run|migrate|downgrade|backup|copy` and
`parsec core ...`."""

from __future__ import annotations

import os
from importlib.metadata import version
from typing import Any

import click

from parsec_server.cli.backend_backup import backup_command
from parsec_server.cli.backend_copy import copy
from parsec_server.cli.backend_downgrade import downgrade
from parsec_server.cli.backend_migrate import migrate
from parsec_server.cli.backend_run import run
from parsec_server.cli.core_admin import (
    create_organization,
    stats_organization,
    status_organization,
)
from parsec_server.cli.core_admin_rest import (
    export_stats,
    freeze_user,
    list_organization_users,
    list_organizations,
    unfreeze_user,
    update_organization,
)
from parsec_server.cli.core_device import bootstrap_organization, list_devices
from parsec_server.cli.core_files import download, history, ls, mkdir, mv, rm, upload
from parsec_server.cli.core_invite import (
    cancel_invitation,
    claim_invitation,
    greet_invitation,
    invite_device,
    invite_user,
    list_invitations,
)
from parsec_server.cli.core_workspace import (
    create_workspace,
    list_users,
    list_workspaces,
    reencrypt_workspace,
    share_workspace,
    status,
)

CMD_ARGS_ENVVAR = "PARSEC_CMD_ARGS"


def cmd_args_from_env() -> list[str]:
    """The arguments of `PARSEC_CMD_ARGS`: split on whitespace, then `$VAR` expanded."""
    raw = os.environ.get(CMD_ARGS_ENVVAR, "")
    return [os.path.expandvars(arg) for arg in raw.split()]


class ParsecGroup(click.Group):
    """The top-level group: appends `PARSEC_CMD_ARGS` to every command line."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        if parent is None:
            args = [*args, *cmd_args_from_env()]
        return super().make_context(info_name, args, parent=parent, **extra)


@click.group(cls=ParsecGroup)
@click.version_option(
    version("parsec-server"), prog_name="parsec", message="%(prog)s, version %(version)s"
)
def cli() -> None:
    """Parsec metadata server (Parsec 2.0 compatible) and its administration client."""


@cli.group()
def backend() -> None:
    """Run and prepare the server."""


@cli.group()
def core() -> None:
    """Administration client commands."""


backend.add_command(run)
backend.add_command(migrate)
backend.add_command(downgrade)
backend.add_command(backup_command, name="backup")
backend.add_command(copy)
core.add_command(create_organization)
core.add_command(status_organization)
core.add_command(stats_organization)
core.add_command(list_organizations)
core.add_command(update_organization)
core.add_command(list_organization_users)
core.add_command(freeze_user)
core.add_command(unfreeze_user)
core.add_command(export_stats)
core.add_command(bootstrap_organization)
core.add_command(list_devices)
core.add_command(invite_user)
core.add_command(invite_device)
core.add_command(list_invitations)
core.add_command(cancel_invitation)
core.add_command(greet_invitation)
core.add_command(claim_invitation)
for command in (
    list_users,
    create_workspace,
    list_workspaces,
    share_workspace,
    reencrypt_workspace,
    status,
    ls,
    mkdir,
    upload,
    download,
    rm,
    mv,
    history,
):
    core.add_command(command)
