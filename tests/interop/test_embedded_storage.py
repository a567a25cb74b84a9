"""Issue #12, end to end: a new user's server on a data directory (SQLite + block files),
killed and restarted, then moved up to PostgreSQL and S3 with `parsec backend copy`, every
client the unmodified Parsec 2.0.0 one (reference CLI and library, `Story` of
`test_guide_workspaces`), every read also from a fresh, empty data folder.

One story, in order (each test needs the ones before it):

1. The README's first command (`parsec backend run --dev --data-dir ./parsec-data`, on a
   free port) in a new folder: Alice creates and bootstraps an organization, invites Bob
   (greet/claim), writes a small file and a multi-block one into a workspace shared with
   him; Bob reads them and writes. The data is in `parsec-data` (encrypted block files).
2. `kill -9` right after a write, the same command again: everything reads back byte for
   byte (fresh and existing data folders), new writes work.
3. `parsec backend copy --from-data-dir ... --to-db postgresql://... --to-blockstore s3:...`
   (S3: moto) on a terminal: progress bars, one line per table and for the blocks (counts
   of the source), the final check; again: refused; again with `--resume`: nothing copied,
   the target row for row and object for object as it was. Every block file is an object.
4. A copy interrupted (a block file unreadable: the copy stops in its block stage) into a
   second database and bucket, resumed: the rest copied, and that target is the first
   one, row for row and object for object.
5. Our server on the PostgreSQL + S3 target (two workers, same address): the clients'
   existing data folders and fresh ones read everything; Bob writes, Carol is invited and
   the workspace shared with her; the new blocks are S3 objects.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import shlex
import sqlite3
import struct
import subprocess
import termios
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from parsec_server.backend.storage.copy.tables import TABLES
from parsec_server.cli.backend_run import DEV_ADMINISTRATION_TOKEN
from tests.backend.blockstore.conftest import MotoS3Server
from tests.backend.blockstore.conftest import TlsFiles as S3TlsFiles
from tests.fixtures import free_port
from tests.fixtures.postgresql import create_empty_database, drop_database, run_async
from tests.interop.conftest import (
    REPO_ROOT,
    Cli,
    ServerProcess,
    accepts_tcp,
    clean_environment,
    describe,
    our_parsec,
    run_command,
)
from tests.interop.takeover_support import fetch
from tests.interop.test_guide_s3 import (  # noqa: F401  (fixtures used by name)
    BUCKET,
    guide_blockstore,
    new_story,
    run_bounded,
    s3_tls,
    start_s3,
    write_shared_files,
)
from tests.interop.test_guide_workspaces import (
    REFERENCE_COMMANDS,
    REFERENCE_MAIN,
    Story,
    add_member,
    summary,
)

pytestmark = pytest.mark.interop

README = REPO_ROOT / "README.md"
COPY_TIMEOUT = 120.0
RESUMED_BUCKET = "parsec-resumed"  # the second target's bucket (step 4)
# What a table or the blocks line of `parsec backend copy` says.
COPIED_LINE = re.compile(
    r"^(?P<name>\w+): (?P<total>\d+)(?: rows)? \((?P<copied>\d+) copied, "
    r"(?P<present>\d+) already there\)$"
)
# A progress bar at its end, as tqdm draws it on a terminal: `name: 100%|███| n/n [...`.
FINISHED_BAR = re.compile(r"([\w ]+): 100%\|[^|\r\n]*\| (\d+)/(\d+) ")


# Added to the guide's reference script (same conventions).
EMBEDDED_COMMANDS = """

async def read_synced(args):
    # From the device's own data folder, kept from earlier runs: the workspace synchronized
    # first (what a running client's monitors would do), then read.
    async with core_of(args) as core:
        workspace = await workspace_of(core, args)
        await workspace.sync()
        result({"files": await tree(workspace)})


