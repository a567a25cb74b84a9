"""Issue #9, end to end: our server takes over the database and block store of a running
Parsec 2.0.0 server, then hands them back (docs/plans/drop-in.md §5.8, "End-to-end
tests").

One story per block store (POSTGRESQL, then S3 on moto), one database, one server at a
time on one address (the clients' devices keep working across switches); every client is
the unmodified reference client (library and CLI), reading from fresh, empty data folders:

1. Reference phase: the reference server (its own `migrate`, then `run`) and its clients
   build two organizations (one bootstrapped, one created only, its bootstrap URL kept),
   users and devices joined by invitation, a revoked user, a pending USER and a pending
   DEVICE invitation, shared workspaces with role changes and a removal, a file with three
   versions, a 3 MiB file, sharing messages, one finished re-encryption and one realm left
   in re-encryption (one batch of two saved). What the clients see, the organization stats
   and a logical snapshot of the database are recorded; the same checks pass again after a
   restart of the reference (the baseline).
2. Takeover: our `migrate` on the stopped reference's database (the reference's rows
   unchanged), our `run`: everything reads back as recorded, then the second organization
   is bootstrapped, both pending invitations claimed, the re-encryption finished, new
   writes made, and an event reaches a connected device.
3. Hand-back: our `downgrade`, the reference's `migrate` finds everything applied (the
   schema is a fresh reference's), the reference serves everything ours wrote, writes,
   re-encrypts and claims an invitation created through ours.
4. Again: our `migrate` and `run` on what the reference wrote.
5. Forgotten downgrade: the reference runs on the database ours migrated and adds a device
   and vlobs; ours runs again without `migrate` and that device connects (its
   `device.verify_key` is NULL: the handshake parses its certificate).

Steps 4 and 5 are about the database only: they run on the POSTGRESQL block store story.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.backend.blockstore.conftest import MotoS3Server
from tests.backend.blockstore.conftest import TlsFiles as S3TlsFiles
from tests.interop.conftest import (
    EXTRAS_MIGRATIONS,
    MIGRATIONS,
    RESULT_PREFIX,
    Cli,
    TlsFiles,
    authenticated_check,
    bootstrap_organization,
    create_organization,
    describe,
    new_organization_name,
    parse_key_values,
)
from tests.interop.takeover_support import (
    Deployment,
    Snapshot,
    catalog,
    changed_rows,
    fetch,
    fresh_reference_catalog,
    logical_snapshot,
)
from tests.interop.test_guide_s3 import (  # noqa: F401  (fixtures used by name)
    bucket_objects,
    guide_blockstore,
    s3_tls,
    start_s3,
)
from tests.interop.test_guide_workspaces import (
    BIG_FILE_SIZE,
    HISTORY,
    READY_PREFIX,
    REFERENCE_COMMANDS,
    REFERENCE_MAIN,
    SCRIPT_TIMEOUT,
    WATCH_TIMEOUT,
    Member,
    Story,
    add_member,
    result_of,
    sha256,
    summary,
)

pytestmark = pytest.mark.interop

ALREADY_APPLIED = tuple(f"{name} (already applied)" for name in MIGRATIONS)

# Commands added to the guide's reference script (same conventions: one JSON argument,
# one `RESULT <json>` line).
TAKEOVER_COMMANDS = """

async def invite(args):
    # A new invitation, left pending: its token.
    admin = load_device(args)
    async with backend_authenticated_cmds_factory(
        admin.organization_addr, admin.device_id, admin.signing_key
    ) as cmds:
        if args["kind"] == "user":
            rep = await cmds.invite_new(
                type=InvitationType.USER, claimer_email=args["email"], send_email=False
            )
        else:
            rep = await cmds.invite_new(type=InvitationType.DEVICE, send_email=False)
    assert rep["status"] == "ok", rep
    result({"token": str(rep["token"])})


async def set_role(args):
    # Through the client's sharing API; `role` null removes the user's access.
    async with core_of(args) as core:
        workspace_id = EntryID(args["workspace_id"])
        role = None if args["role"] is None else WorkspaceRole(args["role"])
        await core.user_fs.workspace_share(workspace_id, UserID(args["user_id"]), role)
        roles = await core.user_fs.get_workspace(workspace_id).get_user_roles()
        result({str(user): r.value for user, r in roles.items()})


