"""The migration files shipped in `storage/postgresql/migrations/`.

* `NNNN_<name>.sql`: the Parsec 2.0.0 layout, level by level (also applied on top of a
  database Parsec 2.0.0 left at a lower level). Numbers >= 2 are recorded in `migration`
  with Parsec 2.0.0's names.
* `extras/NNNN_<name>.sql`: what our server adds (objects named `ext_*`, plus the columns
  listed in `EXTRAS_COLUMNS`), recorded in `ext_migration`.
* `legacy/NNNN_<name>.sql`: the layout of our earlier releases, recorded in `migration`
  under the same names; `legacy/to_reference.sql` turns its level 5 into Parsec 2.0.0's.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

from parsec_server.backend.storage.migration_files import load_numbered_files

__all__ = [
    "CONVERSION_FILE_NAME",
    "Migration",
    "Series",
    "conversion",
    "load_series",
    "migrations_directory",
    "split_statements",
]

CONVERSION_FILE_NAME = "to_reference.sql"


class Series(enum.Enum):
    REFERENCE = ""
    EXTRAS = "extras"
    LEGACY = "legacy"

    @property
    def prefix(self) -> str:
        """How the series' files are named in the output (`extras/0001_...sql`)."""
        return f"{self.value}/" if self.value else ""


@dataclass(frozen=True, slots=True)
class Migration:
    idx: int  # 0 for the conversion script, which is not numbered
    name: str  # e.g. "human_handle"
    file_name: str  # e.g. "0003_human_handle.sql", "extras/0001_server_extras.sql"
    sql: str
    series: Series = Series.REFERENCE

    @property
    def extras(self) -> bool:
        return self.series is Series.EXTRAS


def migrations_directory() -> Traversable:
    # The `migrations` folder shares its name with the `migrations` module: resolve it
    # from the parent package (works from a source tree, a wheel or a zip).
    return files("parsec_server.backend.storage.postgresql") / "migrations"


def load_series(series: Series, directory: Traversable | None = None) -> list[Migration]:
    """The numbered files of `series` (in `directory`, by default the package's), sorted.

    Raises `ValueError` on a misnamed `.sql` file, a duplicate number or a gap.
    """
    if directory is None:
        directory = migrations_directory()
        if series.value:
            directory = directory / series.value
    ignore = [CONVERSION_FILE_NAME] if series is Series.LEGACY else []
    return [
        Migration(
            idx=file.idx,
            name=file.name,
            file_name=f"{series.prefix}{file.file_name}",
            sql=file.sql,
            series=series,
        )
        for file in load_numbered_files(directory, ignore)
    ]


def conversion() -> Migration:
    """`legacy/to_reference.sql`: our legacy layout at level 5 -> Parsec 2.0.0 level 5."""
    entry = migrations_directory() / Series.LEGACY.value / CONVERSION_FILE_NAME
    return Migration(
        idx=0,
        name="to_reference",
        file_name=f"{Series.LEGACY.prefix}{CONVERSION_FILE_NAME}",
        sql=entry.read_text(encoding="utf-8"),
        series=Series.LEGACY,
    )


def split_statements(sql: str) -> list[str]:
    """The statements of a migration file, to run (and time) one by one.

    Knows comments, quoted strings and identifiers; refuses dollar quoting, which our
    files do not use (a `;` inside a function body would be cut).
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end == -1 else end
            current.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end == -1:
                raise ValueError("Unterminated comment in migration")
            current.append(sql[i : end + 2])
            i = end + 2
        elif char in "'\"":
            end = i + 1
            while True:
                end = sql.find(char, end)
                if end == -1:
                    raise ValueError("Unterminated quote in migration")
                if sql.startswith(char * 2, end):  # doubled quote: escaped
                    end += 2
                    continue
                break
            current.append(sql[i : end + 1])
            i = end + 1
        elif char == "$" and re.match(r"\$\w*\$", sql[i:]) and not sql[i - 1 : i].isalnum():
            raise ValueError("Dollar-quoted bodies are not supported in migrations")
        elif char == ";":
            statements.append("".join(current))
            current = []
            i += 1
        else:
            current.append(char)
            i += 1
    statements.append("".join(current))
    return [statement.strip() for statement in statements if _has_code(statement)]


def _has_code(statement: str) -> bool:
    without_comments = re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.DOTALL)
    return bool(without_comments.strip())


def describe_statement(statement: str, width: int = 100) -> str:
    """The statement on one line, comments removed, cut at `width`: for progress lines."""
    code = re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.DOTALL)
    text = " ".join(code.split())
    return text if len(text) <= width else text[: width - 1] + "…"
