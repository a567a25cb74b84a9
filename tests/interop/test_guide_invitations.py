"""The installation guide's invitation steps, with our server and the unmodified Parsec
2.0.0 client.

Our server runs as in `test_guide_admin` (our `parsec` command, PostgreSQL, TLS), but sends
its invitation e-mails to a real SMTP server listening on loopback in the test process
(aiosmtpd). An administrator bootstraps an organization with the reference CLI, then
invites a user and a second device of its own: the interactive `greet_invitation` and
`claim_invitation` of the reference CLI run concurrently under pexpect, each reading the
code the other side shows. The claimed devices then connect (reference client library).
"""

from __future__ import annotations

import email
import email.policy
import html
import http.client
import io
import queue
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import pexpect
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.interop.conftest import (
    COMMAND_TIMEOUT,
    PASSWORD,
    RESULT_PREFIX,
    BootstrappedOrganization,
    Cli,
    GuideServer,
    TlsFiles,
    authenticated_check,
    bootstrap_organization,
    create_organization,
    describe,
    free_port,
    new_organization_name,
    output_of,
    run_guide_server,
)

pytestmark = pytest.mark.interop

SENDER = "parsec-invitations@example.com"
MAIL_TIMEOUT = 20.0
STEP_TIMEOUT = 30.0  # one expected output of an interactive command
EXCHANGE_TIMEOUT = 90.0  # a whole greet/claim exchange

ANSI_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ANSI = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"  # the reference CLI colours codes on a terminal
SAS_CODE = r"[A-Z0-9]{4}"
INVITATION_URL_LINE = re.compile(r"^url: (parsec://\S+)$", re.MULTILINE)
INVITATION_LINK = re.compile(
    r"https://localhost:\d+/redirect/[^\s?\"<>]+\?action=claim_user&token=[0-9a-f]{32}"
)


# Run with the reference Python: for each invitation URL, an invited connection (its
# handshake) then `invite_info`; prints `ok` or the exception the library raised.
INVITED_CONNECTION_SCRIPT = """
import sys

import trio

from parsec.core.backend_connection import backend_invited_cmds_factory
from parsec.core.types import BackendInvitationAddr
from parsec.logging import configure_logging


async def main(*urls):
    for url in urls:
        try:
            async with backend_invited_cmds_factory(BackendInvitationAddr.from_url(url)) as cmds:
                rep = await cmds.invite_info()
            outcome = rep["status"]
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        print("RESULT " + outcome)


configure_logging(log_level="WARNING")
trio.run(main, *sys.argv[1:])
"""


# --- A real SMTP server ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    def part(self, content_type: str) -> str:
        body = self.message.get_body(preferencelist=(content_type.split("/")[1],))
        assert body is not None, f"no {content_type} part in:\n{self.message}"
        assert body.get_content_type() == content_type, self.message
        content: str = body.get_content()
        return content


