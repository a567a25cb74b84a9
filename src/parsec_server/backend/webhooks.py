"""The bootstrap webhook: a JSON POST after each organization bootstrap."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request

import structlog

from parsec_server.backend.user_types import Device, User

logger = structlog.get_logger("parsec.webhooks")

WEBHOOK_TIMEOUT_SECONDS = 30.0


def bootstrap_payload(organization_id: str, user: User, device: Device) -> bytes:
    email, label = user.human_handle if user.human_handle else (None, None)
    body = {
        "device_id": device.device_id,
        "device_label": device.device_label,
        "human_email": email,
        "human_label": label,
        "organization_id": organization_id,
    }
    return json.dumps(body, sort_keys=True).encode("utf8")


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
        status: int = response.status
        return status


def redacted_url(url: str) -> str:
    """The URL as it may be logged: no credentials, query or fragment (they may hold a
    secret), e.g. `https://hooks.example.com:8443/parsec`."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return urllib.parse.urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


class BootstrapWebhook:
    def __init__(self, url: str | None) -> None:
        self._url = url

    async def notify_bootstrap(self, organization_id: str, user: User, device: Device) -> None:
        """Failures are logged, never raised: the bootstrap itself has succeeded."""
        if self._url is None:
            return
        body = bootstrap_payload(organization_id, user, device)
        try:
            # urllib blocks: run it in a thread so the event loop keeps serving.
            status = await asyncio.to_thread(_post, self._url, body)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            logger.warning("bootstrap webhook failed", url=redacted_url(self._url), error=str(exc))
            return
        if status != 200:
            logger.warning("bootstrap webhook refused", url=redacted_url(self._url), status=status)
