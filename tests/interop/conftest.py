"""Fixtures of the interoperability tests: the reference Parsec 2.0.0 virtualenv, our
server run as a real subprocess through our `parsec` command (set up the way the
installation guide does it), and runners for the reference and our command-line clients.

Every subprocess has a timeout. A server's output is attached to the report of any test
that fails while using it (section `parsec backend run output`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytest
import trustme

from parsec_server.backend.storage.postgresql.schema.files import Series, load_series
from tests.fixtures import free_port
from tests.fixtures.postgresql import create_empty_database, drop_database, run_async

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "scripts" / "reference-parsec"
REFERENCE_VENV_ENVVAR = "PARSEC_REFERENCE_VENV"
DEFAULT_REFERENCE_VENV = Path("/tmp/parsec-reference-2.0.0")

SETUP_TIMEOUT = 900.0  # building the reference venv downloads and installs packages
COMMAND_TIMEOUT = 60.0
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0

# Parsec 2.0.0's migrations, as its `parsec backend migrate` names them: fixed by the
# reference, so written out here rather than read from our package.
MIGRATIONS = (
    "0001_initial.sql",
    "0002_add_migration_table.sql",
    "0003_human_handle.sql",
    "0004_invite.sql",
    "0005_redacted_certificates.sql",
)
# What our `migrate` applies after them: one line per file of the package's `extras/`
# folder (`extras/0001_server_extras.sql`, ...), read from the package itself so that a new
# extras file needs no change here.
EXTRAS_MIGRATIONS = tuple(migration.file_name for migration in load_series(Series.EXTRAS))
# Every line our `migrate` prints after its first, in order.
OUR_MIGRATIONS = MIGRATIONS + EXTRAS_MIGRATIONS

# Variables of the caller's environment that would change what a command does.
_DROPPED_ENV_PREFIXES = ("PARSEC_", "XDG_", "PYTHON")
_DROPPED_ENV_NAMES = frozenset({"DEBUG", "SSL_CAFILE", "VIRTUAL_ENV"})


def our_parsec() -> Path:
    """Our `parsec` command: the repository's virtualenv, else next to this Python."""
    candidate = REPO_ROOT / ".venv" / "bin" / "parsec"
    if candidate.exists():
        return candidate
    return Path(sys.executable).with_name("parsec")


