"""The administration REST API (`/administration/...`), client side.

The server's `parsec://host[:port][?no_ssl=true]` address gives the base URL (`https://`,
or `http://` with `no_ssl=true`); TLS trusts the system's roots, or `SSL_CAFILE` when set
(as the websocket client does). The administration token goes in `Authorization: Bearer`.

Every failure is an `AdminApiError` whose message is one line for the operator: the
server unreachable, a TLS certificate not trusted, a refused token, an unknown
organization or user, any other error answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import msgspec

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import DateTime
from parsec_server.client.connection import ssl_context_for

PREFIX = "/administration"
# Seconds for one whole request (connection, TLS, answer).
REQUEST_TIMEOUT = 60.0
PER_PAGE = 100  # the most the server gives per page

StatsFormat = Literal["json", "csv"]


class AdminApiError(Exception):
    """A request failed; `str()` is the operator's one-line message. `status` is the HTTP
    status (None: no answer) and `error` the answer's error code."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def rfc3339(value: DateTime) -> str:
    return value.dt.isoformat().replace("+00:00", "Z")


def _error_of(status: int, body: bytes, path: str) -> AdminApiError:
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        decoded = None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("error"), str):
        if status == 404:
            return AdminApiError(
                f"The server has no administration REST API (404 on {path})", status
            )
        return AdminApiError(f"The server answered HTTP {status} on {path}", status)
    error: str = decoded["error"]
    detail = decoded.get("detail")
    if status in (401, 403):
        message = "Bad administration token (refused by the server)"
    elif error == "organization_not_found":
        message = "Unknown organization" + (f": {detail}" if detail else "")
    elif error == "user_not_found":
        message = "Unknown user" + (f": {detail}" if detail else "")
    else:
        message = f"Refused by the server ({status} {error})" + (f": {detail}" if detail else "")
    return AdminApiError(" ".join(message.split()), status, error)


class AdminRestClient:
    """`async with AdminRestClient(addr, token) as api: await api.list_organizations()`."""

    def __init__(self, addr: BackendAddr, administration_token: str) -> None:
        self._addr = addr
        self._token = administration_token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminRestClient:
        tls = ssl_context_for(self._addr)
        self._session = aiohttp.ClientSession(
            base_url=self._addr.to_http_base(),
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> bytes:
        """The body of a 2xx answer to `method PREFIX+path`; raises AdminApiError."""
        assert self._session is not None, "use `async with`"
        where = f"{self._addr.hostname}:{self._addr.port}"
        url = PREFIX + path
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                data=None if body is None else msgspec.json.encode(body),
                headers=None if body is None else {"Content-Type": "application/json"},
            ) as response:
                content = await response.read()
                if response.status >= 400:
                    raise _error_of(response.status, content, url)
                return content
        except aiohttp.ClientConnectorCertificateError as exc:
            raise AdminApiError(
                f"The TLS certificate of {where} is not trusted ({exc.certificate_error}); "
                "set SSL_CAFILE to the file of its certificate authority"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise AdminApiError(f"TLS failed with {where}: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            raise AdminApiError(f"Cannot reach the server at {where}: {exc.strerror}") from None
        except aiohttp.ClientError as exc:
            raise AdminApiError(f"Connection to {where} failed: {exc}") from None
        except TimeoutError:
            raise AdminApiError(
                f"No answer from {where} within {REQUEST_TIMEOUT:g} seconds"
            ) from None

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        content = await self.request(method, path, params=params, body=body)
        try:
            return msgspec.json.decode(content)
        except msgspec.DecodeError:
            raise AdminApiError(f"The server's answer to {PREFIX}{path} is not JSON") from None

    # --- the routes ------------------------------------------------------------------------

    async def list_organizations(self) -> list[dict[str, Any]]:
        """Every organization (all pages), in the server's order."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            params = {"page": str(page), "per_page": str(PER_PAGE)}
            rep = await self._json("GET", "/organizations", params=params)
            organizations: list[dict[str, Any]] = rep["organizations"]
            found += organizations
            if not organizations or len(found) >= rep["total"]:
                return found
            page += 1

    async def get_organization(self, organization_id: str) -> dict[str, Any]:
        rep: dict[str, Any] = await self._json("GET", _organization_path(organization_id))
        return rep

    async def update_organization(
        self, organization_id: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """`changes`: any of `is_expired`, `expiration_date` (DateTime or None),
        `active_users_limit`, `user_profile_outsider_allowed`; answers the new state."""
        body = {
            key: rfc3339(value) if isinstance(value, DateTime) else value
            for key, value in changes.items()
        }
        rep: dict[str, Any] = await self._json(
            "PATCH", _organization_path(organization_id), body=body
        )
        return rep

    async def list_users(self, organization_id: str) -> list[dict[str, Any]]:
        rep = await self._json("GET", f"{_organization_path(organization_id)}/users")
        users: list[dict[str, Any]] = rep["users"]
        return users

    async def freeze_user(
        self,
        organization_id: str,
        frozen: bool,
        *,
        user_id: str | None = None,
        email: str | None = None,
    ) -> dict[str, Any]:
        """The user by id or by e-mail (exactly one); answers the user's new state."""
        if (user_id is None) == (email is None):
            raise ValueError("give either user_id or email")
        who = {"user_id": user_id} if user_id is not None else {"user_email": email}
        rep: dict[str, Any] = await self._json(
            "POST",
            f"{_organization_path(organization_id)}/users/freeze",
            body={**who, "frozen": frozen},
        )
        return rep

    async def server_stats(self, format: StatsFormat, at: DateTime | None = None) -> bytes:
        """The stats of every organization, as the server renders them (JSON or CSV)."""
        params: dict[str, str] = {"format": format}
        if at is not None:
            params["at"] = rfc3339(at)
        return await self.request("GET", "/stats", params=params)


def _organization_path(organization_id: str) -> str:
    return f"/organizations/{quote(organization_id, safe='')}"
