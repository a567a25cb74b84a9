"""The guide's workspace steps, with our server and the unmodified Parsec 2.0.0 client.

Our server runs as in `test_guide_admin` (our `parsec` command, PostgreSQL database and
block store, TLS). The organization is created and bootstrapped with the reference CLI;
the other users (Bob, Carol) and Alice's second device join through the reference client
library's own invitation code, greeter and claimer running side by side in one reference
process (the SAS codes each side shows are checked against what the other side expects).
Everything else is the reference client library (`logged_core_factory`, `user_fs`, the
workspace API), scripted with the reference Python: `REFERENCE_SCRIPT` below, one command
per run. Whoever reads data does it from a fresh, empty data folder, so the bytes can only
have come from our server.

The tests follow one story and share the module's server and organization; run in order:
create and sync, share, second device, history, live changes, event listener outage,
revocation, reencryption, restart, then a role removal our server refuses (in a workspace
of its own).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.backend.storage.postgresql.event_bus import LISTENER_APPLICATION_NAME
from tests.fixtures import free_port
from tests.fixtures.postgresql import run_async
from tests.interop.conftest import (
    PASSWORD,
    RESULT_PREFIX,
    Cli,
    GuideServer,
    ServerProcess,
    accepts_tls,
    bootstrap_organization,
    create_organization,
    describe,
    new_organization_name,
    our_parsec,
    parse_key_values,
)

pytestmark = pytest.mark.interop

SCRIPT_TIMEOUT = 60.0  # one run of the reference script
WATCH_TIMEOUT = 30.0  # how long the kept-running client may take to see a remote change
BIG_FILE_SIZE = 3 * 1024 * 1024
HISTORY = (b"first version\n", b"second version, longer\n", b"third and last version\n")
READY_PREFIX = "READY "

# Run with the reference Python: `python -c REFERENCE_SCRIPT COMMAND JSON_ARGUMENTS`.
# Prints one `RESULT <json>` line (`watch` and `stay_connected`, kept running, print
# `READY <json>` first, once connected). Devices are loaded from `config_dir` (the one of
# `organization`) with the guide's password; client data lives in `data_dir`. Other tests
# add commands of their own: `REFERENCE_COMMANDS + their commands + REFERENCE_MAIN`.
REFERENCE_COMMANDS = """
import hashlib, json, sys
from pathlib import Path
from uuid import UUID

import trio
from pendulum import now as pendulum_now

from parsec.api.data import RealmRoleCertificateContent, UserProfile
from parsec.api.protocol import HumanHandle, InvitationType, RealmRole, UserID
from parsec.core import logged_core_factory
from parsec.core.backend_connection import (
    BackendConnStatus,
    backend_authenticated_cmds_factory,
    backend_invited_cmds_factory,
)
from parsec.core.config import load_config
from parsec.core.core_events import CoreEvent
from parsec.core.invite import DeviceGreetInitialCtx, UserGreetInitialCtx, claimer_retrieve_info
from parsec.core.local_device import (
    list_available_devices,
    load_device_with_password,
    save_device_with_password,
)
from parsec.core.types import BackendInvitationAddr, EntryID, EntryName, FsPath, WorkspaceRole
from parsec.logging import configure_logging


def result(value):
    print("RESULT " + json.dumps(value), flush=True)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def load_device(args):
    [available] = [
        d for d in list_available_devices(Path(args["config_dir"]))
        if str(d.organization_id) == args["organization"]
    ]
    return load_device_with_password(available.key_file_path, args["password"])


def core_of(args):
    config = load_config(
        Path(args["config_dir"]),
        data_base_dir=Path(args["data_dir"]) / "data",
        cache_base_dir=Path(args["data_dir"]) / "cache",
        mountpoint_enabled=False,
    )
    return logged_core_factory(config, load_device(args))


async def workspace_of(core, args):
    # A shared workspace reaches a user through a message; its files through the server.
    await core.user_fs.process_last_messages()
    await core.user_fs.sync()
    return core.user_fs.get_workspace(EntryID(args["workspace_id"]))


async def tree(workspace, path="/"):
    files = {}
    for child in await workspace.listdir(path):
        if await workspace.is_dir(child):
            files.update(await tree(workspace, child))
        else:
            data = await workspace.read_bytes(child)
            files[str(child)] = {"size": len(data), "sha256": sha256(data)}
    return files


