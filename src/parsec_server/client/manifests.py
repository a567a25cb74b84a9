"""Manifests as the 2.0.0 client stores them in vlobs (protocol/60-data-formats.md §7).

A manifest travels as `SecretBox(key).encrypt(signed envelope)` (`signed_data`), with the
user manifest key (user manifest) or the workspace key of the realm's current encryption
revision (the others). Reading one checks what the 2.0.0 client checks: the signature of
the author the server reports, and that the manifest's author, timestamp, id and version
are those of the vlob read.

The 2.0.0 client reads a file manifest's blocks as the consecutive slots of the file:
block `i` starts at `i * blocksize` and every block but the last is `blocksize` long
(`FileManifest.check_layout`).
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec
from nacl.signing import SigningKey

from parsec_server.api import codec
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import DeviceID, RealmRole
from parsec_server.client.signed_data import (
    DataError,
    decode_data,
    secret_decrypt,
    secret_encrypt,
    sign_data,
    verify_data,
)

DEFAULT_BLOCKSIZE = 512 * 1024
_MAX_ENTRY_NAME_BYTES = 255

SecretKeyBytes = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Digest = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Blocksize = Annotated[int, msgspec.Meta(ge=8)]
WorkspaceName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class InvalidEntryName(ValueError):
    pass


def check_entry_name(name: str) -> str:
    """A file or folder name: 1 to 255 bytes of UTF-8, not `.` or `..`, no `/` nor NUL."""
    if (
        not 0 < len(name.encode("utf-8")) <= _MAX_ENTRY_NAME_BYTES
        or name in (".", "..")
        or "/" in name
        or "\x00" in name
    ):
        raise InvalidEntryName(f"Invalid entry name: {name!r}")
    return name


def _check_children(children: dict[str, ID]) -> None:
    for name in children:
        check_entry_name(name)


class BlockAccess(msgspec.Struct, frozen=True):
    """Where a block of a file is, and how to open it: `key` encrypts the block,
    `digest` is the SHA-256 of its cleartext, `offset` and `size` place it in the file."""

    id: ID
    key: SecretKeyBytes
    offset: NonNegative
    size: NonNegative
    digest: Digest


class WorkspaceEntry(msgspec.Struct, frozen=True):
    """A workspace in its user's manifest: its key at `encryption_revision`, and the role
    last seen (None: access lost)."""

    name: WorkspaceName
    id: ID
    key: SecretKeyBytes
    encryption_revision: NonNegative
    encrypted_on: DateTime
    role_cached_on: DateTime
    role: RealmRole | None

    def __post_init__(self) -> None:
        check_entry_name(self.name)


class _Manifest(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    # None only in manifests of clients <= 1.14, never accepted from a vlob (author check).
    author: DeviceID | None
    timestamp: DateTime
    id: ID
    version: NonNegative
    created: DateTime
    updated: DateTime


class UserManifest(_Manifest, frozen=True, kw_only=True, tag="user_manifest"):
    last_processed_message: NonNegative
    workspaces: tuple[WorkspaceEntry, ...]

    def workspace(self, workspace_id: ID) -> WorkspaceEntry | None:
        return next((w for w in self.workspaces if w.id == workspace_id), None)


class WorkspaceManifest(_Manifest, frozen=True, kw_only=True, tag="workspace_manifest"):
    children: dict[str, ID]

    def __post_init__(self) -> None:
        _check_children(self.children)


class FolderManifest(_Manifest, frozen=True, kw_only=True, tag="folder_manifest"):
    parent: ID
    children: dict[str, ID]

    def __post_init__(self) -> None:
        _check_children(self.children)


class FileManifest(_Manifest, frozen=True, kw_only=True, tag="file_manifest"):
    parent: ID
    size: NonNegative
    blocksize: Blocksize
    blocks: tuple[BlockAccess, ...]

    def check_layout(self) -> None:
        """Raise DataError unless the blocks are the file's consecutive slots of
        `blocksize` bytes (the only layout the 2.0.0 client reads)."""
        position = 0
        for index, block in enumerate(self.blocks):
            if block.offset != position or block.offset != index * self.blocksize:
                raise DataError(f"Block {index} of file {self.id} is not where expected")
            if block.size == 0 or block.size > self.blocksize:
                raise DataError(f"Block {index} of file {self.id} has a bad size")
            position += block.size
        if position != self.size:
            raise DataError(f"The blocks of file {self.id} do not add up to its size")


Manifest = UserManifest | WorkspaceManifest | FolderManifest | FileManifest
ChildManifest = FolderManifest | FileManifest
M = TypeVar("M", UserManifest, WorkspaceManifest, FolderManifest, FileManifest)

_decoder: msgspec.msgpack.Decoder[Manifest] = codec.decoder(Manifest)  # type: ignore[arg-type]


def dump_manifest(manifest: Manifest, signing_key: SigningKey, key: bytes) -> bytes:
    """The vlob blob: signed by the author's device, encrypted with `key`."""
    return secret_encrypt(key, sign_data(manifest, signing_key))


def load_manifest(
    blob: bytes,
    key: bytes,
    author_verify_key: bytes,
    *,
    expected_author: str,
    expected_timestamp: DateTime,
    expected_id: ID,
    expected_version: int,
) -> Manifest:
    """Decrypt, verify and decode a vlob's blob; raise DataError unless it is the
    manifest of that vlob version (author, timestamp, id, version)."""
    raw = verify_data(secret_decrypt(key, blob), author_verify_key)
    manifest = decode_data(_decoder, raw)
    if manifest.author != expected_author:
        raise DataError(f"Invalid author: expected `{expected_author}`, got `{manifest.author}`")
    if manifest.timestamp != expected_timestamp:
        raise DataError(
            f"Invalid timestamp: expected `{expected_timestamp}`, got `{manifest.timestamp}`"
        )
    if manifest.id != expected_id:
        raise DataError(f"Invalid entry ID: expected `{expected_id}`, got `{manifest.id}`")
    if manifest.version != expected_version:
        raise DataError(f"Invalid version: expected `{expected_version}`, got `{manifest.version}`")
    if isinstance(manifest, FileManifest):
        manifest.check_layout()
    return manifest


def expect_kind(manifest: Manifest, kind: type[M]) -> M:
    if not isinstance(manifest, kind):
        raise DataError(f"Expected a {kind.__name__}, got a {type(manifest).__name__}")
    return manifest
