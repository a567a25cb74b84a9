"""API 2 invitation commands of `parsec core`: `invite_user`, `invite_device`,
`list_invitations`, `cancel_invitation`, `greet_invitation`, `claim_invitation`.

Greeting and claiming are interactive as in the 2.0.0 CLI: each side shows its code to
read to the other person, and picks the other's code among 3 candidates; a wrong pick, or
the other side restarting, restarts the process. Then the greeter decides the new user's
name, email, device name and profile (prompted, with the claimer's requests as defaults).

`--sas-mode=auto` is for tests and automation only: the command picks the right code
itself, so NOTHING checks that the peer is the expected person (the codes are the only
protection against someone in the middle). Nothing is prompted in that mode: values not
given as options take their defaults (greeter: the claimer's requests and profile
STANDARD; claimer: the invitation's email and the host name as device name; the claimer's
`--full-name` and both `--password` must be given).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from parsec_server.api.addr import AddrError, BackendInvitationAddr, InvitationAction
from parsec_server.api.codec import ID
from parsec_server.api.ids import HumanHandle, InvitationType, UserProfile, format_human_handle
from parsec_server.cli.client_common import (
    ClientError,
    SasMode,
    aprompt,
    choose,
    config_dir_option,
    device_options,
    load_selected_device,
    operation,
    prompt_new_password,
    resolve_config_dir,
    run_client,
)
from parsec_server.cli.core_admin import one_line
from parsec_server.cli.core_device import parse_human_handle, save_new_device
from parsec_server.client import invite
from parsec_server.client.connection import (
    BackendConnection,
    BackendConnectionError,
    HandshakeRefused,
)
from parsec_server.client.device import LocalDevice
from parsec_server.client.invite import (
    ClaimerInitial,
    DeviceClaimerInitial,
    DeviceGreeterInitial,
    DeviceGreeterInProgress4,
    GreeterInitial,
    GreeterInProgress3,
    InvitationAlreadyUsedError,
    InvitePeerResetError,
    UserClaimerInitial,
    UserGreeterInitial,
    UserGreeterInProgress4,
)

__all__ = [
    "cancel_invitation",
    "claim_invitation",
    "greet_invitation",
    "invite_device",
    "invite_user",
    "list_invitations",
]

R = TypeVar("R")
S = TypeVar("S")

_PROFILES = list(UserProfile)
_DEFAULT_PROFILE = UserProfile.STANDARD
_RESTARTING = "Restarting the invitation process"


def _parse_token(ctx: click.Context, param: click.Parameter, value: str) -> ID:
    try:
        return ID.from_hex(value)
    except ValueError:
        raise click.BadParameter(f"`{value}` is not a valid token", ctx=ctx, param=param) from None


def _parse_invitation_addr(
    ctx: click.Context, param: click.Parameter, value: str
) -> BackendInvitationAddr:
    try:
        return BackendInvitationAddr.from_url(value)
    except AddrError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


_sas_mode_option = click.option(
    "--sas-mode",
    type=click.Choice([mode.value for mode in SasMode]),
    default=SasMode.INTERACTIVE.value,
    show_default=True,
    help="`auto` picks the peer's code without asking anyone and prompts for nothing: "
    "FOR TESTS AND AUTOMATION ONLY, it skips the check that protects the invitation",
)


# --- invitations --------------------------------------------------------------------------


def _print_url(device: LocalDevice, invitation_type: InvitationType, token: ID) -> None:
    click.echo(f"url: {invite.invitation_addr(device, invitation_type, token).to_url()}")


@click.command("invite_user", short_help="Create a user invitation")
@device_options
@click.argument("email")
@click.option("--send-email", is_flag=True, help="Have the server email the invitation URL")
def invite_user(
    config_dir: Path | None, device: str | None, password: str | None, email: str, send_email: bool
) -> None:
    """Invite EMAIL to join the organization (administrators only); prints the URL the
    new user claims the invitation with."""
    author = load_selected_device(resolve_config_dir(config_dir), device, password)

    async def main() -> ID:
        async with await author.connect() as conn:
            return await invite.new_user_invitation(conn, email, send_email)

    _print_url(author, InvitationType.USER, run_client(main))


@click.command("invite_device", short_help="Create a device invitation")
@device_options
@click.option("--send-email", is_flag=True, help="Have the server email the invitation URL to us")
def invite_device(
    config_dir: Path | None, device: str | None, password: str | None, send_email: bool
) -> None:
    """Invite a new device of our own user; prints the URL to claim it with."""
    author = load_selected_device(resolve_config_dir(config_dir), device, password)

    async def main() -> ID:
        async with await author.connect() as conn:
            return await invite.new_device_invitation(conn, send_email)

    _print_url(author, InvitationType.DEVICE, run_client(main))


@click.command("list_invitations", short_help="List our pending invitations")
@device_options
def list_invitations(config_dir: Path | None, device: str | None, password: str | None) -> None:
    """List the pending invitations we created: token, status (idle, or ready when the
    claimer is connected) and kind."""
    author = load_selected_device(resolve_config_dir(config_dir), device, password)

    async def main() -> list[invite.InvitationSummary]:
        async with await author.connect() as conn:
            return await invite.list_invitations(conn)

    invitations = run_client(main)
    for item in invitations:
        kind = "device" if item.type is InvitationType.DEVICE else f"user ({item.claimer_email})"
        click.echo(f"{item.token.hex}\t{item.status.lower()}\t{kind}")
    if not invitations:
        click.echo("No invitations.")


@click.command("cancel_invitation", short_help="Cancel an invitation")
@device_options
@click.argument("token", callback=_parse_token)
def cancel_invitation(
    config_dir: Path | None, device: str | None, password: str | None, token: ID
) -> None:
    """Cancel the invitation TOKEN (as `list_invitations` shows it)."""
    author = load_selected_device(resolve_config_dir(config_dir), device, password)

    async def main() -> None:
        async with await author.connect() as conn:
            try:
                await invite.cancel_invitation(conn, token)
            except InvitationAlreadyUsedError as exc:
                raise ClientError("Invitation already cancelled or used") from exc

    run_client(main)
    click.echo("Invitation cancelled.")


# --- greeting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GreetSettings:
    auto: bool
    full_name: str | None
    email: str | None
    device_label: str | None
    profile: UserProfile | None


async def _value(auto: bool, given: str | None, text: str, default: str | None) -> str | None:
    """The option's value, else the default (auto mode) or the prompted value."""
    if given is not None:
        return given
    if auto:
        return default
    answer: str = await aprompt(text, default=default)
    return answer


