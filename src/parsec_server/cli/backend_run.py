"""`parsec backend run`: options, their validation into a `BackendConfig`, server start.

Errors the operator can fix are reported without traceback: usage errors (`click.BadParameter`,
exit 2) for malformed values, `StartupError` (`Error: <message>`, exit 1) for values that
parse but cannot work (see protocol/70-server-config.md section 1).
"""

from __future__ import annotations

import functools
import os
import re
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import click
import structlog

from parsec_server.api.addr import AddrError, BackendAddr
from parsec_server.backend.asgi.proxy import parse_trusted_addresses
from parsec_server.backend.config import (
    BackendConfig,
    EmailConfig,
    MockedEmailConfig,
    SmtpEmailConfig,
    StartupError,
)
from parsec_server.backend.data_dir import DATA_DIR_ENVVAR, prepare_data_dir, storage_args
from parsec_server.backend.sentry import DEFAULT_ENVIRONMENT, check_dsn, init_sentry
from parsec_server.cli.blockstore_params import check_blockstore_usable, parse_blockstore_params
from parsec_server.cli.db_params import parse_db_url
from parsec_server.cli.logging_setup import (
    LOG_FORMATS,
    LOG_LEVELS,
    LogFormat,
    LogLevel,
    configure_logging,
)
from parsec_server.cli.option_errors import option_error

logger = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6777
DEFAULT_EMAIL_SENDER = "no-reply@parsec.com"
DEV_ADMINISTRATION_TOKEN = "s3cr3t"
MOCKED = "MOCKED"


# --- Boolean flags read from the environment ---------------------------------------------


class StrictBoolParamType(click.types.BoolParamType):
    """Booleans as click 7 read them: `on`/`off` (accepted by click 8) are refused."""

    STATES: ClassVar[dict[str, bool]] = {
        **dict.fromkeys(("1", "true", "t", "yes", "y"), True),
        **dict.fromkeys(("0", "false", "f", "no", "n"), False),
    }

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        if isinstance(value, bool):
            return value
        state = self.STATES.get(str(value).strip().lower())
        if state is None:
            hint = " / ".join(f'"{opt}"' for opt in param.opts) if param else None
            raise click.BadParameter(f"{value} is not a valid boolean", ctx, param_hint=hint)
        return state


STRICT_BOOL = StrictBoolParamType()


# --- Settings -----------------------------------------------------------------------------


def parse_backend_addr(url: str) -> BackendAddr:
    """`--backend-addr`; raises `click.BadParameter` for a malformed URL."""
    try:
        return BackendAddr.from_url(url)
    except AddrError as exc:
        raise option_error(
            "backend_addr",
            f"`{url}` is not a valid `parsec://host[:port][?no_ssl=true]` URL ({exc})",
        ) from None


def check_sentry_url(url: str | None) -> None:
    if url:
        try:
            check_dsn(url)
        except ValueError as exc:
            raise option_error("sentry_url", f"not a Sentry DSN ({exc})") from None


