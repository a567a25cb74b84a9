"""Our client's data formats against the reference client library's: manifests of the four
kinds and the four messages, built by one side, read by the other, field by field.

Both sides build the same objects from `OBJECTS` (plain JSON values: hex for bytes and ids,
float seconds for timestamps), then the reference Python (`REFERENCE_SCRIPT`) writes or
reads the blobs; every comparison is on those plain values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api.codec import ID, DateTime
from parsec_server.client.manifests import (
    BlockAccess,
    FileManifest,
    FolderManifest,
    Manifest,
    UserManifest,
    WorkspaceEntry,
    WorkspaceManifest,
    dump_manifest,
    load_manifest,
)
from parsec_server.client.messages import (
    Message,
    Ping,
    SharingGranted,
    SharingReencrypted,
    SharingRevoked,
    dump_message,
    load_message,
)
from tests.interop.conftest import describe, run_command

pytestmark = pytest.mark.interop

AUTHOR = "alice@laptop"
SIGNING_SEED = "11" * 32
MANIFEST_KEY = "22" * 32
RECIPIENT_PRIVATE_KEY = "33" * 32
T1, T2 = 1700000000.123456, 1700000123.654321


def _uuid(n: int) -> str:
    return f"{n:032x}"


def _entry(name: str, n: int, role: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "id": _uuid(n),
        "key": f"{n:02x}" * 32,
        "encryption_revision": n,
        "encrypted_on": T1,
        "role_cached_on": T2,
        "role": role,
    }


def _block(n: int, offset: int, size: int) -> dict[str, Any]:
    return {
        "id": _uuid(100 + n),
        "key": f"{0x40 + n:02x}" * 32,
        "offset": offset,
        "size": size,
        "digest": f"{0x80 + n:02x}" * 32,
    }


_COMMON = {"author": AUTHOR, "timestamp": T2, "created": T1, "updated": T2}
OBJECTS: dict[str, dict[str, Any]] = {
    "user_manifest": {
        **_COMMON,
        "id": _uuid(1),
        "version": 3,
        "last_processed_message": 2,
        "workspaces": [_entry("Docs", 2, "OWNER"), _entry("Gone", 3, None)],
    },
    "workspace_manifest": {
        **_COMMON,
        "id": _uuid(2),
        "version": 1,
        "children": {"photos": _uuid(4), "a.txt": _uuid(5)},
    },
    "folder_manifest": {
        **_COMMON,
        "id": _uuid(4),
        "parent": _uuid(2),
        "version": 2,
        "children": {"x (1).bin": _uuid(6)},
    },
    "file_manifest": {
        **_COMMON,
        "id": _uuid(6),
        "parent": _uuid(4),
        "version": 4,
        "size": 20,
        "blocksize": 8,
        "blocks": [_block(0, 0, 8), _block(1, 8, 8), _block(2, 16, 4)],
    },
    "empty_file_manifest": {
        **_COMMON,
        "type": "file_manifest",
        "id": _uuid(7),
        "parent": _uuid(2),
        "version": 1,
        "size": 0,
        "blocksize": 524288,
        "blocks": [],
    },
    "sharing.granted": {
        "author": AUTHOR,
        "timestamp": T2,
        "name": "Docs",
        "id": _uuid(2),
        "encryption_revision": 1,
        "encrypted_on": T1,
        "key": "44" * 32,
    },
    "sharing.reencrypted": {
        "author": AUTHOR,
        "timestamp": T2,
        "name": "Docs",
        "id": _uuid(2),
        "encryption_revision": 2,
        "encrypted_on": T2,
        "key": "55" * 32,
    },
    "sharing.revoked": {"author": AUTHOR, "timestamp": T2, "id": _uuid(2)},
    "ping": {"author": AUTHOR, "timestamp": T2, "ping": "hello"},
}
MANIFESTS = ("user_manifest", "workspace_manifest", "folder_manifest", "file_manifest")
MESSAGES = ("sharing.granted", "sharing.reencrypted", "sharing.revoked", "ping")


def _kind(name: str) -> str:
    return str(OBJECTS[name].get("type", name))


# Run with the reference Python: `python -c REFERENCE_SCRIPT write|read JSON`; prints JSON.
REFERENCE_SCRIPT = """
import json, sys
from enum import Enum
from uuid import UUID

