"""Concurrent changes and history between our workspace commands and the unmodified 2.0.0
client, on our server (`--dev`): Alice uses ours, Bob the reference client (a contributor
of Alice's workspace).

- the same file changed by both from the same version: ours writes a new version while
  the reference, which had synchronised the previous one, changes it locally then syncs:
  the reference keeps ours under the name and its own as the 2.0.0 conflict copy; both
  clients then see the same tree and read both contents;
- the same folder changed by both (new entries on each side, one name taken by both):
  every entry is kept, the reference's one of the shared name under its conflict name;
- the versions of a file written by both: ours' `history` lists what the 2.0.0 client's
  version lister and the server's version list (as it reads them) report, and ours'
  `download --at` gives what the 2.0.0 client reads at each date.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from parsec_server.client.files import conflict_name
from tests.interop.conftest import Cli, DevServer
from tests.interop.test_guide_workspaces import REFERENCE_COMMANDS, REFERENCE_MAIN
from tests.interop.test_our_sharing_with_reference import EXTRA_COMMANDS, Pair, new_pair

pytestmark = pytest.mark.interop

# Reference commands added: a workspace synchronised into a data folder kept for the next
# command; then local changes made on what that folder holds, and only then one sync.
CONCURRENCY_COMMANDS = """
async def sync_keep(args):
    async with core_of(args) as core:
        workspace = await workspace_of(core, args)
        await workspace.sync()
        result({"files": await tree(workspace)})


async def write_then_sync(args):
    # Written before anything is learned from the server (its sync monitor waits a
    # second after a change before acting): the changes are based on the kept folder.
    async with _core_from_empty_data(args) as core:
        workspace = core.user_fs.get_workspace(EntryID(args["workspace_id"]))
        for path, content in sorted(args["files"].items()):
            await workspace.write_bytes(path, content.encode())
        for _ in range(2):  # a conflict copy made by the first sync is sent by the next
            await workspace.sync()
        result({"files": await tree(workspace)})


