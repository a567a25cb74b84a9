"""Our workspace and file commands with the unmodified 2.0.0 client, on our server
(`--dev`): an organization created and bootstrapped with our CLI, a tree with a
multi-block file uploaded with ours and read by the reference client from an empty data
folder; a file the reference client writes, downloaded with ours."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import (
    PASSWORD,
    Cli,
    DevServer,
    bootstrap_organization,
    create_organization,
    describe,
    new_organization_name,
)
from tests.interop.test_guide_workspaces import REFERENCE_SCRIPT

pytestmark = pytest.mark.interop

DEV_TOKEN = "s3cr3t"


def _sha(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _reference(cli: Cli, command: str, arguments: dict[str, Any]) -> Any:
    result = cli.python(REFERENCE_SCRIPT, command, json.dumps(arguments), timeout=120)
    assert result.returncode == 0, describe(result)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def _ours(cli: Cli, config_dir: Path, *args: str | Path) -> str:
    result = cli.run("core", *args, "--config-dir", config_dir, "--password", PASSWORD)
    assert result.returncode == 0, describe(result)
    return result.stdout


def test_tree_uploaded_by_ours_reads_in_the_reference_and_back(
    dev_server: DevServer, our_cli: Cli, reference_cli: Cli, tmp_path: Path
) -> None:
    name = new_organization_name()
    url = create_organization(our_cli, dev_server.addr, DEV_TOKEN, name)
    config_dir = tmp_path / "config"
    result = bootstrap_organization(
        our_cli, url, config_dir, "Alice", "alice@example.com", "laptop"
    )
    assert result.returncode == 0, describe(result)

    tree = tmp_path / "photos"
    files = {
        "a.txt": b"hello\n",
        "sub/big.bin": os.urandom(2 * 512 * 1024 + 4321),
        "sub/empty": b"",
    }
    for relative, content in files.items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_bytes(content)

    out = _ours(our_cli, config_dir, "create_workspace", "Docs", "--json")
    workspace_id = json.loads(out)["id"]
    _ours(our_cli, config_dir, "upload", tree, "/Docs/photos", "--quiet")

    arguments = {
        "config_dir": str(config_dir),
        "organization": name,
        "password": PASSWORD,
        "data_dir": str(tmp_path / "reference-data"),
        "workspace_id": workspace_id,
    }
    seen = _reference(reference_cli, "read", arguments)
    assert seen["name"] == "Docs"
    assert seen["files"] == {f"/photos/{k}": _sha(v) for k, v in files.items()}

    # The reference writes (a new file and a new version of ours); ours reads both.
    fresh = {**arguments, "data_dir": str(tmp_path / "reference-data-2")}
    written = _reference(
        reference_cli, "write", {**fresh, "path": "/from-reference.txt", "contents": ["x", "yz"]}
    )
    assert written == {"written": 2}
    _ours(our_cli, config_dir, "download", "/Docs/from-reference.txt", tmp_path / "got.txt")
    assert (tmp_path / "got.txt").read_bytes() == b"yz"
    history = json.loads(
        _ours(our_cli, config_dir, "history", "/Docs/from-reference.txt", "--json")
    )
    # The reference first stores the new file empty, then each content.
    assert [v["size"] for v in history] == [0, 1, 2]
    _ours(our_cli, config_dir, "download", "/Docs/photos", tmp_path / "back", "--quiet")
    for relative, content in files.items():
        assert (tmp_path / "back" / relative).read_bytes() == content
