from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
import structlog
import trustme
from click.testing import CliRunner, Result

from parsec_server.api.addr import BackendAddr
from parsec_server.backend.asgi import server
from parsec_server.backend.config import (
    BackendConfig,
    MockedBlockstoreConfig,
    MockedEmailConfig,
    PostgreSQLBlockstoreConfig,
    RaidBlockstoreConfig,
    S3BlockstoreConfig,
    SmtpEmailConfig,
    StartupError,
)
from parsec_server.cli import backend_run, logging_setup
from parsec_server.cli.backend_run import (
    build_config,
    build_email_config,
    check_tls_files,
    dev_args,
    run,
)
from tests.fixtures import free_port

BLOCKSTORE_HINT = "'--blockstore' / '-b' (env var: 'PARSEC_BLOCKSTORE')"
REQUIRED_ARGS = [
    "--db", "MOCKED",
    "--blockstore", "MOCKED",
    "--administration-token", "t0ken",
    "--backend-addr", "parsec://parsec.example.com",
    "--email-host", "MOCKED",
]  # fmt: skip


@dataclass
class FakeServer:
    """Stands for `run_server`: records the configs, then behaves as `outcome` says."""

    configs: list[BackendConfig] = field(default_factory=list)
    outcome: BaseException | None = None

    def __call__(self, config: BackendConfig) -> None:
        self.configs.append(config)
        if self.outcome is not None:
            raise self.outcome

    @property
    def config(self) -> BackendConfig:
        assert len(self.configs) == 1
        return self.configs[0]


@dataclass
class LoggingCalls:
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PARSEC_") or name in ("SENTRY_ENVIRONMENT", "FORWARDED_ALLOW_IPS"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where `tempfile` creates the mocked e-mail folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture(autouse=True)
def logging_calls(monkeypatch: pytest.MonkeyPatch) -> LoggingCalls:
    calls = LoggingCalls()
    monkeypatch.setattr(backend_run, "configure_logging", calls)
    return calls


@pytest.fixture(autouse=True)
def sentry_calls(monkeypatch: pytest.MonkeyPatch) -> LoggingCalls:
    """Stands for `init_sentry` (the real one is tested in tests/backend/test_sentry.py)."""
    calls = LoggingCalls()
    monkeypatch.setattr(backend_run, "init_sentry", calls)
    return calls


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setattr(server, "run_server", fake)
    return fake


@dataclass
class TlsFiles:
    cert: Path
    key: Path
    combined: Path
    other_key: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    other = ca.issue_cert("other.example.com")
    files = TlsFiles(
        cert=folder / "cert.pem",
        key=folder / "key.pem",
        combined=folder / "combined.pem",
        other_key=folder / "other-key.pem",
    )
    cert.cert_chain_pems[0].write_to_path(files.cert)
    cert.private_key_pem.write_to_path(files.key)
    cert.private_key_and_cert_chain_pem.write_to_path(files.combined)
    other.private_key_pem.write_to_path(files.other_key)
    return files


def invoke(args: Sequence[str], env: Mapping[str, str] | None = None) -> Result:
    return CliRunner().invoke(run, list(args), env=dict(env or {}))


def without(option: str) -> list[str]:
    """`REQUIRED_ARGS` without `option` and its value."""
    position = REQUIRED_ARGS.index(option)
    return REQUIRED_ARGS[:position] + REQUIRED_ARGS[position + 2 :]


def minimal_config(**overrides: Any) -> BackendConfig:
    params: dict[str, Any] = {
        "db": "MOCKED",
        "blockstore": ["MOCKED"],
        "administration_token": "t0ken",
        "backend_addr": "parsec://parsec.example.com",
        "email_host": "MOCKED",
    }
    params.update(overrides)
    return build_config(**params)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


# --- Defaults and start-up -----------------------------------------------------------------


def test_minimal_command_line_uses_the_documented_defaults(
    fake_server: FakeServer, temp_dir: Path, logging_calls: LoggingCalls
) -> None:
    result = invoke(REQUIRED_ARGS)

    assert result.exit_code == 0, result.output
    config = fake_server.config
    assert (config.host, config.port) == ("127.0.0.1", 6777)
    assert (config.db_url, config.db_min_connections, config.db_max_connections) == (
        "MOCKED",
        5,
        7,
    )
    assert (config.db_first_tries_number, config.db_first_tries_sleep) == (1, 1.0)
    assert config.blockstore == MockedBlockstoreConfig()
    assert config.administration_token == "t0ken"
    assert config.backend_addr == BackendAddr("parsec.example.com", 443, use_ssl=True)
    assert config.spontaneous_organization_bootstrap is False
    assert config.organization_bootstrap_webhook is None
    assert (config.ssl_certfile, config.ssl_keyfile) == (None, None)
    assert (config.debug, config.workers, config.sentry_url) == (False, 1, None)
    assert config.sentry_environment == "production"
    assert config.proxy_trusted_addresses == ()
    assert (config.http_header_timeout, config.max_pending_connections_per_peer) == (10.0, 100)
    assert isinstance(config.email, MockedEmailConfig)
    assert config.email.sender == "no-reply@parsec.com"
    assert config.email.tmpdir.parent == temp_dir
    assert logging_calls.calls == [("WARNING", None, None, None)]


