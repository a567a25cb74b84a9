"""Our client CLI and the unmodified Parsec 2.0.0 CLI, face to face on our server.

* Device key files: each CLI lists and uses the devices the other one saved (ours also
  lists the workspaces and downloads the files of a device the reference bootstrapped).
* Invitations: our `greet_invitation` (in `--sas-mode=auto`) welcomes a claimer running
  the reference `claim_invitation`, and the reference `greet_invitation` welcomes our
  `claim_invitation` (auto mode); the reference side is interactive, driven by pexpect,
  reading the codes our side prints. Each claimed device then connects.

The server is `parsec backend run --dev` (memory storage, no TLS), one per test.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pexpect  # type: ignore[import-untyped, unused-ignore]
import pytest

from tests.interop.conftest import (
    PASSWORD,
    Cli,
    DevServer,
    authenticated_check,
    bootstrap_organization,
    create_organization,
    describe,
    new_organization_name,
)
from tests.interop.test_guide_workspaces import REFERENCE_SCRIPT, result_of

pytestmark = pytest.mark.interop

DEV_ADMINISTRATION_TOKEN = "s3cr3t"  # what `--dev` injects
STEP_TIMEOUT = 30.0
CLAIMED_PASSWORD = PASSWORD  # `authenticated_check` loads devices with it
ANSI_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CODE = r"([A-Z2-9]{4})"
URL_LINE = re.compile(r"^url: (parsec://\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Admin:
    """An organization's first device, saved by one of the two CLIs."""

    organization: str
    config_dir: Path
    full_name: str
    email: str
    device_label: str

    @property
    def slughash(self) -> str:
        [key_file] = self.config_dir.glob("devices/*.keys")
        return key_file.stem

    def options(self) -> list[str]:
        return ["--config-dir", str(self.config_dir), "-D", self.slughash[:12], "-P", PASSWORD]


def reference_admin(cli: Cli, server: DevServer, folder: Path) -> Admin:
    name = new_organization_name()
    url = create_organization(cli, server.addr, DEV_ADMINISTRATION_TOKEN, name)
    admin = Admin(name, folder, "Rita Reference", "rita@example.com", "Rita's desktop")
    result = bootstrap_organization(
        cli, url, folder, admin.full_name, admin.email, admin.device_label
    )
    assert result.returncode == 0, describe(result)
    return admin


def our_admin(cli: Cli, server: DevServer, folder: Path) -> Admin:
    name = new_organization_name()
    url = create_organization(cli, server.addr, DEV_ADMINISTRATION_TOKEN, name)
    admin = Admin(name, folder, "Oscar Ours", "oscar@example.com", "Oscar's laptop")
    result = cli.run(
        "core",
        "bootstrap_organization",
        "--config-dir",
        folder,
        "--password",
        PASSWORD,
        url,
        input=f"{admin.full_name}\n{admin.email}\n{admin.device_label}\n",
    )
    assert result.returncode == 0, describe(result)
    return admin


def list_devices(cli: Cli, config_dir: Path) -> str:
    result = cli.run("core", "list_devices", "--config-dir", config_dir)
    assert result.returncode == 0, describe(result)
    return ANSI_SEQUENCE.sub("", result.stdout)


def invite(cli: Cli, admin: Admin, *args: str) -> str:
    result = cli.run("core", *args, *admin.options())
    assert result.returncode == 0, describe(result)
    match = URL_LINE.search(ANSI_SEQUENCE.sub("", result.stdout))
    assert match is not None, describe(result)
    return match.group(1)


def token_of(url: str) -> str:
    match = re.search(r"token=([0-9a-f]{32})", url)
    assert match is not None, url
    return match.group(1)


class Side:
    """A command on a pseudo-terminal, its output kept for failure reports."""

    def __init__(self, name: str, cli: Cli, *args: str | Path) -> None:
        self.name = name
        self.transcript = io.StringIO()
        self.child = pexpect.spawn(
            str(cli.program),
            [str(arg) for arg in args],
            env=cli.env(),
            cwd=str(cli.workdir),
            encoding="utf-8",
            codec_errors="replace",
            timeout=STEP_TIMEOUT,
            dimensions=(50, 500),
        )
        self.child.logfile_read = self.transcript

    def output(self) -> str:
        return ANSI_SEQUENCE.sub("", self.transcript.getvalue())

    def expect(self, pattern: str) -> re.Match[str]:
        try:
            self.child.expect(pattern)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            kind = "timed out" if isinstance(exc, pexpect.TIMEOUT) else "exited"
            raise AssertionError(f"{self.name} {kind} waiting for {pattern!r}") from None
        match = self.child.match
        assert isinstance(match, re.Match)
        return match

    def expect_code(self, label: str) -> str:
        """A code the command shows (the reference colours it on a terminal)."""
        ansi = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"
        return self.expect(rf"{re.escape(label)} {ansi}{CODE}").group(1)

    def choose(self, prompt: str, wanted: str) -> None:
        """Answer a choice that follows ` <index> - <code>` lines with `wanted`'s index."""
        self.expect(re.escape(prompt))
        shown = ANSI_SEQUENCE.sub("", self.child.before or "")
        choices = {code: index for index, code in re.findall(r"(\d) - ([A-Z2-9]{4})\b", shown)}
        assert wanted in choices, f"{self.name} does not offer {wanted}: {shown!r}"
        self.child.sendline(choices[wanted])

    def answer(self, prompt: str, line: str) -> None:
        self.expect(re.escape(prompt))
        self.child.sendline(line)

    def wait_success(self) -> None:
        try:
            self.child.expect(pexpect.EOF)
        except pexpect.TIMEOUT:
            raise AssertionError(f"{self.name} did not exit") from None
        self.child.close()
        assert self.child.exitstatus == 0, f"{self.name} exited with {self.child.exitstatus}"

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


