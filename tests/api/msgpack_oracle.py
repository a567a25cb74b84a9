"""The message check as it was before the C scanner, kept as the tests' oracle: decode the
whole message with msgspec (codec.ext_hook checks ext 1 and 2), then walk every decoded
value for the size limits. Slow and memory-hungry on purpose-built messages, exact."""

from __future__ import annotations

from typing import Any

import msgspec

from parsec_server.api import codec


def check_limits(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if len(item.encode("utf8")) > codec.MAX_STR_BYTES:
                raise codec.CodecError("str over the size limit")
        elif isinstance(item, bytes):
            if len(item) > codec.MAX_BIN_BYTES:
                raise codec.CodecError("bin over the size limit")
        elif isinstance(item, list | tuple):
            if len(item) > codec.MAX_ARRAY_LENGTH:
                raise codec.CodecError("array over the size limit")
            stack.extend(item)
        elif isinstance(item, dict):
            if len(item) > codec.MAX_MAP_LENGTH:
                raise codec.CodecError("map over the size limit")
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, msgspec.msgpack.Ext) and len(item.data) > codec.MAX_EXT_BYTES:
            raise codec.CodecError("ext over the size limit")


def depth(value: Any) -> int:
    """How many non-empty containers are nested at most in a decoded value."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, list | tuple | dict) and len(item) > 0:
            deepest = max(deepest, level + 1)
            children = [*item, *item.values()] if isinstance(item, dict) else item
            todo.extend((child, level + 1) for child in children)
    return deepest


def oracle_accepts(raw: bytes) -> bool:
    """What the check accepted before the scanner, with its depth limit made exact."""
    try:
        value = codec.decode_any(raw)
        check_limits(value)
    except codec.CodecError:
        return False
    return depth(value) <= codec.MAX_DEPTH
