"""`parsec backend downgrade`: hand the database back to Parsec 2.0.0."""

from __future__ import annotations

import click

from parsec_server.backend.storage.postgresql.migrations import downgrade as downgrade_database
from parsec_server.cli.schema_command import run_schema_command, schema_options

__all__ = ["downgrade"]


@click.command(short_help="Hand the database back to Parsec 2.0.0")
@schema_options(dry_run_help="Print what would be done, change nothing")
def downgrade(
    db: str,
    db_first_tries_number: int,
    db_first_tries_sleep: int,
    dry_run: bool,
    force: bool,
    debug: bool,
) -> None:
    """Remove what this server adds to the Parsec 2.0.0 schema (stop the server first):
    Parsec 2.0.0 then runs on the database, its `parsec backend migrate` finding nothing
    to apply. One transaction."""
    run_schema_command(
        "Downgrade",
        downgrade_database,
        db=db,
        db_first_tries_number=db_first_tries_number,
        db_first_tries_sleep=db_first_tries_sleep,
        dry_run=dry_run,
        force=force,
        debug=debug,
    )
