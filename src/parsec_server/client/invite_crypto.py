"""Cryptography of the API 2 invitation rendezvous (protocol/60-data-formats.md §9.1).

Both sides draw an ephemeral X25519 key pair; the raw X25519 output is the shared
SecretBox key. The claimer commits to its nonce (SHA-256) before the greeter reveals its
own, then both derive two 20-bit short authentication strings (SAS) from the nonces with a
keyed BLAKE2b: each human reads their code to the other, who picks it among 3 candidates.
"""

from __future__ import annotations

import hashlib
import random
import secrets

from nacl.bindings import crypto_scalarmult
from nacl.public import PrivateKey

SAS_SYMBOLS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
SAS_LENGTH = 4
SAS_BITS = 20  # 4 symbols of 5 bits
NONCE_SIZE = 64
_SAS_DIGEST_SIZE = 5  # 40 bits: the claimer's code, then the greeter's
_SYMBOL_BITS = 5

_system_random = random.SystemRandom()


def shared_secret_key(own_private_key: PrivateKey, peer_public_key: bytes) -> bytes:
    """The raw X25519 output, used as is as a SecretBox key (no KDF, as the reference)."""
    return crypto_scalarmult(bytes(own_private_key), peer_public_key)


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def hash_nonce(nonce: bytes) -> bytes:
    return hashlib.sha256(nonce).digest()


def sas_code_from_int(value: int) -> str:
    """A 20-bit integer as 4 symbols, least significant symbol first."""
    if not 0 <= value < 1 << SAS_BITS:
        raise ValueError(f"SAS value out of range: {value}")
    mask = len(SAS_SYMBOLS) - 1
    return "".join(SAS_SYMBOLS[(value >> (_SYMBOL_BITS * i)) & mask] for i in range(SAS_LENGTH))


def compute_sas_codes(
    claimer_nonce: bytes, greeter_nonce: bytes, shared_key: bytes
) -> tuple[str, str]:
    """(claimer code, greeter code): the low 20 bits of the keyed BLAKE2b digest read as
    a big-endian integer, then the next 20 bits."""
    # libsodium's keyed `crypto_generichash` is plain keyed BLAKE2b.
    digest = hashlib.blake2b(
        claimer_nonce + greeter_nonce, digest_size=_SAS_DIGEST_SIZE, key=shared_key
    ).digest()
    number = int.from_bytes(digest, "big")
    mask = (1 << SAS_BITS) - 1
    return sas_code_from_int(number & mask), sas_code_from_int((number >> SAS_BITS) & mask)


def sas_code_candidates(
    valid_code: str, size: int = 3, rng: random.Random = _system_random
) -> list[str]:
    """`valid_code` and `size - 1` other distinct random codes, shuffled."""
    if size < 1:
        raise ValueError("At least one candidate is needed")
    candidates = {valid_code}
    while len(candidates) < size:
        candidates.add(sas_code_from_int(rng.randrange(1 << SAS_BITS)))
    ordered = sorted(candidates)
    rng.shuffle(ordered)
    return ordered