async def add_member(args):
    # Greeter (the admin, authenticated) and claimer (invited) side by side.
    admin = load_device(args)
    is_user = args["kind"] == "user"
    codes = {}
    async with backend_authenticated_cmds_factory(
        admin.organization_addr, admin.device_id, admin.signing_key
    ) as cmds:
        if args.get("token"):  # an invitation created earlier, still pending
            rep = {"token": UUID(args["token"])}
        elif is_user:
            rep = await cmds.invite_new(
                type=InvitationType.USER, claimer_email=args["email"], send_email=False
            )
        else:
            rep = await cmds.invite_new(type=InvitationType.DEVICE, send_email=False)
        assert rep.get("status", "ok") == "ok", rep
        addr = BackendInvitationAddr.build(
            backend_addr=admin.organization_addr,
            organization_id=admin.organization_id,
            invitation_type=InvitationType.USER if is_user else InvitationType.DEVICE,
            token=rep["token"],
        )

        async def greet():
            initial = (UserGreetInitialCtx if is_user else DeviceGreetInitialCtx)(
                cmds=cmds, token=rep["token"]
            )
            ctx = await initial.do_wait_peer()
            codes["greeter_shows"] = str(ctx.greeter_sas)
            ctx = await ctx.do_wait_peer_trust()
            codes["greeter_expects"] = str(ctx.claimer_sas)
            ctx = await ctx.do_signify_trust()
            ctx = await ctx.do_get_claim_requests()
            if is_user:
                await ctx.do_create_new_user(
                    author=admin,
                    device_label=ctx.requested_device_label,
                    human_handle=ctx.requested_human_handle,
                    profile=UserProfile.STANDARD,
                )
            else:
                await ctx.do_create_new_device(
                    author=admin, device_label=ctx.requested_device_label
                )

        async def claim():
            async with backend_invited_cmds_factory(addr=addr) as invited_cmds:
                initial = await claimer_retrieve_info(invited_cmds)
                ctx = await initial.do_wait_peer()
                codes["claimer_expects"] = str(ctx.greeter_sas)
                ctx = await ctx.do_signify_trust()
                codes["claimer_shows"] = str(ctx.claimer_sas)
                ctx = await ctx.do_wait_peer_trust()
                if is_user:
                    new_device = await ctx.do_claim_user(
                        requested_device_label=args["device_label"],
                        requested_human_handle=HumanHandle(
                            email=args["email"], label=args["full_name"]
                        ),
                    )
                else:
                    new_device = await ctx.do_claim_device(
                        requested_device_label=args["device_label"]
                    )
            save_device_with_password(Path(args["target_config_dir"]), new_device, args["password"])
            codes["device_id"] = str(new_device.device_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(greet)
            nursery.start_soon(claim)
    result(codes)


async def create_workspace(args):
    async with core_of(args) as core:
        workspace_id = await core.user_fs.workspace_create(EntryName(args["name"]))
        await core.user_fs.sync()
        workspace = core.user_fs.get_workspace(workspace_id)
        for name in sorted(args["files"]):
            await workspace.write_bytes(f"/{name}", Path(args["files"][name]).read_bytes())
        await workspace.sync()
        await core.user_fs.sync()
        result({"workspace_id": str(workspace_id), "files": await tree(workspace)})


async def share(args):
    async with core_of(args) as core:
        workspace_id = EntryID(args["workspace_id"])
        for user_id in args["user_ids"]:
            await core.user_fs.workspace_share(
                workspace_id, UserID(user_id), WorkspaceRole(args["role"])
            )
        roles = await core.user_fs.get_workspace(workspace_id).get_user_roles()
        result({str(user): role.value for user, role in roles.items()})


async def read(args):
    async with core_of(args) as core:
        workspace = await workspace_of(core, args)
        roles = await workspace.get_user_roles()
        result({
            "name": str(workspace.get_workspace_name()),
            "encryption_revision": workspace.get_encryption_revision(),
            "roles": {str(user): role.value for user, role in roles.items()},
            "files": await tree(workspace),
        })


async def write(args):
    # Each content in turn, synchronized: one version on the server for each.
    async with core_of(args) as core:
        workspace = await workspace_of(core, args)
        for content in args["contents"]:
            await workspace.write_bytes(args["path"], content.encode())
            await workspace.sync()
        result({"written": len(args["contents"])})


async def history(args):
    # The versions of a file, then its content as of the start of each one.
    async with core_of(args) as core:
        workspace = await workspace_of(core, args)
        path = FsPath(args["path"])
        entry_id = await workspace.path_id(path)
        listed, complete = await workspace.get_version_lister().list(path)
        versions = []
        for item in listed:
            past = await workspace.to_timestamped(item.early)
            versions.append({
                "version": item.version,
                "early": str(item.early),
                "late": str(item.late),
                "size": item.size,
                "creator": str(item.creator),
                "content": (await past.read_bytes(path)).decode(),
            })
        raw = await workspace.remote_loader.list_versions(entry_id)
        result({
            "complete": complete,
            "versions": versions,
            "server_versions": {
                str(version): [str(timestamp), str(author)]
                for version, (timestamp, author) in raw.items()
            },
        })


async def watch(args):
    # Kept running: reads the file, says READY, then waits until it has the expected
    # content, without any explicit sync (the monitors react to the server's events).
    events = []
    async with core_of(args) as core:
        core.event_bus.connect(
            CoreEvent.BACKEND_REALM_VLOBS_UPDATED,
            lambda event, **kwargs: events.append(str(kwargs.get("realm_id"))),
        )
        workspace = await workspace_of(core, args)
        with trio.fail_after(args["timeout"]):
            while core.backend_status != BackendConnStatus.READY:
                await trio.sleep(0.05)
        await core.wait_idle_monitors()
        before = await workspace.read_bytes(args["path"])
        print("READY " + json.dumps({"sha256": sha256(before)}), flush=True)
        started = trio.current_time()
        seen = None
        with trio.move_on_after(args["timeout"]):
            while True:
                seen = sha256(await workspace.read_bytes(args["path"]))
                if seen == args["expected_sha256"]:
                    break
                await trio.sleep(0.1)
        result({
            "sha256": seen,
            "seconds": trio.current_time() - started,
            "vlobs_updated_events": events,
        })


async def stay_connected(args):
    # Kept running: connected (READY), then reports how its connection ends.
    async with core_of(args) as core:
        with trio.fail_after(args["timeout"]):
            while core.backend_status != BackendConnStatus.READY:
                await trio.sleep(0.05)
        print("READY " + json.dumps({"status": core.backend_status.name}), flush=True)
        with trio.move_on_after(args["timeout"]):
            while core.backend_status in (
                BackendConnStatus.READY, BackendConnStatus.LOST, BackendConnStatus.INITIALIZING
            ):
                await trio.sleep(0.05)
        exc = core.backend_status_exc
        result({
            "status": core.backend_status.name,
            "reason": None if exc is None else f"{type(exc).__name__}: {exc}",
        })


async def whoami(args):
    result({"device_id": str(load_device(args).device_id)})


async def revoke(args):
    async with core_of(args) as core:
        await core.revoke_user(UserID(args["user_id"]))
        info = await core.get_user_info(UserID(args["user_id"]))
        result({"revoked": info.revoked_on is not None})


async def connect(args):
    device = load_device(args)
    try:
        async with backend_authenticated_cmds_factory(
            device.organization_addr, device.device_id, device.signing_key
        ) as cmds:
            rep = await cmds.ping("still there?")
        outcome = rep["status"]
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    result({"outcome": outcome})


async def reencrypt(args):
    async with core_of(args) as core:
        workspace_id = EntryID(args["workspace_id"])
        job = await core.user_fs.workspace_start_reencryption(workspace_id)
        batches = []
        while True:
            total, done = await job.do_one_batch(size=args["batch_size"])
            batches.append([total, done])
            if total == done:
                break
        rep = await core.user_fs.backend_cmds.realm_status(workspace_id)
        result({
            "batches": batches,
            "in_maintenance": rep["in_maintenance"],
            "encryption_revision": rep["encryption_revision"],
        })


async def refused_removal(args):
    # In a new workspace: a role granted with a certificate dated ahead (as by a client whose
    # clock is ahead), then removed through the client's sharing API, dated "now".
    async with core_of(args) as core:
        workspace_id = await core.user_fs.workspace_create(EntryName(args["name"]))
        await core.user_fs.sync()
        user_id = UserID(args["user_id"])
        certificate = RealmRoleCertificateContent(
            author=core.device.device_id,
            timestamp=pendulum_now().add(seconds=args["ahead"]),
            realm_id=workspace_id,
            user_id=user_id,
            role=RealmRole.CONTRIBUTOR,
        ).dump_and_sign(core.device.signing_key)
        grant = await core.user_fs.backend_cmds.realm_update_roles(certificate, None)
        try:
            await core.user_fs.workspace_share(workspace_id, user_id, None)
            removal = "ok"
        except Exception as exc:
            removal = f"{type(exc).__name__}: {exc}"
        # The client loads and checks every role certificate of the realm again.
        roles = await core.user_fs.get_workspace(workspace_id).get_user_roles()
        result({
            "grant": grant["status"],
            "removal": removal,
            "roles": {str(user): role.value for user, role in roles.items()},
        })


COMMANDS = {
    f.__name__: f
    for f in (add_member, create_workspace, share, read, write, history, watch,
              stay_connected, whoami, revoke, connect, reencrypt, refused_removal)
}
"""
# Runs the command named on the command line (after the commands, and any extension adding
# to `COMMANDS`).
REFERENCE_MAIN = """
configure_logging(log_level="WARNING")
trio.run(COMMANDS[sys.argv[1]], json.loads(sys.argv[2]))
"""
REFERENCE_SCRIPT = REFERENCE_COMMANDS + REFERENCE_MAIN


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def summary(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": sha256(data)}


def result_of(process: subprocess.CompletedProcess[str]) -> Any:
    assert process.returncode == 0, describe(process)
    lines = [line for line in process.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert len(lines) == 1, describe(process)
    return json.loads(lines[0].removeprefix(RESULT_PREFIX))


@dataclass
class Member:
    """A device saved in its own configuration folder, and its user."""

    name: str
    config_dir: Path
    device_id: str
    data_dir: Path  # its client data, kept from run to run

    @property
    def user_id(self) -> str:
        return self.device_id.split("@")[0]


@dataclass
class Story:
    """The module's organization and what the tests have put in its workspace."""

    cli: Cli
    organization: str
    folder: Path
    alice: Member
    alice2: Member
    bob: Member
    carol: Member
    workspace_id: str = ""
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)  # path: size, sha256
    encryption_revision: int = 1
    done: set[str] = field(default_factory=set)  # the steps that passed
    script: str = REFERENCE_SCRIPT  # the reference script its commands come from

    def require(self, *steps: str) -> None:
        """Skip a test whose story needs an earlier step that failed or did not run."""
        missing = [step for step in steps if step not in self.done]
        if missing:
            pytest.skip(f"needs the earlier step(s) {', '.join(missing)} of this module")

    def arguments(self, member: Member, data_dir: Path | None, **args: Any) -> dict[str, Any]:
        """What every command needs to act as `member` (with its own data folder, unless
        `data_dir` is given) on the story's workspace, then `args`."""
        return {
            "config_dir": str(member.config_dir),
            "data_dir": str(data_dir or member.data_dir),
            "organization": self.organization,
            "password": PASSWORD,
            "workspace_id": self.workspace_id,
            **args,
        }

    def run(self, command: str, member: Member, data_dir: Path | None = None, **args: Any) -> Any:
        """One reference script command as `member`, to completion; returns its result."""
        arguments = self.arguments(member, data_dir, **args)
        process = self.cli.python(
            self.script, command, json.dumps(arguments), timeout=SCRIPT_TIMEOUT
        )
        return result_of(process)

    def start(self, command: str, member: Member, **args: Any) -> Background:
        """One reference script command as `member`, left running."""
        return Background(
            self.cli, command, self.arguments(member, None, **args), script=self.script
        )

    def fresh_data_dir(self) -> Path:
        path = self.folder / f"fresh-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def read_fresh(self, member: Member) -> dict[str, Any]:
        """The workspace as `member` sees it from an empty data folder."""
        outcome: dict[str, Any] = self.run("read", member, self.fresh_data_dir())
        return outcome


