"""The installation guide's administrator steps, with our server and the unmodified
Parsec 2.0.0 client.

Our server runs as a subprocess of our `parsec` command, configured through the guide's
`PARSEC_*` variables (PostgreSQL database and block store, TLS, mocked e-mails), after
`parsec backend migrate`. The reference client CLI (and, for authenticated commands, the
reference client library) drives it; the administration commands are also run with our
own CLI. One server for the module; every test uses its own organization, except those
checking the organization bootstrapped once by the `bootstrapped` fixture.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import (
    OUR_MIGRATIONS,
    BootstrappedOrganization,
    Cli,
    DevServer,
    GuideServer,
    authenticated_check,
    bootstrap_organization,
    create_organization,
    describe,
    new_organization_name,
    our_parsec,
    output_of,
    parse_key_values,
    run_command,
)

pytestmark = pytest.mark.interop

DEV_ADMINISTRATION_TOKEN = "s3cr3t"  # what `--dev` injects


def admin_command(
    cli: Cli, command: str, addr: str, token: str, name: str
) -> subprocess.CompletedProcess[str]:
    return cli.run("core", command, "--addr", addr, "-T", token, name)


def key_values(cli: Cli, command: str, addr: str, token: str, name: str) -> dict[str, str]:
    result = admin_command(cli, command, addr, token, name)
    assert result.returncode == 0, describe(result)
    return parse_key_values(result.stdout)


@pytest.fixture(scope="module")
def bootstrapped(
    guide_server: GuideServer, reference_cli: Cli, tmp_path_factory: pytest.TempPathFactory
) -> BootstrappedOrganization:
    """An organization created and bootstrapped with the reference CLI."""
    name = new_organization_name()
    url = create_organization(
        reference_cli, guide_server.addr, guide_server.administration_token, name
    )
    config_dir = tmp_path_factory.mktemp("bootstrapped-config")
    full_name, email, label = "Alice Guide", "alice@example.com", "Alice's laptop"
    result = bootstrap_organization(reference_cli, url, config_dir, full_name, email, label)
    return BootstrappedOrganization(name, url, config_dir, full_name, email, label, result)


@pytest.fixture(params=["reference", "ours"])
def admin_cli(request: pytest.FixtureRequest, reference_cli: Cli, our_cli: Cli) -> Cli:
    """The administration commands exist in both CLIs: run those tests with each."""
    return reference_cli if request.param == "reference" else our_cli


# --- Database preparation -----------------------------------------------------------------


def test_migrate_applies_the_five_migrations_and_our_extras_then_finds_them_applied(
    guide_server: GuideServer,
) -> None:
    lines = guide_server.migrate_result.stdout.splitlines()
    assert lines[0].endswith("✔"), describe(guide_server.migrate_result)
    assert lines[1:] == [f"{name} ✔" for name in OUR_MIGRATIONS], describe(
        guide_server.migrate_result
    )

    again = run_command([our_parsec(), "backend", "migrate"], guide_server.env)

    assert again.returncode == 0, describe(again)
    assert again.stdout.splitlines()[1:] == [
        f"{name} (already applied)" for name in OUR_MIGRATIONS
    ], describe(again)


# --- Administration commands --------------------------------------------------------------


def test_create_organization_prints_a_bootstrap_url_of_a_new_organization(
    admin_cli: Cli, guide_server: GuideServer
) -> None:
    name = new_organization_name()
    token = guide_server.administration_token

    url = create_organization(admin_cli, guide_server.addr, token, name)

    assert re.fullmatch(
        rf"parsec://localhost:{guide_server.port}/{name}"
        r"\?action=bootstrap_organization&token=[0-9a-f]+",
        url,
    )
    status = key_values(admin_cli, "status_organization", guide_server.addr, token, name)
    assert status == {"status": "ok", "is_bootstrapped": "False", "expiration_date": "None"}
    stats = key_values(admin_cli, "stats_organization", guide_server.addr, token, name)
    assert stats == {"status": "ok", "users": "0", "data_size": "0", "metadata_size": "0"}


def test_status_organization_shows_the_organization_is_bootstrapped(
    admin_cli: Cli, guide_server: GuideServer, bootstrapped: BootstrappedOrganization
) -> None:
    status = key_values(
        admin_cli,
        "status_organization",
        guide_server.addr,
        guide_server.administration_token,
        bootstrapped.name,
    )

    assert status == {"status": "ok", "is_bootstrapped": "True", "expiration_date": "None"}


def test_stats_organization_counts_the_bootstrap_user(
    admin_cli: Cli, guide_server: GuideServer, bootstrapped: BootstrappedOrganization
) -> None:
    stats = key_values(
        admin_cli,
        "stats_organization",
        guide_server.addr,
        guide_server.administration_token,
        bootstrapped.name,
    )

    assert stats["status"] == "ok"
    assert stats["users"] == "1"
    assert set(stats) == {"status", "users", "data_size", "metadata_size"}


def test_status_of_an_unknown_organization_is_not_found(
    admin_cli: Cli, guide_server: GuideServer
) -> None:
    result = admin_command(
        admin_cli,
        "status_organization",
        guide_server.addr,
        guide_server.administration_token,
        new_organization_name(),
    )

    assert result.returncode == 0, describe(result)
    assert parse_key_values(result.stdout) == {"status": "not_found"}


@pytest.mark.parametrize(
    "command", ["create_organization", "status_organization", "stats_organization"]
)
def test_wrong_administration_token_is_refused(
    admin_cli: Cli, guide_server: GuideServer, command: str
) -> None:
    result = admin_command(
        admin_cli, command, guide_server.addr, "not-the-token", new_organization_name()
    )

    assert result.returncode == 1, describe(result)
    assert "Error: Invalid administration token" in output_of(result).splitlines(), describe(result)


# --- Bootstrap with the reference client --------------------------------------------------


def test_bootstrap_organization_saves_the_device(bootstrapped: BootstrappedOrganization) -> None:
    result = bootstrapped.result

    assert result.returncode == 0, describe(result)
    assert "Bootstrapping organization in the backend ✔" in result.stdout, describe(result)
    assert re.search(r"Saving device [0-9a-f]+ ✔", result.stdout), describe(result)
    assert list(bootstrapped.config_dir.glob("devices/**/*.keys")), describe(result)


def test_list_devices_shows_the_device_with_its_human_handle(
    reference_cli: Cli, bootstrapped: BootstrappedOrganization
) -> None:
    result = reference_cli.run("core", "list_devices", "--config-dir", bootstrapped.config_dir)

    assert result.returncode == 0, describe(result)
    assert f"Found 1 device(s) in {bootstrapped.config_dir}:" in result.stdout, describe(result)
    expected = (
        f"{bootstrapped.name}: {bootstrapped.full_name} <{bootstrapped.email}>"
        f" @ {bootstrapped.device_label}"
    )
    assert expected in result.stdout, describe(result)


def test_second_bootstrap_with_the_same_url_is_refused(
    reference_cli: Cli, bootstrapped: BootstrappedOrganization, tmp_path: Path
) -> None:
    config_dir = tmp_path / "config"

    result = bootstrap_organization(
        reference_cli, bootstrapped.url, config_dir, "Mallory", "mallory@example.com", "Evil"
    )

    assert result.returncode == 1, describe(result)
    assert "Bootstrapping organization in the backend ✘" in result.stdout, describe(result)
    assert "Error: Invitation already used" in result.stdout.splitlines(), describe(result)
    assert not list(config_dir.glob("devices/**/*.keys"))


def test_bootstrap_url_printed_by_our_cli_works_with_the_reference_client(
    our_cli: Cli, reference_cli: Cli, guide_server: GuideServer, tmp_path: Path
) -> None:
    name = new_organization_name()
    token = guide_server.administration_token
    url = create_organization(our_cli, guide_server.addr, token, name)

    result = bootstrap_organization(
        reference_cli, url, tmp_path / "config", "Bob Guide", "bob@example.com", "Bob's desktop"
    )

    assert result.returncode == 0, describe(result)
    status = key_values(our_cli, "status_organization", guide_server.addr, token, name)
    assert status["is_bootstrapped"] == "True"


def test_bootstrapped_device_pings_and_gets_its_own_user(
    reference_cli: Cli, bootstrapped: BootstrappedOrganization
) -> None:
    outcome = authenticated_check(reference_cli, bootstrapped.config_dir, bootstrapped.name)

    assert outcome["ping"] == {"status": "ok", "pong": "hello"}
    assert outcome["user_get_status"] == "ok"
    assert outcome["user_id"] == outcome["own_user_id"]
    assert outcome["human_handle"] == f"{bootstrapped.full_name} <{bootstrapped.email}>"
    assert outcome["profile"] == "ADMIN"
    assert outcome["revoked"] is False
    assert outcome["devices"] == {outcome["own_device_id"]: bootstrapped.device_label}


# --- Restart ------------------------------------------------------------------------------


def test_organization_is_still_bootstrapped_after_a_server_restart(
    reference_cli: Cli, guide_server: GuideServer, bootstrapped: BootstrappedOrganization
) -> None:
    exit_code = guide_server.restart()

    stopped_run = guide_server.process.logs[-2].read_text(errors="replace")
    assert exit_code == 0, stopped_run
    assert stopped_run.startswith(
        f"Starting Parsec Backend on 127.0.0.1:{guide_server.port} (db=POSTGRESQL "
        f"blockstore=POSTGRESQL backend_addr=parsec://localhost:{guide_server.port} "
        "email_config=MockedEmailConfig(sender=parsec@example.com, tmpdir="
    ), stopped_run
    assert "bye ;-)" in stopped_run.splitlines(), stopped_run
    token = guide_server.administration_token
    status = key_values(
        reference_cli, "status_organization", guide_server.addr, token, bootstrapped.name
    )
    assert status == {"status": "ok", "is_bootstrapped": "True", "expiration_date": "None"}
    stats = key_values(
        reference_cli, "stats_organization", guide_server.addr, token, bootstrapped.name
    )
    assert stats["users"] == "1"
    outcome = authenticated_check(reference_cli, bootstrapped.config_dir, bootstrapped.name)
    assert outcome["ping"] == {"status": "ok", "pong": "hello"}
    assert outcome["user_get_status"] == "ok"


# --- Development server -------------------------------------------------------------------


def test_dev_server_serves_the_reference_client_without_tls(
    reference_cli: Cli, dev_server: DevServer, tmp_path: Path
) -> None:
    name = new_organization_name()

    url = create_organization(reference_cli, dev_server.addr, DEV_ADMINISTRATION_TOKEN, name)

    assert url.startswith(f"parsec://127.0.0.1:{dev_server.port}/{name}?"), url
    assert url.endswith("&no_ssl=true"), url
    result = bootstrap_organization(
        reference_cli, url, tmp_path / "config", "Dev Eloper", "dev@example.com", "Dev box"
    )
    assert result.returncode == 0, describe(result)
    status = key_values(
        reference_cli, "status_organization", dev_server.addr, DEV_ADMINISTRATION_TOKEN, name
    )
    assert status == {"status": "ok", "is_bootstrapped": "True", "expiration_date": "None"}

    assert dev_server.process.stop() == 0
    output = dev_server.process.last_output
    assert output.startswith(
        f"Starting Parsec Backend on 127.0.0.1:{dev_server.port} (db=MOCKED blockstore=MOCKED "
        f"backend_addr=parsec://localhost:{dev_server.port} "
        "email_config=MockedEmailConfig(sender=no-reply@parsec.com, tmpdir="
    ), output
    assert "bye ;-)" in output.splitlines(), output
