"""`parsec core ls|mkdir|upload|download|rm|mv|history`: the files of a workspace, on the
server directly (client/files.py). A remote path is `/WORKSPACE/path/inside`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from parsec_server.api.codec import DateTime
from parsec_server.cli.client_common import resolve_config_dir
from parsec_server.cli.workspace_common import SessionArgs, run_session, session_options
from parsec_server.client.device import LocalDevice, slughash
from parsec_server.client.files import EntryInfo, Workspace
from parsec_server.client.fs_errors import FSError
from parsec_server.client.manifests import FileManifest, FolderManifest, WorkspaceManifest
from parsec_server.client.pool import ConnectionPool
from parsec_server.client.remote_path import RemotePath
from parsec_server.client.workspaces import Session

__all__ = ["download", "history", "ls", "mkdir", "mv", "rm", "upload"]

T = TypeVar("T")
DEFAULT_PARALLEL = 4


def _remote(ctx: click.Context, param: click.Parameter, value: str) -> RemotePath:
    try:
        return RemotePath.parse(value)
    except FSError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _date(ctx: click.Context, param: click.Parameter, value: str | None) -> DateTime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            "expected an ISO 8601 date, e.g. 2024-05-01T12:00:00+02:00", ctx=ctx, param=param
        ) from None
    return DateTime(parsed if parsed.tzinfo else parsed.astimezone())


def journal_dir(config_dir: Path, device: LocalDevice) -> Path:
    """Where the device's upload journals are (client/upload_journal.py)."""
    return config_dir / "uploads" / slughash(device.slug)


@asynccontextmanager
async def _workspace(
    session: Session, path: RemotePath, parallel: int, journals: Path
) -> AsyncIterator[Workspace]:
    entry = await session.workspace_entry(path.workspace)
    async with ConnectionPool(session.device, parallel, first=session.conn) as pool:
        yield Workspace(
            session,
            entry,
            pool,
            parallel=parallel,
            journal_dir=journal_dir(journals, session.device),
        )


def _on_workspace(
    args: SessionArgs,
    path: RemotePath,
    main: Callable[[Workspace], Awaitable[T]],
    parallel: int = DEFAULT_PARALLEL,
) -> T:
    config_dir = resolve_config_dir(args.config_dir)

    async def run(session: Session) -> T:
        async with _workspace(session, path, parallel, config_dir) as workspace:
            return await main(workspace)

    return run_session(args, run)


def _entry_json(entry: EntryInfo) -> dict[str, Any]:
    return {
        "name": entry.name,
        "id": entry.id.hex,
        "type": entry.kind,
        "size": entry.size,
        "version": entry.version,
        "updated": entry.updated.isoformat(),
        "author": entry.author,
    }


def _entry_line(entry: EntryInfo) -> str:
    size = "-" if entry.size is None else str(entry.size)
    name = entry.name + ("/" if entry.kind == "folder" else "")
    return f"{size:>12}  {entry.updated.dt.strftime('%Y-%m-%d %H:%M:%S')}  {name}"


parallel_option = click.option(
    "--parallel",
    type=click.IntRange(1, 32),
    default=DEFAULT_PARALLEL,
    show_default=True,
    help="Blocks transferred at the same time",
)


@click.command("ls", short_help="List a remote folder")
@session_options
@click.argument("path", metavar="REMOTE", callback=_remote)
@click.option("--at", metavar="DATE", callback=_date, help="As it was at DATE (ISO 8601)")
def ls(path: RemotePath, at: DateTime | None, **kwargs: Any) -> None:
    """List the folder REMOTE (/WORKSPACE/path): size, last change, name."""
    args = SessionArgs(**kwargs)
    entries = _on_workspace(args, path, lambda ws: ws.entries(path.parts, at))
    args.output.result([_entry_json(e) for e in entries], [_entry_line(e) for e in entries])


@click.command("mkdir", short_help="Create a remote folder")
@session_options
@click.argument("path", metavar="REMOTE", callback=_remote)
@click.option("--parents", "-p", is_flag=True, help="Create the missing parents too")
def mkdir(path: RemotePath, parents: bool, **kwargs: Any) -> None:
    """Create the folder REMOTE (/WORKSPACE/path)."""
    args = SessionArgs(**kwargs)
    folder_id = _on_workspace(args, path, lambda ws: ws.mkdir(path.parts, parents))
    args.output.result({"path": str(path), "id": folder_id.hex}, [f"Created {path}"])


def _local_size(local: Path) -> int:
    if local.is_file():
        return local.stat().st_size
    return sum(
        (Path(root) / name).stat().st_size for root, _, names in os.walk(local) for name in names
    )