async def server_view(args):
    # What the server keeps for this device, straight from its commands: the messages
    # (and what each offset of `message_get` returns), the status and role certificates
    # of `realms`, the invitations the device's user created.
    device = load_device(args)
    async with backend_authenticated_cmds_factory(
        device.organization_addr, device.device_id, device.signing_key
    ) as cmds:
        rep = await cmds.message_get(0)
        assert rep["status"] == "ok", rep
        messages = [
            {
                "count": m["count"],
                "sender": str(m["sender"]),
                "timestamp": str(m["timestamp"]),
                "body": sha256(m["body"]),
            }
            for m in rep["messages"]
        ]
        offsets = []
        for offset in range(len(messages) + 1):
            rep = await cmds.message_get(offset)
            offsets.append([m["count"] for m in rep["messages"]])
        realms = {}
        for realm_id in args["realms"]:
            status = await cmds.realm_status(UUID(realm_id))
            certificates = await cmds.realm_get_role_certificates(UUID(realm_id))
            assert certificates["status"] == "ok", certificates
            realms[realm_id] = {
                "status": {key: str(value) for key, value in status.items()},
                "certificates": [sha256(c) for c in certificates["certificates"]],
            }
        rep = await cmds.invite_list()
        invitations = sorted(
            ({key: str(value) for key, value in i.items()} for i in rep["invitations"]),
            key=lambda i: i["token"],
        )
    result({
        "messages": messages,
        "message_offsets": offsets,
        "realms": realms,
        "invitations": invitations,
    })


async def start_reencryption(args):
    # Started, then only `batches` batches of `batch_size` done: left in maintenance.
    async with core_of(args) as core:
        workspace_id = EntryID(args["workspace_id"])
        job = await core.user_fs.workspace_start_reencryption(workspace_id)
        batches = []
        for _ in range(args["batches"]):
            batches.append(list(await job.do_one_batch(size=args["batch_size"])))
        rep = await core.user_fs.backend_cmds.realm_status(workspace_id)
        result({
            "batches": batches,
            "in_maintenance": rep["in_maintenance"],
            "encryption_revision": rep["encryption_revision"],
        })


async def continue_reencryption(args):
    # The client's way to resume an interrupted re-encryption, to its end.
    async with core_of(args) as core:
        workspace_id = EntryID(args["workspace_id"])
        await core.user_fs.process_last_messages()
        job = await core.user_fs.workspace_continue_reencryption(workspace_id)
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


async def stats(args):
    # `organization_stats` of `target`, as the reference's `stats_organization` asks it.
    from parsec.api.protocol import OrganizationID
    from parsec.core.backend_connection import apiv1_backend_administration_cmds_factory
    from parsec.core.types import BackendAddr

    async with apiv1_backend_administration_cmds_factory(
        BackendAddr.from_url(args["addr"]), args["administration_token"]
    ) as cmds:
        rep = await cmds.organization_stats(OrganizationID(args["target"]))
    result({key: str(value) for key, value in rep.items()})


async def batch(args):
    # Several commands in one process (the reference library takes seconds to import):
    # their results as one list, in order.
    global result
    print_result, results = result, []
    result = results.append
    try:
        for step in args["steps"]:
            await COMMANDS[step["command"]](step["arguments"])
    finally:
        result = print_result
    result(results)