async def _pick_code(auto: bool, peer: str, right_code: str, choices: list[str]) -> bool:
    """Whether the human (or, in auto mode, the command itself) picked the right code."""
    if auto:
        click.echo(f"{peer}'s code: {right_code} (picked without checking: --sas-mode=auto)")
        return True
    index = await choose(f"Select the code given by the {peer.lower()}", choices)
    if choices[index] != right_code:
        click.echo("Wrong code provided")
        return False
    return True


async def _greet_user(
    step4: UserGreeterInProgress4, author: LocalDevice, settings: GreetSettings
) -> str:
    auto = settings.auto
    requested = step4.requested_human_handle
    full_name = await _value(
        auto, settings.full_name, "New user full name", requested[1] if requested else None
    )
    email = await _value(
        auto, settings.email, "New user email", requested[0] if requested else None
    )
    device_label = await _value(
        auto, settings.device_label, "New user device label", step4.requested_device_label
    )
    profile = settings.profile
    if profile is None and auto:
        profile = _DEFAULT_PROFILE
    if profile is None:
        index = await choose(
            "New user profile", [p.value for p in _PROFILES], _PROFILES.index(_DEFAULT_PROFILE)
        )
        profile = _PROFILES[index]
    human_handle: HumanHandle | None = None
    if full_name is not None or email is not None:
        if full_name is None or email is None:
            raise ClientError("Both the new user's full name and email are needed")
        human_handle = parse_human_handle(email, full_name)
    with operation("Creating the user"):
        return await step4.create_new_user(author, human_handle, device_label, profile)


