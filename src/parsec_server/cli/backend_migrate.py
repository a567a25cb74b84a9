"""`parsec backend migrate`: bring a PostgreSQL database up to the current schema."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import click

from parsec_server.backend.config import SQLITE_PREFIX
from parsec_server.backend.storage.postgresql.migrations import (
    MigrationOutcome,
    apply_migrations,
)
from parsec_server.backend.storage.sqlite.migrations import (
    MigrationOutcome as SQLiteMigrationOutcome,
)
from parsec_server.backend.storage.sqlite.migrations import migrate_file
from parsec_server.cli.db_params import sqlite_path_of

__all__ = ["connect_with_retries", "migrate"]

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


def _param_hint(param: click.Parameter) -> str:
    # As click 7 (the reference's) words it: `Invalid value for "--db": ...`
    return " / ".join(f'"{opt}"' for opt in param.opts)


def _validate_db_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value.startswith(SQLITE_PREFIX):
        return f"{SQLITE_PREFIX}{sqlite_path_of(value)}"
    if not value.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter(
            "Must start with `postgresql://`, `postgres://` or `sqlite:`",
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


async def connect_with_retries(
    url: str, tries_number: int, tries_sleep: float
) -> asyncpg.Connection:
    """Connect to PostgreSQL, trying `tries_number` times (0: forever), `tries_sleep`
    seconds apart, while the server is unreachable."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await asyncpg.connect(url)
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


async def _migrate(
    db_url: str, tries_number: int, tries_sleep: float, dry_run: bool
) -> list[MigrationOutcome]:
    conn = await connect_with_retries(db_url, tries_number, tries_sleep)
    try:
        return await apply_migrations(conn, dry_run=dry_run)
    finally:
        await conn.close()


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return message or type(exc).__name__


@click.command(short_help="Apply the pending database migrations")
@click.option(
    "--db",
    required=True,
    envvar="PARSEC_DB",
    show_envvar=True,
    metavar="URL",
    callback=_validate_db_url,
    help="PostgreSQL database url (postgresql://user:password@host:port/database), or "
    "sqlite:PATH for a SQLite database file (created, with its directory, if missing)",
)
@click.option(
    "--db-first-tries-number",
    default=1,
    show_default=True,
    envvar="PARSEC_DB_FIRST_TRIES_NUMBER",
    show_envvar=True,
    type=click.IntRange(min=0),
    help="Number of tries allowed during initial database connection (0 is unlimited)",
)
@click.option(
    "--db-first-tries-sleep",
    default=1,
    show_default=True,
    envvar="PARSEC_DB_FIRST_TRIES_SLEEP",
    show_envvar=True,
    type=click.IntRange(min=0),
    help="Number of seconds waited between tries during initial database connection",
)
@click.option("--dry-run", is_flag=True, help="List the pending migrations, apply nothing")
@click.option(
    "--debug",
    is_flag=True,
    callback=_debug_from_env,
    help=f"Show the traceback of fatal errors  [env var: {_DEBUG_ENVVAR}]",
)
def migrate(
    db: str, db_first_tries_number: int, db_first_tries_sleep: int, dry_run: bool, debug: bool
) -> None:
    """Update the database schema (run it before `parsec backend run` after each upgrade)."""
    click.echo("Migrate ", nl=False)
    try:
        if db.startswith(SQLITE_PREFIX):
            outcomes: Sequence[MigrationOutcome | SQLiteMigrationOutcome] = migrate_file(
                Path(db.removeprefix(SQLITE_PREFIX)), dry_run=dry_run
            )
        else:
            outcomes = asyncio.run(
                _migrate(db, db_first_tries_number, db_first_tries_sleep, dry_run)
            )
    except Exception as exc:
        click.echo("✘")
        if debug:
            raise
        click.echo(f"Error: {_one_line(exc)}")
        sys.exit(1)
    click.echo("✔")
    for outcome in outcomes:
        click.echo(outcome.line)
