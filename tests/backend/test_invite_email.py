"""Invitation e-mails (protocol/30-commands-org-user-invite.md §7.11, 70-server-config.md
§1.4), delivered to a real SMTP server (aiosmtpd) listening on the loopback: plain SMTP,
STARTTLS, implicit TLS, authentication, failures; and the MOCKED mode."""

from __future__ import annotations

import asyncio
import email
import email.policy
import html
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from parsec_server.api import codec
from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID
from parsec_server.api.ids import UserProfile
from parsec_server.backend.config import MockedEmailConfig, SmtpEmailConfig
from parsec_server.client.device import LocalDevice
from parsec_server.client.user import create_user
from tests.backend.common import (
    assert_server_serves,
    assert_still_open,
    authenticated_ws,
    recv_reply,
    send_cmd,
    wait_until,
)
from tests.fixtures import free_port
from tests.fixtures.servers import (
    Organization,
    ServerFactory,
    create_org,
    make_config,
    running_server,
)

SENDER = "invitations@parsec.test"
ZACK = "zack@example.com"
SMTP_USER = "mailer"
SMTP_PASSWORD = "P4ssw0rd"
NOT_SENT = "invitation e-mail not sent"
# The tests' backend address is `parsec://127.0.0.1:6777?no_ssl=true`: links are http.
LINK_BASE = "http://127.0.0.1:6777"


# The SMTP server


@dataclass
class ReceivedMail:
    mail_from: str | None
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool  # the session was encrypted (implicit TLS or STARTTLS)
    login: bytes | None  # the user it authenticated as

    @property
    def parts(self) -> list[EmailMessage]:
        return list(self.message.iter_parts())  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        content: str = self.parts[0].get_content()
        return content

    @property
    def html(self) -> str:
        content: str = self.parts[1].get_content()
        return content


class Mailbox:
    """aiosmtpd handler keeping the mails it accepts; `refusal` refuses them instead."""

    def __init__(self, refusal: str | None = None) -> None:
        self.refusal = refusal
        self.mails: list[ReceivedMail] = []
        self.auth_attempts: list[tuple[str, str]] = []
        self.rcpt_commands = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        self.rcpt_commands += 1
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refusal is not None:
            return self.refusal
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        assert server.transport is not None
        self.mails.append(
            ReceivedMail(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message=message,
                tls=server.transport.get_extra_info("ssl_object") is not None,
                login=session.login_data if session.authenticated else None,
            )
        )
        return "250 Message accepted for delivery"

    def authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = data.login.decode(), data.password.decode()
        self.auth_attempts.append((login, password))
        accepted = (login, password) == (SMTP_USER, SMTP_PASSWORD)
        # handled=False: aiosmtpd answers 535 itself on a refusal.
        return AuthResult(success=accepted, handled=False, auth_data=data)

    def only_mail(self) -> ReceivedMail:
        # A method, not a property: aiosmtpd inspects every attribute of its handler.
        assert len(self.mails) == 1, self.mails
        return self.mails[0]


