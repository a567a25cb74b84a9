"""Device key files (client/device_file.py) in the Parsec 2.0.0 format.

`data/reference-2.0.0-device.keys` was written by the reference `parsec core
bootstrap_organization` (password `pw`, organization `OrgX`, a throwaway server).
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from pathlib import Path

import msgspec
import pytest
from nacl.public import PrivateKey
from nacl.pwhash import argon2i
from nacl.secret import SecretBox
from nacl.signing import SigningKey

from parsec_server.api import codec
from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID
from parsec_server.api.ids import UserProfile
from parsec_server.client.device import LocalDevice, device_slug, slughash
from parsec_server.client.device_file import (
    BadPasswordError,
    DeviceFileExistsError,
    DeviceFileNotFoundError,
    InvalidDeviceFileError,
    default_config_dir,
    deserialize_device,
    list_available_devices,
    load_device_with_password,
    save_device_with_password,
    serialize_device,
)

REFERENCE_FILE = Path(__file__).parent / "data" / "reference-2.0.0-device.keys"
REFERENCE_DEVICE_ID = "2194e648f55e480bb9ea6fb477ddc5fa@5617bf94060b4b3686a203ac403cfbad"
REFERENCE_SLUG = f"412a085108#OrgX#{REFERENCE_DEVICE_ID}"
# The reference named the file `<slughash>.keys`.
REFERENCE_SLUGHASH = "d910b755ddc4e3e6c027409e6a6a9260792e178eddb4fd59458ea306a8f2cc20"


def make_device(**overrides: object) -> LocalDevice:
    fields: dict[str, object] = {
        "backend_addr": BackendAddr("parsec.example.com", 443, True),
        "organization_id": "Org",
        "device_id": "alice@laptop",
        "device_label": "Alice's laptop",
        "human_handle": ("alice@example.com", "Alice"),
        "profile": UserProfile.STANDARD,
        "signing_key": SigningKey.generate(),
        "private_key": PrivateKey.generate(),
        "root_verify_key": bytes(SigningKey.generate().verify_key),
    }
    fields.update(overrides)
    return LocalDevice(**fields)  # type: ignore[arg-type]


def same_device(a: LocalDevice, b: LocalDevice) -> bool:
    return (
        a.backend_addr == b.backend_addr
        and a.organization_id == b.organization_id
        and a.device_id == b.device_id
        and a.device_label == b.device_label
        and a.human_handle == b.human_handle
        and a.profile is b.profile
        and bytes(a.signing_key) == bytes(b.signing_key)
        and bytes(a.private_key) == bytes(b.private_key)
        and a.root_verify_key == b.root_verify_key
        and a.user_manifest_id == b.user_manifest_id
        and a.user_manifest_key == b.user_manifest_key
        and a.local_symkey == b.local_symkey
    )


def test_a_file_of_the_reference_client_is_listed_and_loaded(tmp_path: Path) -> None:
    key_file = tmp_path / "devices" / "sub" / "whatever.keys"
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(REFERENCE_FILE.read_bytes())

    [available] = list_available_devices(tmp_path)
    device = load_device_with_password(key_file, "pw")

    assert available.key_file_path == key_file
    assert available.slug == REFERENCE_SLUG
    assert available.slughash == REFERENCE_SLUGHASH == slughash(device_slug(device))
    assert available.organization_id == "OrgX"
    assert available.user_display == "Alice Ref <alice@example.com>"
    assert available.device_display == "laptop"
    assert device.device_id == REFERENCE_DEVICE_ID
    assert device.backend_addr == BackendAddr("127.0.0.1", 17301, False)
    assert device.profile is UserProfile.ADMIN
    assert device.human_handle == ("alice@example.com", "Alice Ref")
    assert device.user_manifest_id == ID.from_hex("3fc7464e-a6c9-470e-ba08-7fe483cc08c4")
    with pytest.raises(BadPasswordError):
        load_device_with_password(key_file, "not-pw")


def test_saved_device_has_the_reference_layout_and_loads_back(tmp_path: Path) -> None:
    device = make_device()

    path = save_device_with_password(tmp_path, device, "secret")

    assert path == tmp_path / "devices" / f"{slughash(device.slug)}.keys"
    content = codec.decode_any(path.read_bytes())
    assert set(content) == {
        "type",
        "salt",
        "ciphertext",
        "human_handle",
        "device_label",
        "device_id",
        "organization_id",
        "slug",
    }
    assert content["type"] == "password"
    assert len(content["salt"]) == argon2i.SALTBYTES == 16
    assert content["slug"] == device.slug
    rvk_hash = hashlib.sha256(device.root_verify_key).hexdigest()[:10]
    assert device.slug == device_slug(device) == f"{rvk_hash}#Org#alice@laptop"
    key = argon2i.kdf(
        32,
        b"secret",
        content["salt"],
        opslimit=argon2i.OPSLIMIT_INTERACTIVE,
        memlimit=argon2i.MEMLIMIT_INTERACTIVE,
    )
    plaintext = SecretBox(key).decrypt(content["ciphertext"])
    fields = codec.decode_any(plaintext)  # plain msgpack, not compressed
    assert fields["organization_addr"].startswith("parsec://parsec.example.com/Org?rvk=")
    assert fields["is_admin"] is False
    assert fields["profile"] == "STANDARD"
    assert isinstance(fields["user_manifest_id"], ID)
    assert same_device(load_device_with_password(path, "secret"), device)
    [available] = list_available_devices(tmp_path)
    assert available.key_file_path == path


def test_existing_file_is_kept_unless_forced(tmp_path: Path) -> None:
    device = make_device()
    save_device_with_password(tmp_path, device, "one")

    with pytest.raises(DeviceFileExistsError):
        save_device_with_password(tmp_path, device, "two")
    path = save_device_with_password(tmp_path, device, "two", force=True)

    assert same_device(load_device_with_password(path, "two"), device)


def test_listing_ignores_invalid_files_and_duplicates(tmp_path: Path) -> None:
    device = make_device()
    path = save_device_with_password(tmp_path, device, "x")
    (tmp_path / "devices" / "zz-copy.keys").write_bytes(path.read_bytes())
    (tmp_path / "devices" / "garbage.keys").write_bytes(b"\x00not msgpack")
    (tmp_path / "devices" / "other.txt").write_bytes(path.read_bytes())

    assert [d.key_file_path for d in list_available_devices(tmp_path)] == [path]
    assert list_available_devices(tmp_path / "missing") == []


def test_legacy_file_named_after_its_slug_is_listed_and_loaded(tmp_path: Path) -> None:
    device = make_device(human_handle=None, device_label=None)
    saved = codec.decode_any(save_device_with_password(tmp_path / "new", device, "x").read_bytes())
    legacy = tmp_path / "devices" / f"{device.slug}.keys"
    legacy.parent.mkdir()
    legacy.write_bytes(
        codec.encode({"type": "password", "salt": saved["salt"], "ciphertext": saved["ciphertext"]})
    )

    [available] = list_available_devices(tmp_path)

    assert available.slug == device.slug
    assert available.device_id == "alice@laptop"
    assert available.user_display == "alice"
    assert available.device_display == "laptop"
    assert same_device(load_device_with_password(legacy, "x"), device)


def test_profile_comes_from_is_admin_when_absent() -> None:
    device = make_device(profile=UserProfile.ADMIN)
    fields = codec.decode_any(serialize_device(device))
    del fields["profile"]
    assert deserialize_device(codec.encode(fields)).profile is UserProfile.ADMIN
    fields["is_admin"] = False
    assert deserialize_device(codec.encode(fields)).profile is UserProfile.STANDARD
    fields.update(is_admin=True, profile="OUTSIDER")
    with pytest.raises(InvalidDeviceFileError, match="incompatible"):
        deserialize_device(codec.encode(fields))


def test_invalid_or_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(DeviceFileNotFoundError):
        load_device_with_password(tmp_path / "none.keys", "x")
    bad = tmp_path / "bad.keys"
    bad.write_bytes(zlib.compress(b"x"))
    with pytest.raises(InvalidDeviceFileError):
        load_device_with_password(bad, "x")
    with pytest.raises(InvalidDeviceFileError):
        deserialize_device(msgspec.msgpack.encode({"device_id": "a@b"}))


def test_default_config_dir_follows_xdg() -> None:
    assert default_config_dir({"XDG_CONFIG_HOME": "/x"}) == Path("/x/parsec")
    assert default_config_dir({"HOME": "/home/u"}) == Path("/home/u/.config/parsec")


def test_a_new_device_gets_its_own_client_secrets() -> None:
    device = make_device()
    other = dataclasses.replace(device, user_manifest_key=device.user_manifest_key)

    assert len(device.user_manifest_key) == len(device.local_symkey) == 32
    assert device.user_manifest_key != device.local_symkey
    assert make_device().local_symkey != device.local_symkey
    assert other.user_manifest_id == device.user_manifest_id
