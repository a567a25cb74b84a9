from __future__ import annotations

import email.utils
import pathlib
import struct
import zlib
from importlib.resources import files

import pytest

from parsec_server.api.addr import BackendAddr
from parsec_server.backend.asgi.routes import HttpResponse, redirection_url, route_http

DEV_ADDR = BackendAddr.from_url("parsec://localhost:7301")
NO_SSL_ADDR = BackendAddr.from_url("parsec://example.com:443?no_ssl=true")
STATIC_DIR = files("parsec_server.backend").joinpath("static")


def get(
    path: str, query: str = "", backend_addr: BackendAddr = DEV_ADDR, debug: bool = False
) -> HttpResponse:
    return route_http("GET", path, query, backend_addr, debug)


def header_names(response: HttpResponse) -> list[bytes]:
    return [name for name, _ in response.headers]


def header(response: HttpResponse, name: bytes) -> bytes:
    values = [value for key, value in response.headers if key == name]
    assert len(values) == 1, f"{name!r} appears {len(values)} times"
    return values[0]


def location(path: str, query: str = "", backend_addr: BackendAddr = NO_SSL_ADDR) -> str:
    response = get(path, query, backend_addr)
    assert response.status == 302
    return header(response, b"location").decode("latin-1")


# --- routing -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "", "//"])
def test_home_page_is_served_for_root_paths(path: str) -> None:
    response = get(path)
    assert response.status == 200
    assert b"Parsec backend server is running" in response.body


def test_home_page_links_to_download_and_documentation() -> None:
    body = get("/").body
    assert b'href="https://parsec.cloud/get-parsec"' in body
    assert b'href="https://docs.parsec.cloud"' in body


@pytest.mark.parametrize("path", ["/", "/nope"])
def test_html_pages_reference_favicon_and_stylesheet(path: str) -> None:
    body = get(path).body
    assert b'href="/static/favicon.ico"' in body
    assert b'href="/static/base.css"' in body


def test_html_page_headers_are_type_length_date_server() -> None:
    response = get("/")
    assert header_names(response) == [b"content-type", b"content-length", b"date", b"server"]
    assert header(response, b"content-type") == b"text/html;charset=utf-8"
    assert header(response, b"content-length") == str(len(response.body)).encode()


@pytest.mark.parametrize(
    "path", ["/ws", "/nope", "/redirec", "/static", "/index.html", "/Redirect/Org1"]
)
def test_unknown_paths_get_the_not_found_page(path: str) -> None:
    response = get(path)
    assert response.status == 404
    assert b"Not found" in response.body
    assert header_names(response) == [b"content-type", b"content-length", b"date", b"server"]
    assert header(response, b"content-type") == b"text/html;charset=utf-8"


@pytest.mark.parametrize("method", ["POST", "HEAD", "PUT", "DELETE", "OPTIONS", "get"])
@pytest.mark.parametrize("path", ["/", "/redirect/Org1", "/static/base.css", "/nope"])
def test_methods_other_than_get_are_not_allowed(method: str, path: str) -> None:
    response = route_http(method, path, "", DEV_ADDR, debug=False)
    assert response.status == 405
    assert response.body == b""
    assert header_names(response) == [b"date", b"server"]


def test_query_string_does_not_affect_non_redirect_routes() -> None:
    assert get("/", "a=1").body == get("/").body
    assert get("/static/base.css", "v=2").status == 200


# --- common headers ----------------------------------------------------------------------


def test_server_header_is_parsec_without_debug() -> None:
    assert header(get("/"), b"server") == b"parsec"


def test_server_header_names_parsec_version_and_our_package_with_debug() -> None:
    server = header(get("/", debug=True), b"server").decode()
    assert server.startswith("parsec/v2.0.0 parsec-server/")
    assert server != "parsec/v2.0.0 parsec-server/"


def test_date_header_is_an_imf_fixdate() -> None:
    response = route_http("GET", "/", "", DEV_ADDR, debug=False, now=784111777)
    assert header(response, b"date") == b"Sun, 06 Nov 1994 08:49:37 GMT"


def test_date_header_defaults_to_the_current_time() -> None:
    date = header(get("/"), b"date").decode()
    assert date.endswith(" GMT")
    assert email.utils.parsedate_to_datetime(date) is not None


# --- redirection -------------------------------------------------------------------------


def test_redirect_spec_example_with_repeated_and_empty_params() -> None:
    assert location("/redirect/Org1", "action=claim_user&token=abc&no_ssl=false&a=1&a=2&b=") == (
        "parsec://example.com:443/Org1?action=claim_user&token=abc&a=1&a=2&no_ssl=true"
    )