class MailCatcher:
    """aiosmtpd handler: accepts every message and keeps it for the test."""

    def __init__(self) -> None:
        self._received: queue.Queue[ReceivedMail] = queue.Queue()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        mail_from = envelope.mail_from or ""
        self._received.put(ReceivedMail(mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def next_mail_to(self, recipient: str, timeout: float = MAIL_TIMEOUT) -> ReceivedMail:
        """The next message whose envelope recipient is `recipient` (others are dropped)."""
        while True:
            try:
                mail = self._received.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"No e-mail to {recipient} received within {timeout}s")
            if recipient in mail.rcpt_tos:
                return mail


@dataclass(frozen=True)
class SmtpServer:
    port: int
    catcher: MailCatcher


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[SmtpServer]:
    """Plain SMTP on 127.0.0.1, served by a thread of the test process."""
    catcher = MailCatcher()
    port = free_port()
    controller = Controller(catcher, hostname="127.0.0.1", port=port, ready_timeout=10.0)
    controller.start()
    try:
        yield SmtpServer(port, catcher)
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def smtp_guide_server(
    postgresql_url: str,
    tls_files: TlsFiles,
    smtp_server: SmtpServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GuideServer]:
    """Our server as in the guide, sending its e-mails to `smtp_server`."""
    yield from run_guide_server(
        postgresql_url,
        tls_files,
        tmp_path_factory.mktemp("server"),
        PARSEC_EMAIL_HOST="127.0.0.1",
        PARSEC_EMAIL_PORT=str(smtp_server.port),
        PARSEC_EMAIL_SENDER=SENDER,
    )


# --- The administrator's organization -----------------------------------------------------


@dataclass(frozen=True)
class AdminDevice:
    organization: BootstrappedOrganization
    slughash: str  # for `-D`

    @property
    def config_dir(self) -> Path:
        return self.organization.config_dir

    def options(self) -> list[str | Path]:
        return ["--config-dir", self.config_dir, "-D", self.slughash, "--password", PASSWORD]


def device_slughash(cli: Cli, config_dir: Path) -> str:
    """The (shortened) id `list_devices` prints for the only device of `config_dir`."""
    result = cli.run("core", "list_devices", "--config-dir", config_dir)
    assert result.returncode == 0, describe(result)
    assert f"Found 1 device(s) in {config_dir}:" in result.stdout, describe(result)
    match = re.search(r"^([0-9a-f]+) - ", result.stdout, re.MULTILINE)
    assert match is not None, describe(result)
    return match.group(1)


@pytest.fixture(scope="module")
def admin(
    smtp_guide_server: GuideServer, reference_cli: Cli, tmp_path_factory: pytest.TempPathFactory
) -> AdminDevice:
    """An organization created and bootstrapped by Alice with the reference CLI."""
    name = new_organization_name()
    url = create_organization(
        reference_cli, smtp_guide_server.addr, smtp_guide_server.administration_token, name
    )
    config_dir = tmp_path_factory.mktemp("admin-config")
    full_name, mail, label = "Alice Guide", "alice@example.com", "Alice's laptop"
    result = bootstrap_organization(reference_cli, url, config_dir, full_name, mail, label)
    assert result.returncode == 0, describe(result)
    organization = BootstrappedOrganization(name, url, config_dir, full_name, mail, label, result)
    return AdminDevice(organization, device_slughash(reference_cli, config_dir))


def invite(cli: Cli, admin: AdminDevice, *args: str) -> str:
    """`invite_user`/`invite_device`; returns the `parsec://` invitation URL it prints."""
    result = cli.run("core", *args, *admin.options())
    assert result.returncode == 0, describe(result)
    match = INVITATION_URL_LINE.search(result.stdout)
    assert match is not None, describe(result)
    return match.group(1)


def token_of(url: str) -> str:
    match = re.search(r"[?&]token=([0-9a-f]{32})(?:&|$)", url)
    assert match is not None, url
    return match.group(1)


def list_invitations(cli: Cli, admin: AdminDevice) -> str:
    result = cli.run("core", "list_invitations", *admin.options())
    assert result.returncode == 0, describe(result)
    return result.stdout


# --- Interactive commands -------------------------------------------------------------------


def strip_ansi(text: str) -> str:
    return ANSI_SEQUENCE.sub("", text)


class Interactive:
    """A reference CLI command on a pseudo-terminal, with its whole output kept (shown by
    `run_concurrently` when a step fails)."""

    def __init__(self, name: str, cli: Cli, *args: str | Path) -> None:
        self.name = name
        self.transcript = io.StringIO()
        self.child = pexpect.spawn(
            str(cli.program),
            [str(arg) for arg in args],
            env=cli.env(),
            cwd=str(cli.workdir),
            encoding="utf-8",
            codec_errors="replace",
            timeout=STEP_TIMEOUT,
            dimensions=(50, 500),  # no wrapping of the long lines
        )
        self.child.logfile_read = self.transcript

    def expect(self, pattern: str) -> re.Match[str]:
        """Wait for the regular expression `pattern` in the output."""
        self._expect(pattern)
        match = self.child.match
        assert isinstance(match, re.Match)
        return match

    def _expect(self, pattern: str | type[pexpect.EOF]) -> None:
        try:
            self.child.expect(pattern)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            kind = "timed out" if isinstance(exc, pexpect.TIMEOUT) else "exited"
            raise AssertionError(f"{self.name} {kind} while waiting for {pattern!r}") from None

    def sendline(self, line: str) -> None:
        self.child.sendline(line)

    def choose(self, prompt: str, wanted: str) -> None:
        """Answer a choice `prompt` that follows ` <index> - <value>` lines by the index
        of `wanted`."""
        self.expect(re.escape(prompt))
        shown = strip_ansi(self.child.before or "")
        choices = {value: index for index, value in re.findall(r"(\d+) - ([A-Z0-9]+)\b", shown)}
        assert wanted in choices, f"{self.name} does not offer {wanted}"
        self.sendline(choices[wanted])

    def wait_success(self) -> None:
        """Until the command exits; it must exit with 0."""
        self._expect(pexpect.EOF)
        self.child.close()
        assert self.child.exitstatus == 0, (
            f"{self.name} exited with {self.child.exitstatus} (signal {self.child.signalstatus})"
        )

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)

    def output(self) -> str:
        return strip_ansi(self.transcript.getvalue())


