"""Failures of workspace and file operations, each worth one line to a user."""

from __future__ import annotations


class FSError(Exception):
    """An operation on workspaces or files failed; `str(exc)` says why."""


class FSNotFoundError(FSError):
    pass


class FSNoAccessError(FSError):
    """No (more) access to the workspace, or not the role the operation needs."""


class FSExistsError(FSError):
    pass


class FSNotADirectoryError(FSError):
    pass


class FSIsADirectoryError(FSError):
    pass


class FSDirectoryNotEmptyError(FSError):
    pass


class FSConflictError(FSError):
    """Someone changed the same entry at the same time, retries exhausted."""
