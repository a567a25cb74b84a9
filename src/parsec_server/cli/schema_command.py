"""What `parsec backend migrate` and `parsec backend downgrade` share: their options
(those of Parsec 2.0.0's `migrate`, plus `--force`), the connection, and the output.

Output: `<Title> ✔` then one line per migration file, then the notes, on stdout once the
transaction is committed (or rolled back, for a dry run); progress lines of the long
steps on stderr while they run. On refusal or failure: `<Title> ✘` and one `Error:` line,
exit status 1, the database unchanged.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import click

from parsec_server.backend.storage.postgresql.migrations import Report, SchemaError
from parsec_server.backend.storage.postgresql.schema.activity import TOOL_APPLICATION_NAME

__all__ = ["SchemaAction", "connect_with_retries", "run_schema_command", "schema_options"]

_DEBUG_ENVVAR = "PARSEC_DEBUG"
_TRUE_STRINGS = ("1", "true", "t", "yes", "y")
_FALSE_STRINGS = ("0", "false", "f", "no", "n")

# Errors meaning "PostgreSQL is not reachable (yet)"; others (bad password, unknown
# database ...) will not go away by waiting.
_RETRYABLE_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)

SchemaAction = Callable[..., Awaitable[Report]]
F = TypeVar("F", bound=Callable[..., Any])


def _param_hint(param: click.Parameter) -> str:
    # As click 7 (the reference's) words it: `Invalid value for "--db": ...`
    return " / ".join(f'"{opt}"' for opt in param.opts)


def _validate_db_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter(
            "Must start with `postgresql://` or `postgres://`",
            ctx=ctx,
            param_hint=_param_hint(param),
        )
    return value


def _debug_from_env(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # Read by hand: click's own boolean parsing of environment variables is more lenient
    # (`on`/`off`) than the documented one.
    if value:
        return True
    raw = os.environ.get(_DEBUG_ENVVAR)
    if not raw:
        return False
    if raw.lower() in _TRUE_STRINGS:
        return True
    if raw.lower() in _FALSE_STRINGS:
        return False
    raise click.BadParameter(
        f"{raw} is not a valid boolean", ctx=ctx, param_hint=_param_hint(param)
    )


def schema_options(dry_run_help: str) -> Callable[[F], F]:
    def decorate(command: F) -> F:
        options = [
            click.option(
                "--db",
                required=True,
                envvar="PARSEC_DB",
                show_envvar=True,
                metavar="URL",
                callback=_validate_db_url,
                help="PostgreSQL database url (postgresql://user:password@host:port/database)",
            ),
            click.option(
                "--db-first-tries-number",
                default=1,
                show_default=True,
                envvar="PARSEC_DB_FIRST_TRIES_NUMBER",
                show_envvar=True,
                type=click.IntRange(min=0),
                help="Number of tries allowed during initial database connection (0 is unlimited)",
            ),
            click.option(
                "--db-first-tries-sleep",
                default=1,
                show_default=True,
                envvar="PARSEC_DB_FIRST_TRIES_SLEEP",
                show_envvar=True,
                type=click.IntRange(min=0),
                help="Number of seconds waited between tries during initial database connection",
            ),
            click.option("--dry-run", is_flag=True, help=dry_run_help),
            click.option(
                "--force",
                is_flag=True,
                help="Go on while other clients (a running server?) use the database",
            ),
            click.option(
                "--debug",
                is_flag=True,
                callback=_debug_from_env,
                help=f"Show the traceback of fatal errors  [env var: {_DEBUG_ENVVAR}]",
            ),
        ]
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


async def connect_with_retries(
    url: str, tries_number: int, tries_sleep: float
) -> asyncpg.Connection:
    """Connect to PostgreSQL, trying `tries_number` times (0: forever), `tries_sleep`
    seconds apart, while the server is unreachable."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await asyncpg.connect(
                url, server_settings={"application_name": TOOL_APPLICATION_NAME}
            )
        except _RETRYABLE_CONNECT_ERRORS as exc:
            if tries_number and attempt >= tries_number:
                raise
            remaining = "unlimited" if not tries_number else tries_number - attempt
            click.echo(
                f"Initial database connection failed ({_one_line(exc)}), "
                f"retrying in {tries_sleep}s (tries remaining: {remaining})",
                err=True,
            )
            await asyncio.sleep(tries_sleep)


def _progress(line: str) -> None:
    click.echo(line, err=True)


async def _run(
    action: SchemaAction,
    db: str,
    tries_number: int,
    tries_sleep: float,
    dry_run: bool,
    force: bool,
) -> Report:
    conn = await connect_with_retries(db, tries_number, tries_sleep)
    try:
        report: Report = await action(conn, dry_run=dry_run, force=force, on_progress=_progress)
        return report
    finally:
        await conn.close()


def run_schema_command(
    title: str,
    action: SchemaAction,
    *,
    db: str,
    db_first_tries_number: int,
    db_first_tries_sleep: int,
    dry_run: bool,
    force: bool,
    debug: bool,
) -> None:
    try:
        report = asyncio.run(
            _run(action, db, db_first_tries_number, db_first_tries_sleep, dry_run, force)
        )
    except KeyboardInterrupt:
        click.echo(f"{title} ✘")
        click.echo("Error: interrupted; run the command again (it does only what is left)")
        sys.exit(130)
    except Exception as exc:
        click.echo(f"{title} ✘")
        if debug:
            raise
        if isinstance(exc, SchemaError):
            click.echo(f"Error: {_one_line(exc)}; nothing was changed")
        else:
            click.echo(f"Error: {_one_line(exc)}")
        sys.exit(1)
    click.echo(f"{title} ✔")
    for line in report.lines:
        click.echo(line)
    for note in report.notes:
        click.echo(f"note: {note}")
    if dry_run:
        click.echo("Dry run: nothing was changed")


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return message or type(exc).__name__