def test_redirect_keeps_path_percent_encoding_and_reencodes_query() -> None:
    assert location("/redirect/My%20Org", "x=%2F") == (
        "parsec://example.com:443/My%20Org?x=%2F&no_ssl=true"
    )


def test_redirect_drops_client_no_ssl_and_appends_backend_one() -> None:
    assert location("/redirect/Org1", "no_ssl=true&no_ssl=false&a=1") == (
        "parsec://example.com:443/Org1?a=1&no_ssl=true"
    )


def test_redirect_drops_client_no_ssl_without_adding_one_for_tls_backend() -> None:
    assert location("/redirect/Org1", "no_ssl=true&a=1", DEV_ADDR) == (
        "parsec://localhost:7301/Org1?a=1"
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/redirect", "parsec://localhost:7301"),
        ("/redirect/", "parsec://localhost:7301/"),
        ("/redirectfoo", "parsec://localhost:7301/foo"),
        ("/redirect/a/b%2Fc", "parsec://localhost:7301/a/b%2Fc"),
    ],
)
def test_redirect_path_handling_with_dev_backend(path: str, expected: str) -> None:
    assert location(path, backend_addr=DEV_ADDR) == expected


def test_redirect_with_only_empty_params_has_no_query() -> None:
    assert location("/redirect/Org1", "a=&b&&", DEV_ADDR) == "parsec://localhost:7301/Org1"


def test_redirect_omits_backend_default_port() -> None:
    backend_addr = BackendAddr.from_url("parsec://example.com:80?no_ssl=true")
    assert location("/redirect/Org1", "", backend_addr) == "parsec://example.com/Org1?no_ssl=true"


def test_redirect_form_decodes_then_reencodes_query() -> None:
    assert location("/redirect/O", "q=a+b%20c&r=%C3%A9%FF~", DEV_ADDR) == (
        "parsec://localhost:7301/O?q=a+b+c&r=%C3%A9%FF~"
    )


def test_redirect_response_headers_are_location_date_server_without_body() -> None:
    response = get("/redirect/Org1", "action=claim_user")
    assert response.status == 302
    assert response.body == b""
    assert header_names(response) == [b"location", b"date", b"server"]


def test_redirect_turns_invitation_email_link_into_parsec_url() -> None:
    url = redirection_url(
        "/Org1", "action=claim_user&token=deef4729905d4169a629f0f97795ba58", DEV_ADDR
    )
    assert url == (
        "parsec://localhost:7301/Org1?action=claim_user&token=deef4729905d4169a629f0f97795ba58"
    )


# --- static files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("base.css", b"text/css"),
        ("favicon.ico", b"image/vnd.microsoft.icon"),
        ("parsec.png", b"image/png"),
    ],
)
def test_static_file_is_served_with_type_and_length(name: str, content_type: bytes) -> None:
    response = get(f"/static/{name}")
    assert response.status == 200
    assert response.body == STATIC_DIR.joinpath(name).read_bytes()
    assert header_names(response) == [b"content-type", b"content-length", b"date", b"server"]
    assert header(response, b"content-type") == content_type
    assert header(response, b"content-length") == str(len(response.body)).encode()


@pytest.mark.parametrize(
    "path",
    [
        "/static/",
        "/static/missing.css",
        "/static/__init__.py",
        "/static/__pycache__",
        "/static/sub/base.css",
        "/static/../static/base.css",
        "/static/base.css/",
        "/static/base%2Ecss",
    ],
)
def test_static_missing_or_forbidden_is_an_empty_404(path: str) -> None:
    response = get(path)
    assert response.status == 404
    assert response.body == b""
    assert header_names(response) == [b"date", b"server"]


def test_static_files_are_served_from_memory_after_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = get("/static/base.css").body

    def fail(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("static file read again")

    monkeypatch.setattr(pathlib.Path, "read_bytes", fail)
    monkeypatch.setattr(pathlib.Path, "open", fail)
    assert get("/static/base.css").body == expected


# --- static assets are valid images ------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


def _check_png(data: bytes) -> tuple[int, int]:
    chunks = _png_chunks(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1][0] == b"IEND"
    width, height, depth, color_type = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (depth, color_type) == (8, 6)  # 8-bit RGBA
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(pixels) == height * (1 + 4 * width)
    return width, height


def test_parsec_png_is_a_valid_png() -> None:
    assert _check_png(STATIC_DIR.joinpath("parsec.png").read_bytes()) == (128, 128)


def test_favicon_is_a_valid_ico_embedding_a_png() -> None:
    data = STATIC_DIR.joinpath("favicon.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", data[:6])
    assert (reserved, kind, count) == (0, 1, 1)
    width, height, _, _, _, _, size, offset = struct.unpack("<BBBBHHII", data[6:22])
    assert offset + size == len(data)
    assert _check_png(data[offset : offset + size]) == (width, height)