def add_member(
    cli: Cli,
    organization: str,
    folder: Path,
    admin: Member,
    name: str,
    kind: str,
    full_name: str = "",
    email: str = "",
    token: str | None = None,
) -> Member:
    """`name` joins the organization (a new user, or a new device of `admin`'s user) by an
    invitation `admin` greets: a new one, or the pending one of `token`."""
    config_dir = folder / f"{name}-config"
    config_dir.mkdir()
    arguments = {
        "config_dir": str(admin.config_dir),
        "organization": organization,
        "password": PASSWORD,
        "kind": kind,
        "email": email,
        "full_name": full_name,
        "device_label": f"{name}'s machine",
        "target_config_dir": str(config_dir),
        "token": token,
    }
    codes = result_of(
        cli.python(REFERENCE_SCRIPT, "add_member", json.dumps(arguments), timeout=SCRIPT_TIMEOUT)
    )
    assert codes["greeter_shows"] == codes["claimer_expects"], codes
    assert codes["claimer_shows"] == codes["greeter_expects"], codes
    return Member(name, config_dir, codes["device_id"], folder / f"{name}-data")


@pytest.fixture(scope="module")
def story(
    guide_server: GuideServer, reference_cli: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Story:
    """Alice bootstraps an organization (reference CLI), then welcomes Bob and Carol as
    users and her own second device (reference library invitations)."""
    folder = tmp_path_factory.mktemp("workspaces")
    name = new_organization_name()
    url = create_organization(
        reference_cli, guide_server.addr, guide_server.administration_token, name
    )
    alice_config = folder / "alice-config"
    bootstrap = bootstrap_organization(
        reference_cli, url, alice_config, "Alice Guide", "alice@example.com", "Alice's laptop"
    )
    assert bootstrap.returncode == 0, describe(bootstrap)
    alice = Member("alice", alice_config, "", folder / "alice-data")
    whoami = {"config_dir": str(alice_config), "organization": name, "password": PASSWORD}
    alice.device_id = result_of(
        reference_cli.python(REFERENCE_SCRIPT, "whoami", json.dumps(whoami))
    )["device_id"]
    bob = add_member(
        reference_cli, name, folder, alice, "bob", "user", "Bob Guide", "bob@example.com"
    )
    carol = add_member(
        reference_cli, name, folder, alice, "carol", "user", "Carol Guide", "carol@example.com"
    )
    alice2 = add_member(reference_cli, name, folder, alice, "alice2", "device")
    assert alice2.user_id == alice.user_id
    return Story(reference_cli, name, folder, alice, alice2, bob, carol)


def wait_line(lines: queue.Queue[str | None], prefix: str, timeout: float) -> str | None:
    """The first line starting with `prefix`, None when the output ends or on timeout."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            return None
        if line is None:
            return None
        if line.startswith(prefix):
            return line.removeprefix(prefix)
    return None


class Background:
    """A reference script command left running, its output read by a thread."""

    def __init__(
        self,
        cli: Cli,
        command: str,
        arguments: dict[str, Any],
        script: str = REFERENCE_SCRIPT,
    ) -> None:
        self.command = command
        python = str(cli.program.with_name("python"))
        self.process = subprocess.Popen(
            [python, "-c", script, command, json.dumps(arguments)],
            env=cli.env(),
            cwd=cli.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout as stream:
            for line in stream:
                self.output.append(line)
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait(self, prefix: str, timeout: float) -> Any:
        """The JSON after `prefix` in the next line starting with it."""
        line = wait_line(self.lines, prefix, timeout)
        assert line is not None, f"no `{prefix}` line from `{self.command}`:\n{self.printed}"
        return json.loads(line)

    @property
    def printed(self) -> str:
        return "".join(self.output)

    def finish(self, timeout: float = SCRIPT_TIMEOUT) -> int:
        """Its exit code, once it exits by itself (killed if it takes longer)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"`{self.command}` did not exit within {timeout}s:\n{self.printed}")
        self._reader.join(timeout=timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)