async def _greet_device(
    step4: DeviceGreeterInProgress4, author: LocalDevice, settings: GreetSettings
) -> str:
    device_label = await _value(
        settings.auto, settings.device_label, "New device label", step4.requested_device_label
    )
    with operation("Creating the device"):
        return await step4.create_new_device(author, device_label)


async def _greeter_codes(initial: GreeterInitial[R], auto: bool) -> GreeterInProgress3[R] | None:
    """Steps 1 to 3; None when the human picked a wrong code."""
    click.echo("Waiting for the claimer...")
    step1 = await initial.wait_peer()
    click.echo(f"Code to provide to claimer: {step1.greeter_sas}")
    click.echo("Waiting for the claimer to confirm this code...")
    step2 = await step1.wait_peer_trust()
    if not await _pick_code(auto, "Claimer", step2.claimer_sas, step2.claimer_sas_choices()):
        return None
    step3 = await step2.signify_trust()
    click.echo("Waiting for the claimer's request...")
    return step3


async def _greet_once(
    initial: UserGreeterInitial | DeviceGreeterInitial,
    author: LocalDevice,
    settings: GreetSettings,
) -> bool:
    if isinstance(initial, UserGreeterInitial):
        user_step3 = await _greeter_codes(initial, settings.auto)
        if user_step3 is None:
            return False
        device_id = await _greet_user(await user_step3.get_claim_requests(), author, settings)
    else:
        device_step3 = await _greeter_codes(initial, settings.auto)
        if device_step3 is None:
            return False
        device_id = await _greet_device(await device_step3.get_claim_requests(), author, settings)
    click.echo(f"New device: {device_id}")
    return True


@click.command("greet_invitation", short_help="Greet an invitation")
@device_options
@click.argument("token", callback=_parse_token)
@_sas_mode_option
@click.option(
    "--granted-profile",
    type=click.Choice([p.value for p in UserProfile]),
    help="Profile of the new user (USER invitations; prompted otherwise, default STANDARD)",
)
@click.option("--granted-full-name", help="Full name of the new user (default: the requested one)")
@click.option("--granted-email", help="Email of the new user (default: the requested one)")
@click.option("--granted-device-label", help="Name of the new device (default: the requested one)")
def greet_invitation(
    config_dir: Path | None,
    device: str | None,
    password: str | None,
    token: ID,
    sas_mode: str,
    granted_profile: str | None,
    granted_full_name: str | None,
    granted_email: str | None,
    granted_device_label: str | None,
) -> None:
    """Welcome the claimer of invitation TOKEN: exchange codes with them, then create the
    new user or device."""
    auto = SasMode(sas_mode) is SasMode.AUTO
    author = load_selected_device(resolve_config_dir(config_dir), device, password, not auto)
    settings = GreetSettings(
        auto=auto,
        full_name=granted_full_name,
        email=granted_email,
        device_label=granted_device_label,
        profile=UserProfile(granted_profile) if granted_profile else None,
    )

    async def main() -> None:
        async with await author.connect() as conn:
            initial = await invite.greeter_for_invitation(conn, token)
            while True:
                try:
                    if await _greet_once(initial, author, settings):
                        return
                except InvitePeerResetError as exc:
                    click.echo(str(exc))
                click.echo(_RESTARTING)

    run_client(main)


# --- claiming -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimSettings:
    auto: bool
    full_name: str | None
    email: str | None
    device_label: str | None


async def _claimer_codes(initial: ClaimerInitial[S], auto: bool) -> S | None:
    """Steps 1 to 3; None when the human picked a wrong code."""
    click.echo("Waiting for the greeter...")
    step1 = await initial.wait_peer()
    if not await _pick_code(auto, "Greeter", step1.greeter_sas, step1.greeter_sas_choices()):
        return None
    step2 = await step1.signify_trust()
    click.echo(f"Code to provide to greeter: {step2.claimer_sas}")
    click.echo("Waiting for the greeter to confirm this code...")
    return await step2.wait_peer_trust()


