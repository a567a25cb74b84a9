"""The server's configuration: one immutable object built by the CLI from options and
`PARSEC_*` variables, read by everything else."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from parsec_server.api.addr import BackendAddr

# `--db sqlite:PATH`: the SQLite storage in the file at PATH (docs/storage-sqlite.md).
SQLITE_PREFIX = "sqlite:"


@dataclass(frozen=True, slots=True)
class MockedBlockstoreConfig:
    type_name: Literal["MOCKED"] = "MOCKED"


@dataclass(frozen=True, slots=True)
class PostgreSQLBlockstoreConfig:
    type_name: Literal["POSTGRESQL"] = "POSTGRESQL"


@dataclass(frozen=True, slots=True)
class S3BlockstoreConfig:
    endpoint_url: str | None  # None: the AWS endpoint of the region
    region: str
    bucket: str
    key: str
    secret: str = field(repr=False)
    type_name: Literal["S3"] = "S3"


@dataclass(frozen=True, slots=True)
class SwiftBlockstoreConfig:
    auth_url: str
    tenant: str
    container: str
    user: str
    password: str = field(repr=False)
    type_name: Literal["SWIFT"] = "SWIFT"


@dataclass(frozen=True, slots=True)
class FileBlockstoreConfig:
    path: Path  # absolute: the block directory (docs/storage-files.md)
    type_name: Literal["FILE"] = "FILE"


SingleBlockstoreConfig = (
    MockedBlockstoreConfig
    | PostgreSQLBlockstoreConfig
    | S3BlockstoreConfig
    | SwiftBlockstoreConfig
    | FileBlockstoreConfig
)


@dataclass(frozen=True, slots=True)
class RaidBlockstoreConfig:
    mode: Literal["RAID0", "RAID1", "RAID5"]
    nodes: tuple[SingleBlockstoreConfig, ...]  # in node index order

    @property
    def type_name(self) -> str:
        return self.mode


BlockstoreConfig = SingleBlockstoreConfig | RaidBlockstoreConfig


@dataclass(frozen=True, slots=True)
class MockedEmailConfig:
    sender: str
    tmpdir: Path

    def describe(self) -> str:
        return f"MockedEmailConfig(sender={self.sender}, tmpdir={self.tmpdir})"


@dataclass(frozen=True, slots=True)
class SmtpEmailConfig:
    host: str
    port: int
    sender: str
    host_user: str | None
    host_password: str | None = field(repr=False)
    use_ssl: bool  # implicit TLS from the first byte
    use_tls: bool  # STARTTLS
    timeout: float = 30.0  # seconds for the whole delivery of one e-mail (docs/timeouts.md)

    def describe(self) -> str:
        return (
            f"SmtpEmailConfig(sender={self.sender}, host={self.host}, port={self.port}, "
            f"use_ssl={self.use_ssl})"
        )


EmailConfig = MockedEmailConfig | SmtpEmailConfig


@dataclass(frozen=True, slots=True)
class BackendConfig:
    db_url: str  # "MOCKED", a postgresql:// URL, or sqlite:<absolute path>
    blockstore: BlockstoreConfig
    administration_token: str = field(repr=False)
    backend_addr: BackendAddr
    email: EmailConfig
    host: str = "127.0.0.1"
    port: int = 6777
    db_min_connections: int = 5
    db_max_connections: int = 7
    db_first_tries_number: int = 1  # 0: try forever
    db_first_tries_sleep: float = 1.0
    # PostgreSQL: the event listening connection is checked every this many seconds, and
    # lost when a check takes as long (a silent loss is noticed within twice this delay).
    events_check_interval: float = 5.0
    spontaneous_organization_bootstrap: bool = False
    organization_bootstrap_webhook: str | None = None
    # Seconds for the whole webhook call (connection, request, answer).
    organization_bootstrap_webhook_timeout: float = 30.0
    # Seconds a new connection has to answer the handshake challenge.
    handshake_timeout: float = 10.0
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    debug: bool = False
    workers: int = 1
    # Sentry DSN: unexpected errors are reported there (backend/sentry.py); None: not at all.
    sentry_url: str | None = field(default=None, repr=False)
    sentry_environment: str = "production"
    # Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` headers are believed: IP addresses,
    # networks (CIDR), or "*" for every peer (docs/deployment.md); empty: none.
    proxy_trusted_addresses: tuple[str, ...] = ()
    # Connections that have not sent a complete request yet (docs/hardening.md): seconds
    # they have to complete it, and how many one peer address may have (0: no cap).
    http_header_timeout: float = 10.0
    max_pending_connections_per_peer: int = 100
    # Where the Prometheus metrics are served (host, port); None: no metrics at all.
    metrics_address: tuple[str, int] | None = None
    # Seconds a SIGTERM/SIGINT shutdown may take (requests in progress, then closing the
    # storage) before what remains is abandoned (docs/deployment.md).
    shutdown_timeout: float = 30.0
    # Where the audit lines are appended besides the log stream (docs/audit-log.md).
    audit_log: Path | None = None
    # SQLite: what a commit waits for. Always FULL (durable, docs/storage-sqlite.md) except
    # in the tests that do not kill servers; not a command line option.
    sqlite_synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL"

    @property
    def db_type(self) -> Literal["MOCKED", "POSTGRESQL", "SQLITE"]:
        if self.db_url == "MOCKED":
            return "MOCKED"
        return "SQLITE" if self.db_url.startswith(SQLITE_PREFIX) else "POSTGRESQL"

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of the SQLite storage; None on another storage."""
        if not self.db_url.startswith(SQLITE_PREFIX):
            return None
        return Path(self.db_url.removeprefix(SQLITE_PREFIX))

    def startup_line(self) -> str:
        return (
            f"Starting Parsec Backend on {self.host}:{self.port} (db={self.db_type} "
            f"blockstore={self.blockstore.type_name} backend_addr={self.backend_addr.to_url()} "
            f"email_config={self.email.describe()})"
        )


class StartupError(Exception):
    """A problem that stops the server before it listens (bad setting, unreachable or
    unmigrated database, unusable blockstore). Its message is shown to the operator as
    `Error: <message>`."""
