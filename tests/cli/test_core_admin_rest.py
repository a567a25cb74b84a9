"""`parsec core list_organizations|update_organization|list_organization_users|freeze_user|
unfreeze_user|export_stats` over the administration REST API, against a stand-in of its
routes (tests/fixtures/admin_api_fake.py) served in a thread; the commands run in this
process through click's `CliRunner`."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import click
import pytest
import trustme
from click.testing import CliRunner, Result

from parsec_server.cli.core_admin_rest import (
    export_stats,
    freeze_user,
    list_organization_users,
    list_organizations,
    unfreeze_user,
    update_organization,
)
from tests.fixtures.admin_api_fake import FakeAdminApi, serving

TOKEN = "Adm1n-t0ken"


@pytest.fixture
def api() -> FakeAdminApi:
    fake = FakeAdminApi(TOKEN)
    fake.add_organization("OrgA")
    fake.add_organization("OrgB", is_bootstrapped=False, is_expired=True, created_on=None)
    fake.users["OrgA"] = [
        {
            "user_id": "alice",
            "human_handle": {"email": "alice@example.com", "label": "Alice"},
            "profile": "ADMIN",
            "created_on": "2024-05-02T14:03:11Z",
            "revoked_on": None,
            "frozen": False,
        },
        {
            "user_id": "bob",
            "human_handle": None,
            "profile": "OUTSIDER",
            "created_on": "2024-05-03T10:00:00Z",
            "revoked_on": "2024-06-01T00:00:00Z",
            "frozen": True,
        },
    ]
    return fake


@pytest.fixture
def url(api: FakeAdminApi) -> Iterator[str]:
    with serving(api.app()) as port:
        yield f"parsec://127.0.0.1:{port}?no_ssl=true"


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


# --- listings -----------------------------------------------------------------------------


def test_list_organizations(url: str) -> None:
    result = invoke(list_organizations, *server_args(url))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ORGANIZATION  CREATED ON            BOOTSTRAPPED  EXPIRED",
        "OrgA          2024-05-02T14:03:11Z  yes           no",
        "OrgB          -                     no            yes",
    ]


def test_list_organizations_reads_every_page(api: FakeAdminApi, url: str) -> None:
    for n in range(150):
        api.add_organization(f"Many{n:03}")
    result = invoke(list_organizations, *server_args(url), "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert len(listed) == 152
    assert listed[0] == {
        "organization_id": "Many000",
        "created_on": "2024-05-02T14:03:11Z",
        "is_bootstrapped": True,
        "is_expired": False,
    }
    pages = [query for method, _, query, _ in api.requests if method == "GET"]
    assert pages == [{"page": "1", "per_page": "100"}, {"page": "2", "per_page": "100"}]


def test_list_organization_users(url: str) -> None:
    result = invoke(list_organization_users, "OrgA", *server_args(url))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "USER   PROFILE   CREATED ON            REVOKED ON            FROZEN  NAME",
        "alice  ADMIN     2024-05-02T14:03:11Z  -                     no      "
        "Alice <alice@example.com>",
        "bob    OUTSIDER  2024-05-03T10:00:00Z  2024-06-01T00:00:00Z  yes     -",
    ]
    result = invoke(list_organization_users, "OrgA", *server_args(url), "--json")
    assert [user["user_id"] for user in json.loads(result.stdout)] == ["alice", "bob"]


# --- update_organization ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "body"),
    [
        (["--no-expiration"], {"expiration_date": None}),
        (["--expired"], {"is_expired": True}),
        (["--not-expired"], {"is_expired": False}),
        (["--active-users-limit", "10"], {"active_users_limit": 10}),
        (["--no-active-users-limit"], {"active_users_limit": None}),
        (["--outsider-not-allowed"], {"user_profile_outsider_allowed": False}),
        (
            ["--outsider-allowed", "--active-users-limit", "0"],
            {"user_profile_outsider_allowed": True, "active_users_limit": 0},
        ),
    ],
)
def test_update_organization_sends_what_is_given(
    api: FakeAdminApi, url: str, options: list[str], body: dict[str, object]
) -> None:
    result = invoke(update_organization, "OrgA", *server_args(url), *options)
    assert result.exit_code == 0, result.output
    assert api.requests[-1] == ("PATCH", "/administration/organizations/OrgA", {}, body)
    assert "organization_id: OrgA" in result.stdout.splitlines()


def test_update_organization_expiration_date_is_local_time_sent_in_utc(
    api: FakeAdminApi, url: str
) -> None:
    result = invoke(update_organization, "OrgA", *server_args(url), "-E", "2030-01-02 03:04:05")
    assert result.exit_code == 0, result.output
    sent = api.requests[-1][3]["expiration_date"]
    assert sent.endswith("Z")
    expected = datetime(2030, 1, 2, 3, 4, 5).astimezone()
    assert datetime.fromisoformat(sent) == expected


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
def test_update_organization_usage_errors(api: FakeAdminApi, url: str, options: list[str]) -> None:
    result = invoke(update_organization, "OrgA", *server_args(url), *options)
    assert result.exit_code == 2, result.output
    assert api.requests == []


def test_update_of_an_unknown_organization(url: str) -> None:
    result = invoke(update_organization, "Nope", *server_args(url), "--expired")
    assert_one_line_error(result, "Unknown organization: Organization `Nope` not found")


# --- freeze -------------------------------------------------------------------------------


def test_freeze_and_unfreeze(api: FakeAdminApi, url: str) -> None:
    result = invoke(freeze_user, "OrgA", *server_args(url), "--user-id", "alice")
    assert (result.exit_code, result.stdout) == (0, "User alice frozen\n")
    assert api.requests[-1][3] == {"user_id": "alice", "frozen": True}
    result = invoke(unfreeze_user, "OrgA", *server_args(url), "--email", "alice@example.com")
    assert (result.exit_code, result.stdout) == (0, "User alice unfrozen\n")
    assert api.requests[-1][3] == {"user_email": "alice@example.com", "frozen": False}


@pytest.mark.parametrize("options", [[], ["--user-id", "alice", "--email", "a@example.com"]])
def test_freeze_needs_one_user(api: FakeAdminApi, url: str, options: list[str]) -> None:
    result = invoke(freeze_user, "OrgA", *server_args(url), *options)
    assert result.exit_code == 2
    assert "Give either --user-id or --email" in result.stderr
    assert api.requests == []


def test_freeze_of_an_unknown_user(url: str) -> None:
    result = invoke(freeze_user, "OrgA", *server_args(url), "--user-id", "zack")
    assert_one_line_error(result, "Unknown user: No such user in this organization")


# --- export_stats -------------------------------------------------------------------------


def test_export_stats_formats(api: FakeAdminApi, url: str, tmp_path: Path) -> None:
    csv_file, json_file = tmp_path / "stats.csv", tmp_path / "stats.out"
    result = invoke(export_stats, *server_args(url), str(csv_file))
    assert result.exit_code == 0, result.output
    assert csv_file.read_bytes() == b"organization_id,users\r\nOrgA,2\r\n"
    assert result.stdout == f"Stats written to {csv_file} (csv)\n"
    result = invoke(export_stats, *server_args(url), "--at", "2024-06-01", str(json_file))
    assert result.exit_code == 0, result.output
    assert json.loads(json_file.read_text()) == {"stats": [{"organization_id": "OrgA", "users": 2}]}
    query = api.requests[-1][2]
    assert query["format"] == "json"
    assert datetime.fromisoformat(query["at"]) == datetime(2024, 6, 1).astimezone()
    result = invoke(export_stats, *server_args(url), "--format", "csv", "-")
    assert result.stdout_bytes == b"organization_id,users\r\nOrgA,2\r\n"


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
    (update_organization, ["OrgA", "--expired"]),
    (list_organization_users, ["OrgA"]),
    (freeze_user, ["OrgA", "--user-id", "alice"]),
    (unfreeze_user, ["OrgA", "--user-id", "alice"]),
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"parsec://127.0.0.1:{port}?no_ssl=true"
    assert_one_line_error(invoke(command, *args, *server_args(url)), "Cannot reach the server")


def test_server_without_the_rest_api(tmp_path: Path) -> None:
    from aiohttp import web

    with serving(web.Application()) as port:
        url = f"parsec://127.0.0.1:{port}?no_ssl=true"
        result = invoke(list_organizations, *server_args(url))
    assert_one_line_error(result, "The server has no administration REST API")


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture
def tls_url(api: FakeAdminApi, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with serving(api.app(), context) as port:
        yield f"parsec://127.0.0.1:{port}", ca_file


def test_tls_trusts_ssl_cafile(tls_url: tuple[str, Path]) -> None:
    url, ca_file = tls_url
    result = invoke(list_organizations, *server_args(url), env={"SSL_CAFILE": str(ca_file)})
    assert result.exit_code == 0, result.output
    assert "OrgA" in result.stdout


def test_tls_certificate_not_trusted_is_one_line(
    tls_url: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CAFILE", raising=False)
    url, _ = tls_url
    line = assert_one_line_error(invoke(list_organizations, *server_args(url)), "not trusted")
    assert "SSL_CAFILE" in line
