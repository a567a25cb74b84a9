"""What every command schema shares: the request base class and reply builders."""

from __future__ import annotations

from typing import Any

import msgspec

from parsec_server.api.ids import check_id_byte_lengths


class Req(msgspec.Struct, frozen=True, tag_field="cmd"):
    """A request; subclasses set `tag=<command name>`. Unknown fields are ignored."""

    def __post_init__(self) -> None:
        check_id_byte_lengths(self)


Rep = dict[str, Any]

OK: Rep = {"status": "ok"}


def ok(**fields: Any) -> Rep:
    return {"status": "ok", **fields}


def error(status: str, reason: str | None = None) -> Rep:
    if reason is None:
        return {"status": status}
    return {"status": status, "reason": reason}


def command_name(req_type: type[Req]) -> str:
    tag = req_type.__struct_config__.tag
    assert isinstance(tag, str)
    return tag
