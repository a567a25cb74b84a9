"""Messages between users (protocol/60-data-formats.md §6): a signed envelope sealed for
the recipient user's public key, delivered by `realm_update_roles` (sharing) and
`realm_start_reencryption_maintenance` (new key), read back with `message_get`.

The role is not in the message: the recipient asks the server for the realm's roles.
"""

from __future__ import annotations

import msgspec
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api import codec
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import DeviceID
from parsec_server.client.manifests import NonNegative, SecretKeyBytes
from parsec_server.client.signed_data import (
    DataError,
    decode_data,
    seal_for,
    sign_data,
    unseal,
    verify_data,
)


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    author: DeviceID
    timestamp: DateTime


class SharingGranted(_Message, frozen=True, kw_only=True, tag="sharing.granted"):
    """A workspace's name, id and key, at its current encryption revision."""

    name: str
    id: ID
    encryption_revision: NonNegative
    encrypted_on: DateTime
    key: SecretKeyBytes


class SharingReencrypted(SharingGranted, frozen=True, kw_only=True, tag="sharing.reencrypted"):
    """The new key of a re-encrypted workspace (read as a `sharing.granted`)."""


class SharingRevoked(_Message, frozen=True, kw_only=True, tag="sharing.revoked"):
    id: ID


class Ping(_Message, frozen=True, kw_only=True, tag="ping"):
    ping: str


Message = SharingGranted | SharingReencrypted | SharingRevoked | Ping

_decoder: msgspec.msgpack.Decoder[Message] = codec.decoder(Message)  # type: ignore[arg-type]


def dump_message(message: Message, signing_key: SigningKey, recipient_public_key: bytes) -> bytes:
    return seal_for(recipient_public_key, sign_data(message, signing_key))


def load_message(
    body: bytes,
    private_key: PrivateKey,
    author_verify_key: bytes,
    *,
    expected_author: str,
    expected_timestamp: DateTime,
) -> Message:
    """Open, verify and decode; raise DataError unless author and timestamp are those the
    server reported with the message (`sender`, `timestamp` of `message_get`)."""
    signed = unseal(private_key, body)
    message = decode_data(_decoder, verify_data(signed, author_verify_key))
    if message.author != expected_author:
        raise DataError(f"Invalid author: expected `{expected_author}`, got `{message.author}`")
    if message.timestamp != expected_timestamp:
        raise DataError(
            f"Invalid timestamp: expected `{expected_timestamp}`, got `{message.timestamp}`"
        )
    return message
