"""The files of `deploy/` agree with the server: the systemd units (and `systemd-analyze
verify` when it is installed), the environment file (every variable one our command line
reads, with valid example values), the Dockerfile and compose.yaml (no Docker engine
here: parsed and cross-checked, and the HEALTHCHECK command run against a real server).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import pytest
import trustme
import yaml
from click.testing import CliRunner

from parsec_server.backend.asgi import health, server
from parsec_server.backend.asgi.process import HARD_EXIT_MARGIN
from parsec_server.backend.asgi.workers import KILL_MARGIN
from parsec_server.backend.config import BackendConfig, S3BlockstoreConfig, SmtpEmailConfig
from parsec_server.cli import backend_run
from parsec_server.cli.backend_migrate import migrate
from parsec_server.cli.main import cli
from tests.fixtures.servers import make_config, running_server

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "parsec-server.service"
MIGRATE_UNIT = DEPLOY / "parsec-server-migrate.service"
ENV_FILE = DEPLOY / "parsec-server.env"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"


def envvars_of(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


RUN_ENVVARS = envvars_of(backend_run.run)
MIGRATE_ENVVARS = envvars_of(migrate)


def default_of(name: str) -> Any:
    [param] = [p for p in backend_run.run.params if p.name == name]
    return param.default


@dataclass
class Recorded:
    configs: list[BackendConfig]


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    """`parsec backend run` builds its configuration, then records it instead of serving."""
    recorded = Recorded([])
    monkeypatch.setattr(server, "run_server", recorded.configs.append)
    monkeypatch.setattr(backend_run, "configure_logging", lambda *args: None)
    for name in list(os.environ):
        if name.startswith("PARSEC_"):
            monkeypatch.delenv(name)
    yield recorded


def run_with_env(env: dict[str, str], fake: Recorded) -> BackendConfig:
    result = CliRunner().invoke(backend_run.run, [], env=env)
    assert result.exit_code == 0, result.output
    return fake.configs[-1]


# --- systemd units ----------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat), as systemd reads a unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: assignment outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key)
    assert values is not None and len(values) == 1, f"{key}: {values}"
    return values[0]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def exec_start_args(value: str) -> list[str]:
    """The arguments after `parsec` of `/usr/bin/env parsec ...` (or `<path>/parsec ...`)."""
    words = shlex.split(value)
    if words[0] == "/usr/bin/env":
        words = words[1:]
    assert Path(words[0]).name == "parsec", value
    return words[1:]


def test_unit_is_a_notify_service_running_parsec_backend_run() -> None:
    service = parse_unit(UNIT)["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert exec_start_args(one(service, "ExecStart")) == ["backend", "run"]
    assert one(service, "EnvironmentFile") == "/etc/parsec/parsec-server.env"
    assert (one(service, "User"), one(service, "StateDirectory")) == ("parsec", "parsec")
    assert one(service, "Restart") == "on-failure"
    assert int(one(service, "LimitNOFILE")) >= 65536


def test_unit_leaves_the_graceful_shutdown_its_time() -> None:
    service = parse_unit(UNIT)["Service"]
    # SIGTERM to the main process only: it passes it on to its workers itself.
    assert (one(service, "KillMode"), one(service, "KillSignal")) == ("mixed", "SIGTERM")
    timeout = float(default_of("shutdown_timeout"))
    stop = seconds(one(service, "TimeoutStopSec"))
    # A single process gives up by itself at timeout + HARD_EXIT_MARGIN, a parent kills
    # its workers at timeout + KILL_MARGIN: systemd's SIGKILL comes after both.
    assert stop > timeout + max(HARD_EXIT_MARGIN, KILL_MARGIN)
    assert seconds(one(service, "WatchdogSec")) >= 10


def test_unit_is_sandboxed() -> None:
    service = parse_unit(UNIT)["Service"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
    }
    assert {key: one(service, key) for key in expected} == expected


def test_migrate_unit_is_a_oneshot_with_the_same_settings() -> None:
    service = parse_unit(MIGRATE_UNIT)["Service"]
    main = parse_unit(UNIT)["Service"]
    assert one(service, "Type") == "oneshot"
    assert exec_start_args(one(service, "ExecStart")) == ["backend", "migrate"]
    for key in ("EnvironmentFile", "User", "Group", "SystemCallFilter", "ProtectSystem"):
        assert one(service, key) == one(main, key)
    # Not pulled in by the server's unit: run by hand (see its comments).
    assert "parsec-server-migrate" not in UNIT.read_text().split("[Unit]")[1]


@pytest.mark.parametrize("unit", [UNIT, MIGRATE_UNIT], ids=lambda path: path.name)
def test_units_pass_systemd_analyze_verify(unit: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_unit_commands_exist_in_our_command_line() -> None:
    for unit in (UNIT, MIGRATE_UNIT):
        args = exec_start_args(one(parse_unit(unit)["Service"], "ExecStart"))
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, result.output


# --- The environment file ---------------------------------------------------------------------


_ASSIGNMENT = re.compile(r"(#?)(PARSEC_[A-Z0-9_]+|SENTRY_ENVIRONMENT|FORWARDED_ALLOW_IPS)=(.*)")


def env_file_assignments() -> list[tuple[str, str, bool]]:
    """(name, value, commented out) of every variable assignment (`PARSEC_*`, and the two
    variables `run` reads under other names)."""
    found = []
    for line in ENV_FILE.read_text().splitlines():
        match = _ASSIGNMENT.fullmatch(line)
        if match:
            value = match[3]
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found.append((match[2], value, bool(match[1])))
    return found


def test_env_file_names_every_variable_of_backend_run_and_only_those() -> None:
    names = [name for name, _, _ in env_file_assignments()]
    assert len(names) == len(set(names))
    assert set(names) == RUN_ENVVARS


def test_env_file_sets_the_required_settings() -> None:
    active = {name for name, _, commented in env_file_assignments() if not commented}
    required = {
        param.envvar
        for param in backend_run.run.params
        if getattr(param, "required", False) and isinstance(param.envvar, str)
    }
    assert required <= active


def test_env_file_values_are_valid_settings(fake_server: Recorded, tmp_path: Path) -> None:
    env = {name: value for name, value, commented in env_file_assignments() if not commented}
    config = run_with_env(env, fake_server)
    assert config.db_url == env["PARSEC_DB"]
    # The commented examples and defaults are valid too (TLS files aside: they must exist).
    every = {
        name: value
        for name, value, _ in env_file_assignments()
        if not name.startswith("PARSEC_SSL_") and value
    }
    data_dir = every.pop("PARSEC_DATA_DIR")  # instead of PARSEC_DB and PARSEC_BLOCKSTORE
    assert data_dir == "/var/lib/parsec"
    config = run_with_env(every, fake_server)
    assert config.shutdown_timeout == default_of("shutdown_timeout")
    assert config.workers == 1
    del every["PARSEC_DB"], every["PARSEC_BLOCKSTORE"]
    config = run_with_env({**every, "PARSEC_DATA_DIR": str(tmp_path)}, fake_server)
    assert (config.db_type, config.blockstore.type_name) == ("SQLITE", "FILE")


def test_env_file_suits_backend_migrate_too() -> None:
    env = {name: value for name, value, _ in env_file_assignments() if name in MIGRATE_ENVVARS}
    assert "PARSEC_DB" in env
    # `migrate` reads the first tries sleep as an integer.
    int(env["PARSEC_DB_FIRST_TRIES_SLEEP"])


# --- compose.yaml ----------------------------------------------------------------------------

COMPOSE_VARIABLES = {
    "PARSEC_DB_PASSWORD": "db-password",
    "PARSEC_S3_SECRET": "s3-secret-123",
    "PARSEC_ADMINISTRATION_TOKEN": "admin-token",
}


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:?message}`, `${VAR:-default}` and `$$`."""

    def substitute(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, argument = match["name"], match["operator"], match["argument"]
        if variables.get(name):
            return variables[name]
        if operator == ":-":
            return argument or ""
        raise AssertionError(f"{name} is required: {argument}")

    pattern = r"\$\$|\$\{(?P<name>\w+)(?:(?P<operator>:[?-])(?P<argument>[^}]*))?\}"
    return re.sub(pattern, substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    assert isinstance(raw, dict), "environment as a map"
    return {name: interpolate(str(value), COMPOSE_VARIABLES) for name, value in raw.items()}


def test_compose_has_the_guide_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "minio", "minio-bucket", "mail", "migrate", "parsec"} <= set(services)
    assert services["migrate"]["command"] == ["backend", "migrate"]
    assert services["parsec"]["command"] == ["backend", "run"]
    assert services["migrate"]["image"] == services["parsec"]["image"]
    assert services["parsec"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE.parent / services["parsec"]["build"]["context"] / "deploy/Dockerfile").exists()


def test_compose_server_waits_for_the_migrations_and_the_bucket(compose: dict[str, Any]) -> None:
    services = compose["services"]
    depends = services["parsec"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["minio-bucket"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["minio-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"


def test_compose_variables_are_read_by_our_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(environment(services["parsec"])) <= RUN_ENVVARS
    assert set(environment(services["migrate"])) <= MIGRATE_ENVVARS
    assert (
        environment(services["migrate"])["PARSEC_DB"]
        == (environment(services["parsec"])["PARSEC_DB"])
    )


def test_compose_server_settings_are_valid_and_point_at_the_stack(
    compose: dict[str, Any], fake_server: Recorded
) -> None:
    services = compose["services"]
    config = run_with_env(environment(services["parsec"]), fake_server)
    postgres = environment(services["postgres"])
    assert config.db_url == (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    minio = environment(services["minio"])
    assert config.blockstore == S3BlockstoreConfig(
        endpoint_url="http://minio:9000",
        region="us-east-1",
        bucket="parsec",
        key=minio["MINIO_ROOT_USER"],
        secret=minio["MINIO_ROOT_PASSWORD"],
    )
    bucket_command = " ".join(services["minio-bucket"]["entrypoint"])
    assert "mb --ignore-existing store/parsec" in bucket_command
    assert environment(services["minio-bucket"])["S3_SECRET"] == minio["MINIO_ROOT_PASSWORD"]
    assert isinstance(config.email, SmtpEmailConfig)
    assert (config.email.host, config.email.port) == ("mail", 1025)  # Mailpit's SMTP port
    assert config.email.host in services
    assert (config.host, config.port) == ("0.0.0.0", 6777)
    assert f"{config.port}:{config.port}" in services["parsec"]["ports"]
    # `docker compose stop` leaves the graceful shutdown its time.
    grace = seconds(services["parsec"]["stop_grace_period"])
    assert grace > config.shutdown_timeout + HARD_EXIT_MARGIN


def test_compose_migrations_settings_are_valid(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["migrate"])
    result = CliRunner().invoke(migrate, ["--help"], env=env)
    assert result.exit_code == 0
    for name in ("PARSEC_DB_FIRST_TRIES_NUMBER", "PARSEC_DB_FIRST_TRIES_SLEEP"):
        int(env[name])


# --- The Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def runtime_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def healthcheck_command() -> list[str]:
    [arguments] = [args for keyword, args in runtime_stage() if keyword == "HEALTHCHECK"]
    command: list[str] = json.loads(arguments[arguments.index("CMD") + 3 :])
    return command


def test_dockerfile_is_multi_stage_non_root_and_runs_parsec() -> None:
    instructions = dockerfile_instructions()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder")
    runtime = dict(runtime_stage())
    assert runtime["USER"] not in ("root", "0")
    assert runtime["EXPOSE"] == "6777"
    assert json.loads(runtime["ENTRYPOINT"]) == ["parsec"]
    assert json.loads(runtime["CMD"]) == ["backend", "run"]
    assert "--find-links=/wheels" in runtime["RUN"] or any(
        "--find-links=/wheels" in args for keyword, args in runtime_stage() if keyword == "RUN"
    )


def test_dockerfile_copies_only_files_of_the_repository() -> None:
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY" and "--from" not in arguments:
            *sources, _ = arguments.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert f"!{source.rstrip('/')}" in ignored.replace("/\n", "\n")


def test_healthchecks_ask_existing_routes(compose: dict[str, Any]) -> None:
    commands = [" ".join(healthcheck_command())]
    commands.append(" ".join(compose["services"]["parsec"]["healthcheck"]["test"]))
    for command in commands:
        paths = re.findall(r"/(?:healthz|readyz)\b", command)
        assert paths and set(paths) <= health.PATHS, command


async def run_check(command: list[str], env: dict[str, str]) -> int:
    assert command[0] == "python"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(30):
        return await process.wait()


async def test_dockerfile_healthcheck_passes_against_a_running_server() -> None:
    async with running_server(make_config()) as running:
        env = {"PARSEC_PORT": str(running.addr.port)}
        assert await run_check(healthcheck_command(), env) == 0
    # Nobody listens any more.
    assert await run_check(healthcheck_command(), env) != 0


async def test_dockerfile_healthcheck_passes_against_a_tls_server(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("parsec.example.com")  # not the address the check uses
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    config = replace(make_config(), ssl_certfile=certfile, ssl_keyfile=keyfile)
    async with running_server(config) as running:
        env = {"PARSEC_PORT": str(running.addr.port), "PARSEC_SSL_CERTFILE": str(certfile)}
        assert await run_check(healthcheck_command(), env) == 0
        # Without TLS it does not pass.
        assert await run_check(healthcheck_command(), {"PARSEC_PORT": env["PARSEC_PORT"]}) != 0


async def test_compose_readiness_check_passes_against_a_ready_server(
    compose: dict[str, Any],
) -> None:
    test = compose["services"]["parsec"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    async with running_server(make_config()) as running:
        command = [arg.replace(":6777/", f":{running.addr.port}/") for arg in test[1:]]
        assert await run_check(command, {}) == 0
