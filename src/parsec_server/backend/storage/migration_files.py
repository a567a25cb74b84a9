"""Numbered SQL migration files (`NNNN_<name>.sql`), as both storages ship them.

Only the reading and the checks of the names live here; what a migration is and how it
is applied and recorded belongs to each storage (`postgresql/schema/files.py`,
`sqlite/migrations.py`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources.abc import Traversable

__all__ = ["NumberedFile", "load_numbered_files"]

_FILE_NAME_PATTERN = re.compile(r"^(?P<idx>\d{4})_(?P<name>\w+)\.sql$")


@dataclass(frozen=True, slots=True)
class NumberedFile:
    idx: int  # e.g. 3
    name: str  # e.g. "human_handle"
    file_name: str  # e.g. "0003_human_handle.sql"
    sql: str


def load_numbered_files(directory: Traversable, ignore: Iterable[str] = ()) -> list[NumberedFile]:
    """The `.sql` files of `directory` (those named in `ignore` apart), sorted by number.

    Raises `ValueError` on a misnamed `.sql` file, a duplicate number or a gap (numbers
    are 1..n).
    """
    ignored = set(ignore)
    found: dict[int, NumberedFile] = {}
    for entry in directory.iterdir():
        if not entry.is_file() or not entry.name.endswith(".sql") or entry.name in ignored:
            continue
        match = _FILE_NAME_PATTERN.match(entry.name)
        if match is None:
            raise ValueError(f"Invalid migration file name `{entry.name}` (expected NNNN_name.sql)")
        idx = int(match.group("idx"))
        if idx in found:
            raise ValueError(
                f"Migrations `{found[idx].file_name}` and `{entry.name}` have the same number"
            )
        found[idx] = NumberedFile(
            idx=idx,
            name=match.group("name"),
            file_name=entry.name,
            sql=entry.read_text(encoding="utf-8"),
        )
    expected = list(range(1, len(found) + 1))
    if sorted(found) != expected:
        raise ValueError(f"Migration numbers must be 1..n without gap, got {sorted(found)}")
    return [found[idx] for idx in expected]