COMMANDS.update({
    f.__name__: f
    for f in (
        invite, set_role, server_view, start_reencryption, continue_reencryption, stats, batch
    )
})
"""
TAKEOVER_SCRIPT = REFERENCE_COMMANDS + TAKEOVER_COMMANDS + REFERENCE_MAIN

# The blocks recorded in the database, for the block store checks.
BLOCKS_SQL = """
SELECT organization.organization_id, block.block_id, block.size
FROM block JOIN organization ON organization._id = block.organization
ORDER BY block._id
"""
BLOCK_DATA_SQL = "SELECT organization_id, block_id, length(data) AS size FROM block_data"
METADATA_SIZE_SQL = """
SELECT sum(vlob_atom.size) FROM vlob_atom JOIN organization
ON organization._id = vlob_atom.organization WHERE organization.organization_id = $1
"""
DEVICE_VERIFY_KEYS_SQL = """
SELECT device.device_id, device.verify_key IS NOT NULL AS cached
FROM device JOIN organization ON organization._id = device.organization
WHERE organization.organization_id = $1
"""


# --- The story ----------------------------------------------------------------------------


@dataclass
class Workspace:
    id: str
    files: dict[str, dict[str, Any]]  # path: size, sha256 (as `read` reports them)


@dataclass
class Scenario:
    """The deployment, the organizations and what the clients are expected to see."""

    deployment: Deployment
    cli: Cli
    folder: Path
    story: Story | None = None  # organization A, its members
    members: dict[str, Member] = field(default_factory=dict)
    documents: Workspace | None = None  # shared, roles changed, re-encrypted
    ongoing: Workspace | None = None  # left in re-encryption by the reference
    pending: dict[str, str] = field(default_factory=dict)  # invitation tokens by name
    second_organization: str = ""
    second_bootstrap_url: str = ""
    recorded: dict[str, Any] = field(default_factory=dict)  # seen through the reference
    snapshot: Snapshot = field(default_factory=dict)
    block_store: dict[str, str] = field(default_factory=dict)  # key: sha256, S3 only
    s3: MotoS3Server | None = None
    done: set[str] = field(default_factory=set)

    def require(self, *steps: str) -> None:
        missing = [step for step in steps if step not in self.done]
        if missing:
            pytest.fail(f"the earlier step(s) {', '.join(missing)} of this story failed")

    @property
    def org(self) -> Story:
        assert self.story is not None
        return self.story

    @property
    def docs(self) -> Workspace:
        assert self.documents is not None
        return self.documents

    @property
    def ongo(self) -> Workspace:
        assert self.ongoing is not None
        return self.ongoing

    def member(self, name: str) -> Member:
        return self.members[name]

    def run(
        self, command: str, name: str, workspace: Workspace | None = None, /, **args: Any
    ) -> Any:
        if workspace is not None:
            args["workspace_id"] = workspace.id
        return self.org.run(command, self.member(name), **args)

    def step(
        self,
        command: str,
        name: str,
        workspace: Workspace | None = None,
        /,
        *,
        fresh: bool = False,
        **args: Any,
    ) -> dict[str, Any]:
        """One command of a `batch`, as `name` (from an empty data folder if `fresh`)."""
        if workspace is not None:
            args["workspace_id"] = workspace.id
        data_dir = self.org.fresh_data_dir() if fresh else None
        return {
            "command": command,
            "arguments": self.org.arguments(self.member(name), data_dir, **args),
        }

    def batch(self, *steps: dict[str, Any]) -> list[Any]:
        """The steps' results, run one after the other by one reference process."""
        arguments = json.dumps({"steps": list(steps)})
        process = self.cli.python(
            TAKEOVER_SCRIPT, "batch", arguments, timeout=SCRIPT_TIMEOUT * len(steps)
        )
        results: list[Any] = result_of(process)
        assert len(results) == len(steps), results
        return results

    def add_member(self, name: str, greeter: str, kind: str, token: str | None = None) -> Member:
        full_name = f"{name.capitalize()} Takeover" if kind == "user" else ""
        email = f"{name}@example.com" if kind == "user" else ""
        member = add_member(
            self.cli,
            self.org.organization,
            self.folder,
            self.member(greeter),
            name,
            kind,
            full_name,
            email,
            token=token,
        )
        self.members[name] = member
        return member

    def stats_step(self, organization: str) -> dict[str, Any]:
        return self.step(
            "stats",
            "alice",
            addr=self.deployment.addr,
            administration_token=self.deployment.administration_token,
            target=organization,
        )

    def stats(self, organization: str | None = None) -> dict[str, str]:
        """`organization_stats` through the reference CLI's `stats_organization`."""
        result = self.cli.run(
            "core",
            "stats_organization",
            "--addr",
            self.deployment.addr,
            "-T",
            self.deployment.administration_token,
            organization or self.org.organization,
        )
        assert result.returncode == 0, describe(result)
        return parse_key_values(result.stdout)

    def report_sections(self) -> list[tuple[str, str]]:
        return self.deployment.report_sections()


def write_files(
    scenario: Scenario, owner: str, name: str, files: dict[str, bytes]
) -> dict[str, Any]:
    """A new workspace `name` of `owner` with `files`; returns what `create_workspace`
    reports."""
    sources = scenario.folder / f"sources-{name}"
    sources.mkdir()
    for file_name, data in files.items():
        (sources / file_name).write_bytes(data)
    created: dict[str, Any] = scenario.run(
        "create_workspace",
        owner,
        name=name,
        files={file_name: str(sources / file_name) for file_name in files},
    )
    assert created["files"] == {f"/{n}": summary(data) for n, data in files.items()}
    return created


# --- Fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["POSTGRESQL", "S3"])
def scenario(
    request: pytest.FixtureRequest,
    postgresql_url: str,
    reference_venv: Path,
    reference_cli: Cli,
    tls_files: TlsFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scenario]:
    blockstore: str = request.param
    folder = tmp_path_factory.mktemp(f"takeover-{blockstore.lower()}")
    overrides: dict[str, str] = {}
    s3: MotoS3Server | None = None
    if blockstore == "S3":
        [s3] = request.getfixturevalue("start_s3")(1)
        s3_ca: S3TlsFiles = request.getfixturevalue("s3_tls")
        overrides = {
            "PARSEC_BLOCKSTORE": guide_blockstore(s3.port),
            "AWS_CA_BUNDLE": str(s3_ca.ca),
        }
    deployment = Deployment.create(
        postgresql_url, blockstore, reference_venv, tls_files, folder, **overrides
    )
    try:
        yield Scenario(deployment, reference_cli, folder, s3=s3)
    finally:
        deployment.close()


