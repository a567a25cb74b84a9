"""Constants, /proc readings, time windows and machine information."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import socket
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
OUR_PYTHON = REPO / ".venv" / "bin" / "python"
OUR_PARSEC = REPO / ".venv" / "bin" / "parsec"
MOTO_SERVER = REPO / ".venv" / "bin" / "moto_server"
REFERENCE_PARSEC = Path("/tmp/parsec-reference-2.0.0/bin/parsec")
HOST = "127.0.0.1"  # the only address this program ever connects to
ADMINISTRATION_TOKEN = "s3cr3t"  # the `--dev` one, on both servers

SERVER_START_TIMEOUT = 60.0  # seconds for a server to accept TCP connections
OP_TIMEOUT = 10.0  # seconds for one operation (handshake, command)
MAX_OPS_PER_LOOP = 1_000_000  # bound on every load loop, on top of the time bound
OPEN_CONCURRENCY = 50  # simultaneous handshakes per worker while opening connections
START_SLACK = 0.3  # seconds between sending a job and its start, for all workers to be ready
MAX_ERRORS_KEPT = 5

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --- /proc -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat from the 3rd one (state) on; `comm` may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants (in case a server runs its work in child processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def pids_by_cmdline(prefix: str, fragment: str) -> list[int]:
    """Processes whose command line (or title, as PostgreSQL backends set it) starts with
    `prefix` and contains `fragment`."""
    found = []
    start, needle = prefix.encode(), fragment.encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(start) and needle in cmdline:
            found.append(int(entry.name))
    return found


def cpu_of_pids(pids: Iterable[int]) -> dict[int, float]:
    """utime + stime (seconds, all threads) of each pid still alive."""
    times = {}
    for p in pids:
        try:
            fields = _stat_fields(p)
        except OSError:
            continue
        times[p] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)
    return times


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree (all threads included)."""
    return sum(cpu_of_pids(process_tree(pid)).values())


def rss_bytes(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


class CpuMeter:
    """CPU seconds of a changing set of processes between `start()` and `stop()`: a process
    seen at either end counts for what it used in between as far as it can be read (one
    that starts in the middle counts from its start, one that ends in the middle is lost)."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self._pids = pids
        self._before: dict[int, float] = {}

    def start(self) -> None:
        self._before = cpu_of_pids(self._pids())

    def stop(self) -> float:
        after = cpu_of_pids(set(self._pids()) | set(self._before))
        return sum(t - self._before.get(p, 0.0) for p, t in after.items())


# --- time windows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Load starts at `t0`; operations completed in [start, end) are counted.
    Times are time.monotonic() values, which are shared by all processes on Linux."""

    t0: float
    warmup: float
    duration: float

    @property
    def start(self) -> float:
        return self.t0 + self.warmup

    @property
    def end(self) -> float:
        return self.start + self.duration


def sleep_until_blocking(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --- machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(client_processes: int) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "client_processes": client_processes,
    }


# --- formatting --------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def ratio(ours: float | None, ref: float | None) -> str:
    if ours is None or ref is None or ref == 0:
        return "n/a"
    return f"{ours / ref:.2f}"


def print_side_by_side(
    title: str,
    rows: list[tuple[str, dict[str, float | None], str, bool]],
    servers: list[str],
) -> None:
    """rows: (label, {server: value}, format spec, whether to show ours/ref)."""
    both = "ours" in servers and "reference" in servers
    label_width = max([len(r[0]) for r in rows] + [len(title)]) + 2
    header = f"{title:<{label_width}}" + "".join(f"{s:>14}" for s in servers)
    if both:
        header += f"{'ours/ref':>10}"
    print()
    print(header)
    print("-" * len(header))
    for label, values, spec, show_ratio in rows:
        line = f"{label:<{label_width}}" + "".join(
            f"{fmt(values.get(s), spec):>14}" for s in servers
        )
        if both and show_ratio:
            line += f"{ratio(values.get('ours'), values.get('reference')):>10}"
        print(line)