def exchange(*sides: Side) -> _Exchange:
    return _Exchange(sides)


class _Exchange:
    """Kills both sides and reports their transcripts when a step fails."""

    def __init__(self, sides: tuple[Side, ...]) -> None:
        self.sides = sides

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        for side in self.sides:
            side.kill()
        if exc is not None and isinstance(exc, AssertionError):
            transcripts = "\n".join(f"--- {s.name} ---\n{s.output()}" for s in self.sides)
            pytest.fail(f"{exc}\n{transcripts}", pytrace=False)


# --- device key files ---------------------------------------------------------------------


def test_our_cli_lists_and_uses_a_device_saved_by_the_reference(
    dev_server: DevServer, reference_cli: Cli, our_cli: Cli, tmp_path: Path
) -> None:
    admin = reference_admin(reference_cli, dev_server, tmp_path / "reference")

    listed = list_devices(our_cli, admin.config_dir)
    url = invite(our_cli, admin, "invite_user", "zoe@example.com")  # loads it, connects
    invitations = our_cli.run("core", "list_invitations", *admin.options())

    assert f"Found 1 device(s) in {admin.config_dir}:" in listed
    expected = f"{admin.organization}: {admin.full_name} <{admin.email}> @ {admin.device_label}"
    assert re.search(rf"^{admin.slughash[:3]}[0-9a-f]* - {re.escape(expected)}$", listed, re.M)
    assert invitations.stdout == f"{token_of(url)}\tidle\tuser (zoe@example.com)\n"

    # Its workspaces and files too: one the reference creates, listed and downloaded by
    # ours with the device the reference saved.
    source = tmp_path / "plan.txt"
    source.write_bytes(b"made by the reference\n")
    arguments = {
        "config_dir": str(admin.config_dir),
        "organization": admin.organization,
        "password": PASSWORD,
        "data_dir": str(tmp_path / "reference-data"),
        "name": "Plans",
        "files": {"plan.txt": str(source)},
    }
    created = result_of(
        reference_cli.python(
            REFERENCE_SCRIPT, "create_workspace", json.dumps(arguments), timeout=120
        )
    )
    workspaces = our_cli.run("core", "list_workspaces", "--json", *admin.options())
    assert workspaces.returncode == 0, describe(workspaces)
    assert json.loads(workspaces.stdout) == [
        {
            "id": created["workspace_id"].replace("-", ""),
            "name": "Plans",
            "role": "OWNER",
            "encryption_revision": 1,
        }
    ]
    target = tmp_path / "got.txt"
    download = our_cli.run(
        "core", "download", "/Plans/plan.txt", target, "--quiet", *admin.options()
    )
    assert download.returncode == 0, describe(download)
    assert target.read_bytes() == b"made by the reference\n"


def test_reference_lists_and_loads_a_device_saved_by_our_cli(
    dev_server: DevServer, reference_cli: Cli, our_cli: Cli, tmp_path: Path
) -> None:
    admin = our_admin(our_cli, dev_server, tmp_path / "ours")

    listed = list_devices(reference_cli, admin.config_dir)
    checked = authenticated_check(reference_cli, admin.config_dir, admin.organization)

    assert f"Found 1 device(s) in {admin.config_dir}:" in listed
    expected = f"{admin.organization}: {admin.full_name} <{admin.email}> @ {admin.device_label}"
    assert f"{admin.slughash[:3]} - {expected}" in listed
    assert checked["ping"] == {"status": "ok", "pong": "hello"}
    assert checked["user_get_status"] == "ok"
    assert checked["human_handle"] == f"{admin.full_name} <{admin.email}>"
    assert checked["profile"] == "ADMIN"
    assert checked["devices"] == {checked["own_device_id"]: admin.device_label}


# --- our greeter, reference claimer -------------------------------------------------------