@click.command("upload", short_help="Upload a file or a folder tree")
@session_options
@parallel_option
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.argument("path", metavar="REMOTE", callback=_remote)
def upload(local: Path, path: RemotePath, parallel: int, **kwargs: Any) -> None:
    """Upload LOCAL (a file or a whole folder) to REMOTE (/WORKSPACE/path), which it
    becomes: a new version of an existing file, merged into an existing folder; a file
    given an existing folder goes inside it. On the server when the command returns.
    Run again after an interruption, it skips the blocks already stored (journal kept,
    encrypted, in the configuration folder's `uploads` until the upload completes)."""
    args = SessionArgs(**kwargs)
    total = _local_size(local)

    async def main(workspace: Workspace) -> int:
        with args.output.progress(f"Uploading {local.name}", total) as progress:
            await workspace.upload(local, path.parts, progress)
        return workspace.skipped_blocks

    skipped = _on_workspace(args, path, main, parallel)
    resumed = f", {skipped} blocks already stored" if skipped else ""
    args.output.result(
        {"local": str(local), "remote": str(path), "bytes": total, "skipped_blocks": skipped},
        [] if args.quiet else [f"Uploaded {local} to {path} ({total} bytes{resumed})"],
    )


async def _remote_size(workspace: Workspace, parts: tuple[str, ...], at: DateTime | None) -> int:
    manifest = await workspace.stat(parts, at)
    if isinstance(manifest, FileManifest):
        return manifest.size
    assert isinstance(manifest, WorkspaceManifest | FolderManifest)
    total = 0
    for name in manifest.children:
        total += await _remote_size(workspace, (*parts, name), at)
    return total


@click.command("download", short_help="Download a file or a folder tree")
@session_options
@parallel_option
@click.argument("path", metavar="REMOTE", callback=_remote)
@click.argument("local", type=click.Path(path_type=Path))
@click.option("--at", metavar="DATE", callback=_date, help="As it was at DATE (ISO 8601)")
def download(
    path: RemotePath, local: Path, parallel: int, at: DateTime | None, **kwargs: Any
) -> None:
    """Download REMOTE (/WORKSPACE/path, a file or a folder tree) to LOCAL, which it
    becomes (a file given an existing folder goes inside it). With --at, as it was then.
    A file appears complete or not at all."""
    args = SessionArgs(**kwargs)

    async def main(workspace: Workspace) -> int:
        total = await _remote_size(workspace, path.parts, at)
        with args.output.progress(f"Downloading {path.name}", total) as progress:
            await workspace.download(path.parts, local, at, progress)
        return total

    total = _on_workspace(args, path, main, parallel)
    args.output.result(
        {"remote": str(path), "local": str(local), "bytes": total},
        [] if args.quiet else [f"Downloaded {path} to {local} ({total} bytes)"],
    )


@click.command("rm", short_help="Remove a remote file or folder")
@session_options
@click.argument("path", metavar="REMOTE", callback=_remote)
@click.option("--recursive", "-r", is_flag=True, help="Remove a folder that is not empty")
def rm(path: RemotePath, recursive: bool, **kwargs: Any) -> None:
    """Remove REMOTE from its folder (its versions stay on the server)."""
    args = SessionArgs(**kwargs)
    _on_workspace(args, path, lambda ws: ws.remove(path.parts, recursive))
    args.output.result({"removed": str(path)}, [f"Removed {path}"])


@click.command("mv", short_help="Rename or move a remote entry")
@session_options
@click.argument("source", metavar="SOURCE", callback=_remote)
@click.argument("destination", metavar="DESTINATION", callback=_remote)
def mv(source: RemotePath, destination: RemotePath, **kwargs: Any) -> None:
    """Rename or move SOURCE to DESTINATION (into it when it is a folder), in one
    workspace."""
    args = SessionArgs(**kwargs)
    if source.workspace != destination.workspace:
        raise click.BadParameter("SOURCE and DESTINATION must be in the same workspace")
    _on_workspace(args, source, lambda ws: ws.move(source.parts, destination.parts))
    args.output.result(
        {"source": str(source), "destination": str(destination)},
        [f"Moved {source} to {destination}"],
    )


@click.command("history", short_help="List the versions of a remote entry")
@session_options
@click.argument("path", metavar="REMOTE", callback=_remote)
def history(path: RemotePath, **kwargs: Any) -> None:
    """List the versions of REMOTE: number, date, author (device), size."""
    args = SessionArgs(**kwargs)
    versions = _on_workspace(args, path, lambda ws: ws.history(path.parts))
    args.output.result(
        [
            {
                "version": v.version,
                "timestamp": v.timestamp.isoformat(),
                "author": v.author,
                "size": v.size,
            }
            for v in versions
        ],
        [
            f"{v.version:>4}  {v.timestamp.isoformat()}  {v.author}  "
            + ("-" if v.size is None else f"{v.size} bytes")
            for v in versions
        ],
    )