def test_start_up_line_is_printed_before_the_server_runs(fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--port", "7301"])

    assert result.exit_code == 0, result.output
    assert result.stdout == fake_server.config.startup_line() + "\n"
    assert result.stdout.startswith(
        "Starting Parsec Backend on 127.0.0.1:7301 (db=MOCKED blockstore=MOCKED "
        "backend_addr=parsec://parsec.example.com email_config=MockedEmailConfig("
    )


@pytest.mark.parametrize(
    "missing", ["--db", "--blockstore", "--administration-token", "--backend-addr", "--email-host"]
)
def test_required_option_missing_is_a_usage_error(missing: str, fake_server: FakeServer) -> None:
    result = invoke(without(missing))

    assert result.exit_code == 2
    assert f"Error: Missing option '{missing}'" in result.output
    assert fake_server.configs == []


def test_workers_sets_the_number_of_server_processes(fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--workers", "4"])

    assert result.exit_code == 0, result.output
    assert fake_server.config.workers == 4


def test_zero_workers_is_a_usage_error(fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--workers", "0"])

    assert result.exit_code == 2
    assert "Invalid value for '--workers'" in result.output


def test_connection_limits_are_set_by_their_options(fake_server: FakeServer) -> None:
    args = ["--http-header-timeout", "2.5", "--max-pending-connections-per-peer", "0"]
    result = invoke([*REQUIRED_ARGS, *args])

    assert result.exit_code == 0, result.output
    config = fake_server.config
    assert (config.http_header_timeout, config.max_pending_connections_per_peer) == (2.5, 0)
    assert config.handshake_timeout == 2.5  # the same delay bounds the protocol handshake


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--http-header-timeout", "0"),
        ("--http-header-timeout", "-1"),
        ("--http-header-timeout", "soon"),
        ("--max-pending-connections-per-peer", "-1"),
        ("--max-pending-connections-per-peer", "1.5"),
    ],
)
def test_bad_connection_limit_is_a_usage_error(
    fake_server: FakeServer, option: str, value: str
) -> None:
    result = invoke([*REQUIRED_ARGS, option, value])

    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert fake_server.configs == []


# --- Metrics ------------------------------------------------------------------------------


def test_metrics_are_off_by_default(fake_server: FakeServer) -> None:
    result = invoke(REQUIRED_ARGS)

    assert result.exit_code == 0, result.output
    assert fake_server.config.metrics_address is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("metrics.internal:65535", ("metrics.internal", 65535)),
    ],
)
def test_metrics_address_sets_where_metrics_are_served(
    fake_server: FakeServer, value: str, expected: tuple[str, int]
) -> None:
    result = invoke([*REQUIRED_ARGS, "--metrics-address", value])

    assert result.exit_code == 0, result.output
    assert fake_server.config.metrics_address == expected


def test_metrics_address_is_read_from_its_environment_variable(fake_server: FakeServer) -> None:
    result = invoke(REQUIRED_ARGS, env={"PARSEC_METRICS_ADDRESS": "10.1.2.3:9200"})

    assert result.exit_code == 0, result.output
    assert fake_server.config.metrics_address == ("10.1.2.3", 9200)


@pytest.mark.parametrize(
    "value", ["9100", "127.0.0.1", "127.0.0.1:", ":9100", "127.0.0.1:0", "127.0.0.1:65536",
              "::1:9100", "127.0.0.1:port", "[::1]9100", ""],
)  # fmt: skip
def test_malformed_metrics_address_is_a_usage_error(fake_server: FakeServer, value: str) -> None:
    result = invoke([*REQUIRED_ARGS, "--metrics-address", value])

    assert result.exit_code == 2
    assert "Invalid value for '--metrics-address'" in result.output
    assert "HOST:PORT" in result.output
    assert fake_server.configs == []


@pytest.mark.parametrize(
    "args",
    [
        ["--metrics-address", "127.0.0.1:6777"],
        ["--metrics-address", "0.0.0.0:6777"],
        ["-H", "0.0.0.0", "--metrics-address", "10.0.0.1:6777"],
        ["-P", "9100", "--metrics-address", "127.0.0.1:9100"],
    ],
)
def test_metrics_are_never_served_on_the_public_port(
    fake_server: FakeServer, args: list[str]
) -> None:
    result = invoke([*REQUIRED_ARGS, *args])

    assert result.exit_code == 2
    assert "Invalid value for '--metrics-address'" in result.output
    assert "must not be the server's own address" in result.output
    assert fake_server.configs == []


