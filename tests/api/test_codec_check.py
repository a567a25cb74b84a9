"""The allocation-free message check (`codec.check`, the C scanner `_msgcheck`) accepts
exactly what decoding the whole message then walking it accepted (tests/api/msgpack_oracle.py),
at a cost that no shape of message can blow up."""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsec_server.api import _msgcheck, codec
from tests.api.msgpack_oracle import oracle_accepts

MiB = 1024 * 1024


def accepts(raw: bytes) -> bool:
    try:
        codec.check(raw)
    except codec.CodecError:
        return False
    return True


def assert_same_verdict(raw: bytes) -> None:
    assert accepts(raw) == oracle_accepts(raw), raw.hex()


def test_limits_are_the_same_in_c_and_python() -> None:
    assert _msgcheck.MAX_BYTES == codec.MAX_STR_BYTES == codec.MAX_BIN_BYTES
    assert _msgcheck.MAX_BYTES == codec.MAX_EXT_BYTES
    assert _msgcheck.MAX_ARRAY_LENGTH == codec.MAX_ARRAY_LENGTH
    assert _msgcheck.MAX_MAP_LENGTH == codec.MAX_MAP_LENGTH


# --- generated messages, compared with the oracle -----------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.builds(codec.ID.from_bytes, st.binary(min_size=16, max_size=16)),
    st.builds(
        lambda ts: msgspec.msgpack.Ext(1, struct.pack(">d", ts)),
        st.one_of(
            st.floats(),
            st.sampled_from([codec.TIMESTAMP_MIN, codec.TIMESTAMP_MAX]),
            st.sampled_from([codec.TIMESTAMP_MIN, codec.TIMESTAMP_MAX]).map(
                lambda bound: math.nextafter(bound, math.copysign(math.inf, bound))
            ),
        ),
    ),
    st.builds(
        msgspec.msgpack.Ext,
        st.sampled_from([-1, 1, 2, 3, 127, -128]) | st.integers(-128, 127),
        st.binary(max_size=17),
    ),
)

hashable = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=4)),
    lambda children: st.lists(children, max_size=3).map(tuple),
    max_leaves=6,
)

values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(hashable | st.text(max_size=6), children, max_size=5),
    ),
    max_leaves=25,
)


