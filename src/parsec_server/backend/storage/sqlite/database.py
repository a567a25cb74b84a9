"""The database file, its connections and the threads that use them (docs/storage-sqlite.md).

* One writer: a thread owning the only connection that writes. Every command that may
  write runs as one function in that thread, inside one `BEGIN IMMEDIATE` transaction:
  commands queue for the writer (never "database is locked" between our own commands),
  and a command's checks and writes see no other command in between.
* A few readers: threads owning one read-only connection each (WAL: they read while the
  writer writes). A read command runs as one function inside one read transaction, so
  its statements share one snapshot.

Either way a command costs one hop to a thread and back, the analogue of PostgreSQL's
round trip. Nothing else touches the connections; `close` stops the threads, then closes
them (the last close checkpoints the WAL into the database file).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar
from urllib.parse import quote

from parsec_server.backend.config import StartupError

P = ParamSpec("P")
T = TypeVar("T")

# What a commit guarantees (docs/storage-sqlite.md, "Durability"): FULL syncs the WAL at
# every commit, so an acknowledged write survives a power cut. Lower levels are for tests.
Synchronous = Literal["FULL", "NORMAL", "OFF"]

READER_THREADS = 2
# Milliseconds a connection waits for a lock held by another process (a `migrate`, a
# backup) before failing: a safety net, our own writes never wait on each other.
BUSY_TIMEOUT_MS = 30_000
# More than the statements of the storage, so that each is prepared once per connection.
CACHED_STATEMENTS = 512
# STRICT tables (3.37), RETURNING (3.35)
MIN_SQLITE_VERSION = (3, 37, 0)


def connect(path: Path, *, create: bool = False, read_only: bool = False) -> sqlite3.Connection:
    """A connection to the file at `path` in autocommit mode (transactions are explicit),
    WAL, with the durable settings. Without `create`, a missing file is an error instead
    of a new empty database."""
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise StartupError(
            f"SQLite {sqlite3.sqlite_version} is too old: version "
            f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or later is needed"
        )
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(
        f"file:{quote(str(path))}?mode={mode}",
        uri=True,
        isolation_level=None,
        check_same_thread=False,  # used by the one thread that owns it, created elsewhere
        cached_statements=CACHED_STATEMENTS,
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not read_only:
            journal_mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if journal_mode != "wal":
                raise StartupError(f"SQLite database {path} cannot use WAL mode ({journal_mode})")
        conn.execute("PRAGMA foreign_keys = ON")
        # macOS: fsync() alone does not flush the drive's cache (no effect elsewhere).
        conn.execute("PRAGMA fullfsync = ON")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def set_synchronous(conn: sqlite3.Connection, synchronous: Synchronous) -> None:
    conn.execute(f"PRAGMA synchronous = {synchronous}")


def run_in_transaction(
    conn: sqlite3.Connection,
    begin: str,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`fn(conn, ...)` inside one transaction: committed if it returns, rolled back if it
    raises."""
    conn.execute(begin)
    try:
        result = fn(conn, *args, **kwargs)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


# A command for a database thread: run `fn` with the thread's connection, then set the
# future (of the event loop that queued it) to its outcome.
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[sqlite3.Connection], Any]]


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # cancelled meanwhile: the result is dropped
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _serve(conn: sqlite3.Connection, jobs: queue.SimpleQueue[_Job | None]) -> None:
    """A database thread: runs the jobs of its queue until it gets None. Cheaper than a
    ThreadPoolExecutor (one queue, no concurrent future): about half the cost of a hop."""
    while (job := jobs.get()) is not None:
        loop, future, fn = job
        # Cancelled before it started: not run, as an executor would not run it (reading
        # the state from this thread is a benign race: at worst the command runs).
        if future.cancelled():
            continue
        try:
            result = fn(conn)
        except BaseException as exc:
            outcome: tuple[Callable[..., None], Any] = (_set_exception, exc)
        else:
            outcome = (_set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(outcome[0], future, outcome[1])


class SQLiteDatabase:
    def __init__(
        self, path: Path, writer: sqlite3.Connection, readers: list[sqlite3.Connection]
    ) -> None:
        self.path = path
        self._connections = [*readers, writer]  # closed in this order
        self._writes: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=_serve, args=(writer, self._writes), name="sqlite-writer", daemon=True
            )
        ]
        self._threads += [
            threading.Thread(
                target=_serve, args=(conn, self._reads), name=f"sqlite-reader-{i}", daemon=True
            )
            for i, conn in enumerate(readers)
        ]
        for thread in self._threads:
            thread.start()

    async def _run(
        self, jobs: queue.SimpleQueue[_Job | None], fn: Callable[[sqlite3.Connection], T]
    ) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        jobs.put((loop, future, fn))
        return await future

    async def write(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`fn(conn, ...)` in the writer thread, in one write transaction."""

        def job(conn: sqlite3.Connection) -> T:
            return run_in_transaction(conn, "BEGIN IMMEDIATE", fn, *args, **kwargs)

        return await self._run(self._writes, job)

    async def read(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`fn(conn, ...)` in a reader thread, in one read transaction (one snapshot)."""

        def job(conn: sqlite3.Connection) -> T:
            return run_in_transaction(conn, "BEGIN", fn, *args, **kwargs)

        return await self._run(self._reads, job)

    async def on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(conn)` in the writer thread, outside any transaction: it answers once the
        writes queued before it are done (the readiness probe)."""
        return await self._run(self._writes, fn)

    def close(self) -> None:
        """Blocking: lets the threads finish the queued commands, then closes the
        connections (the writer's last: its close checkpoints the WAL)."""
        self._writes.put(None)
        for _ in self._threads[1:]:
            self._reads.put(None)
        for thread in self._threads:
            thread.join()
        for conn in self._connections:
            conn.close()


def _open(path: Path, synchronous: Synchronous) -> SQLiteDatabase:
    from parsec_server.backend.storage.sqlite.migrations import check_migrations_applied

    if not path.exists():
        raise StartupError(
            f"SQLite database {path} does not exist: create it with "
            f"`parsec backend migrate --db sqlite:{path}`"
        )
    connections: list[sqlite3.Connection] = []
    try:
        writer = connect(path)
        connections.append(writer)
        set_synchronous(writer, synchronous)
        problem = check_migrations_applied(writer, path)
        if problem is not None:
            raise StartupError(problem)
        for _ in range(READER_THREADS):
            connections.append(connect(path, read_only=True))
    except sqlite3.Error as exc:
        for conn in connections:
            conn.close()
        raise StartupError(f"Cannot open SQLite database {path}: {exc}") from exc
    except BaseException:
        for conn in connections:
            conn.close()
        raise
    return SQLiteDatabase(path, connections[0], connections[1:])


@contextlib.asynccontextmanager
async def sqlite_database(
    path: Path, synchronous: Synchronous = "FULL"
) -> AsyncIterator[SQLiteDatabase]:
    """The database of a server's lifetime; StartupError (one line, naming the fix) if the
    file is missing or not migrated."""
    database = await asyncio.to_thread(_open, path, synchronous)
    try:
        yield database
    finally:
        await asyncio.to_thread(database.close)