def run_concurrently(*sides: tuple[Interactive, Callable[[], None]]) -> None:
    """Run each side's script in its own thread; on the first failure, kill every command
    (so that no peer stays blocked) and fail with all the transcripts."""
    with ThreadPoolExecutor(max_workers=len(sides)) as executor:
        futures: list[Future[None]] = [executor.submit(script) for _, script in sides]
        done, not_done = wait(futures, timeout=EXCHANGE_TIMEOUT, return_when=FIRST_EXCEPTION)
        failures = [f.exception() for f in done if f.exception() is not None]
        if failures or not_done:
            for side, _ in sides:
                side.kill()
            wait(futures, timeout=STEP_TIMEOUT)
            transcripts = "\n".join(f"--- {side.name} ---\n{side.output()}" for side, _ in sides)
            reasons = "\n".join(str(failure) for failure in failures) or (
                f"not finished within {EXCHANGE_TIMEOUT}s"
            )
            pytest.fail(f"{reasons}\n{transcripts}", pytrace=False)


@dataclass
class CodeExchange:
    """The codes each side shows, passed to the other side's thread."""

    greeter: queue.Queue[str]
    claimer: queue.Queue[str]

    @classmethod
    def new(cls) -> CodeExchange:
        return cls(queue.Queue(), queue.Queue())

    @staticmethod
    def receive(codes: queue.Queue[str], what: str) -> str:
        try:
            return codes.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"the {what} code was never shown") from None


def greeter_sas_steps(greeter: Interactive, codes: CodeExchange) -> None:
    """The greeter shows its code, then picks the claimer's."""
    shown = greeter.expect(rf"Code to provide to claimer: {_ANSI}({SAS_CODE})")
    codes.greeter.put(shown.group(1))
    greeter.choose(
        "Select code provided by claimer", CodeExchange.receive(codes.claimer, "claimer")
    )


def claimer_sas_steps(claimer: Interactive, codes: CodeExchange) -> None:
    """The claimer picks the greeter's code, then shows its own."""
    claimer.choose(
        "Select code provided by greeter", CodeExchange.receive(codes.greeter, "greeter")
    )
    shown = claimer.expect(rf"Code to provide to greeter: {_ANSI}({SAS_CODE})")
    codes.claimer.put(shown.group(1))


def greet_and_claim(
    cli: Cli,
    admin: AdminDevice,
    url: str,
    claimer_config_dir: Path,
    greeter_answers: Callable[[Interactive], None],
    claimer_answers: Callable[[Interactive], None],
) -> tuple[Interactive, Interactive]:
    """`greet_invitation` and `claim_invitation` of `url` side by side, both exiting
    successfully; the answers after the codes are left to the callbacks."""
    claimer_config_dir.mkdir(parents=True, exist_ok=True)
    greeter = Interactive(
        "greet_invitation", cli, "core", "greet_invitation", *admin.options(), token_of(url)
    )
    claimer = Interactive(
        "claim_invitation",
        cli,
        "core",
        "claim_invitation",
        "--config-dir",
        claimer_config_dir,
        "--password",
        PASSWORD,
        url,
    )
    codes = CodeExchange.new()
    organization = admin.organization

    def greet() -> None:
        greeter_sas_steps(greeter, codes)
        greeter_answers(greeter)
        greeter.wait_success()

    def claim() -> None:
        claimer.expect(
            rf"Invitation greeter: {_ANSI}"
            + re.escape(f"{organization.full_name} <{organization.email}>")
        )
        claimer_sas_steps(claimer, codes)
        claimer_answers(claimer)
        claimer.expect(rf"Saving device {_ANSI}[0-9a-f]+{_ANSI} {_ANSI}✔")
        claimer.wait_success()

    try:
        run_concurrently((greeter, greet), (claimer, claim))
    finally:
        greeter.kill()
        claimer.kill()
    return greeter, claimer


def single_device(cli: Cli, config_dir: Path) -> str:
    """The `ORG: user @ device` part of the only device `list_devices` finds."""
    result = cli.run("core", "list_devices", "--config-dir", config_dir)
    assert result.returncode == 0, describe(result)
    assert f"Found 1 device(s) in {config_dir}:" in result.stdout, describe(result)
    match = re.search(r"^[0-9a-f]+ - (.*)$", result.stdout, re.MULTILINE)
    assert match is not None, describe(result)
    return match.group(1)


