"""`create_organization`, `status_organization`, `stats_organization` (70-server-config.md
section 3) against a real server.

The server runs in a subprocess (one per test module and TLS mode): its logs, event loop
and global logging configuration stay away from the commands under test, which run in
this process through click's `CliRunner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
import trustme
from click.testing import CliRunner, Result
from websockets.sync.server import ServerConnection, serve

from parsec_server.api.addr import BackendAddr, BackendOrganizationBootstrapAddr
from parsec_server.api.ids import UserProfile
from parsec_server.cli import core_admin
from parsec_server.cli.core_admin import (
    create_organization,
    stats_organization,
    status_organization,
)
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import CommandFailed, bootstrap_organization
from parsec_server.client.user import create_user

ADMIN_TOKEN = "s3cr3t-admin-token"
SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 10.0

# Run as `python -c SERVER_SCRIPT SETTINGS_JSON`: prints the listening port, then serves
# until its stdin is closed.
SERVER_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from parsec_server.api.addr import BackendAddr
from parsec_server.backend.config import BackendConfig, MockedBlockstoreConfig, MockedEmailConfig
from parsec_server.backend.asgi.server import running_backend
from parsec_server.cli.logging_setup import configure_logging

settings = json.loads(sys.argv[1])
config = BackendConfig(
    db_url="MOCKED",
    blockstore=MockedBlockstoreConfig(),
    administration_token=settings["administration_token"],
    backend_addr=BackendAddr.from_url("parsec://127.0.0.1:6777?no_ssl=true"),
    email=MockedEmailConfig(sender="parsec@example.com", tmpdir=Path(settings["tmpdir"])),
    port=0,
    ssl_certfile=Path(settings["certfile"]) if settings["certfile"] else None,
    ssl_keyfile=Path(settings["keyfile"]) if settings["keyfile"] else None,
)

async def main():
    configure_logging(level="WARNING")
    async with running_backend(config) as (_, port):
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""

_org_numbers = itertools.count(1)


# --- servers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Server:
    port: int
    use_ssl: bool

    @property
    def url(self) -> str:
        return f"parsec://127.0.0.1:{self.port}" + ("" if self.use_ssl else "?no_ssl=true")

    @property
    def addr(self) -> BackendAddr:
        return BackendAddr.from_url(self.url)


def _read_port(proc: subprocess.Popen[str], log_file: Path) -> int:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], SERVER_START_TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        proc.kill()
        pytest.fail(f"the server did not start:\n{log_file.read_text()}")
    return int(line)


@contextlib.contextmanager
def server_process(workdir: Path, tls: TLSFiles | None) -> Iterator[Server]:
    """A server in a subprocess, stopped by closing its stdin; its logs go to a file."""
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "administration_token": ADMIN_TOKEN,
        "tmpdir": str(workdir),
        "certfile": str(tls.cert) if tls else None,
        "keyfile": str(tls.key) if tls else None,
    }
    log_file = workdir / "server.log"
    command = [sys.executable, "-c", SERVER_SCRIPT, json.dumps(settings)]
    with (
        log_file.open("w") as log,
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        ) as proc,
    ):
        try:
            yield Server(port=_read_port(proc, log_file), use_ssl=tls is not None)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(
        ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem"
    )
    ca.cert_pem.write_to_path(str(files.ca))
    for i, pem in enumerate(server_cert.cert_chain_pems):
        pem.write_to_path(str(files.cert), append=i > 0)
    server_cert.private_key_pem.write_to_path(str(files.key))
    return files


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with server_process(tmp_path_factory.mktemp("server"), tls=None) as running:
        yield running


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles) -> Iterator[Server]:
    with server_process(tmp_path_factory.mktemp("tls_server"), tls=tls_files) as running:
        yield running


@pytest.fixture(autouse=True)
def no_debug_nor_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEBUG", raising=False)
    monkeypatch.delenv("SSL_CAFILE", raising=False)


@pytest.fixture
def org() -> str:
    """A name no other test uses (the module's servers are shared)."""
    return f"Org{next(_org_numbers)}"


@contextlib.contextmanager
def garbage_server() -> Iterator[Server]:
    """A WebSocket server answering the connection with a frame that is not a challenge."""

    def handler(ws: ServerConnection) -> None:
        ws.send(b"not msgpack \xc1")

    with serve(handler, "127.0.0.1", 0) as ws_server:
        thread = threading.Thread(target=ws_server.serve_forever)
        thread.start()
        try:
            yield Server(port=ws_server.socket.getsockname()[1], use_ssl=False)
        finally:
            ws_server.shutdown()
            thread.join()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- helpers -------------------------------------------------------------------------------


def invoke(command: click.Command, *args: str) -> Result:
    return CliRunner().invoke(command, list(args))


def admin_args(name: str, url: str, token: str = ADMIN_TOKEN) -> list[str]:
    return [name, "--addr", url, "--administration-token", token]


def create(server: Server, name: str, *extra: str, token: str = ADMIN_TOKEN) -> Result:
    return invoke(create_organization, *admin_args(name, server.url, token), *extra)


def status(server: Server, name: str, token: str = ADMIN_TOKEN) -> Result:
    return invoke(status_organization, *admin_args(name, server.url, token))


def stats(server: Server, name: str) -> Result:
    return invoke(stats_organization, *admin_args(name, server.url))


def bootstrap_url(result: Result) -> str:
    assert result.exit_code == 0, result.output
    prefix = "Bootstrap organization url: "
    [line] = [line for line in result.stdout.splitlines() if line.startswith(prefix)]
    return line.removeprefix(prefix)


def bootstrap(url: str) -> LocalDevice:
    parsed = BackendOrganizationBootstrapAddr.from_url(url)
    return asyncio.run(
        bootstrap_organization(
            parsed.backend_addr,
            parsed.organization_id,
            parsed.token,
            ("alice@example.com", "Alice"),
            "laptop",
        )
    )


def add_user(admin: LocalDevice, user_id: str) -> None:
    async def main() -> None:
        async with await admin.connect() as conn:
            await create_user(conn, admin, user_id, "dev1", None, UserProfile.STANDARD)

    asyncio.run(main())


def assert_one_line_error(result: Result, message: str | None = None) -> str:
    """Exit 1, a single `Error: ...` line on stderr, no traceback; returns the message."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    if message is not None:
        assert lines[0] == f"Error: {message}"
    assert "Traceback" not in result.output
    return lines[0].removeprefix("Error: ")


def local_midnight_utc(year: int, month: int, day: int) -> str:
    return datetime(year, month, day).astimezone().astimezone(UTC).isoformat()


# --- create_organization -------------------------------------------------------------------


def test_create_prints_a_check_mark_and_a_bootstrap_url(server: Server, org: str) -> None:
    result = create(server, org)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Creating organization in backend ✔"
    url = bootstrap_url(result)
    parsed = BackendOrganizationBootstrapAddr.from_url(url)
    assert len(parsed.token) == 64
    assert url == (
        f"parsec://127.0.0.1:{server.port}/{org}"
        f"?action=bootstrap_organization&token={parsed.token}&no_ssl=true"
    )
    assert result.stderr == ""


def test_created_bootstrap_url_bootstraps_the_organization(server: Server, org: str) -> None:
    device = bootstrap(bootstrap_url(create(server, org)))

    assert device.organization_id == org


def test_create_refuses_an_already_bootstrapped_organization(server: Server, org: str) -> None:
    bootstrap(bootstrap_url(create(server, org)))

    result = create(server, org)

    assert result.stdout == "Creating organization in backend ✘\n"
    assert_one_line_error(
        result, "Backend refused to create organization: {'status': 'already_exists'}"
    )


def test_recreating_a_pending_organization_invalidates_the_previous_url(
    server: Server, org: str
) -> None:
    first_url = bootstrap_url(create(server, org))
    second_url = bootstrap_url(create(server, org))

    with pytest.raises(CommandFailed):
        bootstrap(first_url)
    bootstrap(second_url)


@pytest.mark.parametrize(
    "option",
    ["2031-02-03", "2031-02-03T00:00:00", "2031-02-03 00:00:00"],
    ids=["date", "T", "space"],
)
def test_expiration_date_is_local_time_and_shown_by_status(
    server: Server, org: str, option: str
) -> None:
    assert create(server, org, "-E", option).exit_code == 0

    result = status(server, org)

    assert f"expiration_date: {local_midnight_utc(2031, 2, 3)}" in result.stdout.splitlines()


def test_expiration_date_keeps_the_time_of_day(server: Server, org: str) -> None:
    assert create(server, org, "--expiration-date", "2031-02-03 04:05:06").exit_code == 0

    expected = datetime(2031, 2, 3, 4, 5, 6).astimezone().astimezone(UTC).isoformat()
    assert f"expiration_date: {expected}" in status(server, org).stdout.splitlines()


@pytest.fixture
def utc_plus_two() -> Iterator[None]:
    """The local time zone is UTC+2 (a POSIX TZ string: no tz database needed)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "XXX-2")
        time.tzset()
        yield
    time.tzset()


