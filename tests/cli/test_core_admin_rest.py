"""`parsec core list_organizations|update_organization|list_organization_users|freeze_user|
unfreeze_user|export_stats` over the administration REST API, against a real server in a
subprocess (the helpers of test_core_admin.py); the commands run in this process through
click's `CliRunner`."""

from __future__ import annotations

import contextlib
import csv
import http.server
import io
import itertools
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from parsec_server.backend.asgi.administration.handlers import CSV_HEADER
from parsec_server.cli.core_admin_rest import (
    export_stats,
    freeze_user,
    list_organization_users,
    list_organizations,
    unfreeze_user,
    update_organization,
)
from tests.cli.test_core_admin import (
    ADMIN_TOKEN,
    Server,
    TLSFiles,
    add_user,
    bootstrap,
    bootstrap_url,
    create,
    server_process,
    unused_port,
)
from tests.cli.test_core_admin import tls_files as tls_files  # a fixture

TOKEN = ADMIN_TOKEN
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with server_process(tmp_path_factory.mktemp("server"), tls=None) as running:
        yield running


@pytest.fixture(autouse=True)
def no_debug_nor_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEBUG", raising=False)
    monkeypatch.delenv("SSL_CAFILE", raising=False)


@pytest.fixture
def url(server: Server) -> str:
    return server.url


@pytest.fixture
def org(server: Server) -> str:
    """A bootstrapped organization of its own: alice (ADMIN, alice@example.com), bob."""
    name = f"Rest{next(_numbers)}"
    admin = bootstrap(bootstrap_url(create(server, name)))
    add_user(admin, "bob")
    return name


def invoke(command: click.Command, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(command, list(args), env=env)


def server_args(url: str, token: str = TOKEN) -> list[str]:
    return ["--addr", url, "-T", token]


def assert_one_line_error(result: Result, text: str = "") -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def listed_organizations(url: str) -> dict[str, dict[str, object]]:
    result = invoke(list_organizations, *server_args(url), "--json")
    assert result.exit_code == 0, result.output
    return {o["organization_id"]: o for o in json.loads(result.stdout)}


def organization_state(url: str, name: str, *options: str) -> dict[str, str]:
    result = invoke(update_organization, name, *server_args(url), *options)
    assert result.exit_code == 0, result.output
    return dict(line.split(": ", 1) for line in result.stdout.splitlines())


# --- listings -----------------------------------------------------------------------------


def test_list_organizations(server: Server, url: str, org: str) -> None:
    not_bootstrapped = f"Rest{next(_numbers)}"
    assert create(server, not_bootstrapped).exit_code == 0
    listed = listed_organizations(url)
    assert listed[org]["is_bootstrapped"] is True
    assert listed[not_bootstrapped]["is_bootstrapped"] is False
    assert listed[org]["is_expired"] is False
    result = invoke(list_organizations, *server_args(url))
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ORGANIZATION", "CREATED", "ON", "BOOTSTRAPPED", "EXPIRED"]
    [row] = [line.split() for line in lines if line.startswith(f"{org} ")]
    assert row[0] == org
    assert datetime.fromisoformat(row[1]).tzinfo is not None
    assert row[2:] == ["yes", "no"]


def test_list_organizations_reads_every_page(server: Server, url: str) -> None:
    names = {f"Page{next(_numbers)}" for _ in range(101)}  # more than one page of 100
    for name in names:
        assert create(server, name).exit_code == 0
    assert names <= set(listed_organizations(url))


def test_list_organization_users(url: str, org: str) -> None:
    result = invoke(list_organization_users, org, *server_args(url))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "USER",
        "PROFILE",
        "CREATED",
        "ON",
        "REVOKED",
        "ON",
        "FROZEN",
        "NAME",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["admin"][1] == "ADMIN"
    assert rows["admin"][4:] == ["no", "Alice", "<alice@example.com>"]
    assert rows["bob"][1] == "STANDARD"
    assert rows["bob"][3:] == ["-", "no", "-"]
    result = invoke(list_organization_users, org, *server_args(url), "--json")
    users = {user["user_id"]: user for user in json.loads(result.stdout)}
    assert users["admin"]["human_handle"] == {"email": "alice@example.com", "label": "Alice"}
    assert users["bob"]["frozen"] is False


# --- update_organization ------------------------------------------------------------------


def test_update_organization_changes_what_is_given(url: str, org: str) -> None:
    state = organization_state(url, org, "--active-users-limit", "10")
    assert (state["active_users_limit"], state["user_profile_outsider_allowed"]) == ("10", "yes")
    state = organization_state(url, org, "--outsider-not-allowed", "--no-active-users-limit")
    assert (state["active_users_limit"], state["user_profile_outsider_allowed"]) == ("-", "no")
    state = organization_state(url, org, "-E", "2030-01-02 03:04:05")
    expected = datetime(2030, 1, 2, 3, 4, 5).astimezone()
    assert datetime.fromisoformat(state["expiration_date"]) == expected
    assert state["is_expired"] == "no"
    assert organization_state(url, org, "--expired")["is_expired"] == "yes"
    assert listed_organizations(url)[org]["is_expired"] is True
    assert organization_state(url, org, "--not-expired")["is_expired"] == "no"
    assert organization_state(url, org, "--no-expiration")["expiration_date"] == "-"


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--expired", "--no-expiration"],
        ["-E", "2030-01-01", "--not-expired"],
        ["--active-users-limit", "3", "--no-active-users-limit"],
        ["--active-users-limit", "-1"],
        ["-E", "tomorrow"],
    ],
)
def test_update_organization_usage_errors(options: list[str]) -> None:
    url = f"parsec://127.0.0.1:{unused_port()}?no_ssl=true"  # never reached
    result = invoke(update_organization, "Org", *server_args(url), *options)
    assert result.exit_code == 2, result.output


