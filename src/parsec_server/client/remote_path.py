"""Remote paths: `/WORKSPACE/path/inside` (the workspace by name, or by id in hex)."""

from __future__ import annotations

from dataclasses import dataclass

from parsec_server.client.fs_errors import FSError
from parsec_server.client.manifests import InvalidEntryName, check_entry_name


@dataclass(frozen=True)
class RemotePath:
    workspace: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> RemotePath:
        if not text.startswith("/"):
            raise FSError(f"A remote path starts with `/WORKSPACE`: `{text}`")
        names = [name for name in text.split("/") if name]
        if not names:
            raise FSError(f"A remote path names a workspace: `{text}`")
        try:
            for name in names[1:]:
                check_entry_name(name)
        except InvalidEntryName as exc:
            raise FSError(str(exc)) from exc
        return cls(names[0], tuple(names[1:]))

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else self.workspace

    def child(self, name: str) -> RemotePath:
        return RemotePath(self.workspace, (*self.parts, name))

    def __str__(self) -> str:
        return "/" + "/".join((self.workspace, *self.parts))
