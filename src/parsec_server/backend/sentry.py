"""Reporting unexpected errors to Sentry (`--sentry-url`, docs/deployment.md).

What is reported: every log record at ERROR or above (a command that failed and closed its
connection with 1011, a crash at start-up, a failed event listener ...), with the record's
exception if it has one, and the WARNING records that preceded it as breadcrumbs; with
`--debug`, an exception escaping `parsec backend run` too.

What is sent is what the logs already hold (docs/deviations.md: no token, key, e-mail,
human name or payload), minus the peer's IP address, and nothing else:

- `send_default_pii=False`, `include_local_variables=False`: no frame variables (they hold
  requests, keys, payloads);
- no integration that reads requests, the command line (`--administration-token`) or
  outgoing HTTP calls: only the exit flush, the duplicate filter and the uncaught
  exception hook are enabled, and records are turned into events by our own handler (the
  SDK's logging integration would see structlog's records without their exception);
- `before_send` / `before_breadcrumb` drop request data, user, extras, frame variables and
  breadcrumb data whatever put them there, and replace in every remaining string the
  secrets of the configuration (administration token, database, SMTP and blockstore
  passwords, webhook credentials) and anything shaped like an e-mail address.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import sys
from collections.abc import Iterable
from functools import partial
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import sentry_sdk
from sentry_sdk.integrations.atexit import AtexitIntegration
from sentry_sdk.integrations.dedupe import DedupeIntegration
from sentry_sdk.integrations.excepthook import ExcepthookIntegration
from sentry_sdk.utils import BadDsn, Dsn, event_from_exception

from parsec_server.backend.config import (
    BackendConfig,
    RaidBlockstoreConfig,
    S3BlockstoreConfig,
    SingleBlockstoreConfig,
    SmtpEmailConfig,
    StartupError,
    SwiftBlockstoreConfig,
)

DEFAULT_ENVIRONMENT = "production"
_PACKAGE_NAME = "parsec-server"
FILTERED = "[Filtered]"
# Secrets shorter than this are not replaced (it would garble every event).
_MIN_SECRET_LENGTH = 6
_EMAIL = re.compile(r"[^\s@'\"<>(),;:\[\]]+@[^\s@'\"<>(),;:\[\]]+\.[A-Za-z]{2,}")
# Fields of a structlog event that are not sent as the record's context: rendering data,
# and the peer's IP address (personal data; it stays in the server's own logs).
_NOT_CONTEXT = frozenset(
    ("event", "exc_info", "stack_info", "logger", "level", "timestamp", "peer_address")
)
_MAX_VALUE_LENGTH = 512

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def release() -> str:
    try:
        version = importlib.metadata.version(_PACKAGE_NAME)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{_PACKAGE_NAME}@{version}"


def check_dsn(url: str) -> None:
    """Raises ValueError (with the reason) unless `url` is a usable Sentry DSN."""
    try:
        Dsn(url)
    except BadDsn as exc:
        raise ValueError(str(exc) or "not a Sentry DSN") from None


def init_sentry(config: BackendConfig) -> bool:
    """Starts reporting to `config.sentry_url` (nothing without one); returns whether it
    did. Called by `parsec backend run` once the configuration is valid, and again by each
    worker process after the fork."""
    if not config.sentry_url:
        return False
    secrets = configured_secrets(config)
    sentry_sdk.init(
        dsn=config.sentry_url,
        environment=config.sentry_environment,
        release=release(),
        include_local_variables=False,
        **_no_personal_data(),
        max_request_body_size="never",
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[AtexitIntegration(), DedupeIntegration(), ExcepthookIntegration()],
        before_send=partial(_before_send, secrets),
        before_breadcrumb=partial(_before_breadcrumb, secrets),
        max_breadcrumbs=50,
        traces_sample_rate=None,
        attach_stacktrace=False,
    )
    _install_handler(SentryLogHandler())
    return True


# `data_collection` (recent SDKs, where `send_default_pii` is deprecated): nothing that
# integrations could collect automatically.
_NO_DATA_COLLECTION: dict[str, Any] = {
    "user_info": False,
    "cookies": {"mode": "off"},
    "http_headers": {"request": {"mode": "off"}},
    "http_bodies": [],
    "url_query_params": {"mode": "off"},
    "graphql": {"document": False, "variables": False},
    "gen_ai": {"inputs": False, "outputs": False},
    "database_query_data": False,
    "queues": False,
    "stack_frame_variables": False,
}


def _no_personal_data() -> dict[str, Any]:
    if "data_collection" in sentry_sdk.consts.DEFAULT_OPTIONS:
        return {"data_collection": _NO_DATA_COLLECTION}
    return {"send_default_pii": False}


def close_sentry(timeout: float = 2.0) -> None:
    """Sends what is pending (waiting at most `timeout` seconds) and stops reporting."""
    _install_handler(None)
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=timeout)
    sentry_sdk.get_global_scope().set_client(None)


def configured_secrets(config: BackendConfig) -> tuple[str, ...]:
    """The secrets of the configuration, to be replaced in whatever is sent."""
    found = [config.administration_token]
    found += _url_secrets(config.db_url)
    if config.organization_bootstrap_webhook:
        found += _url_secrets(config.organization_bootstrap_webhook)
    if isinstance(config.email, SmtpEmailConfig) and config.email.host_password:
        found.append(config.email.host_password)
    nodes: Iterable[SingleBlockstoreConfig] = (
        config.blockstore.nodes
        if isinstance(config.blockstore, RaidBlockstoreConfig)
        else (config.blockstore,)
    )
    for node in nodes:
        if isinstance(node, S3BlockstoreConfig):
            found += [node.key, node.secret]
        elif isinstance(node, SwiftBlockstoreConfig):
            found.append(node.password)
    # Longest first: a secret containing another is replaced whole.
    unique = {s for s in found if s and len(s) >= _MIN_SECRET_LENGTH}
    return tuple(sorted(unique, key=len, reverse=True))


def _url_secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    found = [password] if password else []
    found += [value for _, value in parse_qsl(parts.query)]
    return found


# --- Log records to events ----------------------------------------------------------------


class SentryLogHandler(logging.Handler):
    """On the root logger: ERROR records and above become events, WARNING records
    breadcrumbs (the records are those the log level lets through)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("sentry_sdk"):
            return
        try:
            message, fields, exc_info = _read_record(record)
            if record.levelno >= logging.ERROR:
                _capture(record, message, fields, exc_info)
            else:
                sentry_sdk.add_breadcrumb(
                    type="log",
                    category=record.name,
                    level=_level_name(record),
                    message=message,
                )
        except Exception:
            self.handleError(record)


