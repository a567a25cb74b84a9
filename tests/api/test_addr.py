from __future__ import annotations

import uuid

import pytest

from parsec_server.api.addr import (
    AddrError,
    BackendAddr,
    BackendInvitationAddr,
    BackendOrganizationAddr,
    BackendOrganizationBootstrapAddr,
    InvitationAction,
    decode_root_verify_key,
    encode_root_verify_key,
)
from parsec_server.api.codec import ID

SPEC_BOOTSTRAP_URL = (
    "parsec://localhost:7301/MyOrg?action=bootstrap_organization"
    "&token=753d5875e0a52bd3c9043884be0e618e3a9d21f34a142b6993e975cce044c7d2&no_ssl=true"
)
SPEC_ORGANIZATION_URL = "parsec://localhost:7301/Org1?no_ssl=true&rvk=L52DTWZIEQM7VDFRYQBQIGHR5KAS7I5EHJL57LOLMXAAKQYGF7QAssss"
SPEC_INVITATION_URL = "parsec://localhost:7301/Org1?action=claim_user&token=deef4729905d4169a629f0f97795ba58&no_ssl=true"
SPEC_RVK_TEXT = "L52DTWZIEQM7VDFRYQBQIGHR5KAS7I5EHJL57LOLMXAAKQYGF7QAssss"
KEY = bytes(range(32))
TOKEN = ID(uuid.UUID("deef4729-905d-4169-a629-f0f97795ba58"))


@pytest.fixture
def dev_addr() -> BackendAddr:
    return BackendAddr.from_url("parsec://localhost:6777?no_ssl=true")


# --- server address ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "hostname", "port", "use_ssl"),
    [
        ("parsec://example.com", "example.com", 443, True),
        ("parsec://example.com/", "example.com", 443, True),
        ("parsec://example.com?no_ssl=true", "example.com", 80, False),
        ("parsec://example.com?no_ssl=TRUE", "example.com", 80, False),
        ("parsec://example.com?no_ssl=False", "example.com", 443, True),
        ("parsec://Example.COM:7301", "example.com", 7301, True),
        ("parsec://example.com:443?no_ssl=true", "example.com", 443, False),
        ("parsec://example.com?unknown=1&no_ssl=true", "example.com", 80, False),
        ("parsec://127.0.0.1:6777?no_ssl=true", "127.0.0.1", 6777, False),
    ],
)
def test_backend_addr_parses_host_port_and_ssl(
    url: str, hostname: str, port: int, use_ssl: bool
) -> None:
    addr = BackendAddr.from_url(url)
    assert (addr.hostname, addr.port, addr.use_ssl) == (hostname, port, use_ssl)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("parsec://example.com", "parsec://example.com"),
        ("parsec://example.com:443/", "parsec://example.com"),
        ("parsec://example.com:80?no_ssl=true", "parsec://example.com?no_ssl=true"),
        ("parsec://example.com:443?no_ssl=true", "parsec://example.com:443?no_ssl=true"),
        ("parsec://example.com?no_ssl=false", "parsec://example.com"),
        ("parsec://localhost:7301", "parsec://localhost:7301"),
        ("parsec://[::1]:7301", "parsec://[::1]:7301"),
    ],
)
def test_backend_addr_writes_port_only_when_not_default(url: str, expected: str) -> None:
    assert BackendAddr.from_url(url).to_url() == expected


def test_backend_addr_netloc_and_http_base() -> None:
    addr = BackendAddr.from_url("parsec://localhost:7301")
    assert addr.netloc == "localhost:7301"
    assert addr.to_http_base() == "https://localhost:7301"
    no_ssl = BackendAddr.from_url("parsec://example.com?no_ssl=true")
    assert no_ssl.netloc == "example.com"
    assert no_ssl.to_http_base() == "http://example.com"


def test_backend_addr_query_params_carry_no_ssl_only_without_tls() -> None:
    assert BackendAddr.from_url("parsec://a").query_params() == []
    assert BackendAddr.from_url("parsec://a?no_ssl=true").query_params() == [("no_ssl", "true")]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com", "Must start with `parsec://`"),
        ("example.com", "Must start with `parsec://`"),
        ("parsec://", "Missing mandatory hostname"),
        ("parsec://example.com/Org", "Cannot have path"),
        ("parsec://example.com?no_ssl=yes", "Invalid `no_ssl` param value"),
        ("parsec://example.com?no_ssl=true&no_ssl=true", "Multiple values for param `no_ssl`"),
        ("parsec://example.com?no_ssl", "Invalid query string"),
        ("parsec://example.com:99999", "Invalid port"),
        ("parsec://example.com:abc", "Invalid port"),
        ("parsec://[::1", "Invalid URL"),
    ],
)
def test_backend_addr_rejects_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(AddrError, match=message):
        BackendAddr.from_url(url)


# --- root verify key ---------------------------------------------------------------------


