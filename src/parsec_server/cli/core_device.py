"""`parsec core list_devices` and `parsec core bootstrap_organization URL`.

Devices are saved as the Parsec 2.0.0 client saves them (`client/device_file.py`), so each
client lists and uses the devices of the other.
"""

from __future__ import annotations

import platform
import uuid
from pathlib import Path

import click

from parsec_server.api.addr import AddrError, BackendOrganizationBootstrapAddr
from parsec_server.api.ids import HumanHandle, check_human_handle
from parsec_server.cli.client_common import (
    ClientError,
    config_dir_option,
    fail,
    format_available_devices,
    operation,
    prompt,
    prompt_new_password,
    resolve_config_dir,
    run_client,
)
from parsec_server.client.device import LocalDevice, slughash
from parsec_server.client.device_file import (
    DeviceFileError,
    list_available_devices,
    save_device_with_password,
)
from parsec_server.client.organization import CommandFailed
from parsec_server.client.organization import bootstrap_organization as do_bootstrap

__all__ = ["bootstrap_organization", "list_devices", "save_new_device"]

_BOOTSTRAP_FAILURES = {
    "not_found": "Bootstrap token not found (unknown organization or wrong token)",
    "already_bootstrapped": "Organization already bootstrapped",
}


@click.command("list_devices", short_help="List the devices saved in the config folder")
@config_dir_option
def list_devices(config_dir: Path | None) -> None:
    """List the devices saved in the configuration folder, with the id prefix to give to
    `--device`."""
    folder = resolve_config_dir(config_dir)
    devices = list_available_devices(folder)
    click.echo(f"Found {len(devices)} device(s) in {folder}:")
    for line in format_available_devices(devices):
        click.echo(line)


def parse_human_handle(email: str, label: str) -> HumanHandle:
    handle = (email, label)
    try:
        check_human_handle(handle)
    except ValueError:
        raise ClientError(f"Invalid name or email: `{label} <{email}>`") from None
    return handle


def save_new_device(
    config_dir: Path, device: LocalDevice, password: str, force: bool = False
) -> Path:
    """Save and print `Saving device <slughash> ✔`."""
    with operation(f"Saving device {slughash(device.slug)}"):
        try:
            return save_device_with_password(config_dir, device, password, force=force)
        except DeviceFileError as exc:
            raise ClientError(str(exc)) from exc


def _parse_bootstrap_addr(
    ctx: click.Context, param: click.Parameter, value: str
) -> BackendOrganizationBootstrapAddr:
    try:
        return BackendOrganizationBootstrapAddr.from_url(value)
    except AddrError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command("bootstrap_organization", short_help="Bootstrap a new organization")
@config_dir_option
@click.argument("addr", metavar="URL", callback=_parse_bootstrap_addr)
@click.option(
    "--password", help="Password protecting the new device's key file (prompted otherwise)"
)
@click.option("--force", is_flag=True, help="Overwrite an existing key file")
@click.option("--full-name", help="The first user's name (prompted otherwise)")
@click.option("--email", help="The first user's email (prompted otherwise)")
@click.option("--device-label", help="The first device's name (prompted otherwise)")
def bootstrap_organization(
    config_dir: Path | None,
    addr: BackendOrganizationBootstrapAddr,
    password: str | None,
    force: bool,
    full_name: str | None,
    email: str | None,
    device_label: str | None,
) -> None:
    """Bootstrap the organization of the bootstrap URL (`create_organization` prints it):
    create its first user, an administrator, and save that user's device."""
    if password is None:
        password = prompt_new_password("Choose a password for the device")
    if full_name is None:
        full_name = prompt("User full name")
    if email is None:
        email = prompt("User email")
    if device_label is None:
        device_label = prompt("Device label", default=platform.node())
    assert password is not None and full_name is not None and email is not None
    try:
        human_handle = parse_human_handle(email, full_name)
    except ClientError as exc:
        fail(str(exc))
    folder = resolve_config_dir(config_dir)

    async def main() -> None:
        with operation("Bootstrapping organization in the server"):
            try:
                device = await do_bootstrap(
                    addr.backend_addr,
                    addr.organization_id,
                    addr.token,
                    human_handle=human_handle,
                    device_label=device_label,
                    user_id=uuid.uuid4().hex,
                    device_name=uuid.uuid4().hex,
                )
            except CommandFailed as exc:
                known = _BOOTSTRAP_FAILURES.get(str(exc.reply.get("status")))
                if known is None:
                    raise
                raise ClientError(known) from exc
        save_new_device(folder, device, password, force)

    run_client(main)