COMMANDS.update({"read_synced": read_synced})
"""
EMBEDDED_SCRIPT = REFERENCE_COMMANDS + EMBEDDED_COMMANDS + REFERENCE_MAIN


def readme_first_command() -> list[str]:
    """The arguments of `parsec` in the README's first command that runs the server (the
    last command of its line, after `.venv/bin/parsec`)."""
    for line in README.read_text().splitlines():
        if line.startswith("    ") and "bin/parsec backend run" in line:
            program, *args = shlex.split(line.split("&&")[-1])
            assert program == ".venv/bin/parsec", line
            return args
    pytest.fail(f"{README} has no command running the server")


# --- Looking at the storages --------------------------------------------------------------


def source_counts(database: Path) -> dict[str, int]:
    """The rows of each copied table of the data directory's database."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return {
            table.name: conn.execute(f'SELECT count(*) FROM "{table.name}"').fetchone()[0]
            for table in TABLES
        }


def block_files(blocks: Path) -> dict[str, bytes]:
    """The block files of a block directory (writes in progress left out), by their
    object key `<organization>/<block id>`."""
    return {
        f"{path.parent.parent.name}/{path.name}": path.read_bytes()
        for path in blocks.glob("*/*/*")
        if path.is_file() and not path.relative_to(blocks).parts[0].startswith(".")
    }


def objects(store: MotoS3Server, bucket: str) -> dict[str, bytes]:
    return run_bounded(store.objects(bucket))