# --- 1. Create a workspace, write files, sync ---------------------------------------------


def test_workspace_files_written_and_synced_are_read_back_from_the_server(
    story: Story,
) -> None:
    contents = {
        "empty.txt": b"",
        "small.txt": "A small file, with accents: éàü ✔\n".encode(),
        "big.bin": os.urandom(BIG_FILE_SIZE),
    }
    sources = story.folder / "sources"
    sources.mkdir()
    for name, data in contents.items():
        (sources / name).write_bytes(data)
    expected = {f"/{name}": summary(data) for name, data in contents.items()}

    created = story.run(
        "create_workspace",
        story.alice,
        name="Guide documents",
        files={name: str(sources / name) for name in contents},
    )

    assert created["files"] == expected
    story.workspace_id = created["workspace_id"]
    story.expected = dict(expected)
    # The same device, starting from nothing: everything comes from our server
    fresh = story.read_fresh(story.alice)
    assert fresh["name"] == "Guide documents"
    assert fresh["files"] == expected
    assert fresh["encryption_revision"] == 1
    assert fresh["roles"] == {story.alice.user_id: "OWNER"}
    story.done.add("create")


# --- 2. Share with a second user ----------------------------------------------------------


def test_workspace_shared_as_contributor_is_read_and_written_by_the_other_user(
    story: Story,
) -> None:
    story.require("create")
    roles = story.run(
        "share", story.alice, user_ids=[story.bob.user_id, story.carol.user_id], role="CONTRIBUTOR"
    )

    assert roles == {
        story.alice.user_id: "OWNER",
        story.bob.user_id: "CONTRIBUTOR",
        story.carol.user_id: "CONTRIBUTOR",
    }
    seen_by_bob = story.read_fresh(story.bob)
    assert seen_by_bob["name"] == "Guide documents"
    assert seen_by_bob["files"] == story.expected
    assert seen_by_bob["roles"] == roles
    # A contributor writes too, and the owner reads it
    story.run("write", story.bob, path="/from-bob.txt", contents=["Bob was here\n"])
    story.expected["/from-bob.txt"] = summary(b"Bob was here\n")
    assert story.read_fresh(story.alice)["files"] == story.expected
    assert story.read_fresh(story.carol)["files"] == story.expected
    story.done.add("share")


