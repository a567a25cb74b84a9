"""The envelope of the data clients exchange through the server (manifests, messages),
as the 2.0.0 client builds it (protocol/60-data-formats.md §2, §4):

    signed = Ed25519 signature (64) || zlib(msgpack(fields))

then, for a manifest, `SecretBox(key).encrypt(signed)` (nonce(24) || MAC(16) || ciphertext)
and, for a message, `SealedBox(recipient public key).encrypt(signed)`.
"""

from __future__ import annotations

import zlib
from typing import TypeVar

import msgspec
from nacl.exceptions import CryptoError as NaclCryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.secret import SecretBox
from nacl.signing import SigningKey

from parsec_server.api import codec
from parsec_server.api.crypto import CryptoError, sign, verify_signed

T = TypeVar("T")

# Far above any manifest a blob may carry (the protocol caps a blob at 1 MiB, compressed).
_MAX_INFLATED_SIZE = 64 * 1024 * 1024


class DataError(Exception):
    """Data that cannot be decrypted, verified or decoded; `str(exc)` says why."""


def sign_data(value: object, signing_key: SigningKey) -> bytes:
    """msgpack, zlib, then the signature of the compressed bytes in front."""
    return sign(signing_key, zlib.compress(codec.encode(value)))


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, _MAX_INFLATED_SIZE)
    except zlib.error as exc:
        raise DataError("Invalid compressed data") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise DataError("Invalid compressed data")
    return raw


def verify_data(signed: bytes, verify_key: bytes) -> bytes:
    """The msgpack bytes of a signed envelope whose signature checks."""
    try:
        compressed = verify_signed(verify_key, signed)
    except CryptoError as exc:
        raise DataError(str(exc)) from exc
    return _inflate(compressed)


def decode_data(decoder: msgspec.msgpack.Decoder[T], raw: bytes) -> T:
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise DataError(f"Invalid data: {exc}") from exc


def secret_encrypt(key: bytes, plaintext: bytes) -> bytes:
    """nonce(24) || MAC(16) || ciphertext, with a random nonce."""
    return bytes(SecretBox(key).encrypt(plaintext))


def secret_decrypt(key: bytes, ciphertext: bytes) -> bytes:
    try:
        return SecretBox(key).decrypt(ciphertext)
    except (NaclCryptoError, ValueError, TypeError) as exc:
        raise DataError("Decryption failed (wrong key or corrupted data)") from exc


def seal_for(public_key: bytes, plaintext: bytes) -> bytes:
    return bytes(SealedBox(PublicKey(public_key)).encrypt(plaintext))


def unseal(private_key: PrivateKey, ciphertext: bytes) -> bytes:
    try:
        return SealedBox(private_key).decrypt(ciphertext)
    except (NaclCryptoError, ValueError, TypeError) as exc:
        raise DataError("Cannot open the sealed message (not for us, or corrupted)") from exc