def clean_environment(**extra: str) -> dict[str, str]:
    """The current environment without the variables that would leak into the commands
    (`PARSEC_*`, `DEBUG`, `SSL_CAFILE`, Python and XDG settings), plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_DROPPED_ENV_PREFIXES) and name not in _DROPPED_ENV_NAMES
    }
    env.update(extra)
    return env


def describe(result: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(str(arg) for arg in result.args)
    return (
        f"`{command}` exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def run_command(
    command: Sequence[str | Path],
    env: Mapping[str, str],
    *,
    input: str | None = None,
    cwd: Path | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run to completion, capturing the output; a timeout fails the test with what the
    command printed so far."""
    args = [str(arg) for arg in command]
    try:
        return subprocess.run(
            args,
            env=dict(env),
            input=input if input is not None else "",
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stdout = _decode(exc.stdout)
        stderr = _decode(exc.stderr)
        pytest.fail(
            f"`{' '.join(args)}` did not finish within {timeout}s\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data


def parse_key_values(output: str) -> dict[str, str]:
    """`key: value` lines (as printed by `status_organization`/`stats_organization`,
    whose key order is not stable with the reference client) as a dict."""
    pairs: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+", key):
            pairs[key] = value
    return pairs


# --- The reference Parsec 2.0.0 -----------------------------------------------------------


@pytest.fixture(scope="session")
def reference_venv() -> Path:
    """The virtualenv of the reference Parsec 2.0.0: `$PARSEC_REFERENCE_VENV`, else
    built (idempotent) by scripts/reference-parsec in /tmp/parsec-reference-2.0.0. Never skips:
    these tests are worthless without it."""
    configured = os.environ.get(REFERENCE_VENV_ENVVAR)
    if configured:
        venv = Path(configured)
    else:
        venv = DEFAULT_REFERENCE_VENV
        if not SETUP_SCRIPT.exists():
            pytest.fail(
                f"The reference Parsec 2.0.0 is needed: {REFERENCE_VENV_ENVVAR} is not set "
                f"and the setup script {SETUP_SCRIPT} does not exist",
                pytrace=False,
            )
        try:
            setup = subprocess.run(
                ["bash", str(SETUP_SCRIPT), str(venv)],
                capture_output=True,
                text=True,
                timeout=SETUP_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"`bash {SETUP_SCRIPT} {venv}` did not finish within {SETUP_TIMEOUT}s",
                pytrace=False,
            )
        if setup.returncode != 0:
            pytest.fail(
                f"Cannot build the reference Parsec 2.0.0 virtualenv:\n{describe(setup)}",
                pytrace=False,
            )
    problem = _reference_venv_problem(venv)
    if problem is not None:
        hint = f"build it with `bash {SETUP_SCRIPT} {venv}`"
        if configured:
            hint += f" or unset {REFERENCE_VENV_ENVVAR}"
        pytest.fail(
            f"No usable reference Parsec 2.0.0 in {venv} ({hint}):\n{problem}", pytrace=False
        )
    return venv


def _reference_venv_problem(venv: Path) -> str | None:
    for program in ("parsec", "python"):
        if not (venv / "bin" / program).exists():
            return f"{venv / 'bin' / program} does not exist"
    try:
        check = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import parsec.backend.cli, parsec.core.cli"],
            env=clean_environment(),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "importing the reference `parsec` package timed out"
    if check.returncode != 0:
        return describe(check)
    return None


@dataclass(frozen=True)
class TlsFiles:
    """A certificate for `localhost` and 127.0.0.1 issued by a test CA."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    files = TlsFiles(ca=folder / "ca.pem", cert=folder / "cert.pem", key=folder / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    files.cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.key))
    return files


@dataclass
class Cli:
    """A `parsec` command line client, with its own HOME and the test CA trusted."""

    program: Path
    home: Path
    cafile: Path | None
    workdir: Path

    def env(self) -> dict[str, str]:
        extra = {"HOME": str(self.home)}
        if self.cafile is not None:
            extra["SSL_CAFILE"] = str(self.cafile)
        return clean_environment(**extra)

    def run(
        self, *args: str | Path, input: str | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run_command(
            [self.program, *args], self.env(), input=input, cwd=self.workdir, timeout=timeout
        )

    def python(
        self, script: str, *args: str | Path, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """`python -c script args...` with the Python next to the program; run from an
        empty folder, so nothing there shadows a module."""
        python = self.program.with_name("python")
        return run_command(
            [python, "-c", script, *args], self.env(), cwd=self.workdir, timeout=timeout
        )


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def reference_cli(reference_venv: Path, tls_files: TlsFiles, cli_home: Path) -> Cli:
    return Cli(reference_venv / "bin" / "parsec", cli_home, tls_files.ca, cli_home)


@pytest.fixture(scope="module")
def our_cli(tls_files: TlsFiles, cli_home: Path) -> Cli:
    return Cli(our_parsec(), cli_home, tls_files.ca, cli_home)


# --- Servers as subprocesses --------------------------------------------------------------


class ServerProcess:
    """`parsec backend run` (or any long-running command) in the background, its output
    going to one log file per run. Stopped like an operator would: SIGINT (Ctrl-C), then
    SIGKILL after a timeout."""

    def __init__(
        self,
        command: Sequence[str | Path],
        env: Mapping[str, str],
        log_dir: Path,
        ready: Callable[[], bool],
        cwd: Path,
    ) -> None:
        self.command = [str(arg) for arg in command]
        self.env = dict(env)
        self.log_dir = log_dir
        self.ready = ready
        self.cwd = cwd
        self.logs: list[Path] = []
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def output(self) -> str:
        """Everything the server printed, run after run."""
        parts = []
        for number, log in enumerate(self.logs, start=1):
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- run {number}: {' '.join(self.command)} ---\n{text}")
        return "\n".join(parts)

    @property
    def last_output(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> None:
        """Start, then wait until `ready()` (fails the test if it exits or never is)."""
        assert self._process is None, "already started"
        log = self.log_dir / f"server-run-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with log.open("wb") as log_file:
            self._process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                pytest.fail(
                    f"The server exited with {code} before accepting connections:\n{self.output}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"The server did not accept connections within {timeout}s:\n{self.output}",
                    pytrace=False,
                )
            time.sleep(0.1)

    def stop(self, timeout: float = SERVER_STOP_TIMEOUT) -> int | None:
        """Ctrl-C, then kill if still there after `timeout`; returns the exit code (None
        when it had to be killed)."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                return process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
                return None
        return process.returncode

    def restart(self) -> int | None:
        code = self.stop()
        self.start()
        return code

    def kill(self, timeout: float = SERVER_STOP_TIMEOUT) -> int:
        """`kill -9`: no chance to clean up or finish anything; returns the exit code."""
        process, self._process = self._process, None
        assert process is not None and process.poll() is None, "not running"
        process.kill()
        return process.wait(timeout=timeout)


def accepts_tls(port: int, tls: TlsFiles) -> Callable[[], bool]:
    """Whether a TLS handshake with `localhost` (on 127.0.0.1:port) succeeds."""
    context = tls.client_context()

    def check() -> bool:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="localhost"),
            ):
                return True
        except OSError:  # refused, reset, or ssl.SSLError while the server starts
            return False

    return check