# --- 3. A second device of the first user -------------------------------------------------


def test_second_device_of_the_owner_sees_the_workspace(story: Story) -> None:
    story.require("create")
    seen = story.read_fresh(story.alice2)

    assert seen["name"] == "Guide documents"
    assert seen["files"] == story.expected
    assert seen["roles"][story.alice.user_id] == "OWNER"


# --- 4. File history ----------------------------------------------------------------------


def test_versions_of_a_file_are_listed_and_an_older_one_reads_back(story: Story) -> None:
    story.require("create")
    story.run("write", story.alice, path="/history.txt", contents=[v.decode() for v in HISTORY])
    story.expected["/history.txt"] = summary(HISTORY[-1])

    history = story.run("history", story.alice2, story.fresh_data_dir(), path="/history.txt")

    contents = [v["content"].encode() for v in history["versions"] if v["size"]]
    assert contents == list(HISTORY), history
    assert history["complete"] is True
    assert [v["creator"] for v in history["versions"]] == [story.alice.device_id] * len(
        history["versions"]
    )
    versions = [v["version"] for v in history["versions"]]
    assert versions == sorted(versions)
    assert len(history["server_versions"]) >= len(HISTORY)
    assert all(author == story.alice.device_id for _, author in history["server_versions"].values())
    story.done.add("history")