def test_metrics_may_share_the_port_number_on_another_address(fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--metrics-address", "10.0.0.1:6777"])

    assert result.exit_code == 0, result.output
    assert fake_server.config.metrics_address == ("10.0.0.1", 6777)


def test_short_options_are_accepted(fake_server: FakeServer, logging_calls: LoggingCalls) -> None:
    args = [
        "-H", "0.0.0.0", "-P", "7000", "-b", "POSTGRESQL", "-l", "INFO", "-f", "JSON",
        "-o", "server.log", "--db", "postgresql://db/parsec", "--administration-token", "t",
        "--backend-addr", "parsec://a", "--email-host", "MOCKED",
    ]  # fmt: skip

    result = invoke(args)

    assert result.exit_code == 0, result.output
    config = fake_server.config
    assert (config.host, config.port, config.blockstore) == (
        "0.0.0.0",
        7000,
        PostgreSQLBlockstoreConfig(),
    )
    assert logging_calls.calls == [("INFO", "JSON", Path("server.log"), None)]


# --- Environment variables -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("PARSEC_HOST", "0.0.0.0", "host", "0.0.0.0"),
        ("PARSEC_PORT", "7000", "port", 7000),
        ("PARSEC_DB_MIN_CONNECTIONS", "2", "db_min_connections", 2),
        ("PARSEC_DB_MAX_CONNECTIONS", "20", "db_max_connections", 20),
        ("PARSEC_DB_FIRST_TRIES_NUMBER", "0", "db_first_tries_number", 0),
        ("PARSEC_DB_FIRST_TRIES_SLEEP", "2.5", "db_first_tries_sleep", 2.5),
        ("PARSEC_SPONTANEOUS_ORGANIZATION_BOOTSTRAP", "true",
         "spontaneous_organization_bootstrap", True),
        ("PARSEC_ORGANIZATION_BOOTSTRAP_WEBHOOK", "https://hook.example.com/x",
         "organization_bootstrap_webhook", "https://hook.example.com/x"),
        ("PARSEC_DEBUG", "1", "debug", True),
        ("PARSEC_WORKERS", "3", "workers", 3),
        ("PARSEC_HTTP_HEADER_TIMEOUT", "0.5", "http_header_timeout", 0.5),
        ("PARSEC_MAX_PENDING_CONNECTIONS_PER_PEER", "7", "max_pending_connections_per_peer", 7),
        ("PARSEC_SENTRY_URL", "https://k@sentry.example.com/1", "sentry_url",
         "https://k@sentry.example.com/1"),
        ("PARSEC_SENTRY_DSN", "https://k@sentry.example.com/2", "sentry_url",
         "https://k@sentry.example.com/2"),
        ("PARSEC_SENTRY_ENVIRONMENT", "staging", "sentry_environment", "staging"),
        ("SENTRY_ENVIRONMENT", "preprod", "sentry_environment", "preprod"),
        ("PARSEC_PROXY_TRUSTED_ADDRESSES", "10.0.0.1,10.1.0.0/16", "proxy_trusted_addresses",
         ("10.0.0.1", "10.1.0.0/16")),
        ("FORWARDED_ALLOW_IPS", "127.0.0.1", "proxy_trusted_addresses", ("127.0.0.1",)),
    ],
)  # fmt: skip
def test_optional_setting_is_read_from_its_environment_variable(
    name: str, value: str, attribute: str, expected: object, fake_server: FakeServer
) -> None:
    result = invoke(REQUIRED_ARGS, env={name: value})

    assert result.exit_code == 0, result.output
    assert getattr(fake_server.config, attribute) == expected


def test_required_settings_are_read_from_environment_variables(fake_server: FakeServer) -> None:
    env = {
        "PARSEC_DB": "postgresql://user@db.example.com/parsec",
        "PARSEC_BLOCKSTORE": "s3:localhost\\:4566:region1:parsec:user:password",
        "PARSEC_ADMINISTRATION_TOKEN": "from-env",
        "PARSEC_BACKEND_ADDR": "parsec://parsec.example.com:8443?no_ssl=true",
        "PARSEC_EMAIL_HOST": "smtp.example.com",
        "PARSEC_EMAIL_PORT": "587",
        "PARSEC_EMAIL_HOST_USER": "smtp-user",
        "PARSEC_EMAIL_HOST_PASSWORD": "smtp-password",
        "PARSEC_EMAIL_USE_TLS": "yes",
        "PARSEC_EMAIL_SENDER": "parsec@example.com",
    }

    result = invoke([], env=env)

    assert result.exit_code == 0, result.output
    config = fake_server.config
    assert config.db_url == "postgresql://user@db.example.com/parsec"
    assert isinstance(config.blockstore, S3BlockstoreConfig)
    assert config.blockstore.endpoint_url == "https://localhost:4566"
    assert config.administration_token == "from-env"
    assert config.backend_addr == BackendAddr("parsec.example.com", 8443, use_ssl=False)
    assert config.email == SmtpEmailConfig(
        host="smtp.example.com",
        port=587,
        sender="parsec@example.com",
        host_user="smtp-user",
        host_password="smtp-password",
        use_ssl=False,
        use_tls=True,
    )


def test_email_use_ssl_is_read_from_its_environment_variable(fake_server: FakeServer) -> None:
    env = {"PARSEC_EMAIL_USE_SSL": "Y", "PARSEC_EMAIL_SENDER": "parsec@example.com"}

    result = invoke([*REQUIRED_ARGS, "--email-host", "smtp.example.com"], env=env)

    assert result.exit_code == 0, result.output
    assert isinstance(fake_server.config.email, SmtpEmailConfig)
    assert fake_server.config.email.use_ssl is True


def test_log_settings_are_read_from_environment_variables(
    fake_server: FakeServer, logging_calls: LoggingCalls
) -> None:
    env = {
        "PARSEC_LOG_LEVEL": "debug",
        "PARSEC_LOG_FORMAT": "console",
        "PARSEC_LOG_FILE": "parsec.log",
        "PARSEC_LOG_FILTER": "{'event': 'Connection",
    }

    result = invoke(REQUIRED_ARGS, env=env)

    assert result.exit_code == 0, result.output
    assert logging_calls.calls == [
        ("DEBUG", "CONSOLE", Path("parsec.log"), "{'event': 'Connection")
    ]


def test_audit_log_is_read_from_its_option_and_environment_variable(
    fake_server: FakeServer,
) -> None:
    assert invoke(REQUIRED_ARGS).exit_code == 0
    assert invoke([*REQUIRED_ARGS, "--audit-log", "a.log"]).exit_code == 0
    assert invoke(REQUIRED_ARGS, env={"PARSEC_AUDIT_LOG": "b.log"}).exit_code == 0
    assert [config.audit_log for config in fake_server.configs] == [
        None,
        Path("a.log"),
        Path("b.log"),
    ]


def test_unwritable_audit_log_fails_at_start_up_in_one_line(tmp_path: Path) -> None:
    audit_log = tmp_path / "missing-folder" / "audit.log"
    port = free_port()
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "parsec"),
            "backend",
            "run",
            *REQUIRED_ARGS,
            f"--port={port}",
            f"--audit-log={audit_log}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"Error: Cannot open audit log file `{audit_log}`: No such file or directory"
    )
    assert "Traceback" not in result.stderr