# --- Checks shared by the steps -----------------------------------------------------------


OBSERVED = (
    "documents_by_alice",
    "documents_by_bob",
    "documents_by_alice2",
    "history",
    "alice_view",
    "bob_view",
    "carol_connects",
    "bob_connects",
)


def observe(scenario: Scenario) -> dict[str, Any]:
    """What the clients see of the reference phase's data, from empty data folders:
    "Documents" and its history, messages, roles, realm statuses and invitations, the
    revoked user. (Reading may still write: a client sometimes saves its user manifest
    again.)"""
    docs, realms = scenario.docs, [scenario.docs.id, scenario.ongo.id]
    results = scenario.batch(
        scenario.step("read", "alice", docs, fresh=True),
        scenario.step("read", "bob", docs, fresh=True),
        scenario.step("read", "alice2", docs, fresh=True),
        scenario.step("history", "bob", docs, fresh=True, path="/history.txt"),
        scenario.step("server_view", "alice", realms=realms),
        scenario.step("server_view", "bob", realms=realms),
        scenario.step("connect", "carol"),
        scenario.step("connect", "bob"),
    )
    observed = dict(zip(OBSERVED, results, strict=True))
    observed["history"]["versions"][-1]["late"] = None  # "now"
    return observed


def check_as_recorded(scenario: Scenario) -> None:
    """Whatever server runs, the clients see exactly what they saw through the reference
    at the end of its phase."""
    observed = observe(scenario)
    for key in OBSERVED:
        assert observed[key] == scenario.recorded[key], key


def check_blocks(scenario: Scenario) -> None:
    """Every block the database records is in the block store, under its usual name, with
    its recorded size; and the blocks stored before are unchanged."""
    deployment = scenario.deployment
    blocks = {
        (row["organization_id"], str(row["block_id"])): row["size"]
        for row in fetch(deployment.database_url, BLOCKS_SQL)
    }
    assert blocks
    if scenario.s3 is None:
        stored = {
            (row["organization_id"], str(row["block_id"])): row["size"]
            for row in fetch(deployment.database_url, BLOCK_DATA_SQL)
        }
        assert stored == blocks
        return
    assert fetch(deployment.database_url, BLOCK_DATA_SQL) == []
    objects = bucket_objects(scenario.s3)
    assert {key: len(data) for key, data in objects.items()} == {
        f"{organization}/{block_id}": size for (organization, block_id), size in blocks.items()
    }
    hashes = {key: sha256(data) for key, data in objects.items()}
    assert {key: hashes.get(key) for key in scenario.block_store} == scenario.block_store


def check_migrated_by_us(scenario: Scenario, before: Snapshot) -> None:
    """After our `migrate`: the rows as they were, every device's verify key cached,
    message indexes = positions in `_id` order."""
    after = logical_snapshot(scenario.deployment.database_url)
    assert changed_rows(before, after, ignored={"device": frozenset({"verify_key"})}) == []
    devices = fetch(
        scenario.deployment.database_url, DEVICE_VERIFY_KEYS_SQL, scenario.org.organization
    )
    assert devices and all(row["cached"] for row in devices), devices
    positions: dict[str | None, int] = {}
    for row in after["message"]:
        positions[row["recipient"]] = positions.get(row["recipient"], 0) + 1
        assert row["index"] == str(positions[row["recipient"]]), row


def expect_migrate_output(result: Any) -> None:
    assert result.returncode == 0, describe(result)
    for line in ALREADY_APPLIED:
        assert line in result.stdout, describe(result)
    for name in EXTRAS_MIGRATIONS:
        assert f"{name} ✔" in result.stdout, describe(result)


def take_over(scenario: Scenario) -> Snapshot:
    """Stop the reference, our `migrate` (rows unchanged), our `run`; returns the snapshot
    taken once the reference stopped."""
    deployment = scenario.deployment
    deployment.stop()
    before = logical_snapshot(deployment.database_url)
    expect_migrate_output(deployment.command("ours", "migrate"))
    check_migrated_by_us(scenario, before)
    # Running it again changes nothing
    again = deployment.command("ours", "migrate")
    assert again.returncode == 0, describe(again)
    for name in EXTRAS_MIGRATIONS:
        assert f"{name} (already applied)" in again.stdout, describe(again)
    deployment.start("ours")
    return before


