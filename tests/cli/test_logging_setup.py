from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from parsec_server.cli.logging_setup import configure_logging

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    structlog.reset_defaults()


def _json_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_file_defaults_to_json_lines(tmp_path: Path) -> None:
    log_file = tmp_path / "parsec.log"
    configure_logging("INFO", None, log_file, None)

    structlog.get_logger("parsec.test").info("Connection opened", client="x")

    [line] = _json_lines(log_file)
    assert line["event"] == "Connection opened"
    assert line["client"] == "x"
    assert (line["logger"], line["level"]) == ("parsec.test", "info")
    assert TIMESTAMP.match(str(line["timestamp"]))


def test_log_file_is_appended_to(tmp_path: Path) -> None:
    log_file = tmp_path / "parsec.log"
    log_file.write_text('{"event": "before"}\n')
    configure_logging("WARNING", None, log_file, None)

    structlog.get_logger("parsec.test").warning("after")

    assert [line["event"] for line in _json_lines(log_file)] == ["before", "after"]


def test_events_below_the_level_are_dropped(tmp_path: Path) -> None:
    log_file = tmp_path / "parsec.log"
    configure_logging("WARNING", "JSON", log_file, None)
    logger = structlog.get_logger("parsec.test")

    logger.info("hidden")
    logger.warning("shown")
    logging.getLogger("uvicorn.error").info("hidden too")

    assert [line["event"] for line in _json_lines(log_file)] == ["shown"]


def test_standard_logging_records_are_rendered_alike(tmp_path: Path) -> None:
    log_file = tmp_path / "parsec.log"
    configure_logging("INFO", "JSON", log_file, None)

    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)

    [line] = _json_lines(log_file)
    assert (line["event"], line["logger"], line["level"]) == (
        "Started server process [42]",
        "uvicorn.error",
        "info",
    )


def test_console_format_can_be_chosen_for_a_file(tmp_path: Path) -> None:
    log_file = tmp_path / "parsec.log"
    configure_logging("INFO", "CONSOLE", log_file, None)

    structlog.get_logger("parsec.test").info("Connection opened", client="x")

    text = log_file.read_text()
    assert "Connection opened" in text
    assert "client=x" in text
    assert "\x1b[" not in text  # no colours in files
    assert not text.startswith("{")


def test_console_to_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", None, None, None)

    structlog.get_logger("parsec.test").info("Connection opened")

    captured = capsys.readouterr()
    assert "Connection opened" in captured.err
    assert captured.out == ""


def test_filter_keeps_events_whose_text_starts_with_a_match(tmp_path: Path) -> None:
    log_file = tmp_path / "parsec.log"
    configure_logging("INFO", "JSON", log_file, "{'event': 'Connection")
    logger = structlog.get_logger("parsec.test")

    logger.info("Connection opened", client="x")
    logger.info("Request", cmd="ping")
    logger.info("Something about Connection")
    logging.getLogger("uvicorn.error").info("Connection refused")

    events = [line["event"] for line in _json_lines(log_file)]
    assert events == ["Connection opened", "Connection refused"]


def test_reconfiguring_replaces_the_previous_handler(tmp_path: Path) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    configure_logging("INFO", "JSON", first, None)
    configure_logging("INFO", "JSON", second, None)

    structlog.get_logger("parsec.test").info("once")

    assert first.read_text() == ""
    assert [line["event"] for line in _json_lines(second)] == ["once"]


def test_exceptions_are_rendered_in_json(tmp_path: Path) -> None:
    log_file = tmp_path / "parsec.log"
    configure_logging("INFO", "JSON", log_file, None)

    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("parsec.test").exception("Crashed")

    [line] = _json_lines(log_file)
    assert "ValueError: boom" in str(line["exception"])


def test_unopenable_log_file_raises_before_changing_anything(tmp_path: Path) -> None:
    handlers = list(logging.getLogger().handlers)

    with pytest.raises(OSError):
        configure_logging("INFO", None, tmp_path / "missing" / "parsec.log", None)

    assert logging.getLogger().handlers == handlers