COMMANDS.update(sync_keep=sync_keep, write_then_sync=write_then_sync)
"""
SCRIPT = REFERENCE_COMMANDS + EXTRA_COMMANDS + CONCURRENCY_COMMANDS + REFERENCE_MAIN


@pytest.fixture
def pair(dev_server: DevServer, our_cli: Cli, reference_cli: Cli, tmp_path: Path) -> Pair:
    return new_pair(dev_server, our_cli, reference_cli, tmp_path, SCRIPT)


def _shared_workspace(pair: Pair) -> tuple[str, str]:
    """Alice's workspace `Docs`, Bob a contributor; returns its id and Alice's device."""
    docs: str = pair.ours_json("create_workspace", "Docs")["id"]
    pair.ours("share_workspace", "Docs", pair.bob.user_id, "CONTRIBUTOR")
    device: str = pair.ours_json("status")["device"]
    return docs, device


def _upload(pair: Pair, content: bytes, remote: str) -> None:
    local = pair.folder / f"upload-{pair.fresh}-{len(content)}"
    local.write_bytes(content)
    pair.ours("upload", local, remote, "--quiet")


def _ours_tree(pair: Pair, folder: str) -> dict[str, bytes]:
    """Every file under `folder` as ours downloads it, by path relative to the workspace."""
    target = pair.folder / f"ours-tree-{len(list(pair.folder.iterdir()))}"
    pair.ours("download", folder, target, "--quiet")
    prefix = folder.split("/", 2)[2:]  # the path inside the workspace
    base = "/" + prefix[0] + "/" if prefix else "/"
    return {
        base + str(path.relative_to(target)): path.read_bytes()
        for path in sorted(target.rglob("*"))
        if path.is_file()
    }


def _sha(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_same_file_changed_by_both_keeps_both_as_the_reference_names_it(pair: Pair) -> None:
    docs, alice_device = _shared_workspace(pair)
    _upload(pair, b"version 1\n", "/Docs/notes.txt")
    kept = pair.folder / "bob-kept"
    seen = pair.reference("sync_keep", pair.bob, workspace_id=docs, data_dir=str(kept))
    assert seen["files"] == {"/notes.txt": _sha(b"version 1\n")}

    # Ours writes version 2; the reference, still on version 1, changes the file too.
    _upload(pair, b"ours, version 2\n", "/Docs/notes.txt")
    written = pair.reference(
        "write_then_sync",
        pair.bob,
        workspace_id=docs,
        data_dir=str(kept),
        files={"/notes.txt": "the reference's change\n"},
    )

    copy = "notes (conflicting with " + alice_device + ").txt"
    assert copy == conflict_name("notes.txt", {"notes.txt"}, alice_device)
    expected = {
        "/notes.txt": b"ours, version 2\n",
        f"/{copy}": b"the reference's change\n",
    }
    assert written["files"] == {path: _sha(data) for path, data in expected.items()}
    # From empty data folders, both clients see that tree with both contents.
    assert pair.reference("read", pair.bob, workspace_id=docs)["files"] == {
        path: _sha(data) for path, data in expected.items()
    }
    assert sorted(e["name"] for e in pair.ours_json("ls", "/Docs")) == sorted(
        path[1:] for path in expected
    )
    assert _ours_tree(pair, "/Docs") == expected
    # No version lost: the file's versions are ours; the reference's change is the copy's.
    history = pair.ours_json("history", "/Docs/notes.txt")
    assert [(v["version"], v["author"]) for v in history] == [
        (1, alice_device),
        (2, alice_device),
    ]
    copy_history = pair.ours_json("history", f"/Docs/{copy}")
    assert {v["author"] for v in copy_history} == {pair.bob.device_id}
    assert copy_history[-1]["size"] == len(b"the reference's change\n")


def test_same_folder_changed_by_both_keeps_every_entry(pair: Pair) -> None:
    docs, alice_device = _shared_workspace(pair)
    pair.ours("mkdir", "/Docs/shared")
    _upload(pair, b"common\n", "/Docs/shared/common.txt")
    kept = pair.folder / "bob-kept"
    seen = pair.reference("sync_keep", pair.bob, workspace_id=docs, data_dir=str(kept))
    assert seen["files"] == {"/shared/common.txt": _sha(b"common\n")}

    # Ours adds two entries and `same.txt`; the reference (on the folder as it was) adds
    # two others and its own `same.txt`.
    ours = pair.folder / "ours-new"
    ours.mkdir()
    for name in ("a1.txt", "a2.txt", "same.txt"):
        (ours / name).write_bytes(f"ours {name}\n".encode())
    pair.ours("upload", ours, "/Docs/shared", "--quiet")
    theirs = {f"/shared/{n}": f"reference {n}\n" for n in ("b1.txt", "b2.txt", "same.txt")}
    written = pair.reference(
        "write_then_sync", pair.bob, workspace_id=docs, data_dir=str(kept), files=theirs
    )

    copy = conflict_name("same.txt", set(), alice_device)
    assert copy == f"same (conflicting with {alice_device}).txt"
    expected = {
        "/shared/common.txt": b"common\n",
        "/shared/a1.txt": b"ours a1.txt\n",
        "/shared/a2.txt": b"ours a2.txt\n",
        "/shared/same.txt": b"ours same.txt\n",
        "/shared/b1.txt": b"reference b1.txt\n",
        "/shared/b2.txt": b"reference b2.txt\n",
        f"/shared/{copy}": b"reference same.txt\n",
    }
    digests = {path: _sha(data) for path, data in expected.items()}
    assert written["files"] == digests
    assert pair.reference("read", pair.bob, workspace_id=docs)["files"] == digests
    assert _ours_tree(pair, "/Docs/shared") == expected


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_history_and_past_versions_are_those_of_the_reference(pair: Pair) -> None:
    docs, alice_device = _shared_workspace(pair)
    # The reference writes three versions (after the empty new file), ours two more.
    pair.reference(
        "write", pair.bob, workspace_id=docs, path="/h.txt", contents=["one\n", "two two\n"]
    )
    _upload(pair, b"three, by ours\n", "/Docs/h.txt")
    pair.reference("write", pair.bob, workspace_id=docs, path="/h.txt", contents=["four\n"])
    _upload(pair, b"five, by ours, the last\n", "/Docs/h.txt")

    ours = pair.ours_json("history", "/Docs/h.txt")
    theirs = pair.reference("history", pair.bob, workspace_id=docs, path="/h.txt")
    assert theirs["complete"] is True
    # The server's versions as the 2.0.0 client reads them: number, date, author.
    assert [(v["version"], _instant(v["timestamp"]), v["author"]) for v in ours] == [
        (int(version), _instant(timestamp), author)
        for version, (timestamp, author) in sorted(
            theirs["server_versions"].items(), key=lambda item: int(item[0])
        )
    ]
    assert [v["author"] for v in ours] == [pair.bob.device_id] * 3 + [
        alice_device,
        pair.bob.device_id,
        alice_device,
    ]
    # Its version lister (which may leave out the empty first version, the new file's
    # placeholder): the same versions, creators and sizes.
    listed = [(v["version"], v["creator"], v["size"]) for v in theirs["versions"]]
    ours_by_number = {v["version"]: (v["version"], v["author"], v["size"]) for v in ours}
    assert listed == [ours_by_number[number] for number, _, _ in listed]
    assert {2, 3, 4, 5, 6} <= {number for number, _, _ in listed}

    # `download --at`: what the 2.0.0 client reads at the start of each version, and
    # half-way through it.
    for number, version in enumerate(theirs["versions"]):
        early = _instant(version["early"])
        dates = [early]
        if version["late"] not in (None, "None"):
            dates.append(early + (_instant(version["late"]) - early) / 2)
        for date in dates:
            target = pair.folder / f"at-{number}-{len(dates)}-{date.timestamp()}"
            pair.ours("download", "/Docs/h.txt", target, "--at", date.isoformat(), "--quiet")
            assert target.read_bytes() == version["content"].encode(), (version, date)
    assert [v["content"] for v in theirs["versions"] if v["content"]] == [
        "one\n",
        "two two\n",
        "three, by ours\n",
        "four\n",
        "five, by ours, the last\n",
    ]