def test_tls_files_are_read_from_environment_variables(
    fake_server: FakeServer, tls_files: TlsFiles
) -> None:
    env = {"PARSEC_SSL_CERTFILE": str(tls_files.cert), "PARSEC_SSL_KEYFILE": str(tls_files.key)}

    result = invoke(REQUIRED_ARGS, env=env)

    assert result.exit_code == 0, result.output
    assert (fake_server.config.ssl_certfile, fake_server.config.ssl_keyfile) == (
        tls_files.cert,
        tls_files.key,
    )


def test_blockstore_environment_variable_takes_whitespace_separated_values(
    fake_server: FakeServer,
) -> None:
    env = {"PARSEC_BLOCKSTORE": "RAID5:0:MOCKED  RAID5:1:MOCKED\tRAID5:2:MOCKED"}
    result = invoke(without("--blockstore"), env=env)

    assert result.exit_code == 0, result.output
    assert fake_server.config.blockstore == RaidBlockstoreConfig(
        mode="RAID5", nodes=(MockedBlockstoreConfig(),) * 3
    )


def test_command_line_beats_environment_variables(
    fake_server: FakeServer, logging_calls: LoggingCalls
) -> None:
    env = {
        "PARSEC_PORT": "8000",
        "PARSEC_DB": "postgresql://db.example.com/parsec",
        "PARSEC_BLOCKSTORE": "POSTGRESQL",
        "PARSEC_ADMINISTRATION_TOKEN": "from-env",
        "PARSEC_LOG_LEVEL": "ERROR",
        "PARSEC_DEBUG": "false",
    }

    result = invoke([*REQUIRED_ARGS, "-P", "7000", "-l", "INFO", "--debug"], env=env)

    assert result.exit_code == 0, result.output
    config = fake_server.config
    assert (config.port, config.db_url, config.blockstore) == (
        7000,
        "MOCKED",
        MockedBlockstoreConfig(),
    )
    assert (config.administration_token, config.debug) == ("t0ken", True)
    assert logging_calls.calls[0][0] == "INFO"


def test_blockstore_on_the_command_line_replaces_all_environment_values(
    fake_server: FakeServer,
) -> None:
    env = {"PARSEC_BLOCKSTORE": "RAID1:0:MOCKED RAID1:1:MOCKED"}

    result = invoke(REQUIRED_ARGS, env=env)

    assert result.exit_code == 0, result.output
    assert fake_server.config.blockstore == MockedBlockstoreConfig()


@pytest.mark.parametrize("value", ["1", "true", "T", "yes", "Y", "TRUE"])
def test_boolean_environment_variable_accepts_true_words(
    value: str, fake_server: FakeServer
) -> None:
    result = invoke(REQUIRED_ARGS, env={"PARSEC_DEBUG": value})

    assert result.exit_code == 0, result.output
    assert fake_server.config.debug is True


@pytest.mark.parametrize("value", ["0", "false", "F", "no", "N"])
def test_boolean_environment_variable_accepts_false_words(
    value: str, fake_server: FakeServer
) -> None:
    result = invoke(REQUIRED_ARGS, env={"PARSEC_DEBUG": value})

    assert result.exit_code == 0, result.output
    assert fake_server.config.debug is False


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        ("PARSEC_DEBUG", "--debug"),
        ("PARSEC_EMAIL_USE_SSL", "--email-use-ssl"),
        ("PARSEC_EMAIL_USE_TLS", "--email-use-tls"),
        ("PARSEC_SPONTANEOUS_ORGANIZATION_BOOTSTRAP", "--spontaneous-organization-bootstrap"),
    ],
)
@pytest.mark.parametrize("value", ["on", "off", "maybe"])
def test_boolean_environment_variable_refuses_other_words(
    name: str, flag: str, value: str, fake_server: FakeServer
) -> None:
    result = invoke(REQUIRED_ARGS, env={name: value})

    assert result.exit_code == 2
    assert error_lines(result) == [
        f'Error: Invalid value for "{flag}": {value} is not a valid boolean'
    ]
    assert fake_server.configs == []


# --- `--dev` -------------------------------------------------------------------------------


def test_dev_prints_the_documented_start_up_line(fake_server: FakeServer, temp_dir: Path) -> None:
    result = invoke(["--dev", "-P", "7301"])

    assert result.exit_code == 0, result.output
    tmpdir = re.escape(str(temp_dir))
    assert re.fullmatch(
        r"Starting Parsec Backend on 127\.0\.0\.1:7301 \(db=MOCKED blockstore=MOCKED "
        r"backend_addr=parsec://localhost:7301 email_config=MockedEmailConfig\("
        rf"sender=no-reply@parsec\.com, tmpdir={tmpdir}/tmp-email-folder-\w+\)\)\n",
        result.stdout,
    )


def test_dev_fills_in_the_settings_absent_from_the_command_line(fake_server: FakeServer) -> None:
    result = invoke(["--dev"])

    assert result.exit_code == 0, result.output
    config = fake_server.config
    assert config.debug is True
    assert config.db_url == "MOCKED"
    assert config.blockstore == MockedBlockstoreConfig()
    assert config.administration_token == "s3cr3t"
    assert config.backend_addr.to_url() == "parsec://localhost:6777"
    assert config.backend_addr.use_ssl is True  # the reference's dev address has no no_ssl
    assert isinstance(config.email, MockedEmailConfig)
    assert config.email.sender == "no-reply@parsec.com"
    assert (config.host, config.port) == ("127.0.0.1", 6777)


