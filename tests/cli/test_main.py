from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from parsec_server.backend.asgi import server
from parsec_server.backend.config import BackendConfig
from parsec_server.cli import backend_run
from parsec_server.cli.main import cli, cmd_args_from_env


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PARSEC_"):
            monkeypatch.delenv(name)


def test_version_has_the_reference_format() -> None:
    result = CliRunner().invoke(cli, ["--version"])

    assert result.exit_code == 0
    assert result.output == "parsec, version 0.1.0\n"


def test_groups_hold_the_server_commands() -> None:
    result = CliRunner().invoke(cli, ["backend", "--help"])

    assert result.exit_code == 0
    assert "migrate" in result.output
    assert "run" in result.output
    assert CliRunner().invoke(cli, ["core", "--help"]).exit_code == 0


def test_cmd_args_are_split_on_whitespace_and_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARSEC_CMD_ARGS", " --port  $MY_PORT\t-b ${MY_STORE} $UNSET_VARIABLE_X ")
    monkeypatch.setenv("MY_PORT", "7301")
    monkeypatch.setenv("MY_STORE", "with space")
    monkeypatch.delenv("UNSET_VARIABLE_X", raising=False)

    assert cmd_args_from_env() == ["--port", "7301", "-b", "with space", "$UNSET_VARIABLE_X"]


def test_no_cmd_args_without_the_variable() -> None:
    assert cmd_args_from_env() == []


def test_cmd_args_are_appended_to_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    configs: list[BackendConfig] = []
    monkeypatch.setattr(server, "run_server", configs.append)
    monkeypatch.setattr(backend_run, "configure_logging", lambda *args: None)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    env = {"PARSEC_CMD_ARGS": "--dev -P $THE_PORT", "THE_PORT": "7301"}

    result = CliRunner().invoke(cli, ["backend", "run", "--workers", "2"], env=env)

    assert result.exit_code == 0, result.output
    [config] = configs
    assert (config.port, config.workers, config.debug) == (7301, 2, True)
    assert config.backend_addr.to_url() == "parsec://localhost:7301"
