"""`parsec backend migrate`: bring a PostgreSQL database to the schema of this server,
from an empty database, a Parsec 2.0.0 one at any level, or our previous layout; or a
SQLite database file to its schema (docs/storage-sqlite.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from parsec_server.backend.config import SQLITE_PREFIX
from parsec_server.backend.storage.postgresql.migrations import migrate as migrate_database
from parsec_server.backend.storage.sqlite.migrations import migrate_file
from parsec_server.cli.schema_command import one_line, run_schema_command, schema_options

__all__ = ["migrate"]


@click.command(short_help="Apply the pending database migrations")
@schema_options(dry_run_help="Print what would be done, change nothing", sqlite=True)
def migrate(
    db: str,
    db_first_tries_number: int,
    db_first_tries_sleep: int,
    dry_run: bool,
    force: bool,
    debug: bool,
) -> None:
    """Update the database schema (run it before `parsec backend run` after each upgrade).

    Takes over a Parsec 2.0.0 database (stop its server first) and converts the layout
    of earlier parsec-server releases, in one transaction. A SQLite file is created (with
    its directory) if missing.
    """
    if db.startswith(SQLITE_PREFIX):
        migrate_sqlite(Path(db.removeprefix(SQLITE_PREFIX)), dry_run=dry_run, debug=debug)
        return
    run_schema_command(
        "Migrate",
        migrate_database,
        db=db,
        db_first_tries_number=db_first_tries_number,
        db_first_tries_sleep=db_first_tries_sleep,
        dry_run=dry_run,
        force=force,
        debug=debug,
    )


def migrate_sqlite(path: Path, *, dry_run: bool, debug: bool) -> None:
    """The PostgreSQL output format: `Migrate ✔`, one line per migration file."""
    try:
        outcomes = migrate_file(path, dry_run=dry_run)
    except Exception as exc:
        click.echo("Migrate ✘")
        if debug:
            raise
        click.echo(f"Error: {one_line(exc)}")
        sys.exit(1)
    click.echo("Migrate ✔")
    for outcome in outcomes:
        click.echo(outcome.line)
    if dry_run:
        click.echo("Dry run: nothing was changed")
