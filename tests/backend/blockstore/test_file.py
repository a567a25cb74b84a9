"""The block directory (`--blockstore file:DIR`): layout, atomic writes, failures of the
disk (full, unwritable, gone, hung) as the store's error outcome with nothing half-written
left behind, leftovers of a crash, readiness, and the event loop kept free."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from parsec_server.backend.blockstore.base import BlockStoreBadOutcome
from parsec_server.backend.blockstore.blockdir import STALE_TEMPORARY_AGE, BlockDirectory
from parsec_server.backend.blockstore.file import FileBlockStore
from parsec_server.backend.config import StartupError

ORG = "MyOrg"


class FaultyDirectory(BlockDirectory):
    """A disk that fails the writes after `healthy_bytes` bytes with `error`, or waits
    `delay` seconds in each write."""

    def __init__(
        self, root: Path, error: int | None = None, healthy_bytes: int = 0, delay: float = 0.0
    ) -> None:
        super().__init__(root)
        self.error = error
        self.healthy_bytes = healthy_bytes
        self.delay = delay

    def _write(self, fd: int, data: memoryview) -> int:
        time.sleep(self.delay)
        if self.error is None:
            return super()._write(fd, data)
        if self.healthy_bytes > 0:
            written = super()._write(fd, data[: self.healthy_bytes])
            self.healthy_bytes -= written
            return written
        raise OSError(self.error, os.strerror(self.error))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileBlockStore]:
    store = await FileBlockStore.start(BlockDirectory(tmp_path))
    yield store
    await store.close()


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


async def test_layout_one_file_per_block_nothing_else(
    store: FileBlockStore, tmp_path: Path
) -> None:
    block_id = uuid.UUID("ab5f9c1e-0000-4000-8000-000000000001")
    assert await store.create(ORG, block_id, b"data") is None
    assert files_under(tmp_path) == [f"{ORG}/ab/{block_id}"]
    assert (tmp_path / ORG / "ab" / str(block_id)).read_bytes() == b"data"
    assert await store.read(ORG, block_id) == b"data"
    assert await store.read("OtherOrg", block_id) is BlockStoreBadOutcome.NOT_FOUND
    assert await store.read(ORG, uuid.uuid4()) is BlockStoreBadOutcome.NOT_FOUND


async def test_overwrite_delete_and_empty_block(store: FileBlockStore, tmp_path: Path) -> None:
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"first attempt") is None
    assert await store.create(ORG, block_id, b"retry, another length") is None
    assert await store.read(ORG, block_id) == b"retry, another length"
    assert await store.create(ORG, block_id, b"") is None
    assert await store.read(ORG, block_id) == b""
    assert await store.delete(ORG, block_id) is None
    assert await store.read(ORG, block_id) is BlockStoreBadOutcome.NOT_FOUND
    assert await store.delete(ORG, block_id) is None
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "organization_id", ["..", ".", "../x", "a/b", "/abs", ".tmp", "", "a" * 33, "a\x00b"]
)
def test_no_path_outside_the_directory(tmp_path: Path, organization_id: str) -> None:
    # The protocol never lets such ids through ([\w-]{1,32}); the layout checks again.
    with pytest.raises(ValueError, match="not an organization id"):
        BlockDirectory(tmp_path).block_path(organization_id, uuid.uuid4())


def test_unicode_organization_ids_are_their_own_directory(tmp_path: Path) -> None:
    block_id = uuid.uuid4()
    path = BlockDirectory(tmp_path).block_path("Société-1", block_id)
    assert path == tmp_path / "Société-1" / str(block_id)[:2] / str(block_id)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO])
async def test_disk_failing_mid_write_leaves_nothing_and_keeps_the_earlier_block(
    tmp_path: Path, error: int
) -> None:
    directory = FaultyDirectory(tmp_path)
    store = await FileBlockStore.start(directory)
    try:
        kept, new = uuid.uuid4(), uuid.uuid4()
        assert await store.create(ORG, kept, b"stored before the disk filled up") is None
        directory.error, directory.healthy_bytes = error, 3
        assert await store.create(ORG, new, b"x" * 100_000) is BlockStoreBadOutcome.UNAVAILABLE
        assert await store.create(ORG, kept, b"a retry") is BlockStoreBadOutcome.UNAVAILABLE
        assert files_under(tmp_path) == [f"{ORG}/{str(kept)[:2]}/{kept}"]
        assert await store.read(ORG, kept) == b"stored before the disk filled up"
        assert await store.read(ORG, new) is BlockStoreBadOutcome.NOT_FOUND
        # Space again: the client's retry goes through.
        directory.error = None
        assert await store.create(ORG, new, b"x" * 100_000) is None
        assert await store.read(ORG, new) == b"x" * 100_000
    finally:
        await store.close()


async def test_failure_is_logged_with_its_cause(tmp_path: Path) -> None:
    store = await FileBlockStore.start(FaultyDirectory(tmp_path, error=errno.ENOSPC))
    try:
        block_id = uuid.uuid4()
        with structlog.testing.capture_logs() as logs:
            assert await store.create(ORG, block_id, b"data") is BlockStoreBadOutcome.UNAVAILABLE
    finally:
        await store.close()
    (line,) = [log for log in logs if log["event"] == "blockstore unavailable"]
    assert line["store"] == "file"
    assert line["operation"] == "create"
    assert line["key"] == f"{ORG}/{block_id}"
    assert "No space left on device" in line["error"]


_FILE_SIZE_LIMIT_SCRIPT = """
import asyncio, resource, signal, sys, uuid
from pathlib import Path
from parsec_server.backend.blockstore.blockdir import BlockDirectory
from parsec_server.backend.blockstore.file import FileBlockStore

