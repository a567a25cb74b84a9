"""A local record of the blocks an upload has stored, so that the same upload run again
after an interruption skips them.

Why a local journal rather than block ids derived from the content: the 2.0.0 client gives
every block a random id and a random key; ids (or keys) computed from the cleartext would
tell the server, and anyone reading its block store, which blocks of which files are
equal. The journal keeps that knowledge on the device, encrypted with the device's local
key (`local_symkey`, which never leaves the device file).

One journal per (device, workspace, local file as it is: absolute path, size,
modification time, block size), named by an HMAC of those under the local key, so its
name says nothing of the file; in `<config dir>/uploads/<device slughash>/`. Each stored
block appends one record: a 4-byte big-endian length, then the encrypted `BlockAccess`
(id, key, offset, size, digest). A block is skipped only when its cleartext still has the
recorded size and digest. A record torn by a crash, or one that does not decrypt, ends
the journal (the blocks after it are uploaded again). The journal is removed once the
upload's manifests are all written.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct
from pathlib import Path

import msgspec

from parsec_server.api import codec
from parsec_server.api.codec import ID
from parsec_server.client.manifests import BlockAccess
from parsec_server.client.signed_data import DataError, secret_decrypt, secret_encrypt

_LENGTH = struct.Struct(">I")
_decoder = codec.decoder(BlockAccess)


class UploadJournal:
    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key

    @classmethod
    def for_file(
        cls, folder: Path, local_key: bytes, realm_id: ID, local: Path, blocksize: int
    ) -> UploadJournal:
        stat = local.stat()
        identity = "\0".join(
            [
                realm_id.hex,
                str(local.resolve()),
                str(stat.st_size),
                str(stat.st_mtime_ns),
                str(blocksize),
            ]
        )
        name = hmac.new(local_key, identity.encode(), hashlib.sha256).hexdigest()
        return cls(folder / f"{name}.journal", local_key)

    def load(self) -> dict[int, BlockAccess]:
        """The blocks recorded, by offset (nothing when there is no journal)."""
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        stored: dict[int, BlockAccess] = {}
        position = 0
        while position + _LENGTH.size <= len(content):
            (length,) = _LENGTH.unpack_from(content, position)
            record = content[position + _LENGTH.size : position + _LENGTH.size + length]
            if len(record) < length:
                break
            try:
                access = _decoder.decode(secret_decrypt(self._key, record))
            except (DataError, msgspec.DecodeError, msgspec.ValidationError):
                break
            stored[access.offset] = access
            position += _LENGTH.size + length
        return stored

    def record(self, access: BlockAccess) -> None:
        """Append one stored block (the folder created, mode 0700, when needed)."""
        record = secret_encrypt(self._key, codec.encode(access))
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, _LENGTH.pack(len(record)) + record)
        finally:
            os.close(fd)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
