"""One JSON log line per command, and the command's context on every line logged while it runs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from kvmworker.observability.logs import CommandContextFilter, install_context_filter
from kvmworker.observability.logsetup import JsonFormatter
from tests.journal.conftest import new_id


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("kvmworker.test-logs")
    logger.addHandler(handler)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    install_context_filter(logger)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_command_logs_one_line_with_msg_id_handler_command_code_and_duration(wired, json_lines):
    msg_id = new_id()
    wired.send("EffectsHandler", "bump", {"name": "l"}, msg_id=msg_id, correlation_id="corr-1")
    (line,) = [entry for entry in lines(json_lines) if entry["logger"] == "kvmworker.commands"]
    assert line["msg_id"] == msg_id
    assert (line["correlation_id"], line["handler"], line["command"], line["code"]) == ("corr-1", "EffectsHandler",
                                                                                         "bump", 0)  # fmt: skip
    assert line["duration_ms"] >= 0


def test_lines_logged_inside_a_command_carry_its_msg_id_and_the_failure_is_one_warning_with_its_detail(
    wired, json_lines
):
    msg_id = new_id()
    wired.send("EffectsHandler", "fail", {}, msg_id=msg_id)
    by_logger = {entry["logger"]: entry for entry in lines(json_lines)}
    assert by_logger["tests.effects"]["msg_id"] == msg_id
    assert by_logger["tests.effects"]["command"] == "fail"
    warnings = [entry for entry in lines(json_lines) if entry["level"] == "WARNING" and entry.get("msg_id") == msg_id]
    assert [w["logger"] for w in warnings] == ["kvmworker.commands"]
    assert (warnings[0]["code"], warnings[0]["detail"]) == (30006, "refused on purpose")
    assert warnings[0]["message"].endswith(": refused on purpose")


def test_the_context_filter_is_installed_once_per_log_handler():
    logger = logging.getLogger("kvmworker.test-once")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        install_context_filter(logger)
        install_context_filter(logger)
        assert sum(isinstance(f, CommandContextFilter) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)