async def main():
    store = await FileBlockStore.start(BlockDirectory(Path(sys.argv[1])))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    outcome = await store.create("MyOrg", uuid.uuid4(), b"x" * 5000)
    small = await store.create("MyOrg", uuid.UUID(int=1), b"y" * 10)
    await store.close()
    print(outcome, small)

asyncio.run(main())
"""


def test_a_real_write_refused_by_the_kernel(tmp_path: Path) -> None:
    # The file size limit makes the kernel refuse the write part-way (EFBIG), as a full
    # disk does (ENOSPC), without needing a small file system.
    result = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    *logged, last = result.stdout.splitlines()
    assert last.split() == ["BlockStoreBadOutcome.UNAVAILABLE", "None"]
    assert "File too large" in "".join(logged)
    block = uuid.UUID(int=1)
    assert files_under(tmp_path) == [f"{ORG}/{str(block)[:2]}/{block}"]


async def test_unwritable_place_is_unavailable(store: FileBlockStore, tmp_path: Path) -> None:
    # A file where the organization's directory should be: every create and read fails.
    (tmp_path / ORG).write_bytes(b"not a directory")
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is BlockStoreBadOutcome.UNAVAILABLE
    assert await store.read(ORG, block_id) is BlockStoreBadOutcome.UNAVAILABLE
    assert files_under(tmp_path) == [ORG]


async def test_read_only_directory_is_unavailable(
    store: FileBlockStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a read-only directory answers creating a file (chmod would not stop root, who
    # runs CI): EACCES when the temporary file is created.
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    assert await store.create(ORG, uuid.uuid4(), b"x") is BlockStoreBadOutcome.UNAVAILABLE
    monkeypatch.undo()
    assert files_under(tmp_path) == []


async def test_directory_gone_is_unavailable_not_missing_blocks(
    store: FileBlockStore, tmp_path: Path
) -> None:
    block_id = uuid.uuid4()
    assert await store.create(ORG, block_id, b"data") is None
    shutil.rmtree(tmp_path)  # e.g. the disk unmounted under the server
    assert await store.read(ORG, block_id) is BlockStoreBadOutcome.UNAVAILABLE
    assert await store.create(ORG, block_id, b"data") is BlockStoreBadOutcome.UNAVAILABLE
    outcome = await store.check_ready(2.0)
    assert not outcome.ok
    assert outcome.to_json() == {"ok": False, "error": "FileNotFoundError", "type": "FILE"}


async def test_hung_disk_is_unavailable_within_the_timeout(tmp_path: Path) -> None:
    directory = FaultyDirectory(tmp_path, delay=2.0)
    store = await FileBlockStore.start(directory, operation_timeout=0.2)
    try:
        started = time.monotonic()
        assert await store.create(ORG, uuid.uuid4(), b"x") is BlockStoreBadOutcome.UNAVAILABLE
        assert time.monotonic() - started < 1.5
    finally:
        await store.close()


async def test_the_event_loop_runs_while_the_disk_works(tmp_path: Path) -> None:
    store = await FileBlockStore.start(FaultyDirectory(tmp_path, delay=0.5))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        writes = [store.create(ORG, uuid.uuid4(), b"x") for _ in range(4)]
        assert await asyncio.gather(*writes) == [None] * 4
    finally:
        ticker.cancel()
        await store.close()
    # Four slow writes together took about one delay (threads), with the loop ticking.
    assert ticks >= 20


async def test_crash_leftovers_are_never_read_and_removed_when_stale(tmp_path: Path) -> None:
    directory = BlockDirectory(tmp_path)
    (tmp_path / ".tmp").mkdir()
    stale = tmp_path / ".tmp" / "0123abcd"
    recent = tmp_path / ".tmp" / "4567ef01"
    for path in (stale, recent):
        path.write_bytes(b"half a block")
    old = time.time() - STALE_TEMPORARY_AGE - 60
    os.utime(stale, (old, old))
    with structlog.testing.capture_logs() as logs:
        store = await FileBlockStore.start(directory)
    try:
        # A recent one may be another server process's write in progress: kept.
        assert sorted(path.name for path in (tmp_path / ".tmp").iterdir()) == [recent.name]
        assert await store.read(ORG, uuid.uuid4()) is BlockStoreBadOutcome.NOT_FOUND
    finally:
        await store.close()
    assert [log["count"] for log in logs if "temporary files" in log["event"]] == [1]


async def test_start_refuses_a_missing_directory_or_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(StartupError, match=r"^Block directory `.*/missing` does not exist \("):
        await FileBlockStore.start(BlockDirectory(missing))
    assert not missing.exists()
    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    with pytest.raises(StartupError, match=r"^Block directory `.*/file` is not a directory$"):
        await FileBlockStore.start(BlockDirectory(a_file))


async def test_start_refuses_a_directory_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / ".tmp").write_bytes(b"in the way")
    with pytest.raises(StartupError, match=r"^Cannot use block directory `.*`: File exists$"):
        await FileBlockStore.start(BlockDirectory(tmp_path))


async def test_readiness_reports_the_space_available(store: FileBlockStore) -> None:
    outcome = await store.check_ready(2.0)
    assert outcome.ok
    assert outcome.details["type"] == "FILE"
    assert outcome.details["available_bytes"] > 0
    assert set(outcome.details) == {"type", "available_bytes"}  # no path