# --- 1. Reference phase -------------------------------------------------------------------


def test_reference_phase_builds_the_story_and_its_checks_pass_after_a_restart(
    scenario: Scenario, reference_venv: Path
) -> None:
    deployment = scenario.deployment
    cli = scenario.cli
    folder = scenario.folder
    migrate = deployment.command("reference", "migrate")
    assert migrate.returncode == 0, describe(migrate)
    deployment.start("reference")

    # Organization A, bootstrapped by Alice; organization B created only
    organization = new_organization_name()
    url = create_organization(cli, deployment.addr, deployment.administration_token, organization)
    alice_config = folder / "alice-config"
    bootstrap = bootstrap_organization(
        cli, url, alice_config, "Alice Takeover", "alice@example.com", "Alice's laptop"
    )
    assert bootstrap.returncode == 0, describe(bootstrap)
    scenario.second_organization = new_organization_name()
    scenario.second_bootstrap_url = create_organization(
        cli, deployment.addr, deployment.administration_token, scenario.second_organization
    )
    alice = Member("alice", alice_config, "", folder / "alice-data")
    story = Story(cli, organization, folder, alice, alice, alice, alice, script=TAKEOVER_SCRIPT)
    scenario.story = story
    scenario.members["alice"] = alice
    alice.device_id = scenario.run("whoami", "alice")["device_id"]
    # Users and a device joined by invitation
    scenario.add_member("bob", "alice", "user")
    scenario.add_member("carol", "alice", "user")
    scenario.add_member("alice2", "alice", "device")
    users = {name: scenario.member(name).user_id for name in ("alice", "bob", "carol")}

    # "Documents": a small file, a 3 MiB one, a file with three versions; shared, roles
    # changed, one removed; then re-encrypted to its end
    created = write_files(
        scenario,
        "alice",
        "Documents",
        {"small.txt": "Avant la reprise ✔\n".encode(), "big.bin": os.urandom(BIG_FILE_SIZE)},
    )
    scenario.documents = Workspace(created["workspace_id"], created["files"])
    docs = scenario.docs
    docs.files["/history.txt"] = summary(HISTORY[-1])
    docs.files["/from-bob.txt"] = summary(b"Bob was here\n")
    bob, carol = users["bob"], users["carol"]
    _, shared, promoted, removed, _, finished = scenario.batch(
        scenario.step(
            "write", "alice", docs, path="/history.txt", contents=[v.decode() for v in HISTORY]
        ),
        scenario.step("share", "alice", docs, user_ids=[bob, carol], role="CONTRIBUTOR"),
        scenario.step("set_role", "alice", docs, user_id=bob, role="MANAGER"),
        scenario.step("set_role", "alice", docs, user_id=carol, role=None),
        scenario.step("write", "bob", docs, path="/from-bob.txt", contents=["Bob was here\n"]),
        scenario.step("reencrypt", "alice", docs, batch_size=4),
    )
    assert shared == {users["alice"]: "OWNER", bob: "CONTRIBUTOR", carol: "CONTRIBUTOR"}
    assert promoted[bob] == "MANAGER"
    assert removed == {users["alice"]: "OWNER", bob: "MANAGER"}
    assert (finished["in_maintenance"], finished["encryption_revision"]) == (False, 2)

    # "Ongoing": shared, its re-encryption started and left after one batch of two; Carol
    # revoked; a user and a device invitation left pending
    created = write_files(
        scenario,
        "alice",
        "Ongoing",
        {f"{letter}.txt": f"{letter}\n".encode() * 100 for letter in "abcd"},
    )
    scenario.ongoing = Workspace(created["workspace_id"], created["files"])
    ongoing = scenario.ongo
    _, seen, started, revoked, erin, alice3 = scenario.batch(
        scenario.step("share", "alice", ongoing, user_ids=[bob], role="CONTRIBUTOR"),
        scenario.step("read", "bob", ongoing, fresh=True),
        scenario.step("start_reencryption", "alice", ongoing, batch_size=2, batches=1),
        scenario.step("revoke", "alice", user_id=carol),
        scenario.step("invite", "alice", kind="user", email="erin@example.com"),
        scenario.step("invite", "alice", kind="device"),
    )
    assert seen["files"] == ongoing.files
    [[total, saved]] = started["batches"]
    assert (saved, started["in_maintenance"], started["encryption_revision"]) == (2, True, 2)
    assert total > saved
    assert revoked == {"revoked": True}
    scenario.pending.update(erin=erin["token"], alice3=alice3["token"])

    # What the clients see through the reference. Each device reads once first: the
    # clients synchronize whatever the messages told them (their user manifests); after
    # that, reading writes nothing.
    scenario.batch(
        *(scenario.step("read", n, docs, fresh=True) for n in ("alice", "alice2", "bob"))
    )
    recorded = observe(scenario)
    for name in ("alice", "bob", "alice2"):
        seen = recorded[f"documents_by_{name}"]
        assert seen["files"] == docs.files, name
        assert seen["encryption_revision"] == 2, name
        assert seen["roles"] == {users["alice"]: "OWNER", users["bob"]: "MANAGER"}, name
    history = recorded["history"]
    assert [v["content"].encode() for v in history["versions"] if v["size"]] == list(HISTORY)
    alice_view, bob_view = recorded["alice_view"], recorded["bob_view"]
    assert {i["claimer_email"] for i in alice_view["invitations"] if "claimer_email" in i} == {
        "erin@example.com"
    }
    assert len(alice_view["invitations"]) == 2
    # Shared twice, a role change, two re-encryptions
    assert len(bob_view["messages"]) >= 5
    ongoing_status = alice_view["realms"][ongoing.id]["status"]
    assert (ongoing_status["in_maintenance"], ongoing_status["encryption_revision"]) == (
        "True",
        "2",
    )
    assert recorded["carol_connects"] == {
        "outcome": "BackendConnectionRefused: Device has been revoked"
    }
    assert recorded["bob_connects"] == {"outcome": "ok"}
    scenario.recorded = recorded

    # Baseline: the same checks pass on the reference itself after a restart (on one
    # block store: this tests the test)
    if deployment.blockstore == "POSTGRESQL":
        deployment.stop()
        deployment.start("reference")
        check_as_recorded(scenario)
    check_blocks(scenario)

    # The organizations' stats, the last thing before the takeover (no client runs
    # any more)
    stats, second_stats = scenario.batch(
        scenario.stats_step(scenario.org.organization),
        scenario.stats_step(scenario.second_organization),
    )
    assert stats["status"] == "ok" and stats["users"] == "3"
    assert int(stats["data_size"]) > BIG_FILE_SIZE  # 3 MiB in blocks, and the others
    assert second_stats == {
        "status": "ok",
        "users": "0",
        "data_size": "0",
        "metadata_size": "0",
    }
    assert scenario.stats() == stats  # the reference CLI asks the same
    scenario.recorded.update(stats=stats, second_stats=second_stats)
    if scenario.s3 is not None:
        scenario.block_store = {
            key: sha256(data) for key, data in bucket_objects(scenario.s3).items()
        }
    scenario.done.add("reference")