@pytest.mark.usefixtures("utc_plus_two")
def test_expiration_date_is_read_in_the_local_time_zone(server: Server, org: str) -> None:
    assert create(server, org, "-E", "2031-02-03").exit_code == 0

    assert "expiration_date: 2031-02-02T22:00:00+00:00" in status(server, org).stdout.splitlines()


@pytest.mark.parametrize("value", ["2031-13-01", "tomorrow", "2031-02-03T04:05"])
def test_malformed_expiration_date_is_a_usage_error(server: Server, org: str, value: str) -> None:
    result = create(server, org, "-E", value)

    assert result.exit_code == 2
    assert f'Error: Invalid value for "--expiration-date" / "-E": `{value}`' in result.stderr


# --- status_organization -------------------------------------------------------------------


def test_status_of_a_pending_organization(server: Server, org: str) -> None:
    create(server, org)

    result = status(server, org)

    assert result.exit_code == 0, result.output
    assert result.stdout == "expiration_date: None\nis_bootstrapped: False\nstatus: ok\n"


def test_status_after_bootstrap(server: Server, org: str) -> None:
    bootstrap(bootstrap_url(create(server, org)))

    result = status(server, org)

    assert result.exit_code == 0, result.output
    assert result.stdout == "expiration_date: None\nis_bootstrapped: True\nstatus: ok\n"


