"""The server's logs and its audit log hold no secret and no personal data.

A server is run as an administrator would (`parsec backend run --log-level INFO
--audit-log FILE`), with a bootstrap webhook whose URL carries credentials. Every kind of
handshake happens (a wrong administration token included), an organization is
bootstrapped, a user and a device are invited by e-mail and claimed, its stats exported,
the user revoked and refused, then the REST administration API is used (a wrong token,
a user frozen and unfrozen by e-mail). Then the log file, the audit file and the server's output
are searched for every token, e-mail, name, password and key the scenario used.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from parsec_server.backend.config import SQLITE_PREFIX
from parsec_server.client.connection import HandshakeRefused
from parsec_server.client.device import LocalDevice
from parsec_server.client.device_file import list_available_devices, load_device_with_password
from tests.backend.common import revoke
from tests.cli.commands import TIMEOUT, Command, Done, our_parsec, run
from tests.fixtures import free_port

ADMIN_TOKEN = "Adm1n-t0ken-S3CRET"
WRONG_TOKEN = "Wr0ng-t0ken-S3CRET"
PASSWORD = "Pa55w0rd-S3CRET"
HOOK_PASSWORD = "h00k-pa55-S3CRET"
HOOK_QUERY_SECRET = "h00k-query-S3CRET"
ADMIN_NAME, ADMIN_EMAIL = "Adalbert Secretname", "adalbert.secret@example.com"
USER_NAME, USER_EMAIL = "Zacharias Hiddenname", "zacharias.hidden@example.com"
URL_LINE = re.compile(r"^url: (parsec://\S+)$", re.MULTILINE)
BOOTSTRAP_LINE = re.compile(r"Bootstrap organization url: (parsec://\S+)")


@dataclass
class Webhook:
    port: int
    calls: int = 0

    @property
    def url(self) -> str:
        return (
            f"http://hook:{HOOK_PASSWORD}@127.0.0.1:{self.port}/parsec-hook?key={HOOK_QUERY_SECRET}"
        )


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    """An HTTP endpoint that refuses every call (500): the server logs the failure (if it
    reaches it at all: urllib does not take credentials in a URL)."""
    hook = Webhook(port=0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", headers)
        if length:
            await reader.readexactly(int(length[1]))
        hook.calls += 1
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    hook.port = server.sockets[0].getsockname()[1]
    async with server:
        yield hook


@dataclass
class Server:
    addr: str
    log_file: Path
    audit_file: Path
    process: asyncio.subprocess.Process

    async def stop(self) -> str:
        """Stop the server; return what it printed."""
        self.process.send_signal(signal.SIGINT)
        async with asyncio.timeout(TIMEOUT):
            out, err = await self.process.communicate()
        return out.decode() + err.decode()


async def start_server(db_url: str, log_file: Path, webhook: Webhook) -> Server:
    port = free_port()
    addr = f"parsec://127.0.0.1:{port}?no_ssl=true"
    if db_url == "MOCKED":
        blockstore = "MOCKED"
    elif db_url.startswith(SQLITE_PREFIX):
        # The PostgreSQL block store needs a PostgreSQL database: blocks in files beside
        # the SQLite one, as --data-dir keeps them.
        blocks = log_file.parent / "blocks"
        blocks.mkdir(exist_ok=True)
        blockstore = f"file:{blocks}"
    else:
        blockstore = "POSTGRESQL"
    process = await asyncio.create_subprocess_exec(
        our_parsec(),
        "backend",
        "run",
        f"--db={db_url}",
        f"--blockstore={blockstore}",
        f"--administration-token={ADMIN_TOKEN}",
        f"--backend-addr={addr}",
        "--email-host=MOCKED",
        f"--port={port}",
        "--log-level=INFO",
        f"--log-file={log_file}",
        f"--audit-log={log_file.parent / 'audit.log'}",
        f"--organization-bootstrap-webhook={webhook.url}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if process.returncode is not None:
                    assert process.stderr is not None
                    error = (await process.stderr.read()).decode()
                    raise AssertionError(f"the server did not start: {error}") from None
                await asyncio.sleep(0.1)
                continue
            writer.close()
            break
    return Server(addr, log_file, log_file.parent / "audit.log", process)


def ok(done: Done) -> Done:
    assert done.returncode == 0, done.describe()
    return done


def load_device(config_dir: Path) -> LocalDevice:
    [device] = list_available_devices(config_dir)
    return load_device_with_password(device.key_file_path, PASSWORD)


def device_args(config_dir: Path, password: str = PASSWORD) -> list[str]:
    [device] = list_available_devices(config_dir)
    return [
        "--config-dir",
        str(config_dir),
        "--device",
        device.slughash[:10],
        "--password",
        password,
    ]


async def greet_and_claim(
    home: Path, greeter_args: list[str], url: str, claimer_dir: Path, *claimer_args: str
) -> None:
    token = re.search(r"token=([0-9a-f]{32})", url)
    assert token is not None
    greeter = await Command.start(
        home, "greet_invitation", *greeter_args, "--sas-mode=auto", token[1]
    )
    claimer = await Command.start(
        home,
        "claim_invitation",
        f"--config-dir={claimer_dir}",
        f"--password={PASSWORD}",
        "--sas-mode=auto",
        *claimer_args,
        url,
    )
    greeted, claimed = await asyncio.gather(greeter.finish(), claimer.finish())
    ok(greeted)
    ok(claimed)


async def test_logs_of_a_full_scenario_hold_no_secret(
    db_url: str, tmp_path: Path, webhook: Webhook
) -> None:
    server = await start_server(db_url, tmp_path / "server.log", webhook)
    secrets = [ADMIN_TOKEN, WRONG_TOKEN, PASSWORD, HOOK_PASSWORD, HOOK_QUERY_SECRET]
    secrets += [ADMIN_NAME, ADMIN_EMAIL, USER_NAME, USER_EMAIL]
    try:
        # Administration handshakes: refused, then accepted.
        refused = await run(
            tmp_path, "create_organization", "--addr", server.addr, "-T", WRONG_TOKEN, "Org1"
        )
        assert refused.returncode != 0
        created = ok(
            await run(
                tmp_path, "create_organization", "--addr", server.addr, "-T", ADMIN_TOKEN, "Org1"
            )
        )
        bootstrap_url = BOOTSTRAP_LINE.search(created.stdout)
        assert bootstrap_url is not None, created.describe()
        secrets.append(re.search(r"token=([0-9a-f]+)", bootstrap_url[1])[1])  # type: ignore[index]

        # Anonymous handshake: bootstrap (the webhook is called and refuses).
        admin_dir = tmp_path / "admin"
        ok(
            await run(
                tmp_path,
                "bootstrap_organization",
                f"--config-dir={admin_dir}",
                f"--password={PASSWORD}",
                f"--full-name={ADMIN_NAME}",
                f"--email={ADMIN_EMAIL}",
                "--device-label=laptop",
                bootstrap_url[1],
            )
        )

        # Authenticated handshakes, invited handshakes, e-mails.
        invited = ok(
            await run(tmp_path, "invite_user", *device_args(admin_dir), "--send-email", USER_EMAIL)
        )
        user_url = URL_LINE.search(invited.stdout)
        assert user_url is not None, invited.describe()
        secrets.append(re.search(r"token=([0-9a-f]{32})", user_url[1])[1])  # type: ignore[index]
        user_dir = tmp_path / "user"
        await greet_and_claim(
            tmp_path,
            device_args(admin_dir),
            user_url[1],
            user_dir,
            f"--full-name={USER_NAME}",
            "--device-label=phone",
        )
        invited = ok(await run(tmp_path, "invite_device", *device_args(user_dir)))
        device_url = URL_LINE.search(invited.stdout)
        assert device_url is not None, invited.describe()
        secrets.append(re.search(r"token=([0-9a-f]{32})", device_url[1])[1])  # type: ignore[index]
        await greet_and_claim(
            tmp_path,
            device_args(user_dir),
            device_url[1],
            tmp_path / "user-2",
            "--device-label=tablet",
        )

        # An invited handshake with an unknown token.
        unknown = device_url[1].replace(secrets[-1], "0" * 32)
        claimed = await run(
            tmp_path,
            "claim_invitation",
            f"--config-dir={tmp_path / 'nobody'}",
            f"--password={PASSWORD}",
            "--sas-mode=auto",
            "--device-label=x",
            unknown,
        )
        assert claimed.returncode != 0

        # Stats exported, the user revoked, then refused.
        ok(
            await run(
                tmp_path, "stats_organization", "--addr", server.addr, "-T", ADMIN_TOKEN, "Org1"
            )
        )
        admin, user = load_device(admin_dir), load_device(user_dir)
        secrets += [admin.signing_key.encode().hex(), user.signing_key.encode().hex()]
        secrets += [admin.private_key.encode().hex(), admin.user_manifest_key.hex()]
        async with await admin.connect() as conn:
            await revoke(conn, admin, user.user_id)
        with pytest.raises(HandshakeRefused):
            await user.connect()

        # The REST administration API: a wrong token, an update, a user frozen by e-mail,
        # the server's stats exported.
        rest = ["--addr", server.addr, "-T", ADMIN_TOKEN]
        refused = await run(
            tmp_path, "list_organizations", "--addr", server.addr, "-T", WRONG_TOKEN
        )
        assert refused.returncode != 0
        ok(await run(tmp_path, "update_organization", *rest, "Org1", "--active-users-limit", "9"))
        ok(await run(tmp_path, "freeze_user", *rest, "Org1", "--email", ADMIN_EMAIL))
        ok(await run(tmp_path, "unfreeze_user", *rest, "Org1", "--email", ADMIN_EMAIL))
        ok(await run(tmp_path, "list_organization_users", *rest, "Org1"))
        ok(await run(tmp_path, "export_stats", *rest, str(tmp_path / "stats.csv")))
    finally:
        output = await server.stop()

    logs = server.log_file.read_text()
    assert "bootstrap webhook" in logs  # the scenario did log something
    assert '"event": "Request"' in logs  # the request lines are searched too
    assert f"127.0.0.1:{webhook.port}/parsec-hook" in logs  # where the hook is, not its secrets
    for token in secrets[-3:]:
        # The tokens as hex and as UUIDs.
        secrets.append(f"{token[:8]}-{token[8:12]}-{token[12:16]}-{token[16:20]}-{token[20:]}")
    audit = server.audit_file.read_text()
    actions = {(line["action"], line["reason"]) for line in map(json.loads, audit.splitlines())}
    assert actions == {
        ("administration.token_refused", "bad_administration_token"),
        ("organization.create", None),
        ("organization.stats_export", None),
        ("handshake.refused", "unknown_invitation"),
        ("user.revoke", None),
        ("handshake.refused", "revoked_device"),
        ("administration.token_refused", "bad_administration_token"),
        ("organization.update", None),
        ("user.freeze", None),
        ("user.unfreeze", None),
        ("server.stats_export", None),
    }
    leaked = [secret for secret in secrets if secret in logs or secret in output or secret in audit]
    assert leaked == [], (leaked, logs, output, audit)