# --- 2. Takeover --------------------------------------------------------------------------


def test_takeover_serves_everything_the_reference_stored_then_carries_on(
    scenario: Scenario,
) -> None:
    scenario.require("reference")
    deployment = scenario.deployment
    scenario.snapshot = take_over(scenario)
    # The stats are the reference's (nothing was written since it reported them)
    assert [scenario.recorded["stats"]["metadata_size"]] == [
        str(row["sum"])
        for row in fetch(deployment.database_url, METADATA_SIZE_SQL, scenario.org.organization)
    ], "written after the reference reported its stats"
    stats = scenario.batch(
        scenario.stats_step(scenario.org.organization),
        scenario.stats_step(scenario.second_organization),
    )
    assert stats == [scenario.recorded["stats"], scenario.recorded["second_stats"]]

    # Files, history, messages, roles, realm statuses (one still in re-encryption),
    # pending invitations, the revoked user: as the reference served them
    check_as_recorded(scenario)
    check_blocks(scenario)
    # ... and reading changed no row the reference wrote
    after_reads = logical_snapshot(deployment.database_url)
    assert changed_rows(scenario.snapshot, after_reads, new_rows_allowed=True) == []

    # The second organization is bootstrapped with the token the reference gave
    second_config = scenario.folder / "second-config"
    bootstrap = bootstrap_organization(
        scenario.cli,
        scenario.second_bootstrap_url,
        second_config,
        "Oscar Second",
        "oscar@example.com",
        "Oscar's laptop",
    )
    assert bootstrap.returncode == 0, describe(bootstrap)
    checked = authenticated_check(scenario.cli, second_config, scenario.second_organization)
    assert (checked["user_get_status"], checked["profile"]) == ("ok", "ADMIN")

    # Both pending invitations are claimed
    scenario.add_member("erin", "alice", "user", token=scenario.pending.pop("erin"))
    scenario.add_member("alice3", "alice", "device", token=scenario.pending.pop("alice3"))
    assert scenario.member("alice3").user_id == scenario.member("alice").user_id

    # The interrupted re-encryption is finished; new writes: Erin joins "Documents" as a
    # reader, Bob writes, Alice's new device reads; an invitation for the reference
    docs, ongoing = scenario.docs, scenario.ongo
    erin = scenario.member("erin").user_id
    docs.files["/after-takeover.txt"] = summary(b"v2\n")
    (
        alice_view,
        finished,
        ongoing_by_alice,
        ongoing_by_bob,
        roles,
        _,
        docs_by_erin,
        docs_by_alice3,
        frank,
        stats,
    ) = scenario.batch(
        scenario.step("server_view", "alice", realms=[]),
        scenario.step("continue_reencryption", "alice", ongoing, batch_size=2),
        scenario.step("read", "alice", ongoing, fresh=True),
        scenario.step("read", "bob", ongoing, fresh=True),
        scenario.step("share", "alice", docs, user_ids=[erin], role="READER"),
        scenario.step("write", "bob", docs, path="/after-takeover.txt", contents=["1\n", "v2\n"]),
        scenario.step("read", "erin", docs, fresh=True),
        scenario.step("read", "alice3", docs, fresh=True),
        scenario.step("invite", "alice", kind="user", email="frank@example.com"),
        scenario.stats_step(scenario.org.organization),
    )
    assert alice_view["invitations"] == []
    assert finished["batches"][-1][0] == finished["batches"][-1][1]
    assert (finished["in_maintenance"], finished["encryption_revision"]) == (False, 2)
    for seen in (ongoing_by_alice, ongoing_by_bob):
        assert (seen["files"], seen["encryption_revision"]) == (ongoing.files, 2)
    assert roles[erin] == "READER"
    assert docs_by_erin["files"] == docs.files
    assert docs_by_alice3["files"] == docs.files
    scenario.pending["frank"] = frank["token"]
    assert stats["users"] == "4"
    assert int(stats["data_size"]) > int(scenario.recorded["stats"]["data_size"])
    # An event for a new write reaches a connected device
    watch_live_change(scenario, "bob", "alice", "/live.txt")
    check_blocks(scenario)
    scenario.done.add("takeover")


