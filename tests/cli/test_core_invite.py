"""`parsec core bootstrap_organization|list_devices|invite_user|invite_device|
list_invitations|cancel_invitation|greet_invitation|claim_invitation` end to end.

The server runs in the test's process (memory and PostgreSQL storages); the commands run
as subprocesses of our `parsec` program, so that greeter and claimer run at the same time
(the rendezvous needs both). The interactive mode is driven once with pexpect; the
commands that never reach a server run in-process with click's `CliRunner`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pexpect  # type: ignore[import-untyped, unused-ignore]
import pytest
from click.testing import CliRunner
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api.addr import BackendAddr, BackendOrganizationBootstrapAddr
from parsec_server.api.ids import UserProfile
from parsec_server.cli.main import cli
from parsec_server.client.device import LocalDevice, slughash
from parsec_server.client.device_file import (
    list_available_devices,
    load_device_with_password,
    save_device_with_password,
)
from parsec_server.client.organization import create_organization
from tests.cli.commands import TIMEOUT, Command, Done, command_env, our_parsec, run
from tests.fixtures.servers import (
    ADMINISTRATION_TOKEN,
    Organization,
    RunningServer,
    new_organization_id,
)

PASSWORD = "P@ssw0rd"
URL_LINE = re.compile(r"^url: (parsec://\S+)$", re.MULTILINE)
GREETER_CODE = re.compile(r"Code to provide to claimer: ([A-Z2-9]{4})")
CLAIMER_CODE = re.compile(r"Code to provide to greeter: ([A-Z2-9]{4})")


@dataclass
class Setup:
    server: RunningServer
    org: Organization
    home: Path
    config_dir: Path  # holds alice's and bob's devices
    alice: LocalDevice
    bob: LocalDevice

    def device_args(self, device: LocalDevice) -> list[str]:
        return [
            "--config-dir",
            str(self.config_dir),
            "--device",
            slughash(device.slug)[:10],
            "--password",
            PASSWORD,
        ]


@pytest.fixture
def setup(server: RunningServer, org: Organization, tmp_path: Path) -> Setup:
    config_dir = tmp_path / "config"
    alice = org.alice
    bob = org.bob
    save_device_with_password(config_dir, alice, PASSWORD)
    save_device_with_password(config_dir, bob, PASSWORD)
    return Setup(server, org, tmp_path, config_dir, alice, bob)


async def invitation_url(setup: Setup, device: LocalDevice, *args: str) -> str:
    done = await run(setup.home, *args, *setup.device_args(device))
    assert done.returncode == 0, done.describe()
    match = URL_LINE.search(done.stdout)
    assert match is not None, done.describe()
    return match.group(1)


def token_of(url: str) -> str:
    match = re.search(r"token=([0-9a-f]{32})", url)
    assert match is not None
    return match.group(1)


def claimer_config(setup: Setup) -> Path:
    return setup.home / "claimer-config"


async def greet_and_claim(
    setup: Setup, url: str, greeter_args: Sequence[str], claimer_args: Sequence[str]
) -> tuple[Done, Done]:
    greeter = await Command.start(
        setup.home,
        "greet_invitation",
        *setup.device_args(setup.alice if "claim_user" in url else setup.bob),
        "--sas-mode=auto",
        *greeter_args,
        token_of(url),
    )
    claimer = await Command.start(
        setup.home,
        "claim_invitation",
        "--config-dir",
        str(claimer_config(setup)),
        "--password",
        "n3w-P@ss",
        "--sas-mode=auto",
        *claimer_args,
        url,
    )
    greeted, claimed = await asyncio.gather(greeter.finish(), claimer.finish())
    assert greeted.returncode == 0, greeted.describe()
    assert claimed.returncode == 0, claimed.describe()
    return greeted, claimed


def code(pattern: re.Pattern[str], done: Done) -> str:
    match = pattern.search(done.stdout)
    assert match is not None, done.describe()
    return match.group(1)


def the_claimed_device(setup: Setup) -> LocalDevice:
    [available] = list_available_devices(claimer_config(setup))
    return load_device_with_password(available.key_file_path, "n3w-P@ss")


# --- bootstrap and devices ----------------------------------------------------------------


async def test_bootstrap_organization_prompts_and_saves_an_admin_device(
    server: RunningServer, tmp_path: Path
) -> None:
    organization_id = new_organization_id()
    token = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
    url = BackendOrganizationBootstrapAddr.build(server.addr, organization_id, token).to_url()
    config_dir = tmp_path / "config"

    done = await run(
        tmp_path,
        "bootstrap_organization",
        "--config-dir",
        str(config_dir),
        "--password",
        PASSWORD,
        url,
        input="Ada Lovelace\nada@example.com\nAda's laptop\n",
    )

    assert done.returncode == 0, done.describe()
    assert "Bootstrapping organization in the server ✔" in done.stdout
    [available] = list_available_devices(config_dir)
    assert f"Saving device {available.slughash} ✔" in done.stdout
    assert available.key_file_path == config_dir / "devices" / f"{available.slughash}.keys"
    device = load_device_with_password(available.key_file_path, PASSWORD)
    assert device.human_handle == ("ada@example.com", "Ada Lovelace")
    assert device.device_label == "Ada's laptop"
    assert device.profile is UserProfile.ADMIN
    assert re.fullmatch(r"[0-9a-f]{32}@[0-9a-f]{32}", device.device_id)
    async with await device.connect() as conn:
        assert (await conn.cmd("user_get", user_id=device.user_id))["status"] == "ok"

    again = await run(
        tmp_path,
        "bootstrap_organization",
        "--config-dir",
        str(tmp_path / "other"),
        "--password",
        PASSWORD,
        "--full-name",
        "Eve",
        "--email",
        "eve@example.com",
        "--device-label",
        "pc",
        url,
    )
    assert again.returncode == 1, again.describe()
    assert again.stderr == "Error: Organization already bootstrapped\n"


def test_list_devices_shows_each_device_with_a_short_unique_id(tmp_path: Path) -> None:
    addr = BackendAddr("127.0.0.1", 1, False)

    def device(device_id: str, label: str | None, email: str | None) -> LocalDevice:
        return LocalDevice(
            backend_addr=addr,
            organization_id="Org",
            device_id=device_id,
            device_label=label,
            human_handle=(email, email.split("@")[0].title()) if email else None,
            profile=UserProfile.STANDARD,
            signing_key=SigningKey.generate(),
            private_key=PrivateKey.generate(),
            root_verify_key=b"r" * 32,
        )

    save_device_with_password(tmp_path, device("ann@pc", "Ann's PC", "ann@example.com"), "x")
    save_device_with_password(tmp_path, device("bob@dev1", None, None), "x")

    result = CliRunner().invoke(cli, ["core", "list_devices", "--config-dir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"Found 2 device(s) in {tmp_path}:"
    assert sorted(line.split(" - ", 1)[1] for line in lines[1:]) == [
        "Org: Ann <ann@example.com> @ Ann's PC",
        "Org: bob @ dev1",
    ]
    assert all(re.match(r"[0-9a-f]{3,} - ", line) for line in lines[1:])


def test_device_selection_failures_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(cli, ["core", "list_invitations", "--config-dir", str(tmp_path)])
    assert empty.exit_code == 1
    assert empty.output == f"Error: No device in {tmp_path} (see `parsec core list_devices`)\n"

    device = _offline_device()
    save_device_with_password(tmp_path, device, PASSWORD)
    args = ["core", "list_invitations", "--config-dir", str(tmp_path)]

    unknown = runner.invoke(cli, [*args, "-D", "zzz", "-P", PASSWORD])
    assert unknown.exit_code == 1
    assert unknown.output.startswith("Error: Device `zzz` not found")
    assert unknown.output.count("\n") == 1

    wrong = runner.invoke(cli, [*args, "-P", "not-it"])
    assert wrong.exit_code == 1
    assert wrong.output == (
        f"Error: Cannot load device {slughash(device.slug)[:8]}: "
        "Invalid password (the device key file cannot be decrypted)\n"
    )

    unreachable = runner.invoke(cli, [*args, "-P", PASSWORD])
    assert unreachable.exit_code == 1
    assert unreachable.output.startswith("Error: Cannot reach the server: ")
    assert unreachable.output.count("\n") == 1


def _offline_device() -> LocalDevice:
    return LocalDevice(
        backend_addr=BackendAddr("127.0.0.1", 1, False),
        organization_id="Org",
        device_id="ann@pc",
        device_label=None,
        human_handle=None,
        profile=UserProfile.ADMIN,
        signing_key=SigningKey.generate(),
        private_key=PrivateKey.generate(),
        root_verify_key=b"r" * 32,
    )


# --- invitations --------------------------------------------------------------------------


async def test_invitations_are_created_listed_and_cancelled(setup: Setup) -> None:
    user_url = await invitation_url(setup, setup.alice, "invite_user", "zack@example.com")
    device_url = await invitation_url(setup, setup.alice, "invite_device")
    org = setup.org.organization_id
    port = setup.server.addr.port
    assert re.fullmatch(
        rf"parsec://127\.0\.0\.1:{port}/{org}\?action=claim_user&token=[0-9a-f]{{32}}&no_ssl=true",
        user_url,
    )
    assert "action=claim_device" in device_url

    listed = await run(setup.home, "list_invitations", *setup.device_args(setup.alice))
    assert listed.returncode == 0, listed.describe()
    assert listed.stdout.splitlines() == [
        f"{token_of(user_url)}\tidle\tuser (zack@example.com)",
        f"{token_of(device_url)}\tidle\tdevice",
    ]

    for url in (user_url, device_url):
        done = await run(
            setup.home, "cancel_invitation", *setup.device_args(setup.alice), token_of(url)
        )
        assert done.returncode == 0, done.describe()
        assert done.stdout == "Invitation cancelled.\n"
    listed = await run(setup.home, "list_invitations", *setup.device_args(setup.alice))
    assert listed.stdout == "No invitations.\n"

    again = await run(
        setup.home, "cancel_invitation", *setup.device_args(setup.alice), token_of(user_url)
    )
    assert again.returncode == 1
    assert again.stderr == "Error: Invitation already cancelled or used\n"


async def test_user_invitation_by_a_non_admin_is_refused(setup: Setup) -> None:
    done = await run(setup.home, "invite_user", *setup.device_args(setup.bob), "z@example.com")

    assert done.returncode == 1
    assert done.stderr == "Error: Server refused user invitation creation (not_allowed)\n"


# --- greet and claim ----------------------------------------------------------------------


async def test_greet_and_claim_a_user_in_auto_mode(setup: Setup) -> None:
    url = await invitation_url(setup, setup.alice, "invite_user", "zack@example.com")

    greeted, claimed = await greet_and_claim(
        setup,
        url,
        ["--granted-profile", "OUTSIDER", "--granted-device-label", "Phone (granted)"],
        ["--full-name", "Zack", "--device-label", "Zack's phone"],
    )

    assert code(GREETER_CODE, greeted) in claimed.stdout
    assert code(CLAIMER_CODE, claimed) in greeted.stdout
    assert "Invitation greeter: Alice <alice@example.com>" in claimed.stdout
    device = the_claimed_device(setup)
    assert f"New device: {device.device_id}" in greeted.stdout
    assert f"Saving device {slughash(device.slug)} ✔" in claimed.stdout
    assert device.human_handle == ("zack@example.com", "Zack")
    assert device.device_label == "Phone (granted)"
    assert device.profile is UserProfile.OUTSIDER
    async with await device.connect() as conn:
        assert (await conn.cmd("ping", ping="x"))["status"] == "ok"
    listed = await run(setup.home, "list_invitations", *setup.device_args(setup.alice))
    assert listed.stdout == "No invitations.\n"


async def test_greet_and_claim_a_device_in_auto_mode(setup: Setup) -> None:
    url = await invitation_url(setup, setup.bob, "invite_device")

    await greet_and_claim(setup, url, [], ["--device-label", "Bob's tablet"])

    device = the_claimed_device(setup)
    assert device.user_id == "bob"
    assert device.device_label == "Bob's tablet"
    assert device.human_handle == ("bob@example.com", "Bob")
    assert device.user_manifest_id == setup.bob.user_manifest_id
    assert device.user_manifest_key == setup.bob.user_manifest_key
    assert bytes(device.private_key) == bytes(setup.bob.private_key)
    async with await device.connect() as conn:
        reply = await conn.cmd("user_get", user_id="bob")
    assert len(reply["device_certificates"]) == 2


async def test_greet_and_claim_failures_are_one_line_errors(setup: Setup) -> None:
    url = await invitation_url(setup, setup.alice, "invite_user", "zack@example.com")
    token = token_of(url)
    await run(setup.home, "cancel_invitation", *setup.device_args(setup.alice), token)

    greet = await run(
        setup.home, "greet_invitation", *setup.device_args(setup.alice), "--sas-mode=auto", token
    )
    claim = await run(
        setup.home,
        "claim_invitation",
        "--config-dir",
        str(claimer_config(setup)),
        "--password",
        "x",
        "--full-name",
        "Zack",
        "--sas-mode=auto",
        url,
    )
    no_name = await run(setup.home, "claim_invitation", "--password", "x", "--sas-mode=auto", url)

    assert (greet.returncode, greet.stderr) == (1, "Error: Invitation not found\n")
    assert (claim.returncode, claim.stderr) == (
        1,
        "Error: Invitation not found (unknown, cancelled or already used)\n",
    )
    assert no_name.returncode == 2
    assert "--full-name is needed with --sas-mode=auto" in no_name.stderr


def _spawn_interactive_greeter(setup: Setup, token: str) -> pexpect.spawn:
    args = ["core", "greet_invitation", *setup.device_args(setup.alice), token]
    return pexpect.spawn(
        our_parsec(), args, env=command_env(setup.home), encoding="utf-8", timeout=TIMEOUT
    )


def _choose(child: pexpect.spawn, wanted: str | None, avoid: str | None) -> None:
    """Read the ` <i> - <code>` lines, answer the index of `wanted` (or of any code but
    `avoid`)."""
    choices: dict[str, str] = {}
    while len(choices) < 3:
        child.expect(r" (\d) - ([A-Z2-9]{4})\r\n")
        choices[child.match.group(2)] = child.match.group(1)
    child.expect("Select the code given by the claimer")
    if wanted is not None:
        child.sendline(choices[wanted])
    else:
        child.sendline(next(i for c, i in choices.items() if c != avoid))


async def test_interactive_greeter_restarts_on_a_wrong_code_then_asks_the_grants(
    setup: Setup,
) -> None:
    url = await invitation_url(setup, setup.alice, "invite_user", "zack@example.com")
    greeter = await asyncio.to_thread(_spawn_interactive_greeter, setup, token_of(url))
    claimer = await Command.start(
        setup.home,
        "claim_invitation",
        "--config-dir",
        str(claimer_config(setup)),
        "--password",
        "n3w-P@ss",
        "--sas-mode=auto",
        "--full-name",
        "Zack",
        "--device-label",
        "Zack's phone",
        url,
    )
    try:
        # First round: the human picks a wrong code, both sides restart.
        first = (await claimer.wait_for(CLAIMER_CODE)).group(1)
        await asyncio.to_thread(_choose, greeter, None, first)
        await asyncio.to_thread(greeter.expect, "Wrong code provided")
        await asyncio.to_thread(greeter.expect, "Restarting the invitation process")
        await claimer.wait_for(re.compile("Restarting the invitation process"))
        # Second round: the right code, then the grants.
        second = (await claimer.wait_for(CLAIMER_CODE)).group(1)
        await asyncio.to_thread(_choose, greeter, second, None)
        for prompt, answer in [
            (r"New user full name \[Zack\]: ", "Zachary"),
            (r"New user email \[zack@example.com\]: ", ""),
            (r"New user device label \[Zack's phone\]: ", ""),
        ]:
            await asyncio.to_thread(greeter.expect, prompt)
            greeter.sendline(answer)
        await asyncio.to_thread(greeter.expect, r" 2 - OUTSIDER\r\n")
        await asyncio.to_thread(greeter.expect, r"New user profile \(0, 1, 2\) \[1\]: ")
        greeter.sendline("2")
        await asyncio.to_thread(greeter.expect, pexpect.EOF)
        claimed = await claimer.finish()
    finally:
        greeter.close(force=True)
    assert greeter.exitstatus == 0, greeter.before
    assert claimed.returncode == 0, claimed.describe()
    device = the_claimed_device(setup)
    assert device.human_handle == ("zack@example.com", "Zachary")
    assert device.device_label == "Zack's phone"
    assert device.profile is UserProfile.OUTSIDER