def test_root_verify_key_text_replaces_padding_with_s() -> None:
    text = encode_root_verify_key(KEY)
    assert len(text) == 56
    assert text.endswith("ssss")
    assert "=" not in text
    assert decode_root_verify_key(text) == KEY


def test_root_verify_key_spec_example_round_trips() -> None:
    assert encode_root_verify_key(decode_root_verify_key(SPEC_RVK_TEXT)) == SPEC_RVK_TEXT


@pytest.mark.parametrize(
    "text",
    ["", "not base32!", SPEC_RVK_TEXT.lower(), SPEC_RVK_TEXT[:-8], "AAAAAAAA", "é" * 56],
)
def test_root_verify_key_rejects_invalid_text(text: str) -> None:
    with pytest.raises(AddrError, match="Invalid `rvk` param value"):
        decode_root_verify_key(text)


# --- organization address ----------------------------------------------------------------


def test_organization_addr_spec_example_round_trips() -> None:
    addr = BackendOrganizationAddr.from_url(SPEC_ORGANIZATION_URL)
    assert addr.backend_addr == BackendAddr("localhost", 7301, use_ssl=False)
    assert addr.organization_id == "Org1"
    assert addr.root_verify_key_text == SPEC_RVK_TEXT
    assert addr.to_url() == SPEC_ORGANIZATION_URL


def test_organization_addr_writes_rvk_after_no_ssl(dev_addr: BackendAddr) -> None:
    rvk = encode_root_verify_key(KEY)
    addr = BackendOrganizationAddr.build(dev_addr, "MyOrg", KEY)
    assert addr.to_url() == f"parsec://localhost:6777/MyOrg?no_ssl=true&rvk={rvk}"
    tls = BackendOrganizationAddr.build(BackendAddr.from_url("parsec://a.com"), "MyOrg", KEY)
    assert tls.to_url() == f"parsec://a.com/MyOrg?rvk={rvk}"


def test_organization_addr_form_quotes_non_ascii_organization_id(dev_addr: BackendAddr) -> None:
    addr = BackendOrganizationAddr.build(dev_addr, "Orgé", KEY)
    url = addr.to_url()
    assert url.startswith("parsec://localhost:6777/Org%C3%A9?")
    assert BackendOrganizationAddr.from_url(url) == addr


def test_organization_addr_ignores_unknown_params() -> None:
    addr = BackendOrganizationAddr.from_url(SPEC_ORGANIZATION_URL + "&foo=bar")
    assert addr.to_url() == SPEC_ORGANIZATION_URL


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("parsec://localhost/Org1", "Missing mandatory `rvk` param"),
        ("parsec://localhost?rvk=" + SPEC_RVK_TEXT, "Missing organization ID"),
        ("parsec://localhost/?rvk=" + SPEC_RVK_TEXT, "Missing organization ID"),
        ("parsec://localhost/Org1/?rvk=" + SPEC_RVK_TEXT, "Invalid organization ID"),
        ("parsec://localhost/My%20Org?rvk=" + SPEC_RVK_TEXT, "Invalid organization ID"),
        ("parsec://localhost/" + "a" * 33 + "?rvk=" + SPEC_RVK_TEXT, "Invalid organization ID"),
        ("parsec://localhost/Org1?rvk=abc", "Invalid `rvk` param value"),
        (
            f"parsec://localhost/Org1?rvk={SPEC_RVK_TEXT}&rvk={SPEC_RVK_TEXT}",
            "Multiple values for param `rvk`",
        ),
        ("http://localhost/Org1?rvk=" + SPEC_RVK_TEXT, "Must start with `parsec://`"),
    ],
)
def test_organization_addr_rejects_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(AddrError, match=message):
        BackendOrganizationAddr.from_url(url)


def test_organization_addr_build_rejects_invalid_parts(dev_addr: BackendAddr) -> None:
    with pytest.raises(AddrError, match="Invalid organization ID"):
        BackendOrganizationAddr.build(dev_addr, "bad/org", KEY)
    with pytest.raises(AddrError, match="Root verify key must be 32 bytes"):
        BackendOrganizationAddr.build(dev_addr, "Org", b"short")


# --- bootstrap address -------------------------------------------------------------------


def test_bootstrap_addr_spec_example_round_trips() -> None:
    addr = BackendOrganizationBootstrapAddr.from_url(SPEC_BOOTSTRAP_URL)
    assert addr.backend_addr == BackendAddr("localhost", 7301, use_ssl=False)
    assert addr.organization_id == "MyOrg"
    assert addr.token == "753d5875e0a52bd3c9043884be0e618e3a9d21f34a142b6993e975cce044c7d2"
    assert addr.to_url() == SPEC_BOOTSTRAP_URL


def test_bootstrap_addr_build_writes_action_token_then_no_ssl(dev_addr: BackendAddr) -> None:
    url = BackendOrganizationBootstrapAddr.build(dev_addr, "MyOrg", "abc123").to_url()
    assert url == (
        "parsec://localhost:6777/MyOrg?action=bootstrap_organization&token=abc123&no_ssl=true"
    )


