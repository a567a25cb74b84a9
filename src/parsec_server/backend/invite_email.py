"""Invitation e-mails (protocol/30-commands-org-user-invite.md 7.11): the message, and
its delivery through SMTP or, with `--email-host MOCKED`, into a temporary folder."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from email.message import EmailMessage
from email.utils import formataddr
from html import escape
from typing import TYPE_CHECKING

import aiosmtplib
import structlog

from parsec_server.api.addr import BackendInvitationAddr, InvitationAction
from parsec_server.api.codec import ID
from parsec_server.api.ids import InvitationType
from parsec_server.backend.config import BackendConfig, MockedEmailConfig, SmtpEmailConfig
from parsec_server.backend.metrics import NULL_METRICS, Metrics

if TYPE_CHECKING:
    from parsec_server.backend.invite import Invitation

logger = structlog.get_logger("parsec.email")

DOWNLOAD_URL = "https://parsec.cloud/get-parsec"
DOCUMENTATION_URL = "https://docs.parsec.cloud"


def invitation_url(config: BackendConfig, organization_id: str, invitation: Invitation) -> str:
    addr = BackendInvitationAddr.build(
        config.backend_addr,
        organization_id,
        InvitationAction.for_type(invitation.type),
        ID(invitation.token),
    )
    return addr.to_http_redirection_url()


def _greeter_name(invitation: Invitation) -> str:
    if invitation.greeter_human_handle is not None:
        return invitation.greeter_human_handle[1]
    return invitation.greeter_user_id


def _user_invitation_text(greeter: str, organization_id: str, url: str) -> tuple[str, str]:
    text = (
        f"You have received an invitation from {greeter} to join the {organization_id} "
        "organization on Parsec.\n\n"
        f"If you do not have the Parsec client yet, download it from {DOWNLOAD_URL}\n\n"
        f"Then open this link with Parsec to join the organization:\n{url}\n\n"
        f"Contact {greeter} when you are ready: you will exchange confirmation codes with "
        "each other to finish.\n\n"
        f"Parsec documentation: {DOCUMENTATION_URL}\n"
    )
    g, o, u = escape(greeter), escape(organization_id), escape(url, quote=True)
    html = (
        "<!DOCTYPE html><html><body>"
        f"<p>You have received an invitation from <b>{g}</b> to join the <b>{o}</b> "
        "organization on Parsec.</p>"
        f'<p>If you do not have the Parsec client yet, <a href="{DOWNLOAD_URL}">download it'
        "</a>.</p>"
        f'<p><a href="{u}">Join the organization</a> ({u})</p>'
        f"<p>Contact {g} when you are ready: you will exchange confirmation codes with each "
        "other to finish.</p>"
        f'<p><a href="{DOCUMENTATION_URL}">Parsec documentation</a></p>'
        "</body></html>"
    )
    return text, html


def _device_invitation_text(organization_id: str, url: str) -> tuple[str, str]:
    text = (
        f"A new device is being added to your account in the {organization_id} "
        "organization on Parsec.\n\n"
        f"On the new device, install Parsec from {DOWNLOAD_URL} then open this link with "
        f"it:\n{url}\n\n"
        "Then start the greeting process from one of your existing devices: both devices "
        "show confirmation codes to check.\n\n"
        f"Parsec documentation: {DOCUMENTATION_URL}\n"
    )
    o, u = escape(organization_id), escape(url, quote=True)
    html = (
        "<!DOCTYPE html><html><body>"
        f"<p>A new device is being added to your account in the <b>{o}</b> organization "
        "on Parsec.</p>"
        f'<p>On the new device, <a href="{DOWNLOAD_URL}">install Parsec</a>, then '
        f'<a href="{u}">open this link with it</a> ({u}).</p>'
        "<p>Then start the greeting process from one of your existing devices: both devices "
        "show confirmation codes to check.</p>"
        f'<p><a href="{DOCUMENTATION_URL}">Parsec documentation</a></p>'
        "</body></html>"
    )
    return text, html


def _charset(text: str) -> str:
    # As the reference's MIMEText: us-ascii when it suffices (EmailMessage says utf-8).
    return "us-ascii" if text.isascii() else "utf-8"


def invitation_recipient(invitation: Invitation) -> str:
    """The claimer's email (USER), or the greeter's own (DEVICE)."""
    if invitation.type is InvitationType.USER:
        assert invitation.claimer_email is not None
        return invitation.claimer_email
    assert invitation.greeter_human_handle is not None
    return invitation.greeter_human_handle[0]


def build_invitation_message(
    config: BackendConfig, sender: str, organization_id: str, invitation: Invitation
) -> EmailMessage:
    url = invitation_url(config, organization_id, invitation)
    message = EmailMessage()
    message["From"] = sender
    if invitation.type is InvitationType.USER:
        assert invitation.claimer_email is not None
        greeter = _greeter_name(invitation)
        message["To"] = invitation_recipient(invitation)
        message["Subject"] = f"[Parsec] {greeter} invited you to {organization_id}"
        if invitation.greeter_human_handle is not None:
            email, label = invitation.greeter_human_handle
            message["Reply-To"] = formataddr((label, email))
        text, html = _user_invitation_text(greeter, organization_id, url)
    else:
        assert invitation.greeter_human_handle is not None
        message["To"] = invitation_recipient(invitation)
        message["Subject"] = f"[Parsec] New device invitation to {organization_id}"
        text, html = _device_invitation_text(organization_id, url)
    message.set_content(text, charset=_charset(text))
    message.add_alternative(html, subtype="html", charset=_charset(html))
    return message


class InvitationMailer:
    def __init__(self, config: BackendConfig, metrics: Metrics = NULL_METRICS) -> None:
        self._config = config
        self._metrics = metrics

    async def send_invitation(self, organization_id: str, invitation: Invitation) -> None:
        """Failures are logged, never raised: the invitation exists whatever happens."""
        email_config = self._config.email
        recipient = invitation_recipient(invitation)
        try:
            message = build_invitation_message(
                self._config, email_config.sender, organization_id, invitation
            )
        except ValueError as exc:  # e.g. a claimer email with a line break
            logger.warning("invitation e-mail not sent", error=str(exc))
            self._metrics.email_sent("failed")
            return
        if isinstance(email_config, MockedEmailConfig):
            await asyncio.to_thread(_write_mocked, email_config, message)
            self._metrics.email_sent("mocked")
        else:
            sent = await _send_smtp(email_config, message, recipient)
            self._metrics.email_sent("sent" if sent else "failed")


def _write_mocked(config: MockedEmailConfig, message: EmailMessage) -> None:
    config.tmpdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        mode="wb", dir=config.tmpdir, prefix="tmp-email-", suffix=".html", delete=False
    ) as f:
        f.write(message.as_bytes())
    print(
        f"""\