def accepts_tcp(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return True
        except OSError:
            return False

    return check


@dataclass
class GuideServer:
    """Our server set up as in the installation guide: PostgreSQL database migrated with
    `parsec backend migrate`, blocks in PostgreSQL, TLS, mocked e-mails."""

    port: int
    administration_token: str
    database_url: str
    env: dict[str, str]
    tls: TlsFiles
    migrate_result: subprocess.CompletedProcess[str]
    process: ServerProcess
    stop_codes: list[int | None] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return f"parsec://localhost:{self.port}"

    def restart(self) -> int | None:
        """Stop (Ctrl-C) and run again on the same database; returns the exit code."""
        code = self.process.restart()
        self.stop_codes.append(code)
        return code


def guide_environment(
    database_url: str,
    port: int,
    administration_token: str,
    tls: TlsFiles,
    tmpdir: Path,
    **overrides: str,
) -> dict[str, str]:
    """The variables the guide exports before `parsec backend migrate` and `run` (plus
    TMPDIR, so that the mocked e-mail folder lands in the test's folder), then `overrides`
    (e.g. a real SMTP server instead of the mocked e-mails)."""
    env = clean_environment(
        TMPDIR=str(tmpdir),
        PARSEC_DB=database_url,
        PARSEC_BLOCKSTORE="POSTGRESQL",
        PARSEC_ADMINISTRATION_TOKEN=administration_token,
        PARSEC_SSL_KEYFILE=str(tls.key),
        PARSEC_SSL_CERTFILE=str(tls.cert),
        PARSEC_BACKEND_ADDR=f"parsec://localhost:{port}",
        PARSEC_EMAIL_HOST="MOCKED",
        PARSEC_EMAIL_SENDER="parsec@example.com",
        PARSEC_HOST="127.0.0.1",
        PARSEC_PORT=str(port),
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def guide_server(
    postgresql_url: str, tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GuideServer]:
    yield from run_guide_server(postgresql_url, tls_files, tmp_path_factory.mktemp("server"))


def run_guide_server(
    postgresql_url: str, tls: TlsFiles, folder: Path, **env_overrides: str
) -> Generator[GuideServer, None, None]:
    """Our server on a new database, as the guide sets it up (the `guide_environment`
    variables, plus `env_overrides`); stopped and its database dropped afterwards."""
    database_url = run_async(create_empty_database(postgresql_url))
    try:
        yield from _guide_server(database_url, tls, folder, env_overrides)
    finally:
        run_async(drop_database(postgresql_url, database_url))


def _guide_server(
    database_url: str, tls: TlsFiles, folder: Path, env_overrides: Mapping[str, str]
) -> Generator[GuideServer, None, None]:
    port = free_port()
    token = f"Gu1de-{secrets.token_hex(8)}"
    env = guide_environment(database_url, port, token, tls, folder, **env_overrides)
    parsec = our_parsec()
    migrate = run_command([parsec, "backend", "migrate"], env, cwd=folder)
    if migrate.returncode != 0 or any(f"{name} ✔" not in migrate.stdout for name in OUR_MIGRATIONS):
        pytest.fail(f"`parsec backend migrate` did not apply the migrations:\n{describe(migrate)}")
    process = ServerProcess(
        [parsec, "backend", "run"], env, folder, ready=accepts_tls(port, tls), cwd=folder
    )
    server = GuideServer(
        port=port,
        administration_token=token,
        database_url=database_url,
        env=env,
        tls=tls,
        migrate_result=migrate,
        process=process,
    )
    process.start()
    try:
        yield server
    finally:
        process.stop()


@dataclass
class DevServer:
    port: int
    process: ServerProcess

    @property
    def addr(self) -> str:
        """The backend address `--dev` injects has no `no_ssl=true`: clients need it."""
        return f"parsec://127.0.0.1:{self.port}?no_ssl=true"


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[DevServer]:
    """`parsec backend run --dev -P PORT`: memory storage, no TLS, token `s3cr3t`."""
    port = free_port()
    process = ServerProcess(
        [our_parsec(), "backend", "run", "--dev", "-P", str(port)],
        clean_environment(TMPDIR=str(tmp_path)),
        tmp_path,
        ready=accepts_tcp(port),
        cwd=tmp_path,
    )
    process.start()
    try:
        yield DevServer(port, process)
    finally:
        process.stop()


# --- Reference client steps shared by the guide tests -----------------------------------


PASSWORD = "Guide-P@ssw0rd"
BOOTSTRAP_URL_LINE = re.compile(r"^Bootstrap organization url: (parsec://\S+)$", re.MULTILINE)
RESULT_PREFIX = "RESULT "

# Run with the reference Python: loads the device of the organization saved in the
# configuration folder (by `bootstrap_organization` or `claim_invitation`), connects as it
# (authenticated handshake), sends `ping` and `user_get` of its own user, and checks the
# certificates it gets back (with their trustchain) up to the organization's root key.
AUTHENTICATED_CHECK_SCRIPT = """
import json, sys
from pathlib import Path

import trio

from parsec.core.backend_connection import backend_authenticated_cmds_factory
from parsec.core.local_device import list_available_devices, load_device_with_password
from parsec.core.trustchain import TrustchainContext
from parsec.logging import configure_logging


async def main(config_dir, organization_id, password):
    [available] = [
        d for d in list_available_devices(Path(config_dir))
        if str(d.organization_id) == organization_id
    ]
    device = load_device_with_password(available.key_file_path, password)
    async with backend_authenticated_cmds_factory(
        device.organization_addr, device.device_id, device.signing_key
    ) as cmds:
        ping = await cmds.ping("hello")
        rep = await cmds.user_get(device.user_id)
    result = {
        "ping": ping,
        "user_get_status": rep["status"],
        "own_user_id": str(device.user_id),
        "own_device_id": str(device.device_id),
    }
    if rep["status"] == "ok":
        trustchain = TrustchainContext(device.root_verify_key, cache_validity=0)
        user, _, devices = trustchain.load_user_and_devices(
            rep["trustchain"],
            rep["user_certificate"],
            rep["revoked_user_certificate"],
            rep["device_certificates"],
            expected_user_id=device.user_id,
        )
        result.update(
            user_id=str(user.user_id),
            user_certificate_author=None if user.author is None else str(user.author),
            human_handle=str(user.human_handle),
            profile=user.profile.value,
            revoked=rep["revoked_user_certificate"] is not None,
            devices={str(d.device_id): d.device_label for d in devices},
        )
    print("RESULT " + json.dumps(result))


configure_logging(log_level="WARNING")
trio.run(main, *sys.argv[1:])
"""


def new_organization_name() -> str:
    return f"Guide{uuid.uuid4().hex[:16]}"


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr: the reference prints its `Error: ...` lines on stdout, our CLI
    on stderr."""
    return result.stdout + result.stderr


def create_organization(cli: Cli, addr: str, token: str, name: str) -> str:
    """`create_organization`, returns the bootstrap URL it prints."""
    result = cli.run("core", "create_organization", "--addr", addr, "-T", token, name)
    assert result.returncode == 0, describe(result)
    assert "Creating organization in backend" in result.stdout, describe(result)
    assert "✔" in result.stdout, describe(result)
    match = BOOTSTRAP_URL_LINE.search(result.stdout)
    assert match is not None, describe(result)
    return match.group(1)


def bootstrap_organization(
    cli: Cli, url: str, config_dir: Path, full_name: str, email: str, device_label: str
) -> subprocess.CompletedProcess[str]:
    """`bootstrap_organization`, answering the prompts (full name, email, device label)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    return cli.run(
        "core",
        "bootstrap_organization",
        "--config-dir",
        config_dir,
        "--password",
        PASSWORD,
        url,
        input=f"{full_name}\n{email}\n{device_label}\n",
    )


def authenticated_check(cli: Cli, config_dir: Path, organization: str) -> dict[str, Any]:
    result = cli.python(AUTHENTICATED_CHECK_SCRIPT, config_dir, organization, PASSWORD)
    assert result.returncode == 0, describe(result)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert len(lines) == 1, describe(result)
    outcome: dict[str, Any] = json.loads(lines[0].removeprefix(RESULT_PREFIX))
    return outcome


@dataclass(frozen=True)
class BootstrappedOrganization:
    name: str
    url: str
    config_dir: Path
    full_name: str
    email: str
    device_label: str
    result: subprocess.CompletedProcess[str]


# --- Server output in failure reports -----------------------------------------------------


@runtime_checkable
class ReportsServerOutput(Protocol):
    """A fixture value running servers of its own: its sections join a failure's report."""

    def report_sections(self) -> list[tuple[str, str]]: ...


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for value in funcargs.values():
            process = value.process if isinstance(value, GuideServer | DevServer) else value
            if isinstance(process, ServerProcess):
                report.sections.append(("parsec backend run output", process.output))
            elif isinstance(value, ReportsServerOutput):
                report.sections.extend(value.report_sections())
    return report
