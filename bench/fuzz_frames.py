"""Protocol fuzzing against a server started here on PostgreSQL (docs/frame-outcomes.md).

    .venv/bin/python bench/fuzz_frames.py [--frames 1000000] [--postgresql-url URL]

Starts our server (`parsec backend run --dev --db <fresh database> -b POSTGRESQL`, as the
benchmark does), creates an organization, then sends mutated request frames of every
command over concurrent sessions of every kind (tests/protocol_fuzzer.py), and prints the
outcomes: replies, invalid_msg_format then close, other closes by code, hangs (no reply nor
close within 10 s, for a command that does not wait by design), server deaths. A 1011
close, a hang or a death is a bug: the frames are printed in hex and the server log is kept.
Exit code 1 if any bug was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.protocol_fuzzer

from tests.protocol_fuzzer import Stats, fuzz, server_serves, setup_targets  # noqa: E402

from benchkit.common import ADMINISTRATION_TOKEN  # noqa: E402
from benchkit.servers import StorageEnv, our_cli_works, running_server  # noqa: E402

DEFAULT_POSTGRESQL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sessions-per-kind", type=int, default=2)
    parser.add_argument("--postgresql-url", default=DEFAULT_POSTGRESQL_URL)
    parser.add_argument("--progress-every", type=float, default=60.0, help="seconds")
    args = parser.parse_args()
    if not our_cli_works():
        print("our CLI (.venv/bin/parsec) does not run: pip install -e . first")
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="fuzz-frames-"))
    with (
        StorageEnv("postgresql", args.postgresql_url, log_dir) as storage,
        running_server("ours", True, log_dir, storage) as server,
    ):
        print(f"server pid {server.pid} on port {server.port}, {storage.describe()}")
        print(f"server log: {server.log_path}")
        started = time.monotonic()

        def progress(stats: Stats) -> None:
            alive = server.process.poll() is None
            print(f"[{time.monotonic() - started:6.0f} s] server alive: {alive}")
            print(stats.summary(), flush=True)

        async def run() -> tuple[Stats, bool]:
            targets = await setup_targets(server.addr, ADMINISTRATION_TOKEN)
            stats = await fuzz(
                targets,
                args.frames,
                seed=args.seed,
                sessions_per_kind=args.sessions_per_kind,
                progress=progress,
                progress_every=args.progress_every,
            )
            return stats, await server_serves(targets)

        try:
            stats, serves = asyncio.run(run())
        except (OSError, RuntimeError) as exc:
            died = server.process.poll() is not None
            print(f"fuzzing stopped: {exc!r}; server died: {died}")
            print(server.log_tail(60))
            return 1
        died = server.process.poll() is not None
        print("\n=== final ===")
        print(stats.summary())
        print(f"server still serving: {serves}; server died: {died}")
        print(f"server log: {server.log_path}")
        print(log_summary(server.log_path.read_text(errors="replace")))
        return 1 if stats.bugs or died or not serves else 0


def log_summary(log: str) -> str:
    """The exceptions that ended connections, by type and message (numbers blanked)."""
    failures: Counter[str] = Counter()
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if "connection failed" not in line:
            continue
        # The traceback follows; its last line names the exception.
        for following in lines[index + 1 :]:
            if "connection failed" in following or following.startswith("20"):
                break
            match = EXCEPTION_LINE.match(following)
            if match:
                last = match
        failures[re.sub(r"\d{3,}", "N", last.group(0))[:160]] += 1
    if not failures:
        return "no connection ended by a server error"
    return "connections ended by a server error (1011), by final exception:\n" + "\n".join(
        f"  {count:6d}  {text}" for text, count in failures.most_common()
    )


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*$")


if __name__ == "__main__":
    sys.exit(main())