def test_dev_ignores_environment_variables_of_the_settings_it_fills_in(
    fake_server: FakeServer,
) -> None:
    env = {
        "PARSEC_ADMINISTRATION_TOKEN": "from-env",
        "PARSEC_BACKEND_ADDR": "parsec://env.example.com",
        "PARSEC_DB": "postgresql://db.example.com/parsec",
        "PARSEC_BLOCKSTORE": "not-a-blockstore",
        "PARSEC_EMAIL_HOST": "smtp.example.com",
        "PARSEC_EMAIL_SENDER": "env@example.com",
        "PARSEC_DEBUG": "on",  # would be refused if it were read
    }

    result = invoke(["--dev"], env=env)

    assert result.exit_code == 0, result.output
    config = fake_server.config
    assert config.administration_token == "s3cr3t"
    assert config.backend_addr.to_url() == "parsec://localhost:6777"
    assert (config.db_url, config.blockstore) == ("MOCKED", MockedBlockstoreConfig())
    assert config.email.sender == "no-reply@parsec.com"
    assert isinstance(config.email, MockedEmailConfig)
    assert config.debug is True


def test_dev_honours_environment_variables_of_other_settings(fake_server: FakeServer) -> None:
    env = {"PARSEC_HOST": "0.0.0.0", "PARSEC_DB_MAX_CONNECTIONS": "12", "PARSEC_WORKERS": "2"}

    result = invoke(["--dev"], env=env)

    assert result.exit_code == 0, result.output
    config = fake_server.config
    assert (config.host, config.db_max_connections, config.workers) == ("0.0.0.0", 12, 2)


def test_dev_keeps_the_values_given_on_the_command_line(fake_server: FakeServer) -> None:
    args = [
        "--administration-token", "mine", "--dev",
        "--backend-addr", "parsec://parsec.example.com?no_ssl=true",
        "-b", "RAID1:0:MOCKED", "--email-host", "smtp.example.com",
    ]  # fmt: skip

    result = invoke(args)

    assert result.exit_code == 0, result.output
    config = fake_server.config
    assert config.administration_token == "mine"
    assert config.backend_addr.to_url() == "parsec://parsec.example.com?no_ssl=true"
    assert config.blockstore == RaidBlockstoreConfig(
        mode="RAID1", nodes=(MockedBlockstoreConfig(),)
    )
    assert isinstance(config.email, SmtpEmailConfig)
    assert (config.email.host, config.email.sender) == ("smtp.example.com", "no-reply@parsec.com")


@pytest.mark.parametrize(
    "port_args", [["--port", "7301"], ["-P", "7301"], ["-P7301"], ["--port=7301"]]
)
def test_dev_backend_addr_takes_the_port_given_on_the_command_line(
    port_args: list[str], fake_server: FakeServer
) -> None:
    result = invoke(["--dev", *port_args])

    assert result.exit_code == 0, result.output
    assert fake_server.config.port == 7301
    assert fake_server.config.backend_addr.to_url() == "parsec://localhost:7301"


def test_dev_does_not_see_a_port_given_by_environment_variable(fake_server: FakeServer) -> None:
    result = invoke(["--dev"], env={"PARSEC_PORT": "7400"})

    assert result.exit_code == 0, result.output
    assert fake_server.config.port == 7400
    assert fake_server.config.backend_addr.to_url() == "parsec://localhost:6777"


def test_dev_args_lists_only_the_settings_not_given() -> None:
    given = {"dev": True, "db": "postgresql://db/x", "port": "7301", "debug": True}

    assert dev_args(given) == [
        "--email-sender", "no-reply@parsec.com",
        "--email-host", "MOCKED",
        "--blockstore", "MOCKED",
        "--administration-token", "s3cr3t",
        "--backend-addr", "parsec://localhost:7301",
    ]  # fmt: skip


# --- Blockstore through the command --------------------------------------------------------


def test_blockstore_form_of_the_installation_guide_is_accepted(fake_server: FakeServer) -> None:
    shell_text = r"-b s3:localhost\\:4566:region1:parsec:user:password"  # as in the guide

    result = invoke([*without("--blockstore"), *shlex.split(shell_text)])

    assert result.exit_code == 0, result.output
    assert fake_server.config.blockstore == S3BlockstoreConfig(
        endpoint_url="https://localhost:4566",
        region="region1",
        bucket="parsec",
        key="user",
        secret="password",
    )
    assert "blockstore=S3 " in result.stdout


def test_several_blockstore_options_make_a_raid(fake_server: FakeServer) -> None:
    args = [*without("--blockstore"), "-b", "RAID0:1:MOCKED", "--blockstore", "RAID0:0:MOCKED"]

    result = invoke(args)

    assert result.exit_code == 0, result.output
    assert fake_server.config.blockstore == RaidBlockstoreConfig(
        mode="RAID0", nodes=(MockedBlockstoreConfig(),) * 2
    )
    assert "blockstore=RAID0 " in result.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["s3:region1:parsec:user:password"], "Invalid S3 config, must be "
         "`s3:[<endpoint_url>]:<region>:<bucket>:<key>:<secret>`"),
        (["swift:a:b"], "Invalid SWIFT config, must be "
         "`swift:<auth_url>:<tenant>:<container>:<user>:<password>`"),
        (["dummy"], "Invalid blockstore type `dummy`"),
        (["RAID1:x:MOCKED"], "Invalid node index `x` (must be integer)"),
        (["RAID1:1:MOCKED"], "Missing node index `0` in RAID config"),
        (["RAID1:0:MOCKED", "RAID1:0:MOCKED"],
         "Multiple configuration for node index `0` in RAID config"),
        (["RAID1:0:MOCKED", "RAID0:1:MOCKED"],
         "Multiple blockstore config with different types: RAID1/RAID0"),
        (["MOCKED", "MOCKED"], "Multiple blockstore configs only available for RAID mode"),
    ],
)  # fmt: skip
def test_malformed_blockstore_is_a_usage_error(
    values: list[str], message: str, fake_server: FakeServer
) -> None:
    args = without("--blockstore")
    for value in values:
        args += ["-b", value]

    result = invoke(args)

    assert result.exit_code == 2
    assert error_lines(result) == [f"Error: Invalid value for {BLOCKSTORE_HINT}: {message}"]
    assert fake_server.configs == []