import attr
import pendulum

from parsec.api.data import (
    BaseManifest, BaseMessageContent, FileManifest, FolderManifest, PingMessageContent,
    SharingGrantedMessageContent, SharingReencryptedMessageContent,
    SharingRevokedMessageContent, UserManifest, WorkspaceEntry, WorkspaceManifest,
)
from parsec.api.data.manifest import BlockAccess, BlockID
from parsec.api.data.entry import EntryID
from parsec.api.protocol import DeviceID, RealmRole
from parsec.crypto import HashDigest, PrivateKey, SecretKey, SigningKey

CLASSES = {
    "user_manifest": UserManifest, "workspace_manifest": WorkspaceManifest,
    "folder_manifest": FolderManifest, "file_manifest": FileManifest,
    "sharing.granted": SharingGrantedMessageContent,
    "sharing.reencrypted": SharingReencryptedMessageContent,
    "sharing.revoked": SharingRevokedMessageContent, "ping": PingMessageContent,
}
TIMES = {"timestamp", "created", "updated", "encrypted_on", "role_cached_on"}
IDS = {"id", "parent"}
KEYS = {"key"}


def build(fields):
    out = {}
    for name, value in fields.items():
        if name == "type":
            continue
        if name in TIMES:
            value = pendulum.from_timestamp(value)
        elif name in IDS:
            value = EntryID(value)
        elif name in KEYS:
            value = SecretKey(bytes.fromhex(value))
        elif name == "author":
            value = DeviceID(value)
        elif name == "role":
            value = None if value is None else RealmRole(value)
        elif name == "workspaces":
            value = tuple(WorkspaceEntry(**build(w)) for w in value)
        elif name == "children":
            value = {k: EntryID(v) for k, v in value.items()}
        elif name == "blocks":
            value = tuple(
                BlockAccess(
                    id=BlockID(b["id"]), key=SecretKey(bytes.fromhex(b["key"])),
                    offset=b["offset"], size=b["size"],
                    digest=HashDigest(bytes.fromhex(b["digest"])),
                )
                for b in value
            )
        out[name] = value
    return out


def plain(value):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, UUID):
        return value.hex
    if isinstance(value, pendulum.Pendulum):
        return value.timestamp()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return {f.name: plain(getattr(value, f.name)) for f in attr.fields(type(value))}


args = json.loads(sys.argv[2])
signing_key = SigningKey(bytes.fromhex(args["signing_seed"]))
key = SecretKey(bytes.fromhex(args["key"]))
private_key = PrivateKey(bytes.fromhex(args["private_key"]))
out = {}
for name, fields in args["objects"].items():
    kind = fields.get("type", name)
    if sys.argv[1] == "write":
        obj = CLASSES[kind](**build(fields))
        if kind in ("user_manifest", "workspace_manifest", "folder_manifest", "file_manifest"):
            blob = obj.dump_sign_and_encrypt(author_signkey=signing_key, key=key)
        else:
            blob = obj.dump_sign_and_encrypt_for(
                author_signkey=signing_key, recipient_pubkey=private_key.public_key
            )
        out[name] = blob.hex()
    else:
        blob = bytes.fromhex(args["blobs"][name])
        common = dict(
            author_verify_key=signing_key.verify_key, expected_author=DeviceID(fields["author"]),
            expected_timestamp=pendulum.from_timestamp(fields["timestamp"]),
        )
        if kind.endswith("manifest"):
            obj = BaseManifest.decrypt_verify_and_load(
                blob, key=key, expected_id=EntryID(fields["id"]),
                expected_version=fields["version"], **common
            )
        else:
            obj = BaseMessageContent.decrypt_verify_and_load_for(
                blob, recipient_privkey=private_key, **common
            )
        out[name] = {"class": type(obj).__name__, "fields": plain(obj)}