def _read_record(record: logging.LogRecord) -> tuple[str, dict[str, Any], ExcInfo | None]:
    """(message, context fields, exception) of a structlog or standard library record."""
    if isinstance(record.msg, dict):  # structlog (`ProcessorFormatter.wrap_for_formatter`)
        event_dict: dict[str, Any] = record.msg
        fields = {
            key: _short(value) for key, value in event_dict.items() if key not in _NOT_CONTEXT
        }
        return str(event_dict.get("event")), fields, _exc_info(event_dict.get("exc_info"))
    return record.getMessage(), {}, _exc_info(record.exc_info)


def _exc_info(value: object) -> ExcInfo | None:
    if value is True:
        info = sys.exc_info()
        return info if info[1] is not None else None
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value
    return None


def _short(value: object) -> object:
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = str(value)
    return text if len(text) <= _MAX_VALUE_LENGTH else text[:_MAX_VALUE_LENGTH] + "..."


def _level_name(record: logging.LogRecord) -> str:
    if record.levelno >= logging.CRITICAL:
        return "fatal"
    return logging.getLevelName(record.levelno).lower()


def _capture(
    record: logging.LogRecord, message: str, fields: dict[str, Any], exc_info: ExcInfo | None
) -> None:
    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    event: dict[str, Any] = {}
    hint: dict[str, Any] = {}
    if exc_info is not None:
        exc_event, hint = event_from_exception(
            exc_info, client_options=client.options, mechanism={"type": "logging", "handled": True}
        )
        event.update(exc_event)
    event["level"] = _level_name(record)
    event["logger"] = record.name
    event["logentry"] = {"message": message, "formatted": message}
    if fields:
        event["contexts"] = {"log": fields}
        organization = fields.get("organization")
        if isinstance(organization, str):
            event["tags"] = {"organization": organization}
    sentry_sdk.capture_event(event, hint=hint)  # type: ignore[arg-type]


_HANDLER: SentryLogHandler | None = None


def _install_handler(handler: SentryLogHandler | None) -> None:
    global _HANDLER
    root = logging.getLogger()
    if _HANDLER is not None:
        root.removeHandler(_HANDLER)
    _HANDLER = handler
    if handler is not None:
        root.addHandler(handler)


# --- What leaves the process --------------------------------------------------------------

# Event keys that may carry request data, user data or arbitrary values.
_DROPPED_EVENT_KEYS = ("request", "user", "extra", "modules", "spans")


def _before_send(secrets: tuple[str, ...], event: Any, hint: Any) -> Any:
    exc_info = (hint or {}).get("exc_info")
    if exc_info and isinstance(exc_info[1], StartupError):
        return None  # the operator's to fix (seen uncaught with --debug), not a failure
    for key in _DROPPED_EVENT_KEYS:
        event.pop(key, None)
    for container in ("exception", "threads"):
        for value in (event.get(container) or {}).get("values") or ():
            for frame in (value.get("stacktrace") or {}).get("frames") or ():
                frame.pop("vars", None)
    breadcrumbs = event.get("breadcrumbs")
    crumbs = breadcrumbs.get("values") if isinstance(breadcrumbs, dict) else breadcrumbs
    for crumb in crumbs or ():
        crumb.pop("data", None)
    return _scrub(event, secrets)


def _before_breadcrumb(secrets: tuple[str, ...], crumb: Any, _hint: Any) -> Any:
    crumb.pop("data", None)
    return _scrub(crumb, secrets)


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, FILTERED)
        return _EMAIL.sub(FILTERED, value)
    if isinstance(value, dict):
        return {key: _scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, secrets) for item in value]
    return value