def test_raid5_with_two_nodes_fails_at_start_up(fake_server: FakeServer) -> None:
    result = invoke(["--dev", "-b", "RAID5:0:MOCKED", "-b", "RAID5:1:MOCKED"])

    assert result.exit_code == 1
    assert result.output == "Error: RAID5 block store needs at least 3 nodes\n"
    assert fake_server.configs == []


def test_raid_nodes_sharing_a_storage_fail_at_start_up(fake_server: FakeServer) -> None:
    args = [*without("--blockstore"), "--db", "postgresql://db.example.com/parsec"]
    for node in ["RAID5:0:MOCKED", "RAID5:1:POSTGRESQL", "RAID5:2:POSTGRESQL"]:
        args += ["-b", node]

    result = invoke(args)

    assert result.exit_code == 1
    assert result.output == (
        "Error: RAID5 nodes 1 and 2 use the same storage (POSTGRESQL: the `block_data` "
        "table of the --db database): each node needs a storage of its own\n"
    )
    assert fake_server.configs == []


def test_postgresql_blockstore_with_mocked_db_fails_at_start_up(fake_server: FakeServer) -> None:
    result = invoke(["--dev", "-b", "POSTGRESQL"])

    assert result.exit_code == 1
    assert result.output == "Error: PostgreSQL block store is not available\n"


def test_postgresql_blockstore_with_postgresql_db_is_accepted() -> None:
    config = minimal_config(db="postgres://db.example.com/parsec", blockstore=["POSTGRESQL"])

    assert (config.db_type, config.blockstore) == ("POSTGRESQL", PostgreSQLBlockstoreConfig())


# --- Database ------------------------------------------------------------------------------