# --- 5. A running client notices remote changes -------------------------------------------


def test_running_client_sees_the_remote_change_without_restarting(story: Story) -> None:
    story.require("share")
    initial, changed = b"before the change\n", b"after the change, seen live\n"
    story.run("write", story.alice, path="/live.txt", contents=[initial.decode()])
    watcher = story.start(
        "watch",
        story.bob,
        path="/live.txt",
        expected_sha256=sha256(changed),
        timeout=WATCH_TIMEOUT,
    )
    try:
        ready = watcher.wait(READY_PREFIX, SCRIPT_TIMEOUT)
        assert ready["sha256"] == sha256(initial)

        story.run("write", story.alice, path="/live.txt", contents=[changed.decode()])

        outcome = watcher.wait(RESULT_PREFIX, WATCH_TIMEOUT + 15)
        assert outcome["sha256"] == sha256(changed), watcher.printed
        # Seen thanks to our server's `realm.vlobs_updated` event, not a restart
        assert story.workspace_id in outcome["vlobs_updated_events"], watcher.printed
        assert watcher.finish() == 0, watcher.printed
    finally:
        watcher.kill()
    story.expected["/live.txt"] = summary(changed)


# --- 5b. Events sent while the server's event listener is down are not lost -------------


def _on_admin_database(postgresql_url: str, *queries: tuple[Any, ...]) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(postgresql_url)
        try:
            return [await conn.fetch(query, *args) for query, *args in queries]
        finally:
            await conn.close()

    return run_async(run())


