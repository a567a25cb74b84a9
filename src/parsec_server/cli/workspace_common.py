"""What the workspace and file commands of `parsec core` share: the device options (those
of the other client commands, plus `--password-stdin`), `--json` and `--quiet`, running
with a session on the device, progress bars and output.

Exit codes: 0 success; 1 failure (one `Error: ...` line on stderr: wrong password,
revoked device, no access, server unreachable, remote path missing, local disk full...);
2 bad usage (click's).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from parsec_server.cli.client_common import (
    device_options,
    fail,
    load_selected_device,
    resolve_config_dir,
    run_client,
)
from parsec_server.client.device import LocalDevice
from parsec_server.client.workspaces import Session

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Output:
    as_json: bool
    quiet: bool

    def result(self, value: Any, lines: list[str]) -> None:
        """`value` as one JSON document with --json, else the lines."""
        if self.as_json:
            click.echo(json.dumps(value, indent=2, sort_keys=True))
            return
        for line in lines:
            click.echo(line)

    @contextmanager
    def progress(
        self, description: str, total: int | None, unit: str = "B"
    ) -> Iterator[Callable[[int], None]]:
        """A bar on stderr, only when it is a terminal and neither --quiet nor --json;
        counting bytes (`unit="B"`, scaled) or other things."""
        disabled = self.quiet or self.as_json or not sys.stderr.isatty()
        bar = tqdm(
            desc=description,
            total=total,
            unit=unit,
            unit_scale=unit == "B",
            unit_divisor=1024,
            disable=disabled,
            file=sys.stderr,
            leave=False,
        )
        try:
            yield bar.update
        finally:
            bar.close()


def session_options(command: F) -> F:
    """`--config-dir`, `-D/--device`, `-P/--password`, `--password-stdin`, `--json`,
    `--quiet`."""
    decorators = [
        device_options,
        click.option(
            "--password-stdin",
            is_flag=True,
            help="Read the device's password from the first line of standard input",
        ),
        click.option("--json", "as_json", is_flag=True, help="Output for scripts: JSON"),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars"),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


@dataclass(frozen=True)
class SessionArgs:
    config_dir: Path | None
    device: str | None
    password: str | None
    password_stdin: bool
    as_json: bool
    quiet: bool

    @property
    def output(self) -> Output:
        return Output(self.as_json, self.quiet)


def _load_device(args: SessionArgs) -> LocalDevice:
    password = args.password
    if args.password_stdin:
        if password is not None:
            fail("Give --password or --password-stdin, not both")
        password = sys.stdin.readline().rstrip("\r\n")
    return load_selected_device(resolve_config_dir(args.config_dir), args.device, password)


def run_session(args: SessionArgs, main: Callable[[Session], Awaitable[T]]) -> T:
    """Load the device, connect, run `main` with a session; failures are one line."""
    device = _load_device(args)

    async def run() -> T:
        async with await device.connect() as conn:
            return await main(Session(conn, device))

    return run_client(run)
