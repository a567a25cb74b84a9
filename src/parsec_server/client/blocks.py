"""File content in blocks (protocol/60-data-formats.md §8): the file cut into consecutive
slots of `blocksize` bytes, each encrypted with a key of its own; the manifest's
`BlockAccess` holds that key and the SHA-256 of the cleartext."""

from __future__ import annotations

import hashlib
import secrets

from parsec_server.api.codec import ID
from parsec_server.client.manifests import BlockAccess
from parsec_server.client.signed_data import DataError, secret_decrypt, secret_encrypt

_KEY_SIZE = 32


def new_block_access(data: bytes, offset: int) -> BlockAccess:
    """A new block (random id and key) for `data`, found at `offset` in its file."""
    return BlockAccess(
        id=ID.new(),
        key=secrets.token_bytes(_KEY_SIZE),
        offset=offset,
        size=len(data),
        digest=hashlib.sha256(data).digest(),
    )


def matches(access: BlockAccess, data: bytes) -> bool:
    """Whether `data` is the cleartext `access` describes."""
    return len(data) == access.size and hashlib.sha256(data).digest() == access.digest


def encrypt_block(access: BlockAccess, data: bytes) -> bytes:
    return secret_encrypt(access.key, data)


def decrypt_block(access: BlockAccess, ciphertext: bytes) -> bytes:
    """The cleartext; raise DataError unless its size and digest are the access's."""
    data = secret_decrypt(access.key, ciphertext)
    if not matches(access, data):
        raise DataError(f"Block {access.id} does not match its digest")
    return data