def test_change_made_while_the_event_listener_is_down_is_seen_once_it_is_back(
    story: Story, guide_server: GuideServer, postgresql_url: str
) -> None:
    story.require("share")
    database = urlsplit(guide_server.database_url).path.lstrip("/")
    initial, changed = b"before the outage\n", b"written while nobody listened\n"
    story.run("write", story.alice, path="/outage.txt", contents=[initial.decode()])
    watcher = story.start(
        "watch",
        story.bob,
        path="/outage.txt",
        expected_sha256=sha256(changed),
        timeout=WATCH_TIMEOUT,
    )
    try:
        assert watcher.wait(READY_PREFIX, SCRIPT_TIMEOUT)["sha256"] == sha256(initial)
        # The server's listening connection is killed, and may not come back for now
        # (the connections of its pool stay).
        _, [killed] = _on_admin_database(
            postgresql_url,
            (f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false',),
            (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND application_name = $2",
                database,
                LISTENER_APPLICATION_NAME,
            ),
        )
        assert killed["pg_terminate_backend"] is True
        try:
            story.run("write", story.alice, path="/outage.txt", contents=[changed.decode()])
            # No event reached Bob: he does not see the change.
            assert wait_line(watcher.lines, RESULT_PREFIX, 2.0) is None, watcher.printed
        finally:
            _on_admin_database(
                postgresql_url, (f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true',)
            )
        back = time.monotonic()

        # The listener is back: Bob's event connection is closed, his client reconnects and
        # synchronizes.
        outcome = watcher.wait(RESULT_PREFIX, WATCH_TIMEOUT + 15)
        assert outcome["sha256"] == sha256(changed), watcher.printed
        assert time.monotonic() - back < 15, watcher.printed
        assert watcher.finish() == 0, watcher.printed
    finally:
        watcher.kill()
    story.expected["/outage.txt"] = summary(changed)


# --- 6. Revocation ------------------------------------------------------------------------


def test_revoked_user_is_refused_at_its_next_connection(story: Story) -> None:
    assert story.run("connect", story.carol) == {"outcome": "ok"}
    connected = story.start("stay_connected", story.carol, timeout=WATCH_TIMEOUT)
    try:
        assert connected.wait(READY_PREFIX, SCRIPT_TIMEOUT) == {"status": "READY"}

        revoked = story.run("revoke", story.alice, user_id=story.carol.user_id)

        assert revoked == {"revoked": True}
        # The running client loses its connection, and may not connect again
        ended = connected.wait(RESULT_PREFIX, WATCH_TIMEOUT + 15)
        assert ended == {
            "status": "REFUSED",
            "reason": "BackendConnectionRefused: Device has been revoked",
        }, connected.printed
        assert connected.finish() == 0, connected.printed
    finally:
        connected.kill()
    outcome = story.run("connect", story.carol)
    assert outcome == {"outcome": "BackendConnectionRefused: Device has been revoked"}
    # The others are not affected
    assert story.run("connect", story.bob) == {"outcome": "ok"}
    story.done.add("revoke")


# --- 6b. Administration API: stats and freezing ---------------------------------------------


def admin_api(
    server: GuideServer, method: str, path: str, body: Any = None, port: int | None = None
) -> tuple[int, Any]:
    """A call to the administration REST API of our server (HTTPS, the test CA)."""
    url = f"https://localhost:{port or server.port}/administration{path}"
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {server.administration_token}",
            "Content-Type": "application/json",
        },
    )
    context = server.tls.client_context()
    try:
        with urllib.request.urlopen(request, context=context, timeout=SCRIPT_TIMEOUT) as rep:
            return rep.status, json.loads(rep.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_rest_stats_are_what_the_reference_cli_reports(
    story: Story, guide_server: GuideServer
) -> None:
    story.require("create")
    result = story.cli.run(
        "core",
        "stats_organization",
        "--addr",
        guide_server.addr,
        "-T",
        guide_server.administration_token,
        story.organization,
    )
    assert result.returncode == 0, describe(result)
    reported = parse_key_values(result.stdout)
    status, stats = admin_api(guide_server, "GET", f"/organizations/{story.organization}/stats")
    assert status == 200, stats
    assert {k: str(stats[k]) for k in ("users", "data_size", "metadata_size")} == {
        k: reported[k] for k in ("users", "data_size", "metadata_size")
    }
    assert stats["realms"] >= 1 and stats["data_size"] > BIG_FILE_SIZE


@pytest.fixture
def second_server(guide_server: GuideServer, tmp_path: Path) -> Iterator[int]:
    """Another `parsec backend run` on the guide server's database: its port."""
    port = free_port()
    env = {
        **guide_server.env,
        "PARSEC_PORT": str(port),
        "PARSEC_BACKEND_ADDR": f"parsec://localhost:{port}",
    }
    process = ServerProcess(
        [our_parsec(), "backend", "run"],
        env,
        tmp_path,
        ready=accepts_tls(port, guide_server.tls),
        cwd=tmp_path,
    )
    process.start()
    try:
        yield port
    finally:
        process.stop()


def test_frozen_user_loses_its_connection_at_once_and_is_refused_until_unfrozen(
    story: Story, guide_server: GuideServer, second_server: int
) -> None:
    """Frozen through the other server process: the running 2.0.0 client connected to
    the first one loses its connection and shows its device as revoked."""
    assert story.run("connect", story.bob) == {"outcome": "ok"}
    freeze = f"/organizations/{story.organization}/users/freeze"
    connected = story.start("stay_connected", story.bob, timeout=WATCH_TIMEOUT)
    try:
        assert connected.wait(READY_PREFIX, SCRIPT_TIMEOUT) == {"status": "READY"}
        started = time.monotonic()
        status, rep = admin_api(
            guide_server,
            "POST",
            freeze,
            {"user_email": "bob@example.com", "frozen": True},
            port=second_server,
        )
        assert (status, rep["frozen"]) == (200, True), rep
        ended = connected.wait(RESULT_PREFIX, WATCH_TIMEOUT + 15)
        elapsed = time.monotonic() - started
        assert ended == {
            "status": "REFUSED",
            "reason": "BackendConnectionRefused: Device has been revoked",
        }, connected.printed
        assert elapsed < 10, elapsed  # closed at once, then refused at the reconnection
        assert connected.finish() == 0, connected.printed
    finally:
        connected.kill()
    outcome = story.run("connect", story.bob)
    assert outcome == {"outcome": "BackendConnectionRefused: Device has been revoked"}
    assert story.run("connect", story.alice) == {"outcome": "ok"}

    status, rep = admin_api(
        guide_server, "POST", freeze, {"user_id": rep["user_id"], "frozen": False}
    )
    assert (status, rep["frozen"]) == (200, False), rep
    assert story.run("connect", story.bob) == {"outcome": "ok"}


# --- 7. Reencryption ----------------------------------------------------------------------


def test_reencrypted_workspace_stays_readable_by_both_users(story: Story) -> None:
    story.require("share")
    # Carol, revoked, still has her role in the realm: the client sends her no new key,
    # and our server must not count her as a participant (or the client retries forever)
    reencrypted = story.run("reencrypt", story.alice, batch_size=3)

    # Every vlob version went through the job, a few at a time
    total = reencrypted["batches"][-1][0]
    assert total >= len(story.expected)
    assert reencrypted["batches"][-1] == [total, total]
    assert len(reencrypted["batches"]) == -(-total // 3)
    assert reencrypted["in_maintenance"] is False
    assert reencrypted["encryption_revision"] == 2
    story.encryption_revision = 2
    for member in (story.alice, story.bob, story.alice2):
        seen = story.read_fresh(member)
        assert seen["encryption_revision"] == 2, member.name
        assert seen["files"] == story.expected, member.name
    # And it still works afterwards: Bob writes with the new key, Alice reads it
    story.run("write", story.bob, path="/after-reencryption.txt", contents=["new key\n"])
    story.expected["/after-reencryption.txt"] = summary(b"new key\n")
    assert story.read_fresh(story.alice)["files"] == story.expected


# --- 8. Restart ---------------------------------------------------------------------------


def test_everything_is_still_there_after_a_server_restart(
    story: Story, guide_server: GuideServer
) -> None:
    story.require("share")
    exit_code = guide_server.restart()

    assert exit_code == 0, guide_server.process.output
    for member in (story.alice, story.alice2, story.bob):
        seen = story.read_fresh(member)
        assert seen["files"] == story.expected, member.name
        assert seen["encryption_revision"] == story.encryption_revision, member.name
    if "history" in story.done:
        history = story.run("history", story.bob, story.fresh_data_dir(), path="/history.txt")
        contents = [v["content"].encode() for v in history["versions"] if v["size"]]
        assert contents == list(HISTORY)
    if "revoke" in story.done:
        outcome = story.run("connect", story.carol)
        assert outcome == {"outcome": "BackendConnectionRefused: Device has been revoked"}


# --- 9. A role removal dated before the current grant -------------------------------------


def test_removal_dated_before_the_current_grant_is_reported_and_the_realm_still_checks_out(
    story: Story,
) -> None:
    # Our server refuses the removal (docs/deviations.md) instead of storing a certificate
    # that would not change the role: the client reports the failed sharing, and still
    # accepts the realm's certificates.
    outcome = story.run(
        "refused_removal", story.alice, name="Ahead of time", user_id=story.bob.user_id, ahead=120
    )

    assert outcome["grant"] == "ok"
    assert outcome["removal"].startswith(
        "FSError: Error while trying to set vlob group roles in backend: "
    ), outcome
    assert "'status': 'invalid_certification'" in outcome["removal"], outcome
    assert outcome["roles"] == {story.alice.user_id: "OWNER", story.bob.user_id: "CONTRIBUTOR"}
