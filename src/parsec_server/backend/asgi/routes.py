"""Plain HTTP routes (protocol/10-transport.md section 6): home page, `/redirect...`,
`/static/...`, 404 and 405.

`route_http` is pure apart from reading the clock and, once, the static files: it turns a
request into an `HttpResponse` that the ASGI app sends.

Deviations from the reference, all invisible to clients:
* header names are lowercase (ASGI requires it; the reference has `content-Length`...);
* bodiless responses carry no framing header: the ASGI server picks one (chunked or
  `content-length: 0`), which the spec allows;
* the debug `server` header is `parsec/v2.0.0 parsec-server/<our package version>`
  instead of `parsec/v2.0.0 python-h11/<h11 version>`, since we do not use h11.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from parsec_server.api.addr import PARSEC_SCHEME, BackendAddr

PARSEC_VERSION = "v2.0.0"
_PACKAGE_NAME = "parsec-server"

_HTML_CONTENT_TYPE = b"text/html;charset=utf-8"
_REDIRECT_PREFIX = "/redirect"  # no trailing slash: `/redirectfoo` redirects to `/foo`
_STATIC_PREFIX = "/static/"

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What to send: status code, headers in order (lowercase names) and body."""

    status: int
    headers: Headers
    body: bytes = b""


_HOME_PAGE = b"""\
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Parsec</title>
  <link rel="icon" href="/static/favicon.ico">
  <link rel="stylesheet" href="/static/base.css">
</head>
<body>
  <main>
    <img src="/static/parsec.png" alt="Parsec logo">
    <h1>Parsec backend server is running</h1>
    <p>This server is reached with the Parsec client:
      <a href="https://parsec.cloud/get-parsec">download Parsec</a>.</p>
    <p>To learn how to use it, read the
      <a href="https://docs.parsec.cloud">Parsec documentation</a>.</p>
  </main>
</body>
</html>
"""

_NOT_FOUND_PAGE = b"""\
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Not found - Parsec</title>
  <link rel="icon" href="/static/favicon.ico">
  <link rel="stylesheet" href="/static/base.css">
</head>
<body>
  <main>
    <img src="/static/parsec.png" alt="Parsec logo">
    <h1>Not found</h1>
    <p>There is nothing at this address. <a href="/">Back to the home page</a>.</p>
  </main>
</body>
</html>
"""


def route_http(
    method: str,
    path: str,
    query_string: str,
    backend_addr: BackendAddr,
    debug: bool,
    *,
    now: float | None = None,
) -> HttpResponse:
    """Answer a plain (non-WebSocket) HTTP request.

    `path` is the raw request path, still percent-encoded, without the query (ASGI
    `raw_path` decoded as latin-1); `query_string` is the raw query without `?` (ASGI
    `query_string` decoded as latin-1). `now` (seconds since the epoch) fixes the `date`
    header, for tests.
    """
    tail = _common_headers(debug, now)
    if method != "GET":
        return HttpResponse(405, tail)
    try:
        # Split as a URL like the reference does: `//` is an empty path (the home page).
        path = urlsplit(path).path
    except ValueError:  # e.g. `//[x`, an unterminated IPv6 "host"
        return _html_page(404, _NOT_FOUND_PAGE, tail)
    if path in ("", "/"):
        return _html_page(200, _HOME_PAGE, tail)
    if path.startswith(_REDIRECT_PREFIX):
        location = redirection_url(path.removeprefix(_REDIRECT_PREFIX), query_string, backend_addr)
        return HttpResponse(302, [(b"location", location.encode("latin-1")), *tail])
    if path.startswith(_STATIC_PREFIX):
        return _static_file(path.removeprefix(_STATIC_PREFIX), tail)
    return _html_page(404, _NOT_FOUND_PAGE, tail)


def redirection_url(path: str, query_string: str, backend_addr: BackendAddr) -> str:
    """The `parsec://` URL for `GET /redirect<path>?<query_string>` (section 6.3)."""
    query = _group_params(query_string)
    query.pop("no_ssl", None)  # decided by the server, not by the link
    for name, value in backend_addr.query_params():
        query.setdefault(name, []).append(value)
    if path and not path.startswith("/"):
        path = "/" + path
    url = f"{PARSEC_SCHEME}://{backend_addr.netloc}{path}"
    # latin-1 both ways keeps every percent-escaped byte as it was, even invalid UTF-8.
    encoded_query = urlencode(query, doseq=True, encoding="latin-1")
    if encoded_query:
        url += "?" + encoded_query
    return url


def _group_params(query_string: str) -> dict[str, list[str]]:
    """Form-decode, dropping empty values; names in order of first appearance."""
    grouped: dict[str, list[str]] = {}
    for name, value in parse_qsl(query_string, encoding="latin-1"):
        grouped.setdefault(name, []).append(value)
    return grouped


def _html_page(status: int, page: bytes, tail: Headers) -> HttpResponse:
    headers = [
        (b"content-type", _HTML_CONTENT_TYPE),
        (b"content-length", str(len(page)).encode("ascii")),
        *tail,
    ]
    return HttpResponse(status, headers, page)


def _static_file(name: str, tail: Headers) -> HttpResponse:
    # Names with `/`, `__init__.py` and directories are never keys, hence 404.
    static = _static_files().get(name)
    if static is None:
        return HttpResponse(404, tail)
    headers: Headers = []
    if static.content_type is not None:
        headers.append((b"content-type", static.content_type.encode("ascii")))
    headers.append((b"content-length", str(len(static.content)).encode("ascii")))
    return HttpResponse(200, [*headers, *tail], static.content)


def _common_headers(debug: bool, now: float | None) -> Headers:
    return [
        (b"date", formatdate(now, usegmt=True).encode("ascii")),
        (b"server", _server_header(debug)),
    ]


async def send_response(send: Any, response: HttpResponse) -> None:
    """Send an answer through ASGI; one request per connection, as the reference."""
    headers = [*response.headers, (b"connection", b"close")]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def common_headers(debug: bool) -> Headers:
    """The `date` and `server` headers every answer ends with (also used by `health`)."""
    return _common_headers(debug, None)


@functools.cache
def _server_header(debug: bool) -> bytes:
    if not debug:
        return b"parsec"
    return f"parsec/{PARSEC_VERSION} {_PACKAGE_NAME}/{package_version()}".encode("ascii")


def package_version() -> str:
    try:
        return importlib.metadata.version(_PACKAGE_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class _StaticFile:
    content: bytes
    content_type: str | None


@functools.cache
def _static_files() -> Mapping[str, _StaticFile]:
    """Every servable file of the flat `static/` directory, read once on first use."""
    directory = importlib.resources.files("parsec_server.backend").joinpath("static")
    # A fresh table holds Python's built-in types only, not the host's /etc/mime.types.
    types = mimetypes.MimeTypes()
    return {
        entry.name: _StaticFile(entry.read_bytes(), types.guess_type(entry.name)[0])
        for entry in directory.iterdir()
        if entry.is_file() and entry.name != "__init__.py"
    }
