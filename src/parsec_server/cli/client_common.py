"""What the client commands of `parsec core` share: running a coroutine with one-line
error reporting, prompts that do not block the event loop, and the device options
(`--config-dir`, `--device/-D`, `--password/-P`) with the device selection of the 2.0.0
CLI (a prefix of the device's slughash, as `list_devices` prints it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from parsec_server.cli.core_admin import debug_enabled, one_line
from parsec_server.cli.logging_setup import configure_logging
from parsec_server.client.connection import BackendConnectionError, HandshakeRefused
from parsec_server.client.device import LocalDevice
from parsec_server.client.device_file import (
    AvailableDevice,
    DeviceFileError,
    default_config_dir,
    list_available_devices,
    load_device_with_password,
)
from parsec_server.client.organization import CommandFailed

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_SHORTEST_SLUGHASH = 3
OK_MARK = "✔"
FAILED_MARK = "✘"


class SasMode(StrEnum):
    """How the peer's code is checked in `greet_invitation`/`claim_invitation`."""

    INTERACTIVE = "interactive"
    AUTO = "auto"


class ClientError(Exception):
    """A failure worth a plain message (`Error: <message>`)."""


# --- running ------------------------------------------------------------------------------


def _message(exc: BaseException) -> str:
    if isinstance(exc, HandshakeRefused):
        return f"Server refused the connection: {exc.result} ({one_line(exc)})"
    if isinstance(exc, BackendConnectionError):
        return f"Cannot reach the server: {one_line(exc)}"
    if isinstance(exc, CommandFailed):
        reply = exc.reply
        reason = reply.get("reason")
        return f"Server refused: {reply.get('status')}" + (f" ({reason})" if reason else "")
    return one_line(exc)


def fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def run_client(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(main())`; any failure, an interruption or a closed stdin during a
    prompt, prints `Error: <one line>` on stderr and exits 1 (`DEBUG` set: traceback)."""
    debug = debug_enabled()
    if debug:
        configure_logging(level="DEBUG")
    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        fail("Interrupted")
    except click.Abort:
        fail("Aborted (no more input)")
    except Exception as exc:
        if debug:
            raise
        fail(_message(exc))


@contextlib.contextmanager
def operation(text: str) -> Iterator[None]:
    """`<text> ✔` once the block succeeded, `<text> ✘` when it raised."""
    click.echo(f"{text} ", nl=False)
    try:
        yield
    except BaseException:
        click.echo(FAILED_MARK)
        raise
    click.echo(OK_MARK)


# --- prompts ------------------------------------------------------------------------------


def prompt(text: str, **kwargs: Any) -> Any:
    """`click.prompt`; a closed stdin exits with `Error: ...` (not click's `Aborted!`)."""
    try:
        return click.prompt(text, **kwargs)
    except click.Abort:
        fail("Aborted (no more input)")


def prompt_new_password(text: str) -> str:
    password: str = prompt(text, hide_input=True, confirmation_prompt=True)
    return password


async def aprompt(text: str, **kwargs: Any) -> Any:
    """`click.prompt` in a thread, so that the connection keeps being served."""
    return await asyncio.to_thread(functools.partial(click.prompt, text, **kwargs))


async def choose(title: str, choices: Sequence[str], default: int | None = None) -> int:
    """Show ` <i> - <choice>` lines and read an index."""
    for index, choice in enumerate(choices):
        click.echo(f" {index} - {choice}")
    answer = await aprompt(
        title,
        type=click.Choice([str(i) for i in range(len(choices))]),
        default=None if default is None else str(default),
    )
    return int(answer)


# --- device selection ---------------------------------------------------------------------


def shortest_unique_prefix_length(slughashes: Sequence[str]) -> int:
    for length in range(_SHORTEST_SLUGHASH, 64):
        if len({h[:length] for h in slughashes}) == len(slughashes):
            return length
    return 64


def format_available_devices(devices: Sequence[AvailableDevice]) -> list[str]:
    """`<short slughash> - <organization>: <user> @ <device>`, one line per device."""
    length = shortest_unique_prefix_length([d.slughash for d in devices])
    return [
        f"{d.slughash[:length]} - {d.organization_id}: {d.user_display} @ {d.device_display}"
        for d in devices
    ]


def select_device(config_dir: Path, prefix: str | None) -> AvailableDevice:
    """The one device whose slughash starts with `prefix` (any device when there is
    only one and no prefix is given)."""
    devices = list_available_devices(config_dir)
    matching = [d for d in devices if prefix is None or d.slughash.startswith(prefix)]
    if not devices:
        raise ClientError(f"No device in {config_dir} (see `parsec core list_devices`)")
    if not matching:
        raise ClientError(
            f"Device `{prefix}` not found in {config_dir} (see `parsec core list_devices`)"
        )
    if len(matching) > 1:
        hint = "give one with --device" if prefix is None else "give a longer prefix"
        names = ", ".join(format_available_devices(matching))
        raise ClientError(f"Several devices match ({hint}): {names}")
    return matching[0]


def load_selected_device(
    config_dir: Path, prefix: str | None, password: str | None, interactive: bool = True
) -> LocalDevice:
    """The selected device, decrypted (password prompted when not given); exits with
    `Error: ...` on failure."""
    try:
        available = select_device(config_dir, prefix)
        if password is None:
            if not interactive:
                raise ClientError("--password is needed with --sas-mode=auto")
            password = prompt("Password", hide_input=True)
        assert password is not None
        try:
            return load_device_with_password(available.key_file_path, password)
        except DeviceFileError as exc:
            raise ClientError(f"Cannot load device {available.slughash[:8]}: {exc}") from exc
    except ClientError as exc:
        fail(str(exc))


def config_dir_option(command: F) -> F:
    option = click.option(
        "--config-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Client configuration folder (default: $XDG_CONFIG_HOME/parsec or "
        "~/.config/parsec); device key files are in its `devices` folder",
    )
    return option(command)


def resolve_config_dir(config_dir: Path | None) -> Path:
    return config_dir if config_dir is not None else default_config_dir()


def device_options(command: F) -> F:
    """`--config-dir`, `--device/-D`, `--password/-P`."""
    decorators = [
        config_dir_option,
        click.option(
            "--device",
            "-D",
            metavar="SLUGHASH",
            help="Device to use: the beginning of its id as `list_devices` shows it "
            "(may be left out when there is only one device)",
        ),
        click.option("--password", "-P", help="Password of the device (prompted otherwise)"),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command
