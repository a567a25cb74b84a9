"""Our `parsec core ...` commands run as asyncio subprocesses, for tests that need several
at once (greeter and claimer) or a real program's output."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

TIMEOUT = 60.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def our_parsec() -> str:
    candidate = REPO_ROOT / ".venv" / "bin" / "parsec"
    if candidate.exists():
        return str(candidate)
    return str(Path(sys.executable).with_name("parsec"))


def command_env(home: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PARSEC_", "XDG_")) and name != "DEBUG"
    }
    env["HOME"] = str(home)
    return env


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"exit {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


class Command:
    """Our `parsec core ...` as an asyncio subprocess."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.seen = ""
        self.position = 0  # where the next `wait_for` starts searching

    @classmethod
    async def start(cls, home: Path, *args: str, stdin: bool = False) -> Command:
        process = await asyncio.create_subprocess_exec(
            our_parsec(),
            "core",
            *args,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=command_env(home),
        )
        return cls(process)

    async def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        """Read stdout until `pattern` matches what was printed since the previous match."""
        assert self.process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            while (match := pattern.search(self.seen, self.position)) is None:
                line = await self.process.stdout.readline()
                if not line:
                    raise AssertionError(f"output ended before {pattern.pattern}:\n{self.seen}")
                self.seen += line.decode()
        self.position = match.end()
        return match

    async def finish(self, input: str | None = None) -> Done:
        try:
            async with asyncio.timeout(TIMEOUT):
                stdout, stderr = await self.process.communicate(
                    input.encode() if input is not None else None
                )
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise
        assert self.process.returncode is not None
        return Done(self.process.returncode, self.seen + stdout.decode(), stderr.decode())


async def run(home: Path, *args: str, input: str | None = None) -> Done:
    command = await Command.start(home, *args, stdin=input is not None)
    return await command.finish(input)