def test_db_neither_mocked_nor_postgresql_is_a_usage_error(fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--db", "mocked"])

    assert result.exit_code == 2
    assert error_lines(result) == [
        "Error: Invalid value for '--db' (env var: 'PARSEC_DB'): "
        "`mocked` is neither `MOCKED`, a `postgresql://` URL nor `sqlite:PATH`"
    ]


def test_db_sqlite_path_is_made_absolute_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = minimal_config(db="sqlite:data/parsec.sqlite")
    absolute = minimal_config(db="sqlite:/var/lib/parsec/parsec.sqlite")

    assert relative.db_type == "SQLITE"
    assert relative.sqlite_path == tmp_path / "data" / "parsec.sqlite"
    assert absolute.db_url == "sqlite:/var/lib/parsec/parsec.sqlite"
    assert absolute.sqlite_synchronous == "FULL"


@pytest.mark.parametrize("db", ["sqlite:", "sqlite::memory:"])
def test_db_sqlite_without_a_file_is_a_usage_error(fake_server: FakeServer, db: str) -> None:
    result = invoke([*REQUIRED_ARGS, "--db", db])

    assert result.exit_code == 2
    assert error_lines(result) == [
        "Error: Invalid value for '--db' (env var: 'PARSEC_DB'): "
        "`sqlite:` needs the path of the database file: `sqlite:PATH`"
    ]


def test_postgresql_blockstore_with_sqlite_db_fails_at_start_up(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    result = invoke(["--dev", "--db", f"sqlite:{tmp_path}/db.sqlite", "-b", "POSTGRESQL"])

    assert result.exit_code == 1
    assert result.output == (
        "Error: PostgreSQL block store is not available with an SQLite database: "
        "choose another --blockstore\n"
    )
    assert fake_server.configs == []


def test_db_min_connections_above_max_is_a_usage_error(fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--db-min-connections", "8", "--db-max-connections", "7"])

    assert result.exit_code == 2
    assert "Invalid value for '--db-min-connections'" in result.output


def test_non_integer_port_is_a_usage_error(fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--port", "http"])

    assert result.exit_code == 2
    assert "Invalid value for '--port' / '-P' (env var: 'PARSEC_PORT')" in result.output


# --- Backend address -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://parsec.example.com", "Must start with `parsec://`"),
        ("parsec://parsec.example.com/org", "Cannot have path"),
        ("parsec://parsec.example.com?no_ssl=maybe", "Invalid `no_ssl` param value"),
        ("parsec://", "Missing mandatory hostname"),
    ],
)
def test_malformed_backend_addr_is_a_one_line_usage_error(
    url: str, reason: str, fake_server: FakeServer
) -> None:
    result = invoke([*REQUIRED_ARGS, "--backend-addr", url])

    assert result.exit_code == 2
    [line] = error_lines(result)
    assert line.startswith(
        "Error: Invalid value for '--backend-addr' (env var: 'PARSEC_BACKEND_ADDR'): "
        f"`{url}` is not a valid "
    )
    assert reason in line
    assert "Traceback" not in result.output


def test_backend_addr_without_tls_is_kept(fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--backend-addr", "parsec://localhost:6777?no_ssl=true"])

    assert result.exit_code == 0, result.output
    assert fake_server.config.backend_addr == BackendAddr("localhost", 6777, use_ssl=False)
    assert "backend_addr=parsec://localhost:6777?no_ssl=true " in result.stdout


# --- E-mail --------------------------------------------------------------------------------


def test_smtp_without_sender_fails_at_start_up(fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--email-host", "smtp.example.com"])

    assert result.exit_code == 1
    assert result.output == "Error: --email-sender is required when --email-host is provided\n"
    assert fake_server.configs == []


def test_smtp_settings_are_kept(fake_server: FakeServer) -> None:
    args = [
        *REQUIRED_ARGS, "--email-host", "smtp.example.com", "--email-port", "465",
        "--email-use-ssl", "--email-sender", "parsec@example.com",
        "--email-host-user", "u", "--email-host-password", "p",
    ]  # fmt: skip

    result = invoke(args)

    assert result.exit_code == 0, result.output
    assert fake_server.config.email == SmtpEmailConfig(
        host="smtp.example.com",
        port=465,
        sender="parsec@example.com",
        host_user="u",
        host_password="p",
        use_ssl=True,
        use_tls=False,
    )
    assert (
        "email_config=SmtpEmailConfig(sender=parsec@example.com, host=smtp.example.com, "
        "port=465, use_ssl=True)" in result.stdout
    )


def test_mocked_email_creates_its_temporary_folder(temp_dir: Path) -> None:
    email = build_email_config(host="MOCKED")

    assert isinstance(email, MockedEmailConfig)
    assert email.tmpdir.is_dir()
    assert email.tmpdir.parent == temp_dir
    assert email.tmpdir.name.startswith("tmp-email-folder-")
    assert email.sender == "no-reply@parsec.com"


def test_mocked_email_keeps_a_given_sender() -> None:
    email = build_email_config(host="MOCKED", sender="parsec@example.com")

    assert email.sender == "parsec@example.com"


def test_email_host_mocked_is_case_sensitive() -> None:
    with pytest.raises(StartupError, match="--email-sender is required"):
        build_email_config(host="mocked")


def test_no_email_folder_is_created_when_another_setting_is_wrong(temp_dir: Path) -> None:
    with pytest.raises(click.BadParameter):
        minimal_config(blockstore=["dummy"])
    with pytest.raises(StartupError):
        minimal_config(blockstore=["POSTGRESQL"])

    assert list(temp_dir.iterdir()) == []


# --- TLS -----------------------------------------------------------------------------------


def test_tls_certificate_and_key_are_kept(fake_server: FakeServer, tls_files: TlsFiles) -> None:
    args = [*REQUIRED_ARGS, "--ssl-certfile", str(tls_files.cert)]
    args += ["--ssl-keyfile", str(tls_files.key)]

    result = invoke(args)

    assert result.exit_code == 0, result.output
    assert (fake_server.config.ssl_certfile, fake_server.config.ssl_keyfile) == (
        tls_files.cert,
        tls_files.key,
    )


def test_tls_key_may_be_inside_the_certificate_file(tls_files: TlsFiles) -> None:
    check_tls_files(tls_files.combined, None)


@pytest.mark.parametrize("option", ["--ssl-certfile", "--ssl-keyfile"])
def test_missing_tls_file_is_a_usage_error(
    option: str, fake_server: FakeServer, tmp_path: Path
) -> None:
    result = invoke([*REQUIRED_ARGS, option, str(tmp_path / "nope.pem")])

    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert "does not exist" in result.output


def test_tls_file_that_is_a_directory_is_a_usage_error(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    result = invoke([*REQUIRED_ARGS, "--ssl-certfile", str(tmp_path)])

    assert result.exit_code == 2
    assert "is a directory" in result.output


def test_unloadable_certificate_fails_at_start_up(
    fake_server: FakeServer, tmp_path: Path, tls_files: TlsFiles
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")

    result = invoke(
        [*REQUIRED_ARGS, "--ssl-certfile", str(garbage), "--ssl-keyfile", str(tls_files.key)]
    )

    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith(f"Error: Cannot load TLS certificate `{garbage}` with key ")
    assert fake_server.configs == []


def test_key_not_matching_the_certificate_fails_at_start_up(
    fake_server: FakeServer, tls_files: TlsFiles
) -> None:
    args = [*REQUIRED_ARGS, "--ssl-certfile", str(tls_files.cert)]
    args += ["--ssl-keyfile", str(tls_files.other_key)]

    result = invoke(args)

    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("Error: Cannot load TLS certificate ")


def test_certificate_without_key_fails_at_start_up(tls_files: TlsFiles) -> None:
    with pytest.raises(StartupError, match="Cannot load TLS certificate"):
        check_tls_files(tls_files.cert, None)


def test_key_without_certificate_fails_at_start_up(
    fake_server: FakeServer, tls_files: TlsFiles
) -> None:
    result = invoke([*REQUIRED_ARGS, "--ssl-keyfile", str(tls_files.key)])

    assert result.exit_code == 1
    assert result.output == (
        "Error: --ssl-keyfile is given without --ssl-certfile: TLS needs a certificate\n"
    )


# --- Logs and Sentry -----------------------------------------------------------------------


def test_invalid_log_filter_is_a_usage_error(fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--log-filter", "("])

    assert result.exit_code == 2
    assert "Invalid value for '--log-filter' (env var: 'PARSEC_LOG_FILTER'): invalid regular" in (
        result.output
    )


@pytest.mark.parametrize(("option", "value"), [("-l", "VERBOSE"), ("-f", "XML")])
def test_unknown_log_level_or_format_is_a_usage_error(
    option: str, value: str, fake_server: FakeServer
) -> None:
    result = invoke([*REQUIRED_ARGS, option, value])

    assert result.exit_code == 2
    assert f"'{value}' is not one of" in result.output


def test_unwritable_log_file_fails_at_start_up(
    fake_server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real one, which fails before changing anything.
    monkeypatch.setattr(backend_run, "configure_logging", logging_setup.configure_logging)
    log_file = tmp_path / "missing-folder" / "parsec.log"

    result = invoke([*REQUIRED_ARGS, "--log-file", str(log_file)])

    assert result.exit_code == 1
    assert result.output == (
        f"Error: Cannot open log file `{log_file}`: No such file or directory\n"
    )


@pytest.mark.parametrize("option", ["--sentry-url", "--sentry-dsn"])
def test_sentry_is_started_with_the_configuration_before_the_server(
    option: str, fake_server: FakeServer, sentry_calls: LoggingCalls
) -> None:
    args = [option, "https://key@sentry.example.com/1", "--sentry-environment", "staging"]
    with structlog.testing.capture_logs() as logs:
        result = invoke([*REQUIRED_ARGS, *args])

    assert result.exit_code == 0, result.output
    config = fake_server.config
    assert (config.sentry_url, config.sentry_environment) == (
        "https://key@sentry.example.com/1",
        "staging",
    )
    assert sentry_calls.calls == [(config,)]
    assert logs == []  # no more "not supported" warning


def test_sentry_environment_variable_of_ours_beats_the_sdk_one(fake_server: FakeServer) -> None:
    result = invoke(
        REQUIRED_ARGS, env={"PARSEC_SENTRY_ENVIRONMENT": "ours", "SENTRY_ENVIRONMENT": "sdk"}
    )

    assert result.exit_code == 0, result.output
    assert fake_server.config.sentry_environment == "ours"


@pytest.mark.parametrize("url", ["not a url", "https://sentry.example.com/1", "ftp://k@x/1"])
def test_malformed_sentry_url_is_a_usage_error(url: str, fake_server: FakeServer) -> None:
    result = invoke([*REQUIRED_ARGS, "--sentry-url", url])

    assert result.exit_code == 2
    assert "Invalid value for '--sentry-url' / '--sentry-dsn'" in result.output
    assert "not a Sentry DSN" in result.output
    assert fake_server.configs == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1",)),
        ("10.0.0.1, 192.168.0.0/16  ::1", ("10.0.0.1", "192.168.0.0/16", "::1")),
        ("10.1.2.3/8,10.0.0.0/8", ("10.0.0.0/8",)),
        ("*", ("*",)),
        ("", ()),
    ],
)
def test_proxy_trusted_addresses_are_parsed(
    value: str, expected: tuple[str, ...], fake_server: FakeServer
) -> None:
    result = invoke([*REQUIRED_ARGS, "--proxy-trusted-addresses", value])

    assert result.exit_code == 0, result.output
    assert fake_server.config.proxy_trusted_addresses == expected


def test_proxy_trusted_addresses_of_ours_beat_uvicorn_variable(fake_server: FakeServer) -> None:
    result = invoke(
        REQUIRED_ARGS,
        env={"PARSEC_PROXY_TRUSTED_ADDRESSES": "10.0.0.1", "FORWARDED_ALLOW_IPS": "10.0.0.2"},
    )

    assert result.exit_code == 0, result.output
    assert fake_server.config.proxy_trusted_addresses == ("10.0.0.1",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.1,proxy.local", "`proxy.local` is neither an IP address nor a network"),
        ("10.0.0.0/33", "`10.0.0.0/33` is neither an IP address nor a network"),
        ("*,10.0.0.1", "`*` (every peer) cannot be combined with addresses"),
    ],
)
def test_bad_proxy_trusted_address_is_a_usage_error(
    value: str, message: str, fake_server: FakeServer
) -> None:
    result = invoke([*REQUIRED_ARGS, "--proxy-trusted-addresses", value])

    assert result.exit_code == 2
    assert "Invalid value for '--proxy-trusted-addresses'" in result.output
    assert message in result.output
    assert fake_server.configs == []


# --- Server outcome ------------------------------------------------------------------------


def test_start_up_error_of_the_server_is_one_line_and_exit_1(fake_server: FakeServer) -> None:
    fake_server.outcome = StartupError("Database not initialized, run `parsec backend migrate`")

    result = invoke(REQUIRED_ARGS)

    assert result.exit_code == 1
    assert result.stderr == "Error: Database not initialized, run `parsec backend migrate`\n"


def test_start_up_error_with_debug_raises_for_the_traceback(fake_server: FakeServer) -> None:
    fake_server.outcome = StartupError("Cannot connect to the database")

    result = invoke([*REQUIRED_ARGS, "--debug"])

    assert result.exit_code == 1
    assert isinstance(result.exception, StartupError)
    assert "Error:" not in result.output


def test_unexpected_server_error_is_reported_as_error(fake_server: FakeServer) -> None:
    fake_server.outcome = OSError(98, "Address already in use")

    with structlog.testing.capture_logs() as logs:
        result = invoke(REQUIRED_ARGS)

    assert result.exit_code == 1
    assert result.stderr == "Error: [Errno 98] Address already in use\n"
    assert [log["log_level"] for log in logs] == ["error"]


def test_ctrl_c_says_bye(fake_server: FakeServer) -> None:
    fake_server.outcome = KeyboardInterrupt()

    result = invoke(REQUIRED_ARGS)

    assert result.exit_code == 0
    assert result.stdout.endswith("\nbye ;-)\n")


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARSEC_")}
    env["TMPDIR"] = str(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", "from parsec_server.cli.main import cli; cli()",
         "backend", "run", "--dev", "-P", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_real_server_says_bye_on_sigint(server_process: tuple[subprocess.Popen[str], int]) -> None:
    process, port = server_process
    assert process.stdout is not None
    first_line = process.stdout.readline()
    assert first_line.startswith(f"Starting Parsec Backend on 127.0.0.1:{port} ")
    # Wait until it accepts connections, so that SIGINT reaches a running server.
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(process.communicate()[1])
            time.sleep(0.05)

    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=15)

    assert stdout == "bye ;-)\n"
    assert process.returncode == 0