@pytest.mark.parametrize("kind", ["user", "device"])
def test_our_greeter_welcomes_the_reference_claimer(
    kind: str, dev_server: DevServer, reference_cli: Cli, our_cli: Cli, tmp_path: Path
) -> None:
    admin = our_admin(our_cli, dev_server, tmp_path / "ours")
    args = ("invite_user", "zoe@example.com") if kind == "user" else ("invite_device",)
    url = invite(our_cli, admin, *args)
    claimed_dir = tmp_path / "claimed"
    claimed_dir.mkdir()
    greeter = Side(
        "our greet_invitation",
        our_cli,
        "core",
        "greet_invitation",
        *admin.options(),
        "--sas-mode=auto",
        "--granted-profile=ADMIN",
        token_of(url),
    )
    claimer = Side(
        "reference claim_invitation",
        reference_cli,
        "core",
        "claim_invitation",
        "--config-dir",
        claimed_dir,
        "--password",
        CLAIMED_PASSWORD,
        url,
    )
    with exchange(greeter, claimer):
        greeter_code = greeter.expect_code("Code to provide to claimer:")
        claimer.choose("Select code provided by greeter", greeter_code)
        claimer_code = claimer.expect_code("Code to provide to greeter:")
        assert greeter.expect_code("Claimer's code:") == claimer_code
        if kind == "user":
            claimer.answer("User fullname", "Zoe Zed")
        claimer.answer("Device label", "Zoe's phone")
        greeter.expect(r"New device: (\S+)")
        claimer.expect("Saving device")
        greeter.wait_success()
        claimer.wait_success()

    checked = authenticated_check(reference_cli, claimed_dir, admin.organization)
    assert checked["user_get_status"] == "ok"
    assert checked["devices"][checked["own_device_id"]] == "Zoe's phone"
    if kind == "user":
        assert checked["human_handle"] == "Zoe Zed <zoe@example.com>"
        assert checked["profile"] == "ADMIN"  # granted (the default is STANDARD)
    else:
        assert checked["own_user_id"] == checked["user_id"]
        assert checked["human_handle"] == f"{admin.full_name} <{admin.email}>"
        assert checked["profile"] == "ADMIN"
        assert len(checked["devices"]) == 2


# --- reference greeter, our claimer -------------------------------------------------------


@pytest.mark.parametrize("kind", ["user", "device"])
def test_reference_greeter_welcomes_our_claimer(
    kind: str, dev_server: DevServer, reference_cli: Cli, our_cli: Cli, tmp_path: Path
) -> None:
    admin = reference_admin(reference_cli, dev_server, tmp_path / "reference")
    args = ("invite_user", "zoe@example.com") if kind == "user" else ("invite_device",)
    url = invite(our_cli, admin, *args)  # our CLI, with the reference's device file
    claimed_dir = tmp_path / "claimed"
    greeter = Side(
        "reference greet_invitation",
        reference_cli,
        "core",
        "greet_invitation",
        *admin.options(),
        token_of(url),
    )
    claimer = Side(
        "our claim_invitation",
        our_cli,
        "core",
        "claim_invitation",
        "--config-dir",
        claimed_dir,
        "--password",
        CLAIMED_PASSWORD,
        "--sas-mode=auto",
        "--full-name=Zoe Zed",
        "--device-label=Zoe's phone",
        url,
    )
    with exchange(greeter, claimer):
        greeter_code = greeter.expect_code("Code to provide to claimer:")
        assert claimer.expect_code("Greeter's code:") == greeter_code
        claimer_code = claimer.expect_code("Code to provide to greeter:")
        greeter.choose("Select code provided by claimer", claimer_code)
        if kind == "user":
            greeter.answer("New user label", "")  # the requested values
            greeter.answer("New user email", "")
            greeter.answer("New user device label", "")
            greeter.expect(r"2 - (?:\x1b\[[0-9;]*m)*OUTSIDER")
            greeter.answer("New user profile", "1")  # STANDARD
        else:
            greeter.answer("New device label", "")
        claimer.expect("Saving device")
        greeter.wait_success()
        claimer.wait_success()

    listed = list_devices(our_cli, claimed_dir)
    assert "@ Zoe's phone" in listed
    # The reference loads the device our claimer saved, and it connects.
    checked = authenticated_check(reference_cli, claimed_dir, admin.organization)
    assert checked["user_get_status"] == "ok"
    assert checked["devices"][checked["own_device_id"]] == "Zoe's phone"
    if kind == "user":
        assert checked["human_handle"] == "Zoe Zed <zoe@example.com>"
        assert checked["profile"] == "STANDARD"
    else:
        assert checked["human_handle"] == f"{admin.full_name} <{admin.email}>"
        assert checked["profile"] == "ADMIN"
        assert len(checked["devices"]) == 2