@asynccontextmanager
async def smtp_server(
    mailbox: Mailbox, ssl_context: ssl.SSLContext | None = None, **options: Any
) -> AsyncIterator[int]:
    """An SMTP server on a free loopback port (yielded), in the test's event loop;
    `ssl_context` makes it implicit TLS, `options` go to aiosmtpd's SMTP."""
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        return SMTP(mailbox, hostname="smtp.test", loop=loop, **options)

    listener = await loop.create_server(protocol, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await listener.wait_closed()


def smtp_config(
    port: int,
    use_ssl: bool = False,
    use_tls: bool = False,
    host_user: str | None = None,
    host_password: str | None = None,
    timeout: float = 30.0,
) -> SmtpEmailConfig:
    return SmtpEmailConfig(
        host="127.0.0.1",
        port=port,
        sender=SENDER,
        host_user=host_user,
        host_password=host_password,
        use_ssl=use_ssl,
        use_tls=use_tls,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def trusted_ca(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the server trust our CA: it verifies certificates with OpenSSL's default
    context, whose trusted roots come from SSL_CERT_FILE (read on each connection)."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    yield


# Invitations


async def invite(device: LocalDevice, **fields: Any) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await conn.cmd("invite_new", **fields)


async def invite_user(device: LocalDevice, claimer_email: str = ZACK) -> ID:
    rep = await invite(device, type="USER", claimer_email=claimer_email, send_email=True)
    assert rep == {"status": "ok", "token": rep["token"]}
    token: ID = rep["token"]
    return token


async def invite_device(device: LocalDevice) -> ID:
    rep = await invite(device, type="DEVICE", send_email=True)
    assert rep == {"status": "ok", "token": rep["token"]}
    token: ID = rep["token"]
    return token


async def listed_tokens(device: LocalDevice) -> list[ID]:
    async with await device.connect() as conn:
        rep = await conn.cmd("invite_list")
    return [item["token"] for item in rep["invitations"]]


def claim_link(organization_id: str, token: ID, action: str = "claim_user") -> str:
    return f"{LINK_BASE}/redirect/{organization_id}?action={action}&token={token.hex}"


def assert_alternative_parts(mail: ReceivedMail) -> None:
    assert mail.message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in mail.parts] == ["text/plain", "text/html"]


def assert_in_both_parts(mail: ReceivedMail, *texts: str) -> None:
    visible_html = html.unescape(mail.html)
    for text in texts:
        assert text in mail.text, text
        assert text in visible_html, text


def not_sent_logs(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == NOT_SENT]


# What is sent


async def test_user_invitation_mail(server_factory: ServerFactory) -> None:
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        token = await invite_user(org.alice)
    mail = mailbox.only_mail()
    assert (mail.mail_from, mail.rcpt_tos) == (SENDER, [ZACK])
    message = mail.message
    assert message["From"] == SENDER
    assert message["To"] == ZACK
    assert message["Subject"] == f"[Parsec] Alice invited you to {org.organization_id}"
    assert message["Reply-To"] == "Alice <alice@example.com>"
    assert_alternative_parts(mail)
    link = claim_link(org.organization_id, token)
    assert link.startswith("http://127.0.0.1:6777/redirect/Org")
    assert_in_both_parts(
        mail,
        link,
        "Alice",
        org.organization_id,
        "https://parsec.cloud/get-parsec",
        "https://docs.parsec.cloud",
    )
    assert f'href="{html.escape(link)}"' in mail.html
    assert not mail.tls
    assert mail.login is None


async def test_device_invitation_mail(server_factory: ServerFactory) -> None:
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        token = await invite_device(org.bob)
    mail = mailbox.only_mail()
    assert (mail.mail_from, mail.rcpt_tos) == (SENDER, ["bob@example.com"])
    message = mail.message
    assert message["From"] == SENDER
    assert message["To"] == "bob@example.com"
    assert message["Subject"] == f"[Parsec] New device invitation to {org.organization_id}"
    assert "Reply-To" not in message
    assert_alternative_parts(mail)
    link = claim_link(org.organization_id, token, "claim_device")
    assert_in_both_parts(
        mail,
        link,
        org.organization_id,
        "https://parsec.cloud/get-parsec",
        "https://docs.parsec.cloud",
    )


async def test_user_invitation_mail_of_greeter_without_human_handle(
    server_factory: ServerFactory,
) -> None:
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        async with await org.alice.connect() as conn:
            root = await create_user(conn, org.alice, "root", "pc", None, UserProfile.ADMIN)
        token = await invite_user(root)
    message = mailbox.only_mail().message
    assert message["Subject"] == f"[Parsec] root invited you to {org.organization_id}"
    assert "Reply-To" not in message
    assert_in_both_parts(mailbox.only_mail(), "root", claim_link(org.organization_id, token))


async def test_ascii_mail_parts_are_us_ascii(server_factory: ServerFactory) -> None:
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        await invite_user(org.alice)
    assert [part.get_content_charset() for part in mailbox.only_mail().parts] == [
        "us-ascii",
        "us-ascii",
    ]


async def test_non_ascii_greeter_name_is_sent_in_utf8(server_factory: ServerFactory) -> None:
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        async with await org.alice.connect() as conn:
            zoe = await create_user(
                conn, org.alice, "zoe", "pc", ("zoe@example.com", "Zoé Ürsel"), UserProfile.ADMIN
            )
        await invite_user(zoe)
    mail = mailbox.only_mail()
    assert mail.message["Subject"] == f"[Parsec] Zoé Ürsel invited you to {org.organization_id}"
    assert mail.message["Reply-To"] == "Zoé Ürsel <zoe@example.com>"
    assert [part.get_content_charset() for part in mail.parts] == ["utf-8", "utf-8"]
    assert_in_both_parts(mail, "Zoé Ürsel")


@pytest.mark.parametrize(
    ("backend_addr", "link_base"),
    [
        ("parsec://127.0.0.1:6777?no_ssl=true", "http://127.0.0.1:6777"),
        ("parsec://parsec.example.com", "https://parsec.example.com"),
        ("parsec://parsec.example.com:443", "https://parsec.example.com"),
        ("parsec://parsec.example.com:8443", "https://parsec.example.com:8443"),
        ("parsec://parsec.example.com:80?no_ssl=true", "http://parsec.example.com"),
    ],
)
async def test_invitation_link_is_built_from_the_backend_addr(
    server_factory: ServerFactory, backend_addr: str, link_base: str
) -> None:
    mailbox = Mailbox()
    async with (
        smtp_server(mailbox) as port,
        server_factory(
            email=smtp_config(port), backend_addr=BackendAddr.from_url(backend_addr)
        ) as server,
    ):
        org = await create_org(server)
        token = await invite_user(org.alice)
    link = f"{link_base}/redirect/{org.organization_id}?action=claim_user&token={token.hex}"
    assert_in_both_parts(mailbox.only_mail(), link)


async def test_mail_is_sent_before_the_reply(server_factory: ServerFactory) -> None:
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        alice = await authenticated_ws(org.alice)
        rep = await send_cmd(alice, "invite_new", type="USER", claimer_email=ZACK, send_email=True)
        # Handed over to the SMTP server by the time the reply arrives.
        assert len(mailbox.mails) == 1
        assert rep == {"status": "ok", "token": rep["token"]}
        await alice.close()


async def test_reused_invitation_is_mailed_again_with_the_same_link(
    server_factory: ServerFactory,
) -> None:
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        first = await invite_user(org.alice)
        second = await invite_user(org.alice)
    assert first == second
    assert len(mailbox.mails) == 2
    for mail in mailbox.mails:
        assert_in_both_parts(mail, claim_link(org.organization_id, first))


async def test_nothing_is_sent_without_send_email(server_factory: ServerFactory) -> None:
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        rep = await invite(org.alice, type="USER", claimer_email=ZACK, send_email=False)
        assert rep["status"] == "ok"
        rep = await invite(org.bob, type="DEVICE", send_email=False)
        assert rep["status"] == "ok"
    assert mailbox.mails == []


async def test_nothing_is_sent_when_the_invitation_is_refused(
    server_factory: ServerFactory,
) -> None:
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        rep = await invite(org.bob, type="USER", claimer_email=ZACK, send_email=True)
        assert rep == {"status": "not_allowed"}
        rep = await invite(org.mallory, type="DEVICE", send_email=True)
        assert rep == {"status": "not_available"}
    assert mailbox.mails == []


@pytest.mark.parametrize(
    "claimer_email",
    ["", "not an address", "zoé@example.com", "zack@example.com\r\nBcc: eve@example.com"],
)
async def test_any_claimer_email_gets_an_ok_reply(
    server_factory: ServerFactory, claimer_email: str
) -> None:
    """The claimer email is not validated: whatever becomes of the mail (refused by the
    SMTP server, or not even a valid header), the invitation exists and the reply is ok."""
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        alice = await authenticated_ws(org.alice)
        rep = await send_cmd(
            alice, "invite_new", type="USER", claimer_email=claimer_email, send_email=True
        )
        assert rep == {"status": "ok", "token": rep["token"]}
        await assert_still_open(alice)
        await alice.close()
        assert await listed_tokens(org.alice) == [rep["token"]]
    assert len(mailbox.mails) <= 1


async def test_claimer_email_unusable_as_a_header_is_logged(
    server_factory: ServerFactory,
) -> None:
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        with structlog.testing.capture_logs() as logs:
            await invite_user(org.alice, "zack@example.com\nBcc: eve@example.com")
    assert mailbox.mails == []
    [entry] = not_sent_logs(logs)
    assert "zack@example.com" not in str(entry)  # no personal data in logs


async def test_claimer_email_is_the_single_recipient(server_factory: ServerFactory) -> None:
    """The envelope's recipient is the claimer email as given, never addresses parsed
    out of it."""
    mailbox = Mailbox()
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        await invite_user(org.alice, "zack@example.com, eve@example.com")
    mailbox.only_mail()
    assert mailbox.rcpt_commands == 1


# How it is sent


async def test_mail_over_starttls(
    server_factory: ServerFactory, server_tls_context: ssl.SSLContext, trusted_ca: None
) -> None:
    mailbox = Mailbox()
    async with (
        # The server refuses MAIL before STARTTLS.
        smtp_server(mailbox, tls_context=server_tls_context, require_starttls=True) as port,
        server_factory(email=smtp_config(port, use_tls=True)) as server,
    ):
        org = await create_org(server)
        token = await invite_user(org.alice)
    mail = mailbox.only_mail()
    assert mail.tls
    assert mail.rcpt_tos == [ZACK]
    assert_in_both_parts(mail, claim_link(org.organization_id, token))


async def test_mail_over_implicit_tls(
    server_factory: ServerFactory, server_tls_context: ssl.SSLContext, trusted_ca: None
) -> None:
    mailbox = Mailbox()
    async with (
        smtp_server(mailbox, server_tls_context) as port,
        server_factory(email=smtp_config(port, use_ssl=True)) as server,
    ):
        org = await create_org(server)
        token = await invite_user(org.alice)
    mail = mailbox.only_mail()
    assert mail.tls
    assert mail.rcpt_tos == [ZACK]
    assert_in_both_parts(mail, claim_link(org.organization_id, token))


async def test_implicit_tls_wins_over_starttls(
    server_factory: ServerFactory, server_tls_context: ssl.SSLContext, trusted_ca: None
) -> None:
    mailbox = Mailbox()
    async with (
        smtp_server(mailbox, server_tls_context) as port,
        server_factory(email=smtp_config(port, use_ssl=True, use_tls=True)) as server,
    ):
        org = await create_org(server)
        await invite_user(org.alice)
    assert mailbox.only_mail().tls


async def test_untrusted_certificate_is_logged_and_the_reply_is_ok(
    server_factory: ServerFactory, server_tls_context: ssl.SSLContext
) -> None:
    mailbox = Mailbox()
    async with (
        smtp_server(mailbox, server_tls_context) as port,
        server_factory(email=smtp_config(port, use_ssl=True)) as server,
    ):
        org = await create_org(server)
        with structlog.testing.capture_logs() as logs:
            token = await invite_user(org.alice)
        assert await listed_tokens(org.alice) == [token]
    assert mailbox.mails == []
    [entry] = not_sent_logs(logs)
    assert "CERTIFICATE_VERIFY_FAILED" in entry["error"]


async def test_mail_with_authentication(server_factory: ServerFactory) -> None:
    mailbox = Mailbox()
    async with (
        smtp_server(mailbox, authenticator=mailbox.authenticator, auth_require_tls=False) as port,
        server_factory(
            email=smtp_config(port, host_user=SMTP_USER, host_password=SMTP_PASSWORD)
        ) as server,
    ):
        org = await create_org(server)
        await invite_user(org.alice)
    assert mailbox.auth_attempts == [(SMTP_USER, SMTP_PASSWORD)]
    assert mailbox.only_mail().login == SMTP_USER.encode()


async def test_mail_with_authentication_over_starttls(
    server_factory: ServerFactory, server_tls_context: ssl.SSLContext, trusted_ca: None
) -> None:
    mailbox = Mailbox()
    async with (
        # auth_require_tls (the default): AUTH is only offered once STARTTLS is done.
        smtp_server(
            mailbox,
            tls_context=server_tls_context,
            require_starttls=True,
            authenticator=mailbox.authenticator,
        ) as port,
        server_factory(
            email=smtp_config(port, use_tls=True, host_user=SMTP_USER, host_password=SMTP_PASSWORD)
        ) as server,
    ):
        org = await create_org(server)
        await invite_user(org.alice)
    mail = mailbox.only_mail()
    assert (mail.tls, mail.login) == (True, SMTP_USER.encode())


@pytest.mark.parametrize(("host_user", "host_password"), [(SMTP_USER, None), (None, SMTP_PASSWORD)])
async def test_no_login_unless_both_user_and_password_are_set(
    server_factory: ServerFactory, host_user: str | None, host_password: str | None
) -> None:
    mailbox = Mailbox()
    async with (
        smtp_server(mailbox, authenticator=mailbox.authenticator, auth_require_tls=False) as port,
        server_factory(
            email=smtp_config(port, host_user=host_user, host_password=host_password)
        ) as server,
    ):
        org = await create_org(server)
        await invite_user(org.alice)
    assert mailbox.auth_attempts == []
    assert mailbox.only_mail().login is None


async def test_rejected_login_is_logged_and_the_reply_is_ok(
    server_factory: ServerFactory,
) -> None:
    mailbox = Mailbox()
    async with (
        smtp_server(mailbox, authenticator=mailbox.authenticator, auth_require_tls=False) as port,
        server_factory(
            email=smtp_config(port, host_user=SMTP_USER, host_password="wrong")
        ) as server,
    ):
        org = await create_org(server)
        with structlog.testing.capture_logs() as logs:
            token = await invite_user(org.alice)
        assert await listed_tokens(org.alice) == [token]
    assert mailbox.mails == []
    [entry] = not_sent_logs(logs)
    assert "535" in entry["error"]


# MOCKED


async def test_mocked_email_is_written_to_a_file_with_a_notice_on_stderr(
    server_factory: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = MockedEmailConfig(sender="no-reply@parsec.com", tmpdir=tmp_path)
    async with server_factory(email=config) as server:
        org = await create_org(server)
        capsys.readouterr()
        token = await invite_user(org.alice)
    [path] = list(tmp_path.glob("tmp-email-*.html"))  # noqa: ASYNC240
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["From"] == "no-reply@parsec.com"
    assert message["To"] == ZACK
    assert message["Subject"] == f"[Parsec] Alice invited you to {org.organization_id}"
    assert isinstance(message, EmailMessage)
    mail = ReceivedMail(mail_from=None, rcpt_tos=[], message=message, tls=False, login=None)
    assert_alternative_parts(mail)
    assert_in_both_parts(mail, claim_link(org.organization_id, token), "Alice")
    err = capsys.readouterr().err
    assert "has been triggered and mocked" in err
    assert str(path) in err
    assert ZACK not in err  # the address is in the file, not in the server's output


# Failures


async def test_unreachable_smtp_server_is_logged_and_the_invitation_exists(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(email=smtp_config(free_port())) as server:
        org = await create_org(server)
        alice = await authenticated_ws(org.alice)
        with structlog.testing.capture_logs() as logs:
            rep = await send_cmd(
                alice, "invite_new", type="USER", claimer_email=ZACK, send_email=True
            )
        assert rep == {"status": "ok", "token": rep["token"]}
        # The connection survives, and so does the server.
        listed = await send_cmd(alice, "invite_list")
        assert [(i["token"], i["claimer_email"]) for i in listed["invitations"]] == [
            (rep["token"], ZACK)
        ]
        await alice.close()
        await assert_server_serves(org.bob)
    [entry] = not_sent_logs(logs)
    assert entry["log_level"] == "warning"
    assert ZACK not in str(entry)  # no personal data in logs
    assert "Connect call failed" in entry["error"] or "refused" in entry["error"].lower()


async def test_smtp_refusal_is_logged_and_the_invitation_exists(
    server_factory: ServerFactory,
) -> None:
    mailbox = Mailbox(refusal="554 5.7.1 Message refused by the tests")
    async with smtp_server(mailbox) as port, server_factory(email=smtp_config(port)) as server:
        org = await create_org(server)
        alice = await authenticated_ws(org.alice)
        with structlog.testing.capture_logs() as logs:
            rep = await send_cmd(alice, "invite_new", type="DEVICE", send_email=True)
        assert rep == {"status": "ok", "token": rep["token"]}
        await assert_still_open(alice)
        await alice.close()
        assert await listed_tokens(org.alice) == [rep["token"]]
    [entry] = not_sent_logs(logs)
    assert "alice@example.com" not in str(entry)  # no personal data in logs
    assert "Message refused by the tests" in entry["error"]


async def test_stalled_smtp_server_does_not_block_the_server(
    server_factory: ServerFactory,
) -> None:
    """An SMTP server that accepts the connection and never answers: the send waits (up
    to its timeout) without stopping the server from serving everybody else."""
    stalled: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        stalled.append(writer)

    silent = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        async with server_factory(email=smtp_config(port)) as server:
            org = await create_org(server)
            alice = await authenticated_ws(org.alice)
            with structlog.testing.capture_logs() as logs:
                # Timed from the request: a send blocking the event loop (this test's too)
                # would hold everything for the 30 s of the SMTP timeout.
                started = time.monotonic()
                await alice.send(
                    codec.encode(
                        {
                            "cmd": "invite_new",
                            "type": "USER",
                            "claimer_email": ZACK,
                            "send_email": True,
                        }
                    )
                )
                await wait_until(lambda: bool(stalled))  # the send is under way
                await assert_other_connections_are_served(org)
                assert time.monotonic() - started < 5
                # The SMTP server hangs up: the send fails, the greeter gets its reply.
                for writer in stalled:
                    writer.close()
                rep = await recv_reply(alice)
            assert rep == {"status": "ok", "token": rep["token"]}
            await alice.close()
    finally:
        for writer in stalled:
            writer.close()
        silent.close()
        await silent.wait_closed()
    [entry] = not_sent_logs(logs)
    assert ZACK not in str(entry)  # no personal data in logs


async def assert_other_connections_are_served(org: Organization) -> None:
    bob = await authenticated_ws(org.bob)
    assert await send_cmd(bob, "ping", ping="not blocked") == {
        "status": "ok",
        "pong": "not blocked",
    }
    await bob.close()
    # The invitation was created before the e-mail: another connection sees it.
    assert len(await listed_tokens(org.alice)) == 1


# Bounded delivery


@asynccontextmanager
async def fake_smtp_server(
    behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[int, list[asyncio.Task[None]]]]:
    """A loopback server playing `behaviour` on each connection: (port, its sessions)."""
    sessions: list[asyncio.Task[None]] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        sessions.append(task)
        try:
            await behaviour(reader, writer)
        finally:
            writer.close()

    listener = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1], sessions
    finally:
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        listener.close()
        await listener.wait_closed()


async def timed_invitation(port: int) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """invite_new with an e-mail through the SMTP server on `port` (timeout 0.5 s):
    (reply, seconds it took, "not sent" logs)."""
    async with running_server(make_config(email=smtp_config(port, timeout=0.5))) as server:
        org = await create_org(server)
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            rep = await invite(org.alice, type="USER", claimer_email=ZACK, send_email=True)
            elapsed = time.monotonic() - started
        assert await listed_tokens(org.alice) == [rep["token"]]
    return rep, elapsed, not_sent_logs(logs)


async def test_smtp_server_never_greeting_is_given_up_after_the_timeout() -> None:
    async def accept_and_say_nothing(_: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()

    async with fake_smtp_server(accept_and_say_nothing) as (port, sessions):
        rep, elapsed, logs = await timed_invitation(port)
        assert len(sessions) == 1
    assert rep == {"status": "ok", "token": rep["token"]}
    assert 0.4 < elapsed < 3
    [entry] = logs
    assert entry["error"] == "no answer in 0.5 s"


async def test_smtp_timeout_bounds_the_whole_delivery() -> None:
    """A server greeting one line at a time never lets a read time out: the timeout is
    the whole delivery's."""

    async def endless_greeting(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(b"220-still greeting\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with fake_smtp_server(endless_greeting) as (port, _):
        rep, elapsed, logs = await timed_invitation(port)
    assert rep == {"status": "ok", "token": rep["token"]}
    assert 0.4 < elapsed < 3
    assert [entry["error"] for entry in logs] == ["no answer in 0.5 s"]