def test_status_of_an_unknown_organization_exits_zero(server: Server, org: str) -> None:
    result = status(server, org)

    assert result.exit_code == 0, result.output
    assert result.stdout == "status: not_found\n"


# --- stats_organization --------------------------------------------------------------------


def test_stats_of_a_pending_organization(server: Server, org: str) -> None:
    create(server, org)

    result = stats(server, org)

    assert result.exit_code == 0, result.output
    assert result.stdout == "data_size: 0\nmetadata_size: 0\nstatus: ok\nusers: 0\n"


def test_stats_count_users(server: Server, org: str) -> None:
    admin = bootstrap(bootstrap_url(create(server, org)))
    add_user(admin, "bob")
    add_user(admin, "carol")

    result = stats(server, org)

    assert result.exit_code == 0, result.output
    assert "users: 3" in result.stdout.splitlines()


def test_stats_of_an_unknown_organization_exits_zero(server: Server, org: str) -> None:
    result = stats(server, org)

    assert result.exit_code == 0, result.output
    assert result.stdout == "status: not_found\n"


# --- errors common to the three commands ---------------------------------------------------

COMMANDS = [create_organization, status_organization, stats_organization]
COMMAND_IDS = ["create", "status", "stats"]


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_wrong_administration_token_is_reported(
    server: Server, org: str, command: click.Command
) -> None:
    result = invoke(command, *admin_args(org, server.url, token="wrong"))

    assert_one_line_error(result, "Invalid administration token")


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_unreachable_server_is_a_one_line_error(org: str, command: click.Command) -> None:
    url = f"parsec://127.0.0.1:{unused_port()}?no_ssl=true"

    result = invoke(command, *admin_args(org, url))

    assert assert_one_line_error(result)


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
@pytest.mark.parametrize("name", ["has space", "a" * 33, "é" * 17, "slash/", ""])
def test_invalid_name_is_a_usage_error(command: click.Command, name: str) -> None:
    result = invoke(command, *admin_args(name, "parsec://127.0.0.1:1?no_ssl=true"))

    assert result.exit_code == 2
    assert 'Error: Invalid value for "NAME": ' in result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6777", "parsec://", "parsec://host/path", "parsec://host?no_ssl=maybe"],
)
def test_malformed_addr_is_a_usage_error(command: click.Command, url: str) -> None:
    result = invoke(command, *admin_args("MyOrg", url))

    assert result.exit_code == 2
    assert 'Error: Invalid value for "--addr" / "-B": ' in result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_administration_token_is_required(command: click.Command) -> None:
    result = invoke(command, "MyOrg", "-B", "parsec://127.0.0.1:1?no_ssl=true")

    assert result.exit_code == 2
    assert "Missing option" in result.stderr


