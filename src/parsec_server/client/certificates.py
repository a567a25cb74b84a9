"""Building the certificates a client sends (full and redacted variants)."""

from __future__ import annotations

import msgspec
from nacl.public import PublicKey
from nacl.signing import SigningKey, VerifyKey

from parsec_server.api.certificates import (
    DeviceCertificate,
    RealmRoleCertificate,
    RevokedUserCertificate,
    UserCertificate,
    sign_certificate,
)
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import HumanHandle, RealmRole, UserProfile


def user_certificates(
    author_key: SigningKey,
    author: str | None,
    timestamp: DateTime,
    user_id: str,
    human_handle: HumanHandle | None,
    public_key: PublicKey,
    profile: UserProfile,
) -> tuple[bytes, bytes]:
    """(full, redacted) user certificates."""
    certificate = UserCertificate(
        author=author,
        timestamp=timestamp,
        user_id=user_id,
        public_key=bytes(public_key),
        is_admin=profile is UserProfile.ADMIN,
        human_handle=human_handle,
        profile=profile,
    )
    redacted = msgspec.structs.replace(certificate, human_handle=None)
    return sign_certificate(certificate, author_key), sign_certificate(redacted, author_key)


def device_certificates(
    author_key: SigningKey,
    author: str | None,
    timestamp: DateTime,
    device_id: str,
    device_label: str | None,
    verify_key: VerifyKey,
) -> tuple[bytes, bytes]:
    """(full, redacted) device certificates."""
    certificate = DeviceCertificate(
        author=author,
        timestamp=timestamp,
        device_id=device_id,
        verify_key=bytes(verify_key),
        device_label=device_label,
    )
    redacted = msgspec.structs.replace(certificate, device_label=None)
    return sign_certificate(certificate, author_key), sign_certificate(redacted, author_key)


def revoked_user_certificate(
    author_key: SigningKey, author: str, timestamp: DateTime, user_id: str
) -> bytes:
    return sign_certificate(
        RevokedUserCertificate(author=author, timestamp=timestamp, user_id=user_id), author_key
    )


def realm_role_certificate(
    author_key: SigningKey,
    author: str,
    timestamp: DateTime,
    realm_id: ID,
    user_id: str,
    role: RealmRole | None,
) -> bytes:
    """A role grant (`role` None removes the user's access)."""
    return sign_certificate(
        RealmRoleCertificate(
            author=author, timestamp=timestamp, realm_id=realm_id, user_id=user_id, role=role
        ),
        author_key,
    )