A request to send an e-mail has been triggered and mocked.
You can find the message at: {f.name}""",
        file=sys.stderr,
    )


async def _send_smtp(config: SmtpEmailConfig, message: EmailMessage, recipient: str) -> bool:
    """True once the SMTP server accepted the message (a failure is logged)."""
    try:
        # aiosmtplib's own timeout bounds each network operation; ours bounds the whole
        # delivery (a server answering a line at a time cannot stretch it).
        async with asyncio.timeout(config.timeout):
            await aiosmtplib.send(
                message,
                # The envelope names the single recipient (the `To` header is not parsed:
                # a claimer email is any string, "a@x, b@y" included).
                sender=config.sender,
                recipients=[recipient],
                hostname=config.host,
                port=config.port,
                username=config.host_user if config.host_password else None,
                password=config.host_password if config.host_user else None,
                use_tls=config.use_ssl,
                start_tls=config.use_tls and not config.use_ssl,
                timeout=config.timeout,
            )
    except TimeoutError:
        logger.warning(
            "invitation e-mail not sent",
            smtp_host=config.host,
            smtp_port=config.port,
            error=f"no answer in {config.timeout:g} s",
        )
    except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
        # ValueError: an address aiosmtplib refuses to send (e.g. non-encodable).
        logger.warning(
            "invitation e-mail not sent",
            smtp_host=config.host,
            smtp_port=config.port,
            # A refused recipient is named in the exception (and often in the answer).
            error=str(exc).replace(recipient, "<recipient>") or type(exc).__name__,
        )
    else:
        return True
    return False