print("RESULT " + json.dumps(out))
"""

REFERENCE_CLASSES = {
    "user_manifest": "UserManifest",
    "workspace_manifest": "WorkspaceManifest",
    "folder_manifest": "FolderManifest",
    "file_manifest": "FileManifest",
    "sharing.granted": "SharingGrantedMessageContent",
    "sharing.reencrypted": "SharingReencryptedMessageContent",
    "sharing.revoked": "SharingRevokedMessageContent",
    "ping": "PingMessageContent",
}

_TIMES = {"timestamp", "created", "updated", "encrypted_on", "role_cached_on"}


def _ours_from_plain(name: str, fields: dict[str, Any]) -> Manifest | Message:
    def convert(key: str, value: Any) -> Any:
        if key in _TIMES:
            return DateTime.from_timestamp(value)
        if key in ("id", "parent"):
            return ID.from_hex(value)
        if key in ("key", "digest"):
            return bytes.fromhex(value)
        if key == "children":
            return {k: ID.from_hex(v) for k, v in value.items()}
        if key == "workspaces":
            return tuple(WorkspaceEntry(**{k: convert(k, v) for k, v in w.items()}) for w in value)
        if key == "blocks":
            return tuple(BlockAccess(**{k: convert(k, v) for k, v in b.items()}) for b in value)
        return value

    classes: dict[str, type[Manifest | Message]] = {
        "user_manifest": UserManifest,
        "workspace_manifest": WorkspaceManifest,
        "folder_manifest": FolderManifest,
        "file_manifest": FileManifest,
        "sharing.granted": SharingGranted,
        "sharing.reencrypted": SharingReencrypted,
        "sharing.revoked": SharingRevoked,
        "ping": Ping,
    }
    values = {k: convert(k, v) for k, v in fields.items() if k != "type"}
    return classes[_kind(name)](**values)


def _plain(value: Any) -> Any:
    if isinstance(value, DateTime):
        return value.timestamp()
    if isinstance(value, ID):
        return value.hex
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, msgspec.Struct):
        return {f: _plain(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def _expected_plain(name: str) -> dict[str, Any]:
    return {k: v for k, v in OBJECTS[name].items() if k != "type"}


def _reference(reference_venv: Path, mode: str, **extra: Any) -> dict[str, Any]:
    arguments = {
        "signing_seed": SIGNING_SEED,
        "key": MANIFEST_KEY,
        "private_key": RECIPIENT_PRIVATE_KEY,
        "objects": OBJECTS,
        **extra,
    }
    result = run_command(
        [reference_venv / "bin" / "python", "-c", REFERENCE_SCRIPT, mode, json.dumps(arguments)],
        {},
    )
    assert result.returncode == 0, describe(result)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    outcome: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return outcome


def _keys() -> tuple[SigningKey, bytes, PrivateKey]:
    return (
        SigningKey(bytes.fromhex(SIGNING_SEED)),
        bytes.fromhex(MANIFEST_KEY),
        PrivateKey(bytes.fromhex(RECIPIENT_PRIVATE_KEY)),
    )


def test_what_the_reference_writes_reads_the_same_with_ours(reference_venv: Path) -> None:
    blobs = _reference(reference_venv, "write")
    signing_key, key, private_key = _keys()
    verify_key = bytes(signing_key.verify_key)
    for name, fields in OBJECTS.items():
        blob = bytes.fromhex(blobs[name])
        expected = {
            "expected_author": AUTHOR,
            "expected_timestamp": DateTime.from_timestamp(fields["timestamp"]),
        }
        loaded: Manifest | Message
        if _kind(name).endswith("manifest"):
            loaded = load_manifest(
                blob,
                key,
                verify_key,
                expected_id=ID.from_hex(fields["id"]),
                expected_version=fields["version"],
                **expected,
            )
        else:
            loaded = load_message(blob, private_key, verify_key, **expected)
        assert type(loaded) is type(_ours_from_plain(name, fields)), name
        assert _plain(loaded) == _expected_plain(name), name


def test_what_ours_writes_reads_the_same_with_the_reference(reference_venv: Path) -> None:
    signing_key, key, private_key = _keys()
    blobs = {}
    for name, fields in OBJECTS.items():
        obj = _ours_from_plain(name, fields)
        if isinstance(obj, Manifest):  # type: ignore[misc, arg-type]
            blobs[name] = dump_manifest(obj, signing_key, key).hex()  # type: ignore[arg-type]
        else:
            blobs[name] = dump_message(
                obj,  # type: ignore[arg-type]
                signing_key,
                bytes(private_key.public_key),
            ).hex()
    read = _reference(reference_venv, "read", blobs=blobs)
    for name in OBJECTS:
        assert read[name]["class"] == REFERENCE_CLASSES[_kind(name)], name
        assert read[name]["fields"] == _expected_plain(name), name
