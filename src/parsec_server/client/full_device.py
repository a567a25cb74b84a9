"""A local device with everything the 2.0.0 client keeps about it.

`LocalDevice` holds what talking to the server needs. The reference client's device also
carries three secrets used only on the client side: the user manifest's id and key (shared
by all the devices of a user, handed over by a DEVICE invitation) and a local symmetric key
(per device, for the local cache). A device key file must hold them, so a device saved by
our client, or received through an invitation, is a `FullLocalDevice`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields
from hashlib import sha256

from parsec_server.api.codec import ID
from parsec_server.client.device import LocalDevice

SECRET_KEY_SIZE = 32
_SLUG_HASH_PREFIX = 10


def new_secret_key() -> bytes:
    return secrets.token_bytes(SECRET_KEY_SIZE)


@dataclass(frozen=True)
class FullLocalDevice(LocalDevice):
    user_manifest_id: ID = field(default_factory=ID.new)
    user_manifest_key: bytes = field(default_factory=new_secret_key, repr=False)
    local_symkey: bytes = field(default_factory=new_secret_key, repr=False)

    @classmethod
    def from_device(
        cls,
        device: LocalDevice,
        user_manifest_id: ID | None = None,
        user_manifest_key: bytes | None = None,
    ) -> FullLocalDevice:
        """`device` itself when already full; else completed with the given user manifest
        access (new random ones by default: right for a new user) and a new local key."""
        if isinstance(device, FullLocalDevice):
            return device
        base = {f.name: getattr(device, f.name) for f in fields(LocalDevice)}
        return cls(
            **base,
            user_manifest_id=user_manifest_id or ID.new(),
            user_manifest_key=user_manifest_key or new_secret_key(),
        )

    @property
    def slug(self) -> str:
        """`<10 hex of SHA-256(root verify key)>#<organization>#<device id>`: how the
        2.0.0 client tells devices apart (the hash separates organizations recreated
        with the same name)."""
        return device_slug(self)


def device_slug(device: LocalDevice) -> str:
    hash_part = sha256(device.root_verify_key).hexdigest()[:_SLUG_HASH_PREFIX]
    return f"{hash_part}#{device.organization_id}#{device.device_id}"


def slughash(slug: str) -> str:
    """SHA-256 of the slug, in hex: the key file's name and the CLI's `--device` value."""
    return sha256(slug.encode("utf-8")).hexdigest()
