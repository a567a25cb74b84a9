"""Device key files, as the Parsec 2.0.0 client writes and reads them
(protocol/60-data-formats.md §10).

Layout: `<config dir>/devices/<slughash>.keys` (any `*.keys` file below `devices/` is
found, the name carries no meaning). The config dir defaults to `$XDG_CONFIG_HOME/parsec`,
else `$HOME/.config/parsec`.

A key file is a msgpack map (not compressed):

| key | value |
| --- | --- |
| `type` | `"password"` |
| `salt` | bin, 16 bytes |
| `ciphertext` | bin: SecretBox(Argon2i(password, salt)) of the serialized local device |
| `human_handle` | `[email, label]` or nil |
| `device_label` | str or nil |
| `device_id`, `organization_id`, `slug` | str (absent from legacy files, whose name is the slug) |

Argon2i v1.3 with libsodium's "interactive" limits (opslimit 4, memlimit 32 MiB), 32-byte key.

The serialized local device is a msgpack map (not compressed): `organization_addr` (str, the
organization URL with `rvk`), `device_id`, `device_label` (str or nil), `human_handle`
(array or nil), `signing_key` (bin 32, Ed25519 seed), `private_key` (bin 32, X25519),
`is_admin` (bool, legacy, required), `profile` (str, optional when reading: derived from
`is_admin`), `user_manifest_id` (ext 2 UUID), `user_manifest_key` (bin 32), `local_symkey`
(bin 32).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey
from nacl.pwhash import argon2i
from nacl.secret import SecretBox
from nacl.signing import SigningKey
from nacl.utils import random as random_bytes

from parsec_server.api import codec
from parsec_server.api.addr import AddrError, BackendOrganizationAddr
from parsec_server.api.codec import ID
from parsec_server.api.ids import (
    DeviceID,
    HumanHandle,
    OrganizationID,
    UserProfile,
    check_human_handle,
    format_human_handle,
    user_id_of,
)
from parsec_server.client.device import LocalDevice, device_slug, slughash

DEVICES_DIR = "devices"
KEY_FILE_SUFFIX = ".keys"
_KEY_SIZE = 32
_Key = msgspec.Meta(min_length=_KEY_SIZE, max_length=_KEY_SIZE)


class DeviceFileError(Exception):
    """A device key file cannot be read, written or decrypted."""


class DeviceFileNotFoundError(DeviceFileError):
    pass


class DeviceFileExistsError(DeviceFileError):
    pass


class BadPasswordError(DeviceFileError):
    def __init__(self) -> None:
        super().__init__("Invalid password (the device key file cannot be decrypted)")


class InvalidDeviceFileError(DeviceFileError):
    pass


# --- schemas ------------------------------------------------------------------------------


class _KeyFile(msgspec.Struct, frozen=True, tag_field="type", tag="password"):
    salt: bytes
    ciphertext: bytes
    human_handle: HumanHandle | None
    device_label: str | None
    device_id: DeviceID
    organization_id: OrganizationID
    slug: str


class _LegacyKeyFile(msgspec.Struct, frozen=True, tag_field="type", tag="password"):
    """Files of older clients: the slug is the file name."""

    salt: bytes
    ciphertext: bytes
    human_handle: HumanHandle | None = None
    device_label: str | None = None


class _SerializedDevice(msgspec.Struct, frozen=True):
    organization_addr: str
    device_id: DeviceID
    signing_key: bytes
    private_key: bytes
    is_admin: bool
    user_manifest_id: ID
    user_manifest_key: bytes
    local_symkey: bytes
    device_label: str | None = None
    human_handle: HumanHandle | None = None
    profile: UserProfile | None = None


_key_file_decoder = codec.decoder(_KeyFile)
_legacy_key_file_decoder = codec.decoder(_LegacyKeyFile)
_device_decoder = codec.decoder(_SerializedDevice)


# --- locations ----------------------------------------------------------------------------


def default_config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or f"{environ.get('HOME', '')}/.config"
    return Path(base) / "parsec"


def devices_dir(config_dir: Path) -> Path:
    return config_dir / DEVICES_DIR


def default_key_file(config_dir: Path, device: LocalDevice) -> Path:
    return devices_dir(config_dir) / f"{slughash(device.slug)}{KEY_FILE_SUFFIX}"


# --- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AvailableDevice:
    """What a key file tells without its password."""

    key_file_path: Path
    organization_id: str
    device_id: str
    human_handle: HumanHandle | None
    device_label: str | None
    slug: str

    @property
    def slughash(self) -> str:
        return slughash(self.slug)

    @property
    def user_display(self) -> str:
        if self.human_handle is not None:
            return format_human_handle(self.human_handle)
        return user_id_of(self.device_id)

    @property
    def device_display(self) -> str:
        return self.device_label or self.device_id.partition("@")[2]


def _read_available(path: Path) -> AvailableDevice | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        data = _key_file_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return _read_legacy_available(path, raw)
    return AvailableDevice(
        path, data.organization_id, data.device_id, data.human_handle, data.device_label, data.slug
    )


def _read_legacy_available(path: Path, raw: bytes) -> AvailableDevice | None:
    slug = path.stem
    parts = slug.split("#")
    if len(parts) != 3:
        return None
    try:
        organization_id = msgspec.convert(parts[1], OrganizationID)
        device_id = msgspec.convert(parts[2], DeviceID)
        data = _legacy_key_file_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return None
    return AvailableDevice(
        path, organization_id, device_id, data.human_handle, data.device_label, slug
    )


def _iter_available_devices(config_dir: Path) -> Iterator[AvailableDevice]:
    seen: set[str] = set()
    # Sorted: with duplicates of a slug, the first file in path order wins (as the reference).
    for path in sorted(devices_dir(config_dir).rglob(f"*{KEY_FILE_SUFFIX}")):
        device = _read_available(path)
        if device is None or device.slug in seen:
            continue
        seen.add(device.slug)
        yield device


def list_available_devices(config_dir: Path) -> list[AvailableDevice]:
    """The valid key files below `<config_dir>/devices` (others are ignored)."""
    return list(_iter_available_devices(config_dir))


# --- password-protected content -----------------------------------------------------------


def _derive_key(password: str, salt: bytes) -> bytes:
    return argon2i.kdf(
        SecretBox.KEY_SIZE,
        password.encode("utf-8"),
        salt,
        opslimit=argon2i.OPSLIMIT_INTERACTIVE,
        memlimit=argon2i.MEMLIMIT_INTERACTIVE,
    )


def serialize_device(device: LocalDevice) -> bytes:
    organization_addr = BackendOrganizationAddr.build(
        device.backend_addr, device.organization_id, device.root_verify_key
    )
    return codec.encode(
        {
            "organization_addr": organization_addr.to_url(),
            "device_id": device.device_id,
            "device_label": device.device_label,
            "human_handle": device.human_handle,
            "signing_key": bytes(device.signing_key),
            "private_key": bytes(device.private_key),
            "is_admin": device.profile is UserProfile.ADMIN,
            "profile": device.profile.value,
            "user_manifest_id": device.user_manifest_id,
            "user_manifest_key": device.user_manifest_key,
            "local_symkey": device.local_symkey,
        }
    )


def deserialize_device(raw: bytes) -> LocalDevice:
    """Raises `InvalidDeviceFileError`."""
    try:
        data = _device_decoder.decode(raw)
        addr = BackendOrganizationAddr.from_url(data.organization_addr)
        if data.human_handle is not None:
            check_human_handle(data.human_handle)
    except (msgspec.DecodeError, msgspec.ValidationError, AddrError, ValueError) as exc:
        raise InvalidDeviceFileError(f"Invalid local device: {exc}") from exc
    for name in ("signing_key", "private_key", "user_manifest_key", "local_symkey"):
        if len(getattr(data, name)) != _KEY_SIZE:
            raise InvalidDeviceFileError(f"Invalid local device: bad `{name}` size")
    legacy_profile = UserProfile.ADMIN if data.is_admin else UserProfile.STANDARD
    profile = data.profile or legacy_profile
    if data.is_admin and profile is not UserProfile.ADMIN:
        raise InvalidDeviceFileError("Fields `profile` and `is_admin` have incompatible values")
    return LocalDevice(
        backend_addr=addr.backend_addr,
        organization_id=addr.organization_id,
        device_id=data.device_id,
        device_label=data.device_label,
        human_handle=data.human_handle,
        profile=profile,
        signing_key=SigningKey(data.signing_key),
        private_key=PrivateKey(data.private_key),
        root_verify_key=addr.root_verify_key,
        user_manifest_id=data.user_manifest_id,
        user_manifest_key=data.user_manifest_key,
        local_symkey=data.local_symkey,
    )


def _read_encrypted(key_file: Path) -> tuple[bytes, bytes]:
    """(salt, ciphertext) of a current or legacy key file."""
    try:
        raw = key_file.read_bytes()
    except FileNotFoundError as exc:
        raise DeviceFileNotFoundError(f"Device key file `{key_file}` is missing") from exc
    except OSError as exc:
        raise DeviceFileError(f"Cannot read `{key_file}`: {exc.strerror or exc}") from exc
    data: _KeyFile | _LegacyKeyFile
    try:
        data = _key_file_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        try:
            data = _legacy_key_file_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise InvalidDeviceFileError(f"`{key_file}` is not a device key file") from exc
    return data.salt, data.ciphertext


def load_device_with_password(key_file: Path, password: str) -> LocalDevice:
    salt, ciphertext = _read_encrypted(key_file)
    try:
        plaintext = SecretBox(_derive_key(password, salt)).decrypt(ciphertext)
    except (CryptoError, ValueError, TypeError) as exc:
        raise BadPasswordError() from exc
    return deserialize_device(plaintext)


def key_file_content(device: LocalDevice, password: str) -> bytes:
    salt = random_bytes(argon2i.SALTBYTES)
    ciphertext = SecretBox(_derive_key(password, salt)).encrypt(serialize_device(device))
    return codec.encode(
        _KeyFile(
            salt=salt,
            ciphertext=bytes(ciphertext),
            human_handle=device.human_handle,
            device_label=device.device_label,
            device_id=device.device_id,
            organization_id=device.organization_id,
            slug=device_slug(device),
        )
    )


def save_device_with_password(
    config_dir: Path, device: LocalDevice, password: str, force: bool = False
) -> Path:
    """Write `<config_dir>/devices/<slughash>.keys` (folders created with mode 0700);
    refuses to overwrite an existing file unless `force`. Returns the file's path."""
    key_file = default_key_file(config_dir, device)
    if key_file.exists() and not force:
        raise DeviceFileExistsError(f"Device key file `{key_file}` already exists")
    content = key_file_content(device, password)
    try:
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file.write_bytes(content)
    except OSError as exc:
        raise DeviceFileError(f"Cannot save `{key_file}`: {exc.strerror or exc}") from exc
    return key_file