async def _claim_once(
    initial: UserClaimerInitial | DeviceClaimerInitial, settings: ClaimSettings
) -> LocalDevice | None:
    auto = settings.auto
    if isinstance(initial, UserClaimerInitial):
        user_step3 = await _claimer_codes(initial, auto)
        if user_step3 is None:
            return None
        full_name = await _value(auto, settings.full_name, "User full name", None)
        email = settings.email or initial.claimer_email
        device_label = await _value(auto, settings.device_label, "Device label", platform.node())
        if full_name is None:
            raise ClientError("The user's full name is needed")
        human_handle = parse_human_handle(email, full_name)
        click.echo("Waiting for the greeter to create the user...")
        return await user_step3.claim_user(device_label, human_handle)
    device_step3 = await _claimer_codes(initial, auto)
    if device_step3 is None:
        return None
    device_label = await _value(auto, settings.device_label, "Device label", platform.node())
    click.echo("Waiting for the greeter to create the device...")
    return await device_step3.claim_device(device_label)


async def _claim(
    conn: BackendConnection, addr: BackendInvitationAddr, settings: ClaimSettings
) -> LocalDevice:
    initial = await invite.claimer_retrieve_info(conn, addr)
    click.echo(f"Invitation greeter: {_greeter_display(initial)}")
    while True:
        try:
            device = await _claim_once(initial, settings)
        except InvitePeerResetError as exc:
            click.echo(str(exc))
            device = None
        if device is not None:
            return device
        click.echo(_RESTARTING)


def _greeter_display(initial: ClaimerInitial[Any]) -> str:
    if initial.greeter_human_handle is not None:
        return format_human_handle(initial.greeter_human_handle)
    return initial.greeter_user_id


@click.command("claim_invitation", short_help="Claim an invitation")
@config_dir_option
@click.argument("addr", metavar="URL", callback=_parse_invitation_addr)
@click.option("--password", help="Password for the new device's key file (prompted otherwise)")
@_sas_mode_option
@click.option("--full-name", help="Our full name (USER invitations; prompted otherwise)")
@click.option("--email", help="Our email (USER invitations; default: the invitation's)")
@click.option("--device-label", help="Name of the new device (prompted otherwise)")
@click.option("--force", is_flag=True, help="Overwrite an existing key file")
def claim_invitation(
    config_dir: Path | None,
    addr: BackendInvitationAddr,
    password: str | None,
    sas_mode: str,
    full_name: str | None,
    email: str | None,
    device_label: str | None,
    force: bool,
) -> None:
    """Claim the invitation URL: exchange codes with the greeter, who then creates our
    user or device; save the new device."""
    auto = SasMode(sas_mode) is SasMode.AUTO
    if auto and password is None:
        raise click.UsageError("--password is needed with --sas-mode=auto")
    if auto and full_name is None and addr.action is InvitationAction.CLAIM_USER:
        raise click.UsageError("--full-name is needed with --sas-mode=auto")
    if password is None:
        password = prompt_new_password("Choose a password for the claimed device")
    folder = resolve_config_dir(config_dir)
    settings = ClaimSettings(auto, full_name, email, device_label)

    async def main() -> None:
        try:
            conn = await invite.connect_as_claimer(addr)
        except HandshakeRefused as exc:
            if exc.result == "bad_identity":
                raise ClientError(
                    "Invitation not found (unknown, cancelled or already used)"
                ) from exc
            raise
        async with conn:
            try:
                device = await _claim(conn, addr, settings)
            except BackendConnectionError as exc:
                # The server closes a claimer's connection when its invitation is deleted.
                raise ClientError(
                    f"Connection lost (was the invitation cancelled?): {one_line(exc)}"
                ) from exc
        save_new_device(folder, device, password, force)

    run_client(main)