def _encode(value: Any) -> bytes:
    return msgspec.msgpack.encode(value, enc_hook=codec._enc_hook)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    raw = bytearray(_encode(draw(values)))
    for _ in range(draw(st.integers(0, 3))):
        if not raw:
            break
        position = draw(st.integers(0, len(raw) - 1))
        operation = draw(st.sampled_from(["set", "flip", "truncate", "insert", "delete"]))
        if operation == "set":
            raw[position] = draw(st.integers(0, 255))
        elif operation == "flip":
            raw[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "truncate":
            del raw[position:]
        elif operation == "insert":
            raw[position:position] = draw(st.binary(min_size=1, max_size=3))
        else:
            del raw[position]
    return bytes(raw)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_valid_messages_get_the_oracles_verdict(value: Any) -> None:
    assert_same_verdict(_encode(value))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_mutated_messages_get_the_oracles_verdict(raw: bytes) -> None:
    assert_same_verdict(raw)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_get_the_oracles_verdict(raw: bytes) -> None:
    assert_same_verdict(raw)


# --- the edges, one by one -----------------------------------------------------------------


def ext(code: int, payload: bytes) -> bytes:
    return _encode(msgspec.msgpack.Ext(code, payload))


def timestamp12(seconds: int, nanoseconds: int) -> bytes:
    return ext(-1, struct.pack(">Iq", nanoseconds, seconds))


EDGES: dict[str, bytes] = {
    "str_of_1MiB": _encode("x" * MiB),
    "str_over_1MiB": _encode("x" * (MiB + 1)),
    "str_of_1MiB_in_utf8_bytes": _encode("é" * (MiB // 2)),
    "str_over_1MiB_in_utf8_bytes": _encode("é" * (MiB // 2) + "x"),
    "bin_of_1MiB": _encode(b"x" * MiB),
    "bin_over_1MiB": _encode(b"x" * (MiB + 1)),
    "ext_of_1MiB": ext(5, b"x" * MiB),
    "ext_over_1MiB": ext(5, b"x" * (MiB + 1)),
    "array_of_131072": _encode([None] * 131072),
    "array_over_131072": _encode([None] * 131073),
    "map_of_32768": _encode({i: None for i in range(32768)}),
    "map_over_32768": _encode({i: None for i in range(32769)}),
    "nested_512": b"\x91" * 512 + b"\xc0",
    "nested_513": b"\x91" * 513 + b"\xc0",
    "nested_512_then_empty": b"\x91" * 512 + b"\x90",
    "nested_maps_512": b"\x81\xa0" * 512 + b"\xc0",
    "nested_maps_513": b"\x81\xa0" * 513 + b"\xc0",
    "invalid_opcode": b"\xc1",
    "empty": b"",
    "trailing": b"\xc0\xc0",
    "truncated_array": b"\x92\xc0",
    "truncated_str": b"\xa3ab",
    "truncated_uint64": b"\xcf\x00\x00",
    "truncated_ext_header": b"\xc7\x01",
    "utf8_overlong": b"\xa2\xc0\x80",
    "utf8_overlong_3": b"\xa3\xe0\x80\x80",
    "utf8_overlong_4": b"\xa4\xf0\x80\x80\x80",
    "utf8_surrogate": b"\xa3\xed\xa0\x80",
    "utf8_last_before_surrogates": b"\xa3\xed\x9f\xbf",
    "utf8_max": b"\xa4\xf4\x8f\xbf\xbf",
    "utf8_over_max": b"\xa4\xf4\x90\x80\x80",
    "utf8_f5": b"\xa4\xf5\x80\x80\x80",
    "utf8_lone_continuation": b"\xa1\x80",
    "utf8_cut": b"\xa2\xe2\x82",
    "utf8_in_a_long_ascii_run": b"\xd9\x12" + b"a" * 16 + b"\xff\x61",
    "utf8_in_a_key": b"\x81\xa1\xff\xc0",
    "uuid_ext_15": ext(2, b"x" * 15),
    "uuid_ext_17": ext(2, b"x" * 17),
    "datetime_ext_7": ext(1, b"x" * 7),
    "datetime_ext_nan": ext(1, struct.pack(">d", math.nan)),
    "datetime_ext_inf": ext(1, struct.pack(">d", math.inf)),
    "datetime_ext_minus_inf": ext(1, struct.pack(">d", -math.inf)),
    "datetime_ext_1e20": ext(1, struct.pack(">d", 1e20)),
    "datetime_ext_max": ext(1, struct.pack(">d", codec.TIMESTAMP_MAX)),
    "datetime_ext_past_max": ext(1, struct.pack(">d", math.nextafter(codec.TIMESTAMP_MAX, 1e99))),
    "datetime_ext_min": ext(1, struct.pack(">d", codec.TIMESTAMP_MIN)),
    "datetime_ext_before_min": ext(
        1, struct.pack(">d", math.nextafter(codec.TIMESTAMP_MIN, -1e300))
    ),
    "msgpack_timestamp_4": ext(-1, b"\xff" * 4),
    "msgpack_timestamp_8_max_nanos": ext(-1, struct.pack(">Q", (999999999 << 34) | (2**34 - 1))),
    "msgpack_timestamp_8_bad_nanos": ext(-1, struct.pack(">Q", 1000000000 << 34)),
    "msgpack_timestamp_12_max": timestamp12(253402300799, 999999499),
    "msgpack_timestamp_12_rounds_past_max": timestamp12(253402300799, 999999500),
    "msgpack_timestamp_12_past_max": timestamp12(253402300800, 0),
    "msgpack_timestamp_12_min": timestamp12(-62135596800, 0),
    "msgpack_timestamp_12_before_min": timestamp12(-62135596801, 999999999),
    "msgpack_timestamp_12_bad_nanos": timestamp12(0, 1000000000),
    "msgpack_timestamp_5": ext(-1, b"\x00" * 5),
    "msgpack_timestamp_0": ext(-1, b""),
    "key_map": b"\x81\x80\xc0",
    "key_array_of_map": b"\x81\x91\x80\xc0",
    "key_array_of_array": b"\x81\x91\x91\xc0\xc0",
    "key_array_of_empty_map": b"\x81\x92\xc0\x80\xc0",
    "key_ext_5": b"\x81" + ext(5, b"") + b"\xc0",
    "key_ext_1": b"\x81" + ext(1, struct.pack(">d", 0.0)) + b"\xc0",
    "key_ext_2": b"\x81" + ext(2, bytes(16)) + b"\xc0",
    "key_ext_minus_1": b"\x81" + ext(-1, bytes(4)) + b"\xc0",
    "key_array_of_ext_5": b"\x81\x91" + ext(5, b"") + b"\xc0",
    "value_map_after_key_array": b"\x82\x91\xc0\x80\xa1k\x81\xc0\xc0",
    "key_float_nil_bin": b"\x83\xcb" + bytes(8) + b"\xc0\xc0\xc0\xc4\x01a\xc0",
    "map16_32bit_counts": b"\xdf\x00\x00\x00\x01\xa1k\xdd\x00\x00\x00\x00",
}


@pytest.mark.parametrize("raw", EDGES.values(), ids=EDGES.keys())
def test_edges_get_the_oracles_verdict(raw: bytes) -> None:
    assert_same_verdict(raw)


def test_edge_verdicts() -> None:
    accepted = {name for name, raw in EDGES.items() if accepts(raw)}
    assert accepted == {
        "str_of_1MiB",
        "str_of_1MiB_in_utf8_bytes",
        "bin_of_1MiB",
        "ext_of_1MiB",
        "array_of_131072",
        "map_of_32768",
        "nested_512",
        "nested_512_then_empty",
        "nested_maps_512",
        "utf8_last_before_surrogates",
        "utf8_max",
        "datetime_ext_max",
        "datetime_ext_min",
        "msgpack_timestamp_4",
        "msgpack_timestamp_8_max_nanos",
        "msgpack_timestamp_12_max",
        "msgpack_timestamp_12_min",
        "key_array_of_array",
        "key_ext_1",
        "key_ext_2",
        "key_ext_minus_1",
        "value_map_after_key_array",
        "key_float_nil_bin",
        "map16_32bit_counts",
    }


def test_top_level_str_finds_the_last_str_key() -> None:
    raw = b"\x84\xa3cmd\xa1a\xc4\x03cmd\xa1b\x91\xa3cmd\xa1c\xa3cmd\xa4ping"
    codec.check(raw)
    assert codec.top_level_str(raw, "cmd") == "ping"
    assert codec.top_level_str(_encode({"cmd": 42}), "cmd") is None
    assert codec.top_level_str(_encode({"x": "cmd"}), "cmd") is None
    assert codec.top_level_str(_encode(["cmd", "ping"]), "cmd") is None
    big = _encode({"y": [[{}] * 1000] * 100, "cmd": "user_get", "z": "é" * 300})
    assert codec.top_level_str(big, "cmd") == "user_get"


# --- cost ------------------------------------------------------------------------------------


def hostile(item: bytes, size: int = 2 * MiB) -> bytes:
    """{"cmd": "ping", "ping": "x", "y": {"k0": [item, item...], ...}}: `size` bytes of
    arrays of 131,072 copies of `item`."""
    per_array = min(131072, size // len(item))
    arrays = max(1, size // (per_array * len(item)))
    body = b"".join(
        _encode(f"k{i}") + b"\xdd" + per_array.to_bytes(4, "big") + item * per_array
        for i in range(arrays)
    )
    return b"\x83\xa3cmd\xa4ping\xa4ping\xa1x\xa1y\xde" + arrays.to_bytes(2, "big") + body


HOSTILE_SHAPES = {
    "nils": hostile(b"\xc0"),
    "small_ints": hostile(b"\xcd\x01\x01"),
    "empty_maps": hostile(b"\x80"),
    "empty_arrays": hostile(b"\x90"),
    "one_item_arrays": hostile(b"\x91\xc0"),
    "one_entry_maps": hostile(b"\x81\xc0\xc0"),
    "tiny_strs": hostile(b"\xa2\xc3\xa9"),
    "tiny_exts": hostile(b"\xd4\x05\x00"),
    "datetimes": hostile(b"\xd7\x01" + struct.pack(">d", 1e9)),
    "deep_chains": hostile(b"\x91" * 509 + b"\xc0"),
    "big_bins": _encode({"cmd": "ping", "ping": "x", **{f"b{i}": b"x" * MiB for i in range(2)}}),
}


@pytest.mark.parametrize("raw", HOSTILE_SHAPES.values(), ids=HOSTILE_SHAPES.keys())
def test_hostile_shapes_cost_far_less_than_decoding_them(raw: bytes) -> None:
    codec.check(raw)  # they are valid: the scanner reads them to the end

    def best_of(runs: int, work: Any) -> float:
        best = math.inf
        for _ in range(runs):
            started = time.process_time()
            work()
            best = min(best, time.process_time() - started)
        return best

    checking = best_of(3, lambda: codec.check(raw))
    decoding = best_of(1, lambda: codec.decode_any(raw))
    # Measured: the check costs 0.5 to 15 ms per MiB; building the objects (msgspec, the
    # floor of any decoding check) 4 to 270 ms per MiB; 10 ms per MiB is a loose bound.
    assert checking < max(decoding / 2, 0.010 * len(raw) / MiB), (checking, decoding)


def test_the_budget_stops_the_check_of_costly_messages_only() -> None:
    for raw in HOSTILE_SHAPES.values():
        if raw is HOSTILE_SHAPES["big_bins"]:
            codec.check(raw, budget=100_000)  # 8 values: within any budget
            continue
        with pytest.raises(codec.CheckTooCostly):
            codec.check(raw, budget=100_000)
    frame = _encode({"cmd": "ping", "ping": "x", "y": [None] * 100})
    codec.check(frame, budget=100)
    with pytest.raises(codec.CodecError):
        codec.check(b"\x81\xa1x\xc1", budget=100)