def watch_live_change(scenario: Scenario, watcher_name: str, writer: str, path: str) -> None:
    """`watcher_name`'s client, kept running, sees `writer`'s change of `path` (in
    "Documents") thanks to the server's event, without a sync of its own."""
    docs = scenario.docs
    initial, changed = f"before, {path}\n".encode(), f"after, {path}\n".encode()
    scenario.run("write", writer, docs, path=path, contents=[initial.decode()])
    watcher = scenario.org.start(
        "watch",
        scenario.member(watcher_name),
        workspace_id=docs.id,
        path=path,
        expected_sha256=sha256(changed),
        timeout=WATCH_TIMEOUT,
    )
    try:
        assert watcher.wait(READY_PREFIX, SCRIPT_TIMEOUT)["sha256"] == sha256(initial)
        scenario.run("write", writer, docs, path=path, contents=[changed.decode()])
        outcome = watcher.wait(RESULT_PREFIX, WATCH_TIMEOUT + 15)
        assert outcome["sha256"] == sha256(changed), watcher.printed
        assert docs.id in outcome["vlobs_updated_events"], watcher.printed
        assert watcher.finish() == 0, watcher.printed
    finally:
        watcher.kill()
    docs.files[path] = summary(changed)


# --- 3. Hand-back -------------------------------------------------------------------------