def https_get(tls: TlsFiles, port: int, target: str) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPSConnection(
        "localhost", port, context=tls.client_context(), timeout=COMMAND_TIMEOUT
    )
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()


# --- Invite a user by e-mail ----------------------------------------------------------------


@dataclass(frozen=True)
class UserInvitation:
    url: str
    mail: ReceivedMail


@pytest.fixture(scope="module")
def user_invitation(
    reference_cli: Cli, admin: AdminDevice, smtp_server: SmtpServer
) -> UserInvitation:
    url = invite(reference_cli, admin, "invite_user", "--send-email", "bob@example.com")
    return UserInvitation(url, smtp_server.catcher.next_mail_to("bob@example.com"))


def test_invite_user_with_send_email_mails_the_invitation_link(
    smtp_guide_server: GuideServer, admin: AdminDevice, user_invitation: UserInvitation
) -> None:
    mail = user_invitation.mail
    organization = admin.organization.name

    assert mail.mail_from == SENDER
    assert mail.rcpt_tos == ["bob@example.com"]
    message = mail.message
    assert message["From"] == SENDER
    assert message["To"] == "bob@example.com"
    assert message["Reply-To"] == "Alice Guide <alice@example.com>"
    assert message["Subject"] == f"[Parsec] Alice Guide invited you to {organization}"
    assert message.get_content_type() == "multipart/alternative"
    token = token_of(user_invitation.url)
    link = (
        f"https://localhost:{smtp_guide_server.port}/redirect/{organization}"
        f"?action=claim_user&token={token}"
    )
    text = mail.part("text/plain")
    assert INVITATION_LINK.findall(text) == [link], text
    assert link in html.unescape(mail.part("text/html"))


def test_redirect_route_turns_the_mailed_link_into_the_invitation_url(
    smtp_guide_server: GuideServer, user_invitation: UserInvitation
) -> None:
    [link] = INVITATION_LINK.findall(user_invitation.mail.part("text/plain"))
    parts = urlsplit(link)

    status, headers = https_get(
        smtp_guide_server.tls, smtp_guide_server.port, parts.path + "?" + parts.query
    )

    assert status == 302
    assert headers["location"] == user_invitation.url
    assert user_invitation.url.startswith(f"parsec://localhost:{smtp_guide_server.port}/")


def test_invited_user_is_greeted_then_claims_and_connects(
    reference_cli: Cli,
    smtp_guide_server: GuideServer,
    admin: AdminDevice,
    user_invitation: UserInvitation,
    tmp_path: Path,
) -> None:
    [link] = INVITATION_LINK.findall(user_invitation.mail.part("text/plain"))
    parts = urlsplit(link)
    _, headers = https_get(
        smtp_guide_server.tls, smtp_guide_server.port, parts.path + "?" + parts.query
    )
    url = headers["location"]  # what a mail reader would open
    claimer_config_dir = tmp_path / "bob-config"

    def greeter_answers(greeter: Interactive) -> None:
        # Grant what the claimer asked for (the defaults), with the STANDARD profile.
        defaults = {}
        for prompt in ("New user label", "New user email", "New user device label"):
            answer = greeter.expect(rf"{prompt} \[([^\]]*)\]: ")
            defaults[prompt] = answer.group(1)
            greeter.sendline("")
        assert defaults == {
            "New user label": "Bob Invited",
            "New user email": "bob@example.com",
            "New user device label": "Bob's phone",
        }
        greeter.choose("New user profile", "STANDARD")
        greeter.expect(rf"Creating the user in the backend {_ANSI}✔")

    def claimer_answers(claimer: Interactive) -> None:
        claimer.expect("User fullname: ")
        claimer.sendline("Bob Invited")
        claimer.expect(r"Device label \[[^\]]*\]: ")
        claimer.sendline("Bob's phone")

    greet_and_claim(reference_cli, admin, url, claimer_config_dir, greeter_answers, claimer_answers)

    organization = admin.organization.name
    assert single_device(reference_cli, claimer_config_dir) == (
        f"{organization}: Bob Invited <bob@example.com> @ Bob's phone"
    )
    outcome = authenticated_check(reference_cli, claimer_config_dir, organization)
    assert outcome["ping"] == {"status": "ok", "pong": "hello"}
    assert outcome["user_get_status"] == "ok"
    assert outcome["user_id"] == outcome["own_user_id"]
    assert outcome["human_handle"] == "Bob Invited <bob@example.com>"
    assert outcome["profile"] == "STANDARD"
    assert outcome["revoked"] is False
    assert outcome["devices"] == {outcome["own_device_id"]: "Bob's phone"}
    # The greeter deleted the finished invitation.
    assert list_invitations(reference_cli, admin).strip() == "No invitations."