def test_invalid_handshake_from_the_server_is_a_one_line_error(org: str) -> None:
    with garbage_server() as fake:
        message = assert_one_line_error(status(fake, org))

    assert message.startswith("invalid handshake challenge: ")


def test_debug_environment_variable_shows_the_exception(
    org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEBUG", "1")
    monkeypatch.setattr(core_admin, "configure_logging", lambda level: None)
    url = f"parsec://127.0.0.1:{unused_port()}?no_ssl=true"

    result = invoke(status_organization, *admin_args(org, url))

    assert result.exit_code == 1
    assert not isinstance(result.exception, SystemExit)
    assert "Error:" not in result.output


def test_short_options(server: Server, org: str) -> None:
    result = invoke(
        create_organization, org, "-B", server.url, "-T", ADMIN_TOKEN, "-E", "2031-01-01"
    )

    assert result.exit_code == 0, result.output


def test_commands_have_the_reference_names() -> None:
    names = [command.name for command in COMMANDS]

    assert names == ["create_organization", "status_organization", "stats_organization"]


# --- TLS -----------------------------------------------------------------------------------


def test_tls_server_with_trusted_ca(
    tls_server: Server, tls_files: TLSFiles, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CAFILE", str(tls_files.ca))

    url = bootstrap_url(create(tls_server, org))

    assert url.startswith(f"parsec://127.0.0.1:{tls_server.port}/{org}?action=")
    assert "no_ssl" not in url
    bootstrap(url)
    assert status(tls_server, org).stdout.splitlines()[1] == "is_bootstrapped: True"
    assert "users: 1" in stats(tls_server, org).stdout.splitlines()


def test_tls_server_without_trusted_ca_is_a_one_line_error(tls_server: Server, org: str) -> None:
    message = assert_one_line_error(status(tls_server, org))

    assert "CERTIFICATE_VERIFY_FAILED" in message


def test_plain_client_against_tls_server_is_a_one_line_error(tls_server: Server, org: str) -> None:
    plain = Server(port=tls_server.port, use_ssl=False)

    assert_one_line_error(status(plain, org))


def test_tls_client_against_plain_server_is_a_one_line_error(
    server: Server, tls_files: TLSFiles, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CAFILE", str(tls_files.ca))
    tls = Server(port=server.port, use_ssl=True)

    assert_one_line_error(status(tls, org))
