"""The bootstrap webhook: a JSON POST after each organization bootstrap.

As the reference, the bootstrap reply waits for the call; unlike it, the whole call
(connection, request, answer) is bounded by one timeout (`organization_bootstrap_webhook_
timeout`, 30 s by default), so a webhook server that accepts and never answers, or answers
a byte at a time, cannot hold the reply longer than that.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import aiohttp
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


async def _post(url: str, body: bytes) -> int:
    # One session per call: bootstraps are rare, and nothing stays open between them.
    # trust_env: HTTP(S)_PROXY / NO_PROXY are honoured, as urllib did for the reference.
    async with (
        aiohttp.ClientSession(trust_env=True) as session,
        session.post(
            url, data=body, headers={"Content-Type": "application/json; charset=utf-8"}
        ) as response,
    ):
        await response.read()
        return response.status


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
    def __init__(self, url: str | None, timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> None:
        self._url = url
        self._timeout = timeout

    async def notify_bootstrap(self, organization_id: str, user: User, device: Device) -> None:
        """Failures are logged, never raised: the bootstrap itself has succeeded."""
        if self._url is None:
            return
        body = bootstrap_payload(organization_id, user, device)
        try:
            async with asyncio.timeout(self._timeout):
                status = await _post(self._url, body)
        except TimeoutError:
            logger.warning(
                "bootstrap webhook failed",
                url=redacted_url(self._url),
                error=f"no answer in {self._timeout:g} s",
            )
            return
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            logger.warning("bootstrap webhook failed", url=redacted_url(self._url), error=str(exc))
            return
        if status != 200:
            logger.warning("bootstrap webhook refused", url=redacted_url(self._url), status=status)
