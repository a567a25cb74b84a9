"""`--blockstore` values into a `BlockstoreConfig` (protocol/50-block-blockstore.md section 4).

Malformed values are usage errors (`click.BadParameter`); well-formed values that cannot run
are `StartupError`s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click

from parsec_server.backend.blockstore.node_storage import check_raid_nodes_distinct
from parsec_server.backend.config import (
    SQLITE_PREFIX,
    BlockstoreConfig,
    FileBlockstoreConfig,
    MockedBlockstoreConfig,
    PostgreSQLBlockstoreConfig,
    RaidBlockstoreConfig,
    S3BlockstoreConfig,
    SingleBlockstoreConfig,
    StartupError,
    SwiftBlockstoreConfig,
)
from parsec_server.cli.option_errors import option_error

MOCKED_DB = "MOCKED"
S3_FORMAT_ERROR = (
    "Invalid S3 config, must be `s3:[<endpoint_url>]:<region>:<bucket>:<key>:<secret>`"
)
SWIFT_FORMAT_ERROR = (
    "Invalid SWIFT config, must be `swift:<auth_url>:<tenant>:<container>:<user>:<password>`"
)
FILE_FORMAT_ERROR = "Invalid FILE config, must be `file:<directory>`"

RaidMode = Literal["RAID0", "RAID1", "RAID5"]
_RAID_MODES: dict[str, RaidMode] = {"RAID0": "RAID0", "RAID1": "RAID1", "RAID5": "RAID5"}


def _blockstore_error(message: str) -> click.BadParameter:
    return option_error("blockstore", message)


def split_blockstore_fields(value: str) -> list[str]:
    """Splits on `:`; `\\:` stands for `:` and `\\\\` for `\\`, any other backslash is kept."""
    fields: list[str] = []
    current: list[str] = []
    position = 0
    while position < len(value):
        char = value[position]
        following = value[position + 1 : position + 2]
        if char == "\\" and following in (":", "\\"):
            current.append(following)
            position += 2
            continue
        if char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
        position += 1
    fields.append("".join(current))
    return fields


def _with_https_default(url: str) -> str:
    if url and not url.startswith(("http://", "https://")):
        return f"https://{url}"
    return url


def parse_single_blockstore(value: str) -> SingleBlockstoreConfig:
    """`MOCKED`, `POSTGRESQL`, `s3:...` or `swift:...` (50-block-blockstore.md 4.1), or
    `file:<directory>` (ours, docs/storage-files.md)."""
    if value.upper() == "MOCKED":
        return MockedBlockstoreConfig()
    if value.upper() == "POSTGRESQL":
        return PostgreSQLBlockstoreConfig()
    fields = split_blockstore_fields(value)
    kind = fields[0].lower()
    if kind == "s3":
        if len(fields) != 6:
            raise _blockstore_error(S3_FORMAT_ERROR)
        _, endpoint, region, bucket, key, secret = fields
        return S3BlockstoreConfig(
            endpoint_url=_with_https_default(endpoint) or None,
            region=region,
            bucket=bucket,
            key=key,
            secret=secret,
        )
    if kind == "swift":
        if len(fields) != 6:
            raise _blockstore_error(SWIFT_FORMAT_ERROR)
        _, auth_url, tenant, container, user, password = fields
        return SwiftBlockstoreConfig(
            auth_url=_with_https_default(auth_url),
            tenant=tenant,
            container=container,
            user=user,
            password=password,
        )
    if kind == "file":
        return parse_file_blockstore(fields[1:])
    raise _blockstore_error(f"Invalid blockstore type `{fields[0]}`")


def parse_file_blockstore(fields: Sequence[str]) -> FileBlockstoreConfig:
    """`file:<directory>`: the rest of the value is the directory (`:` in it may be written
    as is or as `\\:`), relative to the current directory if not absolute."""
    directory = ":".join(fields)
    if not directory:
        raise _blockstore_error(FILE_FORMAT_ERROR)
    return FileBlockstoreConfig(path=Path(os.path.abspath(directory)))


@dataclass(frozen=True, slots=True)
class _RaidNode:
    mode: RaidMode
    index: int
    config: SingleBlockstoreConfig


def _parse_raid_node(value: str) -> _RaidNode | None:
    """`<mode>:<index>:<single value>`, or None when `value` is not a RAID node."""
    if not value.upper().startswith(tuple(_RAID_MODES)) or value.count(":") < 2:
        return None
    # The first two fields are cut without escaping (50-block-blockstore.md 4.2).
    mode_text, index_text, node_value = value.split(":", 2)
    mode = _RAID_MODES.get(mode_text.upper())
    if mode is None:
        raise _blockstore_error(f"Invalid blockstore type `{mode_text}`")
    try:
        index = int(index_text)
    except ValueError:
        raise _blockstore_error(f"Invalid node index `{index_text}` (must be integer)") from None
    return _RaidNode(mode=mode, index=index, config=parse_single_blockstore(node_value))


def _type_label(parsed: _RaidNode | SingleBlockstoreConfig) -> str:
    return parsed.mode if isinstance(parsed, _RaidNode) else parsed.type_name


def _raid_mode(parsed: _RaidNode | SingleBlockstoreConfig) -> RaidMode | None:
    return parsed.mode if isinstance(parsed, _RaidNode) else None


def _nodes_in_index_order(nodes: Sequence[_RaidNode]) -> tuple[SingleBlockstoreConfig, ...]:
    by_index: dict[int, SingleBlockstoreConfig] = {}
    for node in nodes:
        if node.index in by_index:
            raise _blockstore_error(
                f"Multiple configuration for node index `{node.index}` in RAID config"
            )
        by_index[node.index] = node.config
    for index in range(len(nodes)):
        if index not in by_index:
            raise _blockstore_error(f"Missing node index `{index}` in RAID config")
    return tuple(by_index[index] for index in range(len(nodes)))


def parse_blockstore_params(values: Sequence[str]) -> BlockstoreConfig:
    """The blockstore described by the `--blockstore` values (50-block-blockstore.md 4).

    Raises `click.BadParameter` (a usage error) for malformed values.
    """
    if not values:
        raise _blockstore_error("Missing blockstore config")
    parsed = [_parse_raid_node(value) or parse_single_blockstore(value) for value in values]
    first = parsed[0]
    for other in parsed[1:]:
        if _raid_mode(other) != _raid_mode(first):
            raise _blockstore_error(
                "Multiple blockstore config with different types: "
                f"{_type_label(first)}/{_type_label(other)}"
            )
    if not isinstance(first, _RaidNode):
        if len(parsed) > 1:
            raise _blockstore_error("Multiple blockstore configs only available for RAID mode")
        return first
    nodes = [node for node in parsed if isinstance(node, _RaidNode)]
    return RaidBlockstoreConfig(mode=first.mode, nodes=_nodes_in_index_order(nodes))


def check_blockstore_usable(blockstore: BlockstoreConfig, db_url: str) -> None:
    """Raises `StartupError` for a well-formed blockstore that cannot run."""
    if isinstance(blockstore, RaidBlockstoreConfig):
        nodes: tuple[SingleBlockstoreConfig, ...] = blockstore.nodes
    else:
        nodes = (blockstore,)
    if any(isinstance(node, PostgreSQLBlockstoreConfig) for node in nodes):
        if db_url == MOCKED_DB:
            raise StartupError("PostgreSQL block store is not available")
        if db_url.startswith(SQLITE_PREFIX):
            raise StartupError(
                "PostgreSQL block store is not available with an SQLite database: "
                "choose another --blockstore"
            )
    if isinstance(blockstore, RaidBlockstoreConfig):
        if blockstore.mode == "RAID5" and len(nodes) < 3:
            raise StartupError("RAID5 block store needs at least 3 nodes")
        check_raid_nodes_distinct(blockstore)
