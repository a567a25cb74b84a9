"""`--db` values: `MOCKED`, a `postgresql://` URL, or `sqlite:PATH`."""

from __future__ import annotations

from pathlib import Path

from parsec_server.backend.config import SQLITE_PREFIX
from parsec_server.cli.option_errors import option_error

MOCKED = "MOCKED"


def parse_db_url(db_url: str) -> str:
    """`--db`: `MOCKED`, a `postgresql://` URL, or `sqlite:PATH` (made absolute: relative to
    the working directory)."""
    if db_url.startswith(SQLITE_PREFIX):
        return f"{SQLITE_PREFIX}{sqlite_path_of(db_url)}"
    if db_url != MOCKED and not db_url.startswith(("postgresql://", "postgres://")):
        raise option_error(
            "db", f"`{db_url}` is neither `MOCKED`, a `postgresql://` URL nor `sqlite:PATH`"
        )
    return db_url


def sqlite_path_of(db_url: str) -> Path:
    """The absolute path of `sqlite:PATH`; raises `click.BadParameter` without a path."""
    path = db_url.removeprefix(SQLITE_PREFIX)
    if not path or path.startswith(":"):  # nothing, or SQLite's `:memory:`
        raise option_error("db", "`sqlite:` needs the path of the database file: `sqlite:PATH`")
    return Path(path).absolute()
