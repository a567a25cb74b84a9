"""The audit log (docs/audit-log.md): one JSON line per administration action and per
security event, always in the log stream (logger `parsec.audit`) and, with `--audit-log
FILE`, appended to that file.

Domain code and the transport call `AuditLog.record` where the thing happens; what they
pass is an `Action`, an `Actor`, a `Target`, an outcome, and optionally a fixed-vocabulary
reason and a few details. Nothing else reaches a line: never a token, key, e-mail, human
name, certificate or payload (callers pass identifiers only; details are scalars).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import structlog

from parsec_server.api.codec import DateTime
from parsec_server.backend.client_context import (
    AdministrationClientContext,
    AuthenticatedClientContext,
    ClientContext,
)
from parsec_server.backend.config import StartupError

LOGGER_NAME = "parsec.audit"
logger = structlog.get_logger(LOGGER_NAME)

OK = "ok"
REFUSED = "refused"


class Action(StrEnum):
    """Every kind of line (docs/audit-log.md lists who records each)."""

    ORGANIZATION_CREATE = "organization.create"
    ORGANIZATION_UPDATE = "organization.update"
    ORGANIZATION_EXPIRE = "organization.expire"
    ORGANIZATION_STATS_EXPORT = "organization.stats_export"
    SERVER_STATS_EXPORT = "server.stats_export"
    USER_FREEZE = "user.freeze"
    USER_UNFREEZE = "user.unfreeze"
    USER_REVOKE = "user.revoke"
    ADMINISTRATION_TOKEN_REFUSED = "administration.token_refused"
    HANDSHAKE_REFUSED = "handshake.refused"


ActorKind = Literal["administration_token", "device", "peer"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: the holder of the administration token, a device (its id, never its
    user's name or e-mail), or a peer not identified (an address only)."""

    kind: ActorKind
    address: str | None = None
    organization: str | None = None
    device: str | None = None

    @classmethod
    def administration_token(cls, address: str | None) -> Actor:
        return cls("administration_token", address)

    @classmethod
    def peer(cls, address: str | None) -> Actor:
        return cls("peer", address)

    @classmethod
    def of(cls, client: ClientContext) -> Actor:
        """The actor behind an identified connection."""
        match client:
            case AdministrationClientContext():
                return cls.administration_token(client.peer_address)
            case AuthenticatedClientContext():
                return cls("device", client.peer_address, client.organization_id, client.device_id)
        raise ValueError(f"not an audited actor: {type(client).__name__}")

    def as_json(self) -> dict[str, str | None]:
        fields: dict[str, str | None] = {"kind": self.kind, "address": self.address}
        if self.kind == "device":
            fields["organization"] = self.organization
            fields["id"] = self.device
        return fields


@dataclass(frozen=True, slots=True)
class Target:
    """What it was done to (identifiers only); unset fields are left out of the line."""

    organization: str | None = None
    user: str | None = None
    device: str | None = None

    def as_json(self) -> dict[str, str]:
        fields = {"organization": self.organization, "user": self.user, "device": self.device}
        return {key: value for key, value in fields.items() if value is not None}


NO_TARGET = Target()


# Details are scalars: they cannot smuggle a structure holding a secret. Date-times are
# written in RFC 3339, UTC.
Detail = str | int | float | bool | datetime | DateTime | None


def rfc3339(when: datetime | DateTime) -> str:
    if isinstance(when, DateTime):
        when = when.dt
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def audit_line(
    action: Action,
    actor: Actor,
    target: Target,
    outcome: str,
    reason: str | None,
    details: dict[str, Detail],
    now: datetime | None = None,
) -> dict[str, Any]:
    """The line's fields, in the schema's order (docs/audit-log.md)."""
    return {
        "time": rfc3339(now or datetime.now(UTC)),
        "action": action.value,
        "actor": actor.as_json(),
        "target": target.as_json(),
        "outcome": outcome,
        "reason": reason,
        "details": {
            key: rfc3339(value) if isinstance(value, datetime | DateTime) else value
            for key, value in details.items()
        },
    }


class AuditFile:
    """An append-only file shared by every process of the server.

    Opened with O_APPEND, each line is one `os.write` of a whole line (no buffer, so
    nothing to flush): the kernel appends it at the end of the file as one piece, even when
    several processes (`--workers`) write at once (a local file system; lines are a few
    hundred bytes). Before each line, the path is checked to still name the open file: if
    it was renamed or deleted (logrotate's default `create` mode), the file is opened again
    at that path, so rotation needs no signal.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _reopen_if_moved(self) -> None:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            on_disk = None
        open_file = os.fstat(self._fd)
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (
            open_file.st_dev,
            open_file.st_ino,
        ):
            fd = self._open()
            os.close(self._fd)
            self._fd = fd

    def write(self, line: bytes) -> None:
        """Raises OSError (disk full, file removed and its directory with it...)."""
        self._reopen_if_moved()
        written = os.write(self._fd, line)
        if written != len(line):
            raise OSError(f"short write to the audit log ({written} of {len(line)} bytes)")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class AuditLog:
    """Where the lines go: the log stream always (INFO when the outcome is `ok`, WARNING
    otherwise), and `file` when there is one. Recording never fails: a line that cannot
    be written to the file is reported as an error in the log stream."""

    def __init__(self, file: AuditFile | None = None) -> None:
        self._file = file

    def record(
        self,
        action: Action,
        actor: Actor,
        target: Target,
        outcome: str,
        reason: str | None = None,
        **details: Detail,
    ) -> None:
        line = audit_line(action, actor, target, outcome, reason, details)
        if outcome == OK:
            logger.info("Audit", **line)
        else:
            logger.warning("Audit", **line)
        if self._file is not None:
            data = json.dumps(line, ensure_ascii=False, separators=(", ", ": ")) + "\n"
            try:
                self._file.write(data.encode())
            except OSError as exc:
                logger.error(
                    "Cannot write to the audit log",
                    path=str(self._file.path),
                    error=str(exc),
                    action=line["action"],
                )


# The audit log of apps and components built without a file (tests, tools): stateless.
STREAM_ONLY = AuditLog()


@contextlib.contextmanager
def open_audit_log(path: Path | None) -> Iterator[AuditLog]:
    """The audit log of `--audit-log` (None: the log stream only), closed at the end.
    Raises StartupError when the file cannot be opened."""
    if path is None:
        yield STREAM_ONLY
        return
    try:
        file = AuditFile(path)
    except OSError as exc:
        raise StartupError(f"Cannot open audit log file `{path}`: {exc.strerror}") from None
    try:
        yield AuditLog(file)
    finally:
        file.close()
