"""Upload and download throughput of our command-line client (`parsec core upload` and
`download`, run as users run them), and of the unmodified 2.0.0 client (its library:
write into a workspace then sync; read back from an empty data folder), both against our
server on PostgreSQL and on S3 (moto), on the same random file.

    .venv/bin/python bench/client_throughput.py [--storage postgresql,s3] [--size-mib 256]
                                               [--parallel 4] [--clients ours,reference]
                                               [--json FILE]

Each figure is one timed run of a whole command (process start, device load, handshake
included), MiB/s = file size / wall time; peak RSS of our command is reported beside it
(the bounded memory of streaming). Prints figures, not a test; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchkit.common import OUR_PARSEC, REFERENCE_PARSEC, machine_info
from benchkit.servers import StorageEnv, running_server

DEFAULT_POSTGRESQL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "Bench-P@ssw0rd"
TOKEN = "s3cr3t"  # the `--dev` administration token
CHUNK = 1024 * 1024

# Run with the reference Python: `python -c REFERENCE_SCRIPT upload|download JSON`; prints
# `RESULT <json>`. Loads the device saved in `config_dir`; client data in `data_dir`.
REFERENCE_SCRIPT = """
import json, sys, time
from pathlib import Path

import trio

from parsec.core import logged_core_factory
from parsec.core.config import load_config
from parsec.core.local_device import list_available_devices, load_device_with_password
from parsec.core.types import EntryID, EntryName
from parsec.logging import configure_logging

CHUNK = 1024 * 1024


def core_of(args):
    [available] = list_available_devices(Path(args["config_dir"]))
    device = load_device_with_password(available.key_file_path, args["password"])
    config = load_config(
        Path(args["config_dir"]),
        data_base_dir=Path(args["data_dir"]) / "data",
        cache_base_dir=Path(args["data_dir"]) / "cache",
        mountpoint_enabled=False,
    )
    return logged_core_factory(config, device)


async def upload(args):
    started = time.monotonic()
    async with core_of(args) as core:
        workspace_id = await core.user_fs.workspace_create(EntryName(args["name"]))
        await core.user_fs.sync()
        workspace = core.user_fs.get_workspace(workspace_id)
        with open(args["local"], "rb") as source:
            async with await workspace.open_file("/file.bin", "wb") as target:
                while data := source.read(CHUNK):
                    await target.write(data)
        written = time.monotonic()
        await workspace.sync()
        await core.user_fs.sync()
    done = time.monotonic()
    print("RESULT " + json.dumps({
        "workspace_id": str(workspace_id),
        "seconds": done - started,
        "local_write_seconds": written - started,
    }), flush=True)


async def download(args):
    started = time.monotonic()
    async with core_of(args) as core:
        await core.user_fs.process_last_messages()
        await core.user_fs.sync()
        workspace = core.user_fs.get_workspace(EntryID(args["workspace_id"]))
        with open(args["local"], "wb") as target:
            async with await workspace.open_file("/file.bin", "rb") as source:
                while data := await source.read(CHUNK):
                    target.write(data)
    print("RESULT " + json.dumps({"seconds": time.monotonic() - started}), flush=True)


configure_logging(log_level="WARNING")
trio.run({"upload": upload, "download": download}[sys.argv[1]], json.loads(sys.argv[2]))
"""


@dataclass
class Figure:
    storage: str
    client: str
    operation: str
    size_mib: float
    seconds: float
    mib_per_s: float
    peak_rss_mib: float | None


def _run(command: list[str], input: str | None = None) -> tuple[str, float, float]:
    """Run to completion; returns stdout, wall seconds, peak RSS (MiB) of that process
    (from `wait4`, so only its own)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env={k: v for k, v in os.environ.items() if not k.startswith(("PARSEC_", "XDG_"))},
        )
        if process.stdin is not None and input is not None:
            process.stdin.write(input.encode())
            process.stdin.close()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"`{' '.join(command[:4])} ...` failed:\n{stdout}\n{stderr}")
    return stdout, seconds, usage.ru_maxrss / 1024


def _ours(config_dir: Path, *args: str) -> tuple[str, float, float]:
    return _run(
        [str(OUR_PARSEC), "core", *args, "--config-dir", str(config_dir), "--password", PASSWORD]
    )