# --- Invite a second device ----------------------------------------------------------------


def test_new_device_of_the_admin_is_greeted_then_claims_and_connects(
    reference_cli: Cli, admin: AdminDevice, tmp_path: Path
) -> None:
    url = invite(reference_cli, admin, "invite_device")
    assert "action=claim_device" in url
    claimer_config_dir = tmp_path / "alice-desktop-config"

    def greeter_answers(greeter: Interactive) -> None:
        answer = greeter.expect(r"New device label \[([^\]]*)\]: ")
        assert answer.group(1) == "Alice's desktop"
        greeter.sendline("")
        greeter.expect(rf"Creating the device in the backend {_ANSI}✔")

    def claimer_answers(claimer: Interactive) -> None:
        claimer.expect(r"Device label \[[^\]]*\]: ")
        claimer.sendline("Alice's desktop")

    greet_and_claim(reference_cli, admin, url, claimer_config_dir, greeter_answers, claimer_answers)

    organization = admin.organization
    assert single_device(reference_cli, claimer_config_dir) == (
        f"{organization.name}: Alice Guide <alice@example.com> @ Alice's desktop"
    )
    new = authenticated_check(reference_cli, claimer_config_dir, organization.name)
    first = authenticated_check(reference_cli, organization.config_dir, organization.name)
    assert new["ping"] == {"status": "ok", "pong": "hello"}
    assert new["user_get_status"] == "ok"
    assert new["own_user_id"] == first["own_user_id"] == new["user_id"]
    assert new["own_device_id"] != first["own_device_id"]
    assert new["profile"] == "ADMIN"
    expected_devices = {
        first["own_device_id"]: organization.device_label,
        new["own_device_id"]: "Alice's desktop",
    }
    assert new["devices"] == first["devices"] == expected_devices


# --- Cancelled invitation -------------------------------------------------------------------


def invited_connection_outcomes(cli: Cli, *urls: str) -> list[str]:
    """What the reference client library gets when it connects with each invitation URL
    and asks `invite_info`: `ok` or the exception it raises."""
    result = cli.python(INVITED_CONNECTION_SCRIPT, *urls)
    assert result.returncode == 0, describe(result)
    return [
        line.removeprefix(RESULT_PREFIX)
        for line in result.stdout.splitlines()
        if line.startswith(RESULT_PREFIX)
    ]


def test_cancelled_invitation_cannot_be_claimed(
    reference_cli: Cli, admin: AdminDevice, tmp_path: Path
) -> None:
    url = invite(reference_cli, admin, "invite_user", "carol@example.com")
    token = token_of(url)
    assert f"{token}\tidle\tuser (email=carol@example.com)" in list_invitations(
        reference_cli, admin
    )
    assert invited_connection_outcomes(reference_cli, url) == ["ok"]

    cancel = reference_cli.run("core", "cancel_invitation", *admin.options(), token)

    assert cancel.returncode == 0, describe(cancel)
    assert "Invitation deleted." in cancel.stdout, describe(cancel)
    assert token not in list_invitations(reference_cli, admin)
    config_dir = tmp_path / "carol-config"
    config_dir.mkdir()
    claim = reference_cli.run(
        "core", "claim_invitation", "--config-dir", config_dir, "--password", PASSWORD, url
    )
    # The 2.0.0 CLI reports every refused invited handshake so (with the reference server
    # too); the library tells a deleted invitation from an unknown one.
    assert claim.returncode == 1, describe(claim)
    assert "Error: Invitation not found" in output_of(claim).splitlines(), describe(claim)
    assert not list(config_dir.glob("devices/**/*.keys"))
    unknown = url.replace(token, uuid.uuid4().hex)
    assert invited_connection_outcomes(reference_cli, url, unknown) == [
        "BackendInvitationAlreadyUsed: Invalid handshake: Invitation already deleted",
        "BackendInvitationNotFound: Invalid handshake: Invitation not found",
    ]
    greet = reference_cli.run("core", "greet_invitation", *admin.options(), token)
    assert greet.returncode == 1, describe(greet)
    assert "Error: Invitation not found" in output_of(greet).splitlines(), describe(greet)
