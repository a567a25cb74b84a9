"""`parsec://` addresses (see protocol/30-commands-org-user-invite.md section 11).

Only the kinds a server deals with are here: server, organization, organization bootstrap
and API 2 invitation. Each parses with `from_url` (raising `AddrError`) and formats with
`to_url()`, which writes parameters in the order the spec shows.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import SplitResult, parse_qs, quote_plus, unquote, urlencode, urlsplit

from parsec_server.api.codec import ID
from parsec_server.api.ids import InvitationType, is_valid_name

PARSEC_SCHEME = "parsec"

_ROOT_VERIFY_KEY_SIZE = 32
_BOOTSTRAP_ACTION = "bootstrap_organization"

_Params = dict[str, list[str]]
_QueryItems = list[tuple[str, str]]


class AddrError(ValueError):
    """A `parsec://` URL that does not parse, or an address built from invalid parts."""


class InvitationAction(StrEnum):
    """The `action` of an API 2 invitation URL."""

    CLAIM_USER = "claim_user"
    CLAIM_DEVICE = "claim_device"

    @classmethod
    def for_type(cls, invitation_type: InvitationType) -> InvitationAction:
        if invitation_type is InvitationType.USER:
            return cls.CLAIM_USER
        return cls.CLAIM_DEVICE

    @property
    def invitation_type(self) -> InvitationType:
        if self is InvitationAction.CLAIM_USER:
            return InvitationType.USER
        return InvitationType.DEVICE


# --- parsing helpers ---------------------------------------------------------------------


def _split_url(url: str) -> tuple[SplitResult, _Params]:
    try:
        split = urlsplit(url)
    except ValueError as exc:
        raise AddrError(f"Invalid URL: {exc}") from exc
    if split.scheme != PARSEC_SCHEME:
        raise AddrError(f"Must start with `{PARSEC_SCHEME}://`")
    try:
        # Strict parsing rejects malformed fields (`a&b`); `urlsplit` gives "" for `host?`.
        params = parse_qs(split.query, keep_blank_values=True, strict_parsing=bool(split.query))
    except ValueError as exc:
        raise AddrError(f"Invalid query string: {exc}") from exc
    return split, params


def _get_param(params: _Params, name: str) -> str | None:
    values = params.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise AddrError(f"Multiple values for param `{name}`")
    return values[0]


def _get_mandatory_param(params: _Params, name: str) -> str:
    value = _get_param(params, name)
    if value is None:
        raise AddrError(f"Missing mandatory `{name}` param")
    return value


def _parse_no_ssl(value: str) -> bool:
    lowered = value.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise AddrError("Invalid `no_ssl` param value (must be true or false)")


def _parse_backend_addr(split: SplitResult, params: _Params) -> BackendAddr:
    if not split.hostname:
        raise AddrError("Missing mandatory hostname")
    no_ssl = _get_param(params, "no_ssl")
    use_ssl = no_ssl is None or not _parse_no_ssl(no_ssl)
    try:
        port = split.port
    except ValueError as exc:
        raise AddrError(f"Invalid port: {exc}") from exc
    if port is None:
        port = _default_port(use_ssl)
    return BackendAddr(hostname=split.hostname, port=port, use_ssl=use_ssl)


def _parse_organization_id(split: SplitResult) -> str:
    path = unquote(split.path)
    organization_id = path.removeprefix("/")
    if not organization_id:
        raise AddrError("Missing organization ID in path")
    _check_organization_id(organization_id)
    return organization_id


def _check_organization_id(organization_id: str) -> None:
    if not is_valid_name(organization_id):
        raise AddrError(f"Invalid organization ID {organization_id!r}")


# --- formatting helpers ------------------------------------------------------------------


def _default_port(use_ssl: bool) -> int:
    return 443 if use_ssl else 80


def _format_netloc(hostname: str, port: int, default_port: int) -> str:
    host = f"[{hostname}]" if ":" in hostname else hostname  # IPv6 literal
    return host if port == default_port else f"{host}:{port}"


def _format_url(netloc: str, path: str, query: _QueryItems) -> str:
    url = f"{PARSEC_SCHEME}://{netloc}{path}"
    if query:
        url += "?" + urlencode(query)
    return url


def _organization_path(organization_id: str) -> str:
    return "/" + quote_plus(organization_id)


# --- root verify key text form -----------------------------------------------------------


def encode_root_verify_key(key: bytes) -> str:
    """Base32 of the key with each `=` padding character written `s` (the `rvk` param)."""
    return base64.b32encode(key).decode("ascii").replace("=", "s")


def decode_root_verify_key(text: str) -> bytes:
    """Inverse of `encode_root_verify_key`; raises `AddrError` unless it gives 32 bytes."""
    try:
        key = base64.b32decode(text.replace("s", "="))
    except ValueError as exc:  # binascii.Error is a ValueError, so is non-ASCII input
        raise AddrError("Invalid `rvk` param value (must be base32)") from exc
    if len(key) != _ROOT_VERIFY_KEY_SIZE:
        raise AddrError(f"Invalid `rvk` param value (must encode {_ROOT_VERIFY_KEY_SIZE} bytes)")
    return key


# --- address kinds -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendAddr:
    """`parsec://HOST[:PORT][?no_ssl=true]`: where a server is reached."""

    hostname: str
    port: int
    use_ssl: bool

    @classmethod
    def from_url(cls, url: str) -> BackendAddr:
        split, params = _split_url(url)
        if split.path not in ("", "/"):
            raise AddrError("Cannot have path")
        return _parse_backend_addr(split, params)

    @property
    def default_port(self) -> int:
        return _default_port(self.use_ssl)

    @property
    def netloc(self) -> str:
        """`HOST[:PORT]`, the port written only when it is not the scheme default."""
        return _format_netloc(self.hostname, self.port, self.default_port)

    def query_params(self) -> list[tuple[str, str]]:
        """The query parameters every URL of this server carries (`no_ssl=true` or none)."""
        return [] if self.use_ssl else [("no_ssl", "true")]

    def to_url(self) -> str:
        return _format_url(self.netloc, "", self.query_params())

    def to_http_base(self) -> str:
        """`https://HOST[:PORT]` (or `http://` without TLS), as in invitation e-mail links."""
        scheme = "https" if self.use_ssl else "http"
        return f"{scheme}://{self.netloc}"


@dataclass(frozen=True, slots=True)
class BackendOrganizationAddr:
    """`parsec://HOST[:PORT]/ORG?[no_ssl=true&]rvk=RVK`: an organization of a server."""

    backend_addr: BackendAddr
    organization_id: str
    root_verify_key: bytes

    def __post_init__(self) -> None:
        _check_organization_id(self.organization_id)
        if len(self.root_verify_key) != _ROOT_VERIFY_KEY_SIZE:
            raise AddrError(f"Root verify key must be {_ROOT_VERIFY_KEY_SIZE} bytes")

    @classmethod
    def build(
        cls, backend_addr: BackendAddr, organization_id: str, root_verify_key: bytes
    ) -> BackendOrganizationAddr:
        return cls(backend_addr, organization_id, root_verify_key)

    @classmethod
    def from_url(cls, url: str) -> BackendOrganizationAddr:
        split, params = _split_url(url)
        backend_addr = _parse_backend_addr(split, params)
        organization_id = _parse_organization_id(split)
        root_verify_key = decode_root_verify_key(_get_mandatory_param(params, "rvk"))
        return cls(backend_addr, organization_id, root_verify_key)

    def to_url(self) -> str:
        query = [*self.backend_addr.query_params(), ("rvk", self.root_verify_key_text)]
        return _format_url(
            self.backend_addr.netloc, _organization_path(self.organization_id), query
        )

    @property
    def root_verify_key_text(self) -> str:
        return encode_root_verify_key(self.root_verify_key)


@dataclass(frozen=True, slots=True)
class BackendOrganizationBootstrapAddr:
    """`parsec://HOST[:PORT]/ORG?action=bootstrap_organization[&token=T][&no_ssl=true]`.

    An empty `token` is the spontaneous-bootstrap token; it is not written in the URL.
    """

    backend_addr: BackendAddr
    organization_id: str
    token: str = ""

    def __post_init__(self) -> None:
        _check_organization_id(self.organization_id)

    @classmethod
    def build(
        cls, backend_addr: BackendAddr, organization_id: str, token: str = ""
    ) -> BackendOrganizationBootstrapAddr:
        return cls(backend_addr, organization_id, token)

    @classmethod
    def from_url(cls, url: str) -> BackendOrganizationBootstrapAddr:
        split, params = _split_url(url)
        backend_addr = _parse_backend_addr(split, params)
        organization_id = _parse_organization_id(split)
        action = _get_mandatory_param(params, "action")
        if action != _BOOTSTRAP_ACTION:
            raise AddrError(f"Expected `action={_BOOTSTRAP_ACTION}`, got `action={action}`")
        token = _get_param(params, "token") or ""
        return cls(backend_addr, organization_id, token)

    def to_url(self) -> str:
        query: _QueryItems = [("action", _BOOTSTRAP_ACTION)]
        if self.token:
            query.append(("token", self.token))
        query += self.backend_addr.query_params()
        return _format_url(
            self.backend_addr.netloc, _organization_path(self.organization_id), query
        )


@dataclass(frozen=True, slots=True)
class BackendInvitationAddr:
    """`parsec://HOST[:PORT]/ORG?action=claim_user|claim_device&token=HEX[&no_ssl=true]`.

    The API 2 invitation URL; the token is the invitation UUID as 32 lowercase hex digits.
    """

    backend_addr: BackendAddr
    organization_id: str
    action: InvitationAction
    token: ID

    def __post_init__(self) -> None:
        _check_organization_id(self.organization_id)

    @classmethod
    def build(
        cls,
        backend_addr: BackendAddr,
        organization_id: str,
        action: InvitationAction,
        token: ID,
    ) -> BackendInvitationAddr:
        return cls(backend_addr, organization_id, action, token)

    @classmethod
    def from_url(cls, url: str) -> BackendInvitationAddr:
        split, params = _split_url(url)
        backend_addr = _parse_backend_addr(split, params)
        organization_id = _parse_organization_id(split)
        action = _parse_invitation_action(_get_mandatory_param(params, "action"))
        token = _parse_invitation_token(_get_mandatory_param(params, "token"))
        return cls(backend_addr, organization_id, action, token)

    def to_url(self) -> str:
        query = [*self._invitation_query(), *self.backend_addr.query_params()]
        return _format_url(
            self.backend_addr.netloc, _organization_path(self.organization_id), query
        )

    def to_http_redirection_url(self) -> str:
        """The clickable e-mail link, `https://HOST[:PORT]/redirect/ORG?action=...&token=...`.

        No `no_ssl` parameter: the server's `/redirect` route adds its own.
        """
        path = "/redirect" + _organization_path(self.organization_id)
        return f"{self.backend_addr.to_http_base()}{path}?{urlencode(self._invitation_query())}"

    def _invitation_query(self) -> _QueryItems:
        return [("action", self.action.value), ("token", self.token.hex)]


def _parse_invitation_action(action: str) -> InvitationAction:
    try:
        return InvitationAction(action)
    except ValueError:
        raise AddrError(
            f"Expected `action=claim_user` or `action=claim_device`, got `action={action}`"
        ) from None


def _parse_invitation_token(token: str) -> ID:
    try:
        return ID.from_hex(token)
    except ValueError as exc:
        raise AddrError("Invalid `token` param value (must be a UUID)") from exc