def _reference(command: str, arguments: dict[str, Any]) -> dict[str, Any]:
    python = REFERENCE_PARSEC.with_name("python")
    stdout, _, _ = _run([str(python), "-c", REFERENCE_SCRIPT, command, json.dumps(arguments)])
    [line] = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


def _organization(addr: str, folder: Path) -> Path:
    name = f"Bench{os.getpid()}x{int(time.time() * 1000) % 10**8}"
    done = subprocess.run(
        [str(OUR_PARSEC), "core", "create_organization", "--addr", addr, "-T", TOKEN, name],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    match = re.search(r"^Bootstrap organization url: (\S+)$", done.stdout, re.MULTILINE)
    assert match is not None, done.stdout
    config_dir = folder / "config"
    config_dir.mkdir()
    subprocess.run(
        [
            str(OUR_PARSEC),
            "core",
            "bootstrap_organization",
            "--config-dir",
            str(config_dir),
            "--password",
            PASSWORD,
            match.group(1),
        ],
        input="Bench\nbench@example.com\nbench\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return config_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while data := stream.read(CHUNK):
            digest.update(data)
    return digest.hexdigest()


def measure(storage: str, args: argparse.Namespace, folder: Path) -> list[Figure]:
    figures: list[Figure] = []
    local = folder / "file.bin"
    with local.open("wb") as stream:
        for _ in range(args.size_mib):
            stream.write(os.urandom(CHUNK))
    size = float(args.size_mib)
    expected = _sha256(local)

    def figure(client: str, operation: str, seconds: float, rss: float | None) -> None:
        figures.append(Figure(storage, client, operation, size, seconds, size / seconds, rss))
        print(f"  {storage:<10} {client:<9} {operation:<8} {size / seconds:8.1f} MiB/s", flush=True)

    with StorageEnv(storage, args.postgresql_url, folder) as env:
        print(f"Storage: {env.describe()}", flush=True)
        with running_server("ours", True, folder, env) as server:
            addr = f"parsec://127.0.0.1:{server.port}?no_ssl=true"
            config_dir = _organization(addr, folder)
            parallel = ["--parallel", str(args.parallel), "--quiet"]
            if "ours" in args.clients:
                _ours(config_dir, "create_workspace", "Bench")
                _, seconds, rss = _ours(
                    config_dir, "upload", str(local), "/Bench/file.bin", *parallel
                )
                figure("ours", "upload", seconds, rss)
                back = folder / "back-ours.bin"
                _, seconds, rss = _ours(
                    config_dir, "download", "/Bench/file.bin", str(back), *parallel
                )
                figure("ours", "download", seconds, rss)
                assert _sha256(back) == expected, "ours: downloaded content differs"
                back.unlink()
            if "reference" in args.clients:
                common = {"config_dir": str(config_dir), "password": PASSWORD}
                up = _reference(
                    "upload",
                    {
                        **common,
                        "data_dir": str(folder / "ref-up"),
                        "name": "Ref",
                        "local": str(local),
                    },
                )
                figure("reference", "upload", up["seconds"], None)
                back = folder / "back-reference.bin"
                down = _reference(
                    "download",
                    {
                        **common,
                        "data_dir": str(folder / "ref-down"),
                        "workspace_id": up["workspace_id"],
                        "local": str(back),
                    },
                )
                figure("reference", "download", down["seconds"], None)
                assert _sha256(back) == expected, "reference: downloaded content differs"
                back.unlink()
    local.unlink()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="postgresql,s3")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--clients", default="ours,reference")
    parser.add_argument("--postgresql-url", default=DEFAULT_POSTGRESQL_URL)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.clients = args.clients.split(",")
    print(json.dumps(machine_info(1)), flush=True)
    figures: list[Figure] = []
    for storage in args.storage.split(","):
        with tempfile.TemporaryDirectory(prefix=f"client-bench-{storage}-") as folder:
            figures += measure(storage, args, Path(folder))
    print("\n| storage | client | operation | MiB | seconds | MiB/s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for f in figures:
        rss = "-" if f.peak_rss_mib is None else f"{f.peak_rss_mib:.0f}"
        print(
            f"| {f.storage} | {f.client} | {f.operation} | {f.size_mib:.0f} | "
            f"{f.seconds:.1f} | {f.mib_per_s:.1f} | {rss} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(f) for f in figures], indent=2))


if __name__ == "__main__":
    main()