def test_hand_back_the_reference_serves_what_ours_wrote_and_carries_on(
    scenario: Scenario, postgresql_url: str, reference_venv: Path
) -> None:
    scenario.require("takeover")
    deployment = scenario.deployment
    assert deployment.stop() == 0
    before = logical_snapshot(deployment.database_url)

    downgrade = deployment.command("ours", "downgrade")
    assert downgrade.returncode == 0, describe(downgrade)
    assert changed_rows(before, logical_snapshot(deployment.database_url)) == []
    assert catalog(deployment.database_url) == fresh_reference_catalog(
        postgresql_url, reference_venv, scenario.folder
    )
    for arguments in (["migrate", "--dry-run"], ["migrate"]):
        migrate = deployment.command("reference", *arguments)
        assert migrate.returncode == 0, describe(migrate)
        applied = [line for line in migrate.stdout.splitlines() if ".sql" in line]
        assert applied == list(ALREADY_APPLIED), describe(migrate)
    deployment.start("reference")

    # Everything ours stored (and the reference before it) reads back
    docs, ongoing = scenario.docs, scenario.ongo
    readers = ("alice", "bob", "erin", "alice3")
    *docs_seen, ongoing_seen, history, carol = scenario.batch(
        *(scenario.step("read", name, docs, fresh=True) for name in readers),
        scenario.step("read", "bob", ongoing, fresh=True),
        scenario.step("history", "alice3", docs, fresh=True, path="/history.txt"),
        scenario.step("connect", "carol"),
    )
    for name, seen in zip(readers, docs_seen, strict=True):
        assert seen["files"] == docs.files, name
    assert (ongoing_seen["files"], ongoing_seen["encryption_revision"]) == (ongoing.files, 2)
    history["versions"][-1]["late"] = None
    assert history == scenario.recorded["history"]
    assert carol == {"outcome": "BackendConnectionRefused: Device has been revoked"}
    checked = authenticated_check(
        scenario.cli, scenario.folder / "second-config", scenario.second_organization
    )
    assert checked["user_get_status"] == "ok"
    check_blocks(scenario)

    # The reference writes, re-encrypts, and greets the invitation created through ours
    docs.files["/handed-back.txt"] = summary(b"ref\n")
    _, reencrypted = scenario.batch(
        scenario.step("write", "bob", docs, path="/handed-back.txt", contents=["ref\n"]),
        scenario.step("reencrypt", "alice", docs, batch_size=5),
    )
    assert (reencrypted["in_maintenance"], reencrypted["encryption_revision"]) == (False, 3)
    frank = scenario.add_member("frank", "alice", "user", token=scenario.pending.pop("frank"))
    _, *seen_after = scenario.batch(
        scenario.step("share", "alice", docs, user_ids=[frank.user_id], role="READER"),
        scenario.step("read", "frank", docs, fresh=True),
        scenario.step("read", "erin", docs, fresh=True),
    )
    for seen in seen_after:
        assert (seen["files"], seen["encryption_revision"]) == (docs.files, 3)
    check_blocks(scenario)
    scenario.done.add("handback")


# --- 4. Again -----------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["POSTGRESQL"], indirect=True)
def test_second_takeover_serves_what_the_reference_wrote_after_the_hand_back(
    scenario: Scenario,
) -> None:
    scenario.require("handback")
    take_over(scenario)
    docs, ongoing = scenario.docs, scenario.ongo
    readers = ("frank", "bob", "alice2")
    *docs_seen, ongoing_seen, history, _, after_write = scenario.batch(
        *(scenario.step("read", name, docs, fresh=True) for name in readers),
        scenario.step("read", "alice", ongoing, fresh=True),
        scenario.step("history", "erin", docs, fresh=True, path="/history.txt"),
        scenario.step("write", "bob", docs, path="/again.txt", contents=["2\n"]),
        scenario.step("read", "alice", docs, fresh=True),
    )
    for name, seen in zip(readers, docs_seen, strict=True):
        assert (seen["files"], seen["encryption_revision"]) == (docs.files, 3), name
    assert ongoing_seen["files"] == ongoing.files
    history["versions"][-1]["late"] = None
    assert history == scenario.recorded["history"]
    docs.files["/again.txt"] = summary(b"2\n")
    assert after_write["files"] == docs.files
    check_blocks(scenario)
    scenario.done.add("again")


# --- 5. Forgotten downgrade ---------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["POSTGRESQL"], indirect=True)
def test_reference_run_without_downgrade_then_ours_without_migrate(scenario: Scenario) -> None:
    scenario.require("again")
    deployment = scenario.deployment
    assert deployment.stop() == 0
    deployment.start("reference")  # on our extras: no downgrade
    docs = scenario.docs
    bob2 = scenario.add_member("bob2", "bob", "device")
    docs.files["/forgotten.txt"] = summary(b"no downgrade\n")
    _, seen = scenario.batch(
        scenario.step("write", "bob2", docs, path="/forgotten.txt", contents=["no downgrade\n"]),
        scenario.step("read", "alice", docs, fresh=True),
    )
    assert seen["files"] == docs.files
    deployment.stop()
    cached = {
        row["device_id"]: row["cached"]
        for row in fetch(deployment.database_url, DEVICE_VERIFY_KEYS_SQL, scenario.org.organization)
    }
    assert cached[bob2.device_id] is False  # the reference knows nothing of the column

    deployment.start("ours")  # no migrate
    docs.files["/forgotten.txt"] = summary(b"ours again\n")
    connected, _, *seen_by = scenario.batch(
        scenario.step("connect", "bob2"),
        scenario.step("write", "bob2", docs, path="/forgotten.txt", contents=["ours again\n"]),
        scenario.step("read", "alice", docs, fresh=True),
        scenario.step("read", "bob2", docs, fresh=True),
    )
    assert connected == {"outcome": "ok"}
    for seen in seen_by:
        assert seen["files"] == docs.files
    check_blocks(scenario)