def parse_proxy_trusted_addresses(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    try:
        return parse_trusted_addresses(text)
    except ValueError as exc:
        raise option_error("proxy_trusted_addresses", str(exc)) from None


def build_email_config(
    *,
    host: str,
    port: int = 25,
    host_user: str | None = None,
    host_password: str | None = None,
    use_ssl: bool = False,
    use_tls: bool = False,
    sender: str | None = None,
) -> EmailConfig:
    """`MOCKED` creates the `tmp-email-folder-*` directory receiving the messages."""
    if host == MOCKED:
        tmpdir = Path(tempfile.mkdtemp(prefix="tmp-email-folder-"))
        return MockedEmailConfig(sender=sender or DEFAULT_EMAIL_SENDER, tmpdir=tmpdir)
    if not sender:
        raise StartupError("--email-sender is required when --email-host is provided")
    return SmtpEmailConfig(
        host=host,
        port=port,
        sender=sender,
        host_user=host_user,
        host_password=host_password,
        use_ssl=use_ssl,
        use_tls=use_tls,
    )


_METRICS_ADDRESS = re.compile(r"(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})")
_ANY_ADDRESS = {"0.0.0.0", "::", ""}


def parse_metrics_address(value: str) -> tuple[str, int]:
    """`--metrics-address HOST:PORT` (`[IPv6]:PORT`); raises `click.BadParameter`."""
    match = _METRICS_ADDRESS.fullmatch(value.strip())
    port = int(match["port"]) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise option_error(
            "metrics_address",
            f"`{value}` is not a `HOST:PORT` address (e.g. `127.0.0.1:9100`, `[::1]:9100`)",
        )
    return (match["ipv6"] or match["host"], port)


def check_metrics_address(metrics_address: tuple[str, int], host: str, port: int) -> None:
    """The metrics are never served on the public port."""
    metrics_host, metrics_port = metrics_address
    if metrics_port == port and (
        metrics_host == host or metrics_host in _ANY_ADDRESS or host in _ANY_ADDRESS
    ):
        raise option_error(
            "metrics_address", f"must not be the server's own address ({host}:{port})"
        )


def _no_passphrase() -> bytes:
    # Without this, OpenSSL would prompt on the terminal for an encrypted key.
    return b""


def check_tls_files(certfile: Path | None, keyfile: Path | None) -> None:
    """Raises `StartupError` unless the certificate chain and its key load."""
    if certfile is None and keyfile is None:
        return
    if certfile is None:
        raise StartupError("--ssl-keyfile is given without --ssl-certfile: TLS needs a certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except (ssl.SSLError, OSError) as exc:
        key_text = f" with key `{keyfile}`" if keyfile else ""
        raise StartupError(f"Cannot load TLS certificate `{certfile}`{key_text}: {exc}") from None


def build_config(
    *,
    db: str,
    blockstore: Sequence[str],
    administration_token: str,
    backend_addr: str,
    email_host: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    db_min_connections: int = 5,
    db_max_connections: int = 7,
    db_first_tries_number: int = 1,
    db_first_tries_sleep: float = 1.0,
    spontaneous_organization_bootstrap: bool = False,
    organization_bootstrap_webhook: str | None = None,
    email_port: int = 25,
    email_host_user: str | None = None,
    email_host_password: str | None = None,
    email_use_ssl: bool = False,
    email_use_tls: bool = False,
    email_sender: str | None = None,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
    sentry_url: str | None = None,
    sentry_environment: str = DEFAULT_ENVIRONMENT,
    proxy_trusted_addresses: str | None = None,
    debug: bool = False,
    workers: int = 1,
    http_header_timeout: float = 10.0,
    max_pending_connections_per_peer: int = 100,
    metrics_address: str | None = None,
    shutdown_timeout: float = 30.0,
    audit_log: Path | None = None,
) -> BackendConfig:
    """Validates the `run` options into the server's configuration.

    Raises `click.BadParameter` for malformed values, `StartupError` for values that cannot
    work. Malformed values are all reported before any side effect (the temporary e-mail
    folder is created last).
    """
    addr = parse_backend_addr(backend_addr)
    blockstore_config = parse_blockstore_params(blockstore)
    db = parse_db_url(db)
    metrics = None if metrics_address is None else parse_metrics_address(metrics_address)
    if metrics is not None:
        check_metrics_address(metrics, host, port)
    check_sentry_url(sentry_url)
    trusted_proxies = parse_proxy_trusted_addresses(proxy_trusted_addresses)
    if db_min_connections > db_max_connections:
        raise option_error(
            "db_min_connections", f"must not exceed --db-max-connections ({db_max_connections})"
        )
    check_blockstore_usable(blockstore_config, db)
    check_tls_files(ssl_certfile, ssl_keyfile)
    email = build_email_config(
        host=email_host,
        port=email_port,
        host_user=email_host_user,
        host_password=email_host_password,
        use_ssl=email_use_ssl,
        use_tls=email_use_tls,
        sender=email_sender,
    )
    return BackendConfig(
        db_url=db,
        blockstore=blockstore_config,
        administration_token=administration_token,
        backend_addr=addr,
        email=email,
        host=host,
        port=port,
        db_min_connections=db_min_connections,
        db_max_connections=db_max_connections,
        db_first_tries_number=db_first_tries_number,
        db_first_tries_sleep=db_first_tries_sleep,
        spontaneous_organization_bootstrap=spontaneous_organization_bootstrap,
        organization_bootstrap_webhook=organization_bootstrap_webhook,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        debug=debug,
        workers=workers,
        sentry_url=sentry_url,
        sentry_environment=sentry_environment,
        proxy_trusted_addresses=trusted_proxies,
        http_header_timeout=http_header_timeout,
        # One delay for every step before a connection is established (issue: "the same
        # delay"): the HTTP request, then the protocol handshake after the upgrade.
        handshake_timeout=http_header_timeout,
        max_pending_connections_per_peer=max_pending_connections_per_peer,
        metrics_address=metrics,
        shutdown_timeout=shutdown_timeout,
        audit_log=audit_log,
    )


# --- `--dev` ------------------------------------------------------------------------------

# Settings `--dev` fills in when they are absent from the command line (70 section 1.2),
# keyed by click parameter name. `--backend-addr` depends on `--port`: see `dev_args`.
_DEV_ARGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("debug", ("--debug",)),
    ("db", ("--db", MOCKED)),
    ("email_sender", ("--email-sender", DEFAULT_EMAIL_SENDER)),
    ("email_host", ("--email-host", MOCKED)),
    ("blockstore", ("--blockstore", MOCKED)),
    ("administration_token", ("--administration-token", DEV_ADMINISTRATION_TOKEN)),
)


def dev_args(given: Mapping[str, object]) -> list[str]:
    """The arguments `--dev` adds, given the parameters found on the command line (by name,
    with their raw values)."""
    args = [arg for name, option_args in _DEV_ARGS if name not in given for arg in option_args]
    if "backend_addr" not in given:
        args += ["--backend-addr", f"parsec://localhost:{given.get('port', DEFAULT_PORT)}"]
    return args


def data_dir_args(given: Mapping[str, object], environ: Mapping[str, str]) -> list[str]:
    """The `--db` and `--blockstore` arguments `--data-dir` (or `PARSEC_DATA_DIR`) stands
    for; none without it. A usage error if `--db` or `--blockstore` is given as well, on
    the command line or in the environment: one place says where the data is."""
    value = given.get("data_dir") or environ.get(DATA_DIR_ENVVAR)
    if not value:
        return []
    clashes = [
        option
        for name, option, envvar in (
            ("db", "--db", "PARSEC_DB"),
            ("blockstore", "--blockstore", "PARSEC_BLOCKSTORE"),
        )
        if name in given or environ.get(envvar)
    ]
    if clashes:
        raise click.UsageError(
            f"--data-dir ({DATA_DIR_ENVVAR}) sets --db and --blockstore: "
            f"do not give {' or '.join(clashes)} (nor their PARSEC_* variables) with it"
        )
    return storage_args(Path(str(value)))


class RunCommand(click.Command):
    """Applies `--data-dir` and `--dev` before any other option: their values are inserted
    as if typed, so they beat the `PARSEC_*` variables of the same settings."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given, _, _ = self.make_parser(ctx).parse_args(args=list(args))
        # In front, so that they stay before a `--` the operator may have typed.
        storage = data_dir_args(given, os.environ)
        if storage:
            given = {**given, "db": storage[1], "blockstore": storage[3]}
        if given.get("dev"):
            storage += dev_args(given)
        return super().parse_args(ctx, [*storage, *args])


# --- The command --------------------------------------------------------------------------


def _check_regex(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise click.BadParameter(f"invalid regular expression: {exc}") from None
    return value


def _setup_logging(
    level: LogLevel, log_format: LogFormat | None, file: Path | None, log_filter: str | None
) -> None:
    try:
        configure_logging(level, log_format, file, log_filter)
    except OSError as exc:
        raise click.ClickException(f"Cannot open log file `{file}`: {exc.strerror}") from None


def _serve(config: BackendConfig) -> None:
    from parsec_server.backend.asgi.server import run_server

    try:
        run_server(config)
    except KeyboardInterrupt:
        click.echo("bye ;-)")
    except Exception as exc:
        if config.debug:
            raise
        if not isinstance(exc, StartupError):
            logger.error("Server stopped by an unexpected error", exc_info=exc)
        raise click.ClickException(str(exc) or type(exc).__name__) from None


option = functools.partial(click.option, show_envvar=True)


@click.command(cls=RunCommand, short_help="Run the server")
@option(
    "--host",
    "-H",
    envvar="PARSEC_HOST",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on",
)
@option(
    "--port",
    "-P",
    envvar="PARSEC_PORT",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on",
)
@option(
    "--db",
    envvar="PARSEC_DB",
    required=True,
    help="`MOCKED` for in-memory storage, a `postgresql://` URL, or `sqlite:PATH` for a "
    "SQLite database file (one process: no --workers); the database is prepared with "
    "`parsec backend migrate`",
)
@option(
    "--data-dir",
    envvar=DATA_DIR_ENVVAR,
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep everything in this directory: SQLite database DIR/parsec.sqlite and blocks "
    "in DIR/blocks (stands for --db sqlite:DIR/parsec.sqlite --blockstore file:DIR/blocks, "
    "which must not be given with it). A new or empty directory is initialised at start",
)
@option(
    "--db-min-connections",
    envvar="PARSEC_DB_MIN_CONNECTIONS",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Minimum number of connections to the PostgreSQL database",
)
@option(
    "--db-max-connections",
    envvar="PARSEC_DB_MAX_CONNECTIONS",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    help="Maximum number of connections to the PostgreSQL database (plus one for notifications)",
)
@option(
    "--db-first-tries-number",
    envvar="PARSEC_DB_FIRST_TRIES_NUMBER",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Attempts to reach the database at start-up (0: no limit)",
)
@option(
    "--db-first-tries-sleep",
    envvar="PARSEC_DB_FIRST_TRIES_SLEEP",
    type=click.FloatRange(min=0),
    default=1,
    show_default=True,
    help="Seconds between those attempts",
)
@option(
    "--blockstore",
    "-b",
    envvar="PARSEC_BLOCKSTORE",
    required=True,
    multiple=True,
    help="Where blocks are stored: `MOCKED`, `POSTGRESQL`, "
    "`s3:[<endpoint_url>]:<region>:<bucket>:<key>:<secret>`, "
    "`swift:<auth_url>:<tenant>:<container>:<user>:<password>`, `file:<directory>` "
    "(one file per block in an existing directory), or repeated "
    "`RAID0|RAID1|RAID5:<node index>:<one of those>` for a RAID set (each node a storage "
    "of its own). "
    "Inside a field, `\\:` stands for `:` and `\\\\` for `\\`. "
    "The environment variable takes whitespace-separated values",
)
@option(
    "--administration-token",
    envvar="PARSEC_ADMINISTRATION_TOKEN",
    required=True,
    help="Secret token of the administration commands",
)
@option(
    "--spontaneous-organization-bootstrap",
    envvar="PARSEC_SPONTANEOUS_ORGANIZATION_BOOTSTRAP",
    is_flag=True,
    type=STRICT_BOOL,
    help="Allow bootstrapping organizations the administrator did not create",
)
@option(
    "--organization-bootstrap-webhook",
    envvar="PARSEC_ORGANIZATION_BOOTSTRAP_WEBHOOK",
    help="URL receiving a JSON POST after each organization bootstrap",
)
@option(
    "--backend-addr",
    envvar="PARSEC_BACKEND_ADDR",
    required=True,
    help="Public URL of this server, `parsec://host[:port][?no_ssl=true]` "
    "(used in invitation e-mails and redirections)",
)
@option(
    "--email-host",
    envvar="PARSEC_EMAIL_HOST",
    required=True,
    help="SMTP host, or `MOCKED` to write messages to a temporary folder instead",
)
@option(
    "--email-port",
    envvar="PARSEC_EMAIL_PORT",
    type=click.IntRange(0, 65535),
    default=25,
    show_default=True,
    help="SMTP port",
)
@option("--email-host-user", envvar="PARSEC_EMAIL_HOST_USER", help="SMTP login")
@option(
    "--email-host-password",
    envvar="PARSEC_EMAIL_HOST_PASSWORD",
    help="SMTP password (login happens when both user and password are set)",
)
@option(
    "--email-use-ssl",
    envvar="PARSEC_EMAIL_USE_SSL",
    is_flag=True,
    type=STRICT_BOOL,
    help="Use TLS from the start of the SMTP connection (implicit TLS, usually port 465)",
)
@option(
    "--email-use-tls",
    envvar="PARSEC_EMAIL_USE_TLS",
    is_flag=True,
    type=STRICT_BOOL,
    help="Upgrade the SMTP connection with STARTTLS (usually port 587); "
    "ignored with --email-use-ssl",
)
@option(
    "--email-sender",
    envvar="PARSEC_EMAIL_SENDER",
    help=f"Sender address of the e-mails (required unless --email-host is MOCKED, "
    f"then defaults to {DEFAULT_EMAIL_SENDER})",
)
@option(
    "--ssl-keyfile",
    envvar="PARSEC_SSL_KEYFILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Private key of the TLS certificate (if not inside --ssl-certfile)",
)
@option(
    "--ssl-certfile",
    envvar="PARSEC_SSL_CERTFILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TLS certificate chain; enables TLS",
)
@option(
    "--log-level",
    "-l",
    envvar="PARSEC_LOG_LEVEL",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="WARNING",
    show_default=True,
)
@option(
    "--log-format",
    "-f",
    envvar="PARSEC_LOG_FORMAT",
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    help="Log rendering [default: CONSOLE, or JSON with --log-file]",
)
@option(
    "--log-file",
    "-o",
    envvar="PARSEC_LOG_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append logs to this file [default: stderr]",
)
@option(
    "--log-filter",
    envvar="PARSEC_LOG_FILTER",
    callback=_check_regex,
    help="Regular expression; keep only the log events whose text (dict form, e.g. "
    "`{'event': 'Connection opened', ...}`) starts with a match",
)
@option(
    "--audit-log",
    envvar="PARSEC_AUDIT_LOG",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also append the audit lines (administration actions, security events; "
    "docs/audit-log.md) to this file; they are always in the logs",
)
@option(
    "--sentry-url",
    "--sentry-dsn",
    "sentry_url",
    envvar=["PARSEC_SENTRY_URL", "PARSEC_SENTRY_DSN"],
    metavar="URL",
    help="Sentry DSN: unexpected errors are reported there (never a payload, key or token)",
)
@option(
    "--sentry-environment",
    envvar=["PARSEC_SENTRY_ENVIRONMENT", "SENTRY_ENVIRONMENT"],
    metavar="NAME",
    default=DEFAULT_ENVIRONMENT,
    show_default=True,
    help="Environment name of the Sentry reports",
)
@option(
    "--proxy-trusted-addresses",
    envvar=["PARSEC_PROXY_TRUSTED_ADDRESSES", "FORWARDED_ALLOW_IPS"],
    metavar="ADDRESSES",
    help="Reverse proxies whose X-Forwarded-For and X-Forwarded-Proto headers are believed: "
    "IP addresses or networks (10.0.0.0/8), separated by commas or spaces, or `*` for every "
    "peer [default: none]",
)
@option(
    "--debug",
    envvar="PARSEC_DEBUG",
    is_flag=True,
    type=STRICT_BOOL,
    help="Show tracebacks of fatal errors, and the version in the HTTP `server` header",
)
@option(
    "--dev",
    is_flag=True,
    help="Development mode, for the settings not on the command line: --debug, --db MOCKED, "
    "--blockstore MOCKED (with --data-dir: its storage, kept across restarts), "
    "--email-host MOCKED, --email-sender no-reply@parsec.com, "
    "--administration-token s3cr3t, --backend-addr parsec://localhost:<--port>",
)
@option(
    "--workers",
    envvar="PARSEC_WORKERS",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Number of server processes",
)
@option(
    "--http-header-timeout",
    envvar="PARSEC_HTTP_HEADER_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=10,
    show_default=True,
    help="Seconds a new connection has to send its complete HTTP request headers (and to "
    "finish the TLS handshake before that), then, upgraded to websocket, to answer the "
    "handshake challenge; a slower one is closed",
)
@option(
    "--max-pending-connections-per-peer",
    envvar="PARSEC_MAX_PENDING_CONNECTIONS_PER_PEER",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Connections one address may have whose HTTP request or websocket upgrade is not "
    "complete yet, per server process; beyond, new ones are closed at once. "
    "0: no cap (needed behind a reverse proxy, where every client has the proxy's address)",
)
@option(
    "--metrics-address",
    envvar="PARSEC_METRICS_ADDRESS",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics, a listener of their own "
    "(never the public port; with --workers, served by the parent process for all "
    "workers). Off by default; keep it on a private network (no TLS, no authentication)",
)
@option(
    "--shutdown-timeout",
    envvar="PARSEC_SHUTDOWN_TIMEOUT",
    type=click.FloatRange(min=0),
    default=30,
    show_default=True,
    help="Seconds a graceful shutdown (SIGTERM or SIGINT) may take: requests in progress "
    "get their reply, then every connection is closed (websocket code 1001) and the "
    "storage closed; what remains past that is abandoned. A second signal exits at once",
)
def run(
    *,
    log_level: LogLevel,
    log_format: LogFormat | None,
    log_file: Path | None,
    log_filter: str | None,
    dev: bool,
    data_dir: Path | None,
    **params: Any,
) -> None:
    """Run the Parsec metadata server."""
    # `dev` and `data_dir` were applied while parsing (see `RunCommand`).
    _setup_logging(log_level, log_format, log_file, log_filter)
    try:
        config = build_config(**params)
        if data_dir is not None and prepare_data_dir(data_dir):
            click.echo(f"New data directory {data_dir.absolute()}: initialised")
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    init_sentry(config)
    click.echo(config.startup_line())
    _serve(config)
