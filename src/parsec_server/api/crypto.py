"""The few cryptographic operations the server performs: Ed25519 signature checks."""

from __future__ import annotations

import hmac
import secrets

from nacl.exceptions import BadSignatureError
from nacl.exceptions import ValueError as NaclValueError
from nacl.signing import SigningKey, VerifyKey

SIGNATURE_SIZE = 64


class CryptoError(Exception):
    pass


def verify_signed(verify_key: bytes, signed: bytes) -> bytes:
    """Check a NaCl "combined" signed message (signature || message); return the message."""
    if len(signed) < SIGNATURE_SIZE:
        raise CryptoError("Signature was forged or corrupt")
    try:
        return VerifyKey(verify_key).verify(signed)
    except (BadSignatureError, NaclValueError, TypeError) as exc:
        raise CryptoError("Signature was forged or corrupt") from exc


def sign(signing_key: SigningKey, message: bytes) -> bytes:
    return bytes(signing_key.sign(message))


def random_challenge() -> bytes:
    return secrets.token_bytes(48)


def new_bootstrap_token() -> str:
    return secrets.token_hex(32)


def secrets_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf8"), b.encode("utf8"))
