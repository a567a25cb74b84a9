"""Logging of the server process (`--log-level`, `--log-format`, `--log-file`, `--log-filter`).

Server code logs with `structlog.get_logger(__name__)`. Records of the standard `logging`
module (uvicorn, asyncpg ...) go through the same handler and renderer, so the output has
one format whatever the source.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["CONSOLE", "JSON"]

LOG_LEVELS: tuple[LogLevel, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS: tuple[LogFormat, ...] = ("CONSOLE", "JSON")
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
# Marks the handler we install, so that reconfiguring replaces ours and only ours.
_HANDLER_MARK = "_parsec_server_handler"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to the `sys.stderr` of the moment, not the one present at configuration
    (it may be replaced afterwards, e.g. by test runners)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class EventTextFilter(logging.Filter):
    """Keeps a record only if `pattern` matches the beginning of the text of its event
    dict, `event` key first, e.g. `{'event': 'Connection opened', 'logger': 'x', ...}`."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self._pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self._pattern.match(event_text(record)) is not None


def event_text(record: logging.LogRecord) -> str:
    """The dict form of a record's event, as matched by `--log-filter`."""
    if isinstance(record.msg, dict):  # from structlog (see `ProcessorFormatter.wrap_for_formatter`)
        event_dict: dict[str, Any] = record.msg
        ordered = {"event": event_dict.get("event")}
        ordered.update((k, v) for k, v in event_dict.items() if k != "event")
        return str(ordered)
    return str(
        {"event": record.getMessage(), "logger": record.name, "level": record.levelname.lower()}
    )


def _renderer(log_format: LogFormat, to_terminal: bool) -> list[Processor]:
    if log_format == "JSON":
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    # Plain tracebacks: the rich/better-exceptions formatters structlog picks when they are
    # installed print local variables, which hold tokens, keys and payloads.
    return [
        structlog.dev.ConsoleRenderer(
            colors=to_terminal, exception_formatter=structlog.dev.plain_traceback
        )
    ]


class _TimeStamper:
    """Adds `timestamp`, UTC in `TIMESTAMP_FORMAT` as structlog's `TimeStamper` would, but
    formats it once per second instead of once per record (request lines are many)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, _logger: Any, _name: str, event_dict: EventDict) -> EventDict:
        second = int(time.time())
        last = self._last
        if last[0] != second:
            last = self._last = (second, time.strftime(TIMESTAMP_FORMAT, time.gmtime(second)))
        event_dict["timestamp"] = last[1]
        return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        _TimeStamper(),
    ]


def _make_handler(file: str | Path | None) -> logging.Handler:
    if file is None:
        return _StderrHandler()
    return logging.FileHandler(file, mode="a", encoding="utf-8")


def configure_logging(
    level: LogLevel = "WARNING",
    format: LogFormat | None = None,
    file: str | Path | None = None,
    filter: str | None = None,
) -> None:
    """Sends the logs of `level` and above to `file` (appended) or stderr, rendered as
    `format` (default: JSON for a file, CONSOLE for stderr), keeping only those whose event
    text starts with a match of the regular expression `filter`.

    Raises `OSError` when the log file cannot be opened, `re.error` for a bad `filter`.
    """
    pattern = re.compile(filter) if filter is not None else None
    log_format: LogFormat = format or ("JSON" if file is not None else "CONSOLE")
    handler = _make_handler(file)
    to_terminal = file is None and sys.stderr.isatty()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_shared_processors(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderer(log_format, to_terminal),
            ],
        )
    )
    if pattern is not None:
        handler.addFilter(EventTextFilter(pattern))
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for previous in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    root.setLevel(level)
    # Nothing rendered uses the caller's file and line, the thread or the process of a
    # record: not looking them up takes microseconds off each one (Python's logging HOWTO,
    # "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # No caching: a logger used before this call must still follow it.
        cache_logger_on_first_use=False,
    )