def database_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every copied table of a PostgreSQL database, its rows in key order."""
    rows = {}
    for table in TABLES:
        order = ", ".join(f'"{column}"' for column in table.key)
        records = fetch(url, f'SELECT * FROM "{table.name}" ORDER BY {order}')
        rows[table.name] = [tuple(record.values()) for record in records]
    return rows


def copied_lines(stdout: str) -> dict[str, tuple[int, int, int]]:
    """`name: (total, copied, already there)` of each table and of the blocks."""
    found = {}
    for line in stdout.splitlines():
        match = COPIED_LINE.match(line)
        if match:
            found[match["name"]] = (
                int(match["total"]),
                int(match["copied"]),
                int(match["present"]),
            )
    return found


def checked_line(tables: int, blocks: int) -> str:
    return (
        f"Checked: every row of the {tables} tables and every one of the {blocks} blocks is "
        "the same in the target (counts and SHA-256)"
    )


@dataclass(frozen=True)
class TerminalRun:
    result: subprocess.CompletedProcess[str]
    terminal: str  # what the command wrote to its standard error, a terminal


def run_on_terminal(
    command: list[str | Path], env: dict[str, str], cwd: Path, timeout: float
) -> TerminalRun:
    """Standard error on a pseudo-terminal (120 columns), as in an operator's shell;
    standard output captured."""
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the command's side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    try:
        process = subprocess.Popen(
            [str(arg) for arg in command],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
        )
    finally:
        os.close(secondary)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"`{' '.join(map(str, command))}` did not finish within {timeout}s")
    finally:
        reader.join(timeout=10)
        os.close(main)
    terminal = b"".join(chunks).decode(errors="replace")
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, terminal)
    return TerminalRun(result, terminal)


# --- The story ----------------------------------------------------------------------------


@dataclass
class Scenario:
    cli: Cli
    folder: Path
    port: int
    data_dir: Path
    server: ServerProcess  # the README's command
    s3: MotoS3Server
    s3_env: dict[str, str]  # trusting the S3 server's CA
    postgresql_url: str
    databases: list[str] = field(default_factory=list)  # created, dropped at the end
    target: ServerProcess | None = None  # on PostgreSQL and S3
    story: Story | None = None
    marker: bytes = b""
    copied: dict[str, bytes] = field(default_factory=dict)  # block key: data
    target_url: str = ""
    done: set[str] = field(default_factory=set)
    history: list[tuple[str, str]] = field(default_factory=list)  # (what, output)

    @property
    def addr(self) -> str:
        """`--dev` listens without TLS: the clients' address says so."""
        return f"parsec://127.0.0.1:{self.port}?no_ssl=true"

    @property
    def administration_token(self) -> str:
        return DEV_ADMINISTRATION_TOKEN

    def require(self, *steps: str) -> Story:
        missing = [step for step in steps if step not in self.done]
        if missing:
            pytest.skip(f"needs the earlier step(s) {', '.join(missing)} of this module")
        assert self.story is not None
        return self.story

    def copied_objects(self) -> dict[str, bytes]:
        """The objects of the bucket our server runs on after the copy."""
        return objects(self.s3, BUCKET)

    def s3_blockstore(self, bucket: str) -> str:
        return guide_blockstore(self.s3.port).replace(f":{BUCKET}:", f":{bucket}:")

    def new_database(self) -> str:
        url = run_async(create_empty_database(self.postgresql_url))
        self.databases.append(url)
        return url

    def copy(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`parsec backend copy ARGS`, its output captured (no terminal)."""
        command: list[str | Path] = [our_parsec(), "backend", "copy", *args]
        result = run_command(command, self.s3_env, cwd=self.folder, timeout=COPY_TIMEOUT)
        self.history.append((f"backend copy {' '.join(args)}", describe(result)))
        return result

    def read_everywhere(self, story: Story, expected: dict[str, Any]) -> None:
        """Alice and Bob, from their own data folders and from fresh ones."""
        for member in (story.alice, story.bob):
            assert story.run("read_synced", member)["files"] == expected, member.name
            assert story.read_fresh(member)["files"] == expected, member.name

    def report_sections(self) -> list[tuple[str, str]]:
        sections = [("parsec backend run --dev --data-dir", self.server.output)]
        sections += self.history
        if self.target is not None:
            sections.append(("parsec backend run on PostgreSQL and S3", self.target.output))
        return sections


@pytest.fixture(scope="module")
def scenario(
    postgresql_url: str,
    reference_cli: Cli,
    s3_tls: S3TlsFiles,  # noqa: F811
    start_s3: Any,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scenario]:
    folder = tmp_path_factory.mktemp("embedded")
    args = readme_first_command()
    assert args[:3] == ["backend", "run", "--dev"] and "--data-dir" in args, args
    data_dir = folder / args[args.index("--data-dir") + 1]
    port = free_port()
    server = ServerProcess(
        [our_parsec(), *args, "--port", str(port)],
        clean_environment(TMPDIR=str(folder)),
        folder,
        ready=accepts_tcp(port),
        cwd=folder,
    )
    [s3] = start_s3(1)
    run_bounded(s3.create_bucket(RESUMED_BUCKET))
    scenario = Scenario(
        cli=reference_cli,
        folder=folder,
        port=port,
        data_dir=data_dir,
        server=server,
        s3=s3,
        s3_env=clean_environment(TMPDIR=str(folder), AWS_CA_BUNDLE=str(s3_tls.ca)),
        postgresql_url=postgresql_url,
    )
    try:
        yield scenario
    finally:
        server.stop()
        if scenario.target is not None:
            scenario.target.stop()
        for url in scenario.databases:
            run_async(drop_database(postgresql_url, url))


# --- 1. The README's first command --------------------------------------------------------


def test_readme_first_command_serves_the_reference_client_from_a_data_directory(
    scenario: Scenario,
) -> None:
    scenario.server.start()
    assert f"New data directory {scenario.data_dir}: initialised" in scenario.server.output

    story = new_story(scenario.cli, scenario, scenario.folder)
    story.script = EMBEDDED_SCRIPT
    scenario.marker = f"embedded-marker-{uuid.uuid4().hex}".encode()
    expected = write_shared_files(story, scenario.marker)
    scenario.story = story
    story.expected = expected
    assert story.read_fresh(story.bob)["files"] == expected
    story.run("write", story.bob, path="/from-bob.txt", contents=["Bob was here\n"])
    expected["/from-bob.txt"] = summary(b"Bob was here\n")
    assert story.read_fresh(story.alice)["files"] == expected

    # In the data directory: the database, and one encrypted file per block
    assert (scenario.data_dir / "parsec.sqlite").is_file()
    files = block_files(scenario.data_dir / "blocks")
    assert {key.split("/")[0] for key in files} == {story.organization}
    assert len(files) >= 8  # 3 MiB: 6 blocks; a block per small file
    assert sum(map(len, files.values())) > 3 * 1024 * 1024
    assert [key for key, data in files.items() if scenario.marker in data] == []
    scenario.done.add("data-dir")


# --- 2. kill -9 ---------------------------------------------------------------------------


def test_everything_is_there_after_kill_9_and_the_same_command(scenario: Scenario) -> None:
    story = scenario.require("data-dir")
    last = b"written just before the kill\n"
    story.run("write", story.alice, path="/before-kill.txt", contents=[last.decode()])
    story.expected["/before-kill.txt"] = summary(last)

    assert scenario.server.kill() == -9
    scenario.server.start()

    assert "initialised" not in scenario.server.last_output
    scenario.read_everywhere(story, story.expected)
    # Still writable: Bob writes, Alice reads it from nothing
    story.run("write", story.bob, path="/after-restart.txt", contents=["v1\n", "v2\n"])
    story.expected["/after-restart.txt"] = summary(b"v2\n")
    assert story.read_fresh(story.alice)["files"] == story.expected
    scenario.done.add("kill")


# --- 3. Copy to PostgreSQL and S3 ---------------------------------------------------------


def test_copy_to_postgresql_and_s3_shows_progress_checks_and_refuses_to_copy_twice(
    scenario: Scenario,
) -> None:
    scenario.require("kill")
    assert scenario.server.stop() == 0
    counts = source_counts(scenario.data_dir / "parsec.sqlite")
    files = block_files(scenario.data_dir / "blocks")
    assert counts["block"] == len(files)
    url = scenario.target_url = scenario.new_database()
    target = ["--to-db", url, "--to-blockstore", scenario.s3_blockstore(BUCKET)]
    command = ["--from-data-dir", str(scenario.data_dir), *target]

    run = run_on_terminal(
        [our_parsec(), "backend", "copy", *command], scenario.s3_env, scenario.folder, COPY_TIMEOUT
    )
    scenario.history.append(("backend copy (on a terminal)", describe(run.result)))

    assert run.result.returncode == 0, describe(run.result)
    lines = run.result.stdout.splitlines()
    assert lines[0] == f"Copying sqlite:{scenario.data_dir}/parsec.sqlite to {url}", lines
    assert copied_lines(run.result.stdout) == {
        **{name: (count, count, 0) for name, count in counts.items()},
        "blocks": (len(files), len(files), 0),
    }
    assert lines[-1] == checked_line(len(TABLES), len(files))
    # Progress on the terminal, never in the output
    bars = {
        name.strip(): (int(n), int(total)) for name, n, total in FINISHED_BAR.findall(run.terminal)
    }
    for stage, total in [
        ("vlob_atom", counts["vlob_atom"]),
        ("block", counts["block"]),
        ("blocks", len(files)),
        ("checking tables", len(TABLES)),
        ("checking blocks", len(files)),
    ]:
        assert bars.get(stage) == (total, total), (stage, run.terminal)
    assert "%|" not in run.result.stdout
    # The target: the source's rows, and every block file an object of the bucket
    assert scenario.copied_objects() == files
    rows = database_rows(url)
    assert {name: len(table_rows) for name, table_rows in rows.items()} == counts
    assert fetch(url, "SELECT count(*) FROM block_data")[0][0] == 0

    # Again: refused, nothing touched
    again = scenario.copy(*command)
    assert again.returncode == 1, describe(again)
    assert "is not empty: give --resume to go on with an interrupted copy" in again.stderr
    assert "Checked" not in again.stdout
    # Resumed: nothing left to copy, nothing duplicated
    resumed = scenario.copy(*command, "--resume")
    assert resumed.returncode == 0, describe(resumed)
    assert copied_lines(resumed.stdout) == {
        **{name: (count, 0, count) for name, count in counts.items()},
        "blocks": (len(files), 0, len(files)),
    }
    assert resumed.stdout.splitlines()[-1] == checked_line(len(TABLES), len(files))
    assert database_rows(url) == rows
    assert scenario.copied_objects() == files
    scenario.copied = files
    scenario.done.add("copy")


# --- 4. An interrupted copy, resumed -------------------------------------------------------


def test_copy_interrupted_in_its_block_stage_and_resumed_gives_the_same_target(
    scenario: Scenario,
) -> None:
    scenario.require("copy")
    blocks = scenario.data_dir / "blocks"
    # The last block the copy reaches (by `_id`): the first ones are copied before it fails
    with contextlib.closing(
        sqlite3.connect(f"file:{scenario.data_dir / 'parsec.sqlite'}?mode=ro", uri=True)
    ) as conn:
        block_id = conn.execute("SELECT block_id FROM block ORDER BY _id DESC LIMIT 1").fetchone()[
            0
        ]
    [broken] = blocks.glob(f"*/*/{uuid.UUID(bytes=block_id)}")
    aside = scenario.folder / "aside"
    broken.rename(aside)
    broken.mkdir()  # unreadable as a file: a failing disk
    url = scenario.new_database()
    command = [
        "--from-data-dir",
        str(scenario.data_dir),
        "--to-db",
        url,
        "--to-blockstore",
        scenario.s3_blockstore(RESUMED_BUCKET),
    ]
    try:
        interrupted = scenario.copy(*command)
    finally:
        broken.rmdir()
        aside.rename(broken)

    assert interrupted.returncode == 1, describe(interrupted)
    key = f"{broken.parent.parent.name}/{broken.name}"
    assert f"Error: The source blockstore failed to read block {key}" in interrupted.stderr
    assert "Checked" not in interrupted.stdout
    assert key not in objects(scenario.s3, RESUMED_BUCKET)

    refused = scenario.copy(*command)
    assert refused.returncode == 1, describe(refused)
    assert "is not empty: give --resume" in refused.stderr
    resumed = scenario.copy(*command, "--resume")

    assert resumed.returncode == 0, describe(resumed)
    counts = source_counts(scenario.data_dir / "parsec.sqlite")
    total = len(scenario.copied)
    lines = copied_lines(resumed.stdout)
    blocks_total, blocks_copied, blocks_present = lines.pop("blocks")
    assert lines == {name: (count, 0, count) for name, count in counts.items()}
    # Some blocks were copied before the failure, the others (the failed one included) now
    assert blocks_total == total
    assert blocks_copied >= 1 and blocks_present >= 1, resumed.stdout
    assert resumed.stdout.splitlines()[-1] == checked_line(len(TABLES), total)
    # The same as the uninterrupted copy, row for row and object for object
    assert database_rows(url) == database_rows(scenario.target_url)
    assert objects(scenario.s3, RESUMED_BUCKET) == scenario.copied


# --- 5. The server on PostgreSQL and S3 ---------------------------------------------------


def test_clients_keep_working_with_the_server_on_postgresql_and_s3(scenario: Scenario) -> None:
    story = scenario.require("copy")
    port = str(scenario.port)
    # fmt: off
    command = [
        our_parsec(), "backend", "run",
        "--db", scenario.target_url, "--blockstore", scenario.s3_blockstore(BUCKET),
        "--port", port, "--backend-addr", f"parsec://localhost:{port}",
        "--administration-token", DEV_ADMINISTRATION_TOKEN, "--email-host", "MOCKED",
        "--workers", "2",
    ]
    # fmt: on
    logs = scenario.folder / "target-logs"
    logs.mkdir()
    scenario.target = ServerProcess(
        command,
        scenario.s3_env,
        logs,
        ready=accepts_tcp(scenario.port),
        cwd=scenario.folder,
    )
    scenario.target.start()
    assert "(db=POSTGRESQL blockstore=S3 " in scenario.target.output

    scenario.read_everywhere(story, story.expected)
    # Writes, an invitation, a share
    story.run("write", story.bob, path="/on-postgresql.txt", contents=["moved up\n"])
    story.expected["/on-postgresql.txt"] = summary(b"moved up\n")
    assert story.read_fresh(story.alice)["files"] == story.expected
    carol = add_member(
        scenario.cli,
        story.organization,
        story.folder,
        story.alice,
        "carol",
        "user",
        "Carol Guide",
        "carol@example.com",
    )
    roles = story.run("share", story.alice, user_ids=[carol.user_id], role="READER")
    assert roles[carol.user_id] == "READER"
    seen_by_carol = story.read_fresh(carol)
    assert seen_by_carol["files"] == story.expected
    assert seen_by_carol["roles"] == roles
    # The new block is an object of the bucket; the data directory is left as it was
    now = scenario.copied_objects()
    assert now.items() >= scenario.copied.items()
    assert len(now) > len(scenario.copied)
    assert block_files(scenario.data_dir / "blocks") == scenario.copied
    assert scenario.target.stop() == 0, scenario.target.output
