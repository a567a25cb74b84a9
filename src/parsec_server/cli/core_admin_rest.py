"""Administration commands over the REST API (docs/administration-api.md):
`parsec core list_organizations|update_organization|list_organization_users|freeze_user|
unfreeze_user|export_stats`.

Same options and error reporting as the websocket ones (`core_admin.py`): `--addr/-B`,
`--administration-token/-T`; a failure prints `Error: <one line>` and exits 1 (the
traceback only with `DEBUG` set). The listings print a table, or JSON with `--json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import DateTime
from parsec_server.cli.core_admin import (
    converting,
    organization_argument,
    parse_expiration_date,
    run_admin,
    server_options,
)
from parsec_server.client.admin_rest import AdminRestClient, StatsFormat

__all__ = [
    "export_stats",
    "freeze_user",
    "list_organization_users",
    "list_organizations",
    "unfreeze_user",
    "update_organization",
]

T = TypeVar("T")
_DATE_HELP = "local time: YYYY-MM-DD[ HH:MM:SS]"


def _call(
    addr: BackendAddr, token: str, action: Callable[[AdminRestClient], Coroutine[Any, Any, T]]
) -> T:
    """`action` on a REST client of the server; failures exit as `run_admin` says."""

    async def main() -> T:
        async with AdminRestClient(addr, token) as api:
            return await action(api)

    return run_admin(main)


# --- output -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns aligned on their widest cell; `None` is `-`, booleans `yes`/`no`."""
    cells = [list(headers), *([_text(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def echo_fields(value: dict[str, Any]) -> None:
    """`<key>: <value>` lines, keys in alphabetical order (as `status_organization`)."""
    for key in sorted(value):
        click.echo(f"{key}: {_text(value[key])}")


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON")


# --- organizations ------------------------------------------------------------------------


@click.command("list_organizations", short_help="List the organizations")
@server_options
@_json_option
def list_organizations(addr: BackendAddr, administration_token: str, as_json: bool) -> None:
    """List every organization of the server: id, creation date, bootstrapped, expired."""
    organizations = _call(addr, administration_token, lambda api: api.list_organizations())
    if as_json:
        echo_json(organizations)
        return
    echo_table(
        ("ORGANIZATION", "CREATED ON", "BOOTSTRAPPED", "EXPIRED"),
        [
            (o["organization_id"], o["created_on"], o["is_bootstrapped"], o["is_expired"])
            for o in organizations
        ],
    )


@click.command("update_organization", short_help="Change an organization's expiration or settings")
@organization_argument
@server_options
@click.option(
    "--expiration-date",
    "-E",
    metavar="DATE",
    callback=converting(parse_expiration_date),
    help=f"New expiration date ({_DATE_HELP})",
)
@click.option("--no-expiration", is_flag=True, help="Remove the expiration date")
@click.option(
    "--expired/--not-expired",
    default=None,
    help="Expire the organization now / remove a past expiration date",
)
@click.option(
    "--active-users-limit",
    type=click.IntRange(0, 2**31 - 1),
    metavar="N",
    help="Most users neither revoked nor frozen at a time",
)
@click.option("--no-active-users-limit", is_flag=True, help="Remove the active users limit")
@click.option(
    "--outsider-allowed/--outsider-not-allowed",
    default=None,
    help="Whether users may have the OUTSIDER profile",
)
def update_organization(
    name: str,
    addr: BackendAddr,
    administration_token: str,
    expiration_date: DateTime | None,
    no_expiration: bool,
    expired: bool | None,
    active_users_limit: int | None,
    no_active_users_limit: bool,
    outsider_allowed: bool | None,
) -> None:
    """Change organization NAME (only what is given), then print its new state."""
    changes = _organization_changes(
        expiration_date,
        no_expiration,
        expired,
        active_users_limit,
        no_active_users_limit,
        outsider_allowed,
    )
    state = _call(addr, administration_token, lambda api: api.update_organization(name, changes))
    echo_fields(state)


def _organization_changes(
    expiration_date: DateTime | None,
    no_expiration: bool,
    expired: bool | None,
    active_users_limit: int | None,
    no_active_users_limit: bool,
    outsider_allowed: bool | None,
) -> dict[str, Any]:
    """The PATCH body; raises click.UsageError for options that contradict each other."""
    expiration_options = sum((expiration_date is not None, no_expiration, expired is not None))
    if expiration_options > 1:
        raise click.UsageError(
            "Give at most one of --expiration-date, --no-expiration, --expired/--not-expired"
        )
    if active_users_limit is not None and no_active_users_limit:
        raise click.UsageError("Give --active-users-limit or --no-active-users-limit, not both")
    changes: dict[str, Any] = {}
    if expiration_date is not None or no_expiration:
        changes["expiration_date"] = expiration_date
    if expired is not None:
        changes["is_expired"] = expired
    if active_users_limit is not None or no_active_users_limit:
        changes["active_users_limit"] = active_users_limit
    if outsider_allowed is not None:
        changes["user_profile_outsider_allowed"] = outsider_allowed
    if not changes:
        raise click.UsageError("Nothing to change: give at least one option")
    return changes


# --- users --------------------------------------------------------------------------------


@click.command("list_organization_users", short_help="List the users of an organization")
@organization_argument
@server_options
@_json_option
def list_organization_users(
    name: str, addr: BackendAddr, administration_token: str, as_json: bool
) -> None:
    """List the users of organization NAME (administration token; the device-side
    `list_users` is another command)."""
    users = _call(addr, administration_token, lambda api: api.list_users(name))
    if as_json:
        echo_json(users)
        return
    echo_table(
        ("USER", "PROFILE", "CREATED ON", "REVOKED ON", "FROZEN", "NAME"),
        [
            (
                u["user_id"],
                u["profile"],
                u["created_on"],
                u["revoked_on"],
                u["frozen"],
                _human(u["human_handle"]),
            )
            for u in users
        ],
    )


def _human(handle: dict[str, str] | None) -> str | None:
    return None if handle is None else f"{handle['label']} <{handle['email']}>"


def _user_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option("--email", metavar="EMAIL", help="The user's e-mail address")(command)
    command = click.option("--user-id", metavar="ID", help="The user's id")(command)
    return server_options(organization_argument(command))


def _freeze(
    name: str,
    addr: BackendAddr,
    administration_token: str,
    user_id: str | None,
    email: str | None,
    frozen: bool,
) -> None:
    if (user_id is None) == (email is None):
        raise click.UsageError("Give either --user-id or --email")
    user = _call(
        addr,
        administration_token,
        lambda api: api.freeze_user(name, frozen, user_id=user_id, email=email),
    )
    click.echo(f"User {user['user_id']} {'frozen' if user['frozen'] else 'unfrozen'}")


@click.command("freeze_user", short_help="Freeze a user of an organization")
@_user_options
def freeze_user(
    name: str, addr: BackendAddr, administration_token: str, user_id: str | None, email: str | None
) -> None:
    """Freeze a user of organization NAME, by id or e-mail: its devices are refused until
    it is unfrozen."""
    _freeze(name, addr, administration_token, user_id, email, frozen=True)


@click.command("unfreeze_user", short_help="Unfreeze a user of an organization")
@_user_options
def unfreeze_user(
    name: str, addr: BackendAddr, administration_token: str, user_id: str | None, email: str | None
) -> None:
    """Unfreeze a user of organization NAME, by id or e-mail."""
    _freeze(name, addr, administration_token, user_id, email, frozen=False)


# --- stats --------------------------------------------------------------------------------


@click.command("export_stats", short_help="Export the stats of every organization")
@server_options
@click.option(
    "--format",
    "stats_format",
    type=click.Choice(["csv", "json"]),
    help="File format [default: csv for a OUTPUT_FILE ending in .csv, else json]",
)
@click.option(
    "--at",
    metavar="DATE",
    callback=converting(parse_expiration_date),
    help=f"The stats as of this date ({_DATE_HELP}) [default: now]",
)
@click.argument("output_file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
def export_stats(
    addr: BackendAddr,
    administration_token: str,
    stats_format: StatsFormat | None,
    at: DateTime | None,
    output_file: Path,
) -> None:
    """Write the stats of every organization to OUTPUT_FILE (`-`: standard output)."""
    chosen: StatsFormat = stats_format or (
        "csv" if output_file.suffix.lower() == ".csv" else "json"
    )
    content = _call(addr, administration_token, lambda api: api.server_stats(chosen, at))
    if str(output_file) == "-":
        click.echo(content, nl=False)  # bytes: written as they are
        return
    try:
        output_file.write_bytes(content)
    except OSError as exc:
        raise click.ClickException(f"Cannot write `{output_file}`: {exc.strerror}") from None
    click.echo(f"Stats written to {output_file} ({chosen})")
