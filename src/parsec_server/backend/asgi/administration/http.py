"""HTTP plumbing of the administration API: errors as JSON, the request body (size cap,
media type), the query string, the bearer token."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote

import msgspec
import msgspec.inspect

from parsec_server.api.crypto import secrets_equal
from parsec_server.backend.asgi.administration.schemas import ErrorRep
from parsec_server.backend.asgi.routes import HttpResponse, common_headers

# Largest request body accepted (the largest valid one is well under 1 KiB).
MAX_BODY_SIZE = 64 * 1024
JSON_CONTENT_TYPE = b"application/json"
CSV_CONTENT_TYPE = b"text/csv; charset=utf-8"

T = TypeVar("T")
Receive = Callable[[], Awaitable[Mapping[str, Any]]]


class ApiError(Exception):
    """An error answer: `status`, `error` (a stable code) and a human `detail`."""

    def __init__(self, status: int, error: str, detail: str | None = None) -> None:
        super().__init__(status, error, detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers: list[tuple[bytes, bytes]] = []


def response(
    status: int,
    body: bytes,
    content_type: bytes = JSON_CONTENT_TYPE,
    debug: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> HttpResponse:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
        *(extra or []),
        *common_headers(debug),
    ]
    return HttpResponse(status, headers, body)


def json_response(status: int, value: msgspec.Struct, debug: bool = False) -> HttpResponse:
    return response(status, msgspec.json.encode(value), debug=debug)


def error_response(exc: ApiError, debug: bool = False) -> HttpResponse:
    body = msgspec.json.encode(ErrorRep(error=exc.error, detail=exc.detail))
    return response(exc.status, body, debug=debug, extra=exc.headers)


# --- Authentication -----------------------------------------------------------------------


def check_bearer(headers: list[tuple[bytes, bytes]], token: str) -> ApiError | None:
    """None when `Authorization: Bearer <token>` is there (compared in constant time);
    else the error to answer: 401 without a bearer token, 403 with a wrong one."""
    values = [value for name, value in headers if name == b"authorization"]
    scheme, _, given = (values[0] if len(values) == 1 else b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        error = ApiError(401, "unauthorized", "An `Authorization: Bearer` header is needed")
        error.headers.append((b"www-authenticate", b'Bearer realm="parsec-administration"'))
        return error
    if not secrets_equal(given.strip(), token):
        return ApiError(403, "forbidden", "Invalid administration token")
    return None


# --- Request body and query ---------------------------------------------------------------


def _media_type(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"content-type":
            return value.decode("latin-1").partition(";")[0].strip().lower()
    return None


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(
    headers: list[tuple[bytes, bytes]], receive: Receive, time_limit: float
) -> bytes:
    """The whole body, refused (413) once it is longer than `MAX_BODY_SIZE` (before
    reading it when its length is announced). Raises ApiError."""
    media_type = _media_type(headers)
    if media_type is not None and media_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "The body must be JSON (`application/json`)")
    declared = _declared_length(headers)
    if declared is not None and declared > MAX_BODY_SIZE:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(time_limit):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ApiError(400, "incomplete_body", "The request body was not sent")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_SIZE:
                    raise _too_large()
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise ApiError(400, "incomplete_body", "The request body was not sent in time") from None


def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"The body may be at most {MAX_BODY_SIZE} bytes")


def decode_body(body: bytes, type_: Any) -> Any:
    """`body` decoded and validated as `type_` (a Struct, possibly Annotated). A number
    with a zero fraction (`3.0`) is an integer, as JSON Schema says."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_json", str(exc)) from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "Too deeply nested") from None
    try:
        return msgspec.convert(_integral_floats_as_ints(value), type_)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_data", str(exc)) from None


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value


def decode_query(query_string: bytes, type_: type[T]) -> T:
    """The query parameters (percent-decoded, `+` kept as is: `at=...+01:00` works)
    validated as `type_`; unknown parameters are ignored, a repeated one is refused."""
    params: dict[str, str] = {}
    text = query_string.decode("latin-1")
    for pair in text.split("&") if text else []:
        raw_name, _, raw_value = pair.partition("=")
        try:
            name = unquote(raw_name, errors="strict")
            value = unquote(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_data", "The query string is not UTF-8") from None
        if name in params:
            raise ApiError(400, "invalid_data", f"Query parameter `{name}` is repeated")
        params[name] = value
    integers = _integer_fields(type_)
    converted: dict[str, Any] = {
        name: int(value) if name in integers and _INTEGER.fullmatch(value) else value
        for name, value in params.items()
    }
    try:
        return msgspec.convert(converted, type_)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_data", _query_message(str(exc))) from None


_INTEGER = re.compile(r"-?[0-9]{1,20}")


def _integer_fields(type_: Any) -> frozenset[str]:
    """The fields of a query struct whose values are integers (the others stay strings)."""
    info = msgspec.inspect.type_info(type_)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(
        f.encode_name for f in info.fields if isinstance(f.type, msgspec.inspect.IntType)
    )


def _query_message(message: str) -> str:
    """msgspec's `at `$.page`` becomes `in query parameter `page``."""
    return message.replace("- at `$.", "- in query parameter `")
