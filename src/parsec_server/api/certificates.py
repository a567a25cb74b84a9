"""Certificates the server verifies and stores (see protocol/60-data-formats.md §4-5).

A certificate on the wire is `signature(64) || zlib(msgpack(fields))`. The server checks the
signature, decodes the fields, then the author; it always stores and returns the bytes as
received.
"""

from __future__ import annotations

import zlib
from typing import TypeVar

import msgspec
from nacl.signing import SigningKey

from parsec_server.api import codec
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.crypto import SIGNATURE_SIZE, CryptoError, sign, verify_signed
from parsec_server.api.ids import (
    DeviceID,
    DeviceLabel,
    HumanHandle,
    PublicKeyBytes,
    RealmRole,
    UserID,
    UserProfile,
    VerifyKeyBytes,
    check_human_handle,
    check_id_byte_lengths,
)

# A certificate is a few hundred bytes; refuse to inflate anything absurd.
_MAX_INFLATED_SIZE = 1024 * 1024


class CertificateError(Exception):
    """The certificate does not verify; `str(exc)` is the detail shown to the client."""


class _Certificate(msgspec.Struct, frozen=True, tag_field="type"):
    author: DeviceID | None
    timestamp: DateTime

    def __post_init__(self) -> None:
        check_id_byte_lengths(self)


class UserCertificate(_Certificate, frozen=True, tag="user_certificate"):
    user_id: UserID
    public_key: PublicKeyBytes
    is_admin: bool
    human_handle: HumanHandle | None = None
    profile: UserProfile | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.human_handle is not None:
            check_human_handle(self.human_handle)
        if self.is_admin and self.profile not in (msgspec.UNSET, UserProfile.ADMIN):
            raise ValueError("Fields `profile` and `is_admin` have incompatible values")

    @property
    def effective_profile(self) -> UserProfile:
        if isinstance(self.profile, UserProfile):
            return self.profile
        return UserProfile.ADMIN if self.is_admin else UserProfile.STANDARD


class DeviceCertificate(_Certificate, frozen=True, tag="device_certificate"):
    device_id: DeviceID
    verify_key: VerifyKeyBytes
    device_label: DeviceLabel | None = None


class RevokedUserCertificate(_Certificate, frozen=True, tag="revoked_user_certificate"):
    author: DeviceID
    user_id: UserID


class RealmRoleCertificate(_Certificate, frozen=True, tag="realm_role_certificate"):
    author: DeviceID
    realm_id: ID
    user_id: UserID
    role: RealmRole | None


C = TypeVar("C", bound=_Certificate)

_decoders: dict[type[_Certificate], msgspec.msgpack.Decoder[_Certificate]] = {}


def _decoder_for(cls: type[C]) -> msgspec.msgpack.Decoder[C]:
    dec = _decoders.get(cls)
    if dec is None:
        dec = _decoders[cls] = codec.decoder(cls)
    return dec  # type: ignore[return-value]


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, _MAX_INFLATED_SIZE)
    except zlib.error as exc:
        raise CertificateError("Invalid compressed data") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise CertificateError("Invalid compressed data")
    return raw


def unsecure_load(cls: type[C], signed: bytes) -> C:
    """Decode without checking the signature (for certificates already verified)."""
    raw = _inflate(signed[SIGNATURE_SIZE:])
    try:
        return _decoder_for(cls).decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise CertificateError(f"Invalid certificate content: {exc}") from exc


def verify_and_load(
    cls: type[C], signed: bytes, verify_key: bytes, expected_author: str | None
) -> C:
    """Check signature, content and author; raise CertificateError otherwise."""
    try:
        verify_signed(verify_key, signed)
    except CryptoError as exc:
        raise CertificateError(str(exc)) from exc
    certificate = unsecure_load(cls, signed)
    if certificate.author != expected_author:
        expected = "<root key>" if expected_author is None else expected_author
        raise CertificateError(f"Invalid author: expected `{expected}`, got `{certificate.author}`")
    return certificate


def is_redacted_copy_of(full: C, redacted: C, field: str) -> bool:
    """Whether `redacted` equals `full` once its `field` is set to the full one's."""
    return msgspec.structs.replace(redacted, **{field: getattr(full, field)}) == full


def sign_certificate(certificate: _Certificate, signing_key: SigningKey) -> bytes:
    """Serialize, compress and sign (client side, and tests)."""
    return sign(signing_key, zlib.compress(codec.encode(certificate)))