def test_bootstrap_addr_omits_empty_token(dev_addr: BackendAddr) -> None:
    url = BackendOrganizationBootstrapAddr.build(dev_addr, "MyOrg").to_url()
    assert url == "parsec://localhost:6777/MyOrg?action=bootstrap_organization&no_ssl=true"


@pytest.mark.parametrize(
    "url",
    [
        "parsec://localhost/MyOrg?action=bootstrap_organization",
        "parsec://localhost/MyOrg?action=bootstrap_organization&token=",
    ],
)
def test_bootstrap_addr_missing_or_empty_token_means_spontaneous(url: str) -> None:
    assert BackendOrganizationBootstrapAddr.from_url(url).token == ""


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("parsec://localhost/MyOrg", "Missing mandatory `action` param"),
        ("parsec://localhost/MyOrg?action=claim_user", "Expected `action=bootstrap_organization`"),
        (
            "parsec://localhost/MyOrg?action=bootstrap_organization&token=a&token=b",
            "Multiple values for param `token`",
        ),
        ("parsec://localhost?action=bootstrap_organization", "Missing organization ID"),
        (
            "parsec://localhost/MyOrg?action=bootstrap_organization&no_ssl=maybe",
            "Invalid `no_ssl` param value",
        ),
    ],
)
def test_bootstrap_addr_rejects_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(AddrError, match=message):
        BackendOrganizationBootstrapAddr.from_url(url)


# --- invitation address ------------------------------------------------------------------


def test_invitation_addr_spec_example_round_trips() -> None:
    addr = BackendInvitationAddr.from_url(SPEC_INVITATION_URL)
    assert addr.backend_addr == BackendAddr("localhost", 7301, use_ssl=False)
    assert addr.organization_id == "Org1"
    assert addr.action is InvitationAction.CLAIM_USER
    assert addr.token == TOKEN
    assert addr.to_url() == SPEC_INVITATION_URL


def test_invitation_addr_writes_token_as_32_lowercase_hex() -> None:
    backend_addr = BackendAddr.from_url("parsec://parsec.example.com")
    addr = BackendInvitationAddr.build(backend_addr, "Org1", InvitationAction.CLAIM_DEVICE, TOKEN)
    assert addr.to_url() == (
        "parsec://parsec.example.com/Org1?action=claim_device"
        "&token=deef4729905d4169a629f0f97795ba58"
    )


@pytest.mark.parametrize(
    "token",
    [
        "deef4729-905d-4169-a629-f0f97795ba58",
        "DEEF4729905D4169A629F0F97795BA58",
        "%7Bdeef4729-905d-4169-a629-f0f97795ba58%7D",
    ],
)
def test_invitation_addr_reads_any_uuid_form(token: str) -> None:
    addr = BackendInvitationAddr.from_url(
        f"parsec://localhost/Org1?action=claim_user&token={token}"
    )
    assert addr.token == TOKEN


def test_invitation_addr_http_redirection_url_matches_email_link() -> None:
    addr = BackendInvitationAddr.build(
        BackendAddr.from_url("parsec://localhost:7301"), "Org1", InvitationAction.CLAIM_USER, TOKEN
    )
    assert addr.to_http_redirection_url() == (
        "https://localhost:7301/redirect/Org1?action=claim_user"
        "&token=deef4729905d4169a629f0f97795ba58"
    )


def test_invitation_addr_http_redirection_url_has_no_no_ssl() -> None:
    addr = BackendInvitationAddr.build(
        BackendAddr.from_url("parsec://example.com?no_ssl=true"),
        "Org1",
        InvitationAction.CLAIM_DEVICE,
        TOKEN,
    )
    assert addr.to_http_redirection_url() == (
        "http://example.com/redirect/Org1?action=claim_device"
        "&token=deef4729905d4169a629f0f97795ba58"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("parsec://localhost/Org1?token=" + TOKEN.hex, "Missing mandatory `action` param"),
        (
            "parsec://localhost/Org1?action=bootstrap_organization&token=" + TOKEN.hex,
            "Expected `action=claim_user` or `action=claim_device`",
        ),
        ("parsec://localhost/Org1?action=claim_user", "Missing mandatory `token` param"),
        ("parsec://localhost/Org1?action=claim_user&token=", "Invalid `token` param value"),
        ("parsec://localhost/Org1?action=claim_user&token=xyz", "Invalid `token` param value"),
        (
            f"parsec://localhost/Org1?action=claim_user&action=claim_user&token={TOKEN.hex}",
            "Multiple values for param `action`",
        ),
        (f"parsec://localhost?action=claim_user&token={TOKEN.hex}", "Missing organization ID"),
    ],
)
def test_invitation_addr_rejects_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(AddrError, match=message):
        BackendInvitationAddr.from_url(url)


def test_addr_error_is_a_value_error() -> None:
    assert issubclass(AddrError, ValueError)
