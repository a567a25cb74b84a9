"""Administration client commands (protocol/70-server-config.md section 3):
`parsec core create_organization|status_organization|stats_organization`.

Each command opens one administration connection to `--addr`, sends one command and
prints the outcome. Runtime failures print `Error: <message>` on stderr and exit 1; the
traceback is shown only when the `DEBUG` environment variable is set.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import click

from parsec_server.api.addr import AddrError, BackendAddr, BackendOrganizationBootstrapAddr
from parsec_server.api.codec import DateTime
from parsec_server.api.ids import is_valid_name
from parsec_server.cli.logging_setup import configure_logging
from parsec_server.client import organization as client

__all__ = [
    "converting",
    "create_organization",
    "organization_argument",
    "parse_expiration_date",
    "run_admin",
    "server_options",
    "stats_organization",
    "status_organization",
]

T = TypeVar("T")

DEBUG_ENVVAR = "DEBUG"
_FALSE_STRINGS = ("", "0", "false", "f", "no", "n")
EXPIRATION_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")
_CREATE_SPINNER = "Creating organization in backend"
_OK_MARK = "✔"
_FAILED_MARK = "✘"


# --- parameters ---------------------------------------------------------------------------


def _param_hint(param: click.Parameter | None) -> str | None:
    """Parameter names double-quoted, as click 7 wrote them (`"--addr" / "-B"`, `"NAME"`)."""
    if param is None:
        return None
    if isinstance(param, click.Argument):
        return f'"{param.human_readable_name}"'
    return " / ".join(f'"{opt}"' for opt in param.opts)


def bad_parameter(
    message: str, param: click.Parameter | None, ctx: click.Context | None
) -> click.BadParameter:
    return click.BadParameter(message, ctx=ctx, param=param, param_hint=_param_hint(param))


def parse_organization_id(value: str) -> str:
    """Raises `ValueError` unless `value` is a valid OrganizationID."""
    if not is_valid_name(value):
        raise ValueError(f"`{value}` is not a valid organization ID")
    return value


def parse_backend_addr(value: str) -> BackendAddr:
    try:
        return BackendAddr.from_url(value)
    except AddrError as exc:
        raise ValueError(
            f"`{value}` is not a valid `parsec://host[:port][?no_ssl=true]` URL ({exc})"
        ) from None


def parse_expiration_date(value: str) -> DateTime:
    """A naive date-time in one of `EXPIRATION_DATE_FORMATS`, read in the local time zone;
    raises `ValueError` otherwise."""
    for date_format in EXPIRATION_DATE_FORMATS:
        try:
            naive = datetime.strptime(value, date_format)
        except ValueError:
            continue
        try:
            return DateTime(naive.astimezone())
        except (OverflowError, OSError) as exc:
            raise ValueError(f"`{value}` is out of range") from exc
    formats = ", ".join(EXPIRATION_DATE_FORMATS)
    raise ValueError(f"`{value}` does not match the formats {formats}")


def converting(
    parse: Callable[[str], T],
) -> Callable[[click.Context, click.Parameter, str | None], T | None]:
    """A click callback applying `parse`, its `ValueError` becoming a usage error."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> T | None:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise bad_parameter(str(exc), param, ctx) from None

    return callback


# --- running and error reporting ----------------------------------------------------------


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENVVAR, "").strip().lower() not in _FALSE_STRINGS


def one_line(exc: BaseException) -> str:
    """The exception's message on a single line (its type name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _exit_with_error(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


class CreationRefused(Exception):
    """The server answered `organization_create` with a non-ok status."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"Backend refused to create organization: {reply}")
        self.reply = reply


def run_admin(
    main: Callable[[], Coroutine[Any, Any, T]], on_failure: Callable[[], None] | None = None
) -> T:
    """`asyncio.run(main())`; a failure calls `on_failure`, then exits with `Error: ...`
    (or raises, when debugging)."""
    debug = debug_enabled()
    if debug:
        configure_logging(level="DEBUG")
    try:
        return asyncio.run(main())
    except Exception as exc:
        if on_failure is not None:
            on_failure()
        if debug:
            raise
        _exit_with_error(one_line(exc))


# --- output -------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    if isinstance(value, DateTime):
        return value.isoformat()
    return str(value)


def echo_reply(reply: dict[str, Any]) -> None:
    """Every key of the reply as `<key>: <value>`, keys in alphabetical order."""
    for key in sorted(reply):
        click.echo(f"{key}: {format_value(reply[key])}")


# --- commands -----------------------------------------------------------------------------


def server_options(command: Callable[..., None]) -> Callable[..., None]:
    """`--addr/-B` and `--administration-token/-T`, shared by every administration command
    (websocket or REST API)."""
    decorators = [
        click.option(
            "--addr",
            "-B",
            required=True,
            callback=converting(parse_backend_addr),
            metavar="URL",
            help="Server URL (parsec://host[:port][?no_ssl=true])",
        ),
        click.option(
            "--administration-token",
            "-T",
            required=True,
            help="The server's administration token",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def organization_argument(command: Callable[..., None]) -> Callable[..., None]:
    """NAME, an organization id."""
    return click.argument("name", callback=converting(parse_organization_id))(command)


def _admin_options(command: Callable[..., None]) -> Callable[..., None]:
    """NAME, `--addr/-B` and `--administration-token/-T`, shared by the three commands."""
    return organization_argument(server_options(command))


@click.command("create_organization", short_help="Create a new organization")
@_admin_options
@click.option(
    "--expiration-date",
    "-E",
    metavar="DATE",
    callback=converting(parse_expiration_date),
    help="Expiration date of the organization (local time: YYYY-MM-DD[ HH:MM:SS])",
)
def create_organization(
    name: str,
    addr: BackendAddr,
    administration_token: str,
    expiration_date: DateTime | None,
) -> None:
    """Create organization NAME and print its bootstrap URL."""

    async def main() -> str:
        try:
            return await client.create_organization(
                addr, administration_token, name, expiration_date
            )
        except client.CommandFailed as exc:
            raise CreationRefused(exc.reply) from exc

    click.echo(f"{_CREATE_SPINNER} ", nl=False)
    token = run_admin(main, on_failure=lambda: click.echo(_FAILED_MARK))
    click.echo(_OK_MARK)
    url = BackendOrganizationBootstrapAddr.build(addr, name, token).to_url()
    click.echo(f"Bootstrap organization url: {url}")


def _print_admin_command(cmd: str, name: str, addr: BackendAddr, administration_token: str) -> None:
    async def main() -> dict[str, Any]:
        return await client.admin_command(addr, administration_token, cmd, organization_id=name)

    echo_reply(run_admin(main))


@click.command("status_organization", short_help="Get organization status")
@_admin_options
def status_organization(name: str, addr: BackendAddr, administration_token: str) -> None:
    """Print the status of organization NAME (bootstrapped, expiration date)."""
    _print_admin_command("organization_status", name, addr, administration_token)


@click.command("stats_organization", short_help="Get organization stats")
@_admin_options
def stats_organization(name: str, addr: BackendAddr, administration_token: str) -> None:
    """Print the statistics of organization NAME (users, data and metadata sizes)."""
    _print_admin_command("organization_stats", name, addr, administration_token)
