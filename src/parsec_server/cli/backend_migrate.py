"""`parsec backend migrate`: bring a PostgreSQL database to the schema of this server,
from an empty database, a Parsec 2.0.0 one at any level, or our previous layout."""

from __future__ import annotations

import click

from parsec_server.backend.storage.postgresql.migrations import migrate as migrate_database
from parsec_server.cli.schema_command import run_schema_command, schema_options

__all__ = ["migrate"]


@click.command(short_help="Apply the pending database migrations")
@schema_options(dry_run_help="Print what would be done, change nothing")
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
    of earlier parsec-server releases, in one transaction.
    """
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