def test_update_of_an_unknown_organization(url: str) -> None:
    result = invoke(update_organization, "Nope", *server_args(url), "--expired")
    assert_one_line_error(result, "Unknown organization: Organization `Nope` not found")


# --- freeze -------------------------------------------------------------------------------


def test_freeze_and_unfreeze(url: str, org: str) -> None:
    result = invoke(freeze_user, org, *server_args(url), "--user-id", "bob")
    assert (result.exit_code, result.stdout) == (0, "User bob frozen\n")
    result = invoke(list_organization_users, org, *server_args(url), "--json")
    assert {u["user_id"]: u["frozen"] for u in json.loads(result.stdout)}["bob"] is True
    result = invoke(unfreeze_user, org, *server_args(url), "--user-id", "bob")
    assert (result.exit_code, result.stdout) == (0, "User bob unfrozen\n")
    result = invoke(freeze_user, org, *server_args(url), "--email", "alice@example.com")
    assert (result.exit_code, result.stdout) == (0, "User admin frozen\n")
    result = invoke(unfreeze_user, org, *server_args(url), "--email", "alice@example.com")
    assert (result.exit_code, result.stdout) == (0, "User admin unfrozen\n")


@pytest.mark.parametrize("options", [[], ["--user-id", "alice", "--email", "a@example.com"]])
def test_freeze_needs_one_user(options: list[str]) -> None:
    url = f"parsec://127.0.0.1:{unused_port()}?no_ssl=true"  # never reached
    result = invoke(freeze_user, "Org", *server_args(url), *options)
    assert result.exit_code == 2
    assert "Give either --user-id or --email" in result.stderr


def test_freeze_of_an_unknown_user(url: str, org: str) -> None:
    result = invoke(freeze_user, org, *server_args(url), "--user-id", "zack")
    assert_one_line_error(result, "Unknown user: No such user in this organization")


# --- export_stats -------------------------------------------------------------------------


