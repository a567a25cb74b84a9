"""The step-4 payloads of the invitation rendezvous (protocol/60-data-formats.md §9.2).

Each is a msgpack map with a `type` key, zlib-compressed, then encrypted with the
rendezvous' shared key in a SecretBox (nonce(24) || MAC(16) || ciphertext). They are not
signed: the SAS check authenticated the channel.
"""

from __future__ import annotations

import zlib
from typing import TypeVar

import msgspec
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from parsec_server.api import codec
from parsec_server.api.codec import ID
from parsec_server.api.ids import (
    DeviceID,
    HumanHandle,
    PublicKeyBytes,
    UserProfile,
    VerifyKeyBytes,
    check_human_handle,
)

_MAX_INFLATED_SIZE = 1024 * 1024
KeyBytes = PublicKeyBytes  # any 32-byte key: X25519 private key, SecretBox key


class InvalidPayload(Exception):
    """A payload that does not decrypt, inflate or decode as the expected document."""


class InvitePayload(msgspec.Struct, frozen=True, tag_field="type"):
    def __post_init__(self) -> None:
        for name in ("requested_human_handle", "human_handle"):
            handle = getattr(self, name, None)
            if handle is not None:
                check_human_handle(handle)


class InviteUserData(InvitePayload, frozen=True, tag="invite_user_data"):
    """Claimer -> greeter: the new user's public key and first device's verify key."""

    public_key: PublicKeyBytes
    verify_key: VerifyKeyBytes
    requested_device_label: str | None = None
    requested_human_handle: HumanHandle | None = None


class InviteUserConfirmation(InvitePayload, frozen=True, tag="invite_user_confirmation"):
    """Greeter -> claimer: what the greeter granted and created."""

    device_id: DeviceID
    profile: UserProfile
    root_verify_key: VerifyKeyBytes
    device_label: str | None = None
    human_handle: HumanHandle | None = None


class InviteDeviceData(InvitePayload, frozen=True, tag="invite_device_data"):
    """Claimer -> greeter: the new device's verify key."""

    verify_key: VerifyKeyBytes
    requested_device_label: str | None = None


class InviteDeviceConfirmation(InvitePayload, frozen=True, tag="invite_device_confirmation"):
    """Greeter -> claimer: the new device and the user's secrets it shares."""

    device_id: DeviceID
    profile: UserProfile
    private_key: KeyBytes  # the user's X25519 private key
    user_manifest_id: ID
    user_manifest_key: KeyBytes
    root_verify_key: VerifyKeyBytes
    device_label: str | None = None
    human_handle: HumanHandle | None = None


P = TypeVar("P", bound=InvitePayload)


def encrypt_payload(payload: InvitePayload, shared_key: bytes) -> bytes:
    return bytes(SecretBox(shared_key).encrypt(zlib.compress(codec.encode(payload))))


def decrypt_payload(cls: type[P], encrypted: bytes, shared_key: bytes) -> P:
    try:
        compressed = SecretBox(shared_key).decrypt(encrypted)
    except (CryptoError, TypeError, ValueError) as exc:
        raise InvalidPayload(f"cannot decrypt the {cls.__name__} payload") from exc
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, _MAX_INFLATED_SIZE)
    except zlib.error as exc:
        raise InvalidPayload(f"invalid compressed {cls.__name__} payload") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise InvalidPayload(f"invalid compressed {cls.__name__} payload")
    try:
        return codec.decoder(cls).decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise InvalidPayload(f"invalid {cls.__name__} payload: {exc}") from exc