def test_export_stats_formats(url: str, org: str, tmp_path: Path) -> None:
    csv_file, json_file = tmp_path / "stats.csv", tmp_path / "stats.out"
    result = invoke(export_stats, *server_args(url), str(csv_file))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Stats written to {csv_file} (csv)\n"
    content = csv_file.read_bytes()
    assert content.startswith(",".join(CSV_HEADER).encode() + b"\r\n")
    rows = {row[0]: row for row in csv.reader(io.StringIO(content.decode()))}
    assert rows[org][4] == "2"  # users
    result = invoke(export_stats, *server_args(url), str(json_file))
    assert result.exit_code == 0, result.output
    stats = {s["organization_id"]: s for s in json.loads(json_file.read_text())["stats"]}
    assert stats[org]["users"] == 2
    result = invoke(export_stats, *server_args(url), "--at", "2000-01-01", "-")
    assert json.loads(result.stdout) == {"stats": []}  # nothing existed then
    result = invoke(export_stats, *server_args(url), "--format", "csv", "-")
    assert result.stdout_bytes.startswith(",".join(CSV_HEADER).encode() + b"\r\n")


def test_export_stats_failure_writes_no_file(url: str, tmp_path: Path) -> None:
    output = tmp_path / "stats.json"
    result = invoke(export_stats, *server_args(url, "wrong"), str(output))
    assert_one_line_error(result, "Bad administration token")
    assert not output.exists()


def test_export_stats_to_an_unwritable_file(url: str, tmp_path: Path) -> None:
    result = invoke(export_stats, *server_args(url), str(tmp_path / "missing" / "s.json"))
    assert_one_line_error(result, "Cannot write")


# --- errors -------------------------------------------------------------------------------

COMMANDS = [
    (list_organizations, []),
    (update_organization, ["Org1", "--expired"]),
    (list_organization_users, ["Org1"]),
    (freeze_user, ["Org1", "--user-id", "alice"]),
    (unfreeze_user, ["Org1", "--user-id", "alice"]),
    (export_stats, ["-"]),
]
COMMAND_IDS = [command.name for command, _ in COMMANDS]


@pytest.mark.parametrize(("command", "args"), COMMANDS, ids=COMMAND_IDS)
def test_wrong_token_is_one_line(url: str, command: click.Command, args: list[str]) -> None:
    assert_one_line_error(
        invoke(command, *args, *server_args(url, "wrong")), "Bad administration token"
    )


@pytest.mark.parametrize(("command", "args"), COMMANDS, ids=COMMAND_IDS)
def test_unreachable_server_is_one_line(command: click.Command, args: list[str]) -> None:
    url = f"parsec://127.0.0.1:{unused_port()}?no_ssl=true"
    assert_one_line_error(invoke(command, *args, *server_args(url)), "Cannot reach the server")


@contextlib.contextmanager
def plain_http_server(directory: Path) -> Iterator[int]:
    """A web server that knows nothing of Parsec (404 pages in HTML)."""
    handler = partial(QuietHandler, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever)
        thread.start()
        try:
            yield httpd.server_address[1]
        finally:
            httpd.shutdown()
            thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_server_without_the_rest_api(tmp_path: Path) -> None:
    with plain_http_server(tmp_path) as port:
        url = f"parsec://127.0.0.1:{port}?no_ssl=true"
        result = invoke(list_organizations, *server_args(url))
    assert_one_line_error(result, "The server has no administration REST API")


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles) -> Iterator[Server]:
    with server_process(tmp_path_factory.mktemp("tls_server"), tls=tls_files) as running:
        yield running


def test_tls_trusts_ssl_cafile(tls_server: Server, tls_files: TLSFiles) -> None:
    result = invoke(
        list_organizations, *server_args(tls_server.url), env={"SSL_CAFILE": str(tls_files.ca)}
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ORGANIZATION")


def test_tls_certificate_not_trusted_is_one_line(tls_server: Server) -> None:
    line = assert_one_line_error(
        invoke(list_organizations, *server_args(tls_server.url)), "not trusted"
    )
    assert "SSL_CAFILE" in line
