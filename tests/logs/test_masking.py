"""The one masking function, and the log handler's safety net, on the shapes of URL kombu and redis accept."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from kombu import Connection

from kvmworker.observability.logsetup import SecretFilter, StderrHandler, setup_logging
from kvmworker.protocol.urls import mask_secrets, mask_url
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from tests.conftest import unique


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
        ("amqp://u:p1@n1:5672//;amqp://u:p2@n2:5672//", "amqp://u:***@n1:5672//;amqp://u:***@n2:5672//"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://user:s3cret@redis:6380/1", "rediss://user:***@redis:6380/1"),
        ("amqp://u:p%40ss%2Fw%3Ard@host//", "amqp://u:***@host//"),
        ("amqp://u:p@ss@host//", "amqp://u:***@host//"),  # an unencoded "@", as urllib parses it
        ("amqps://u:pa:ss@host:5671/vhost?heartbeat=30", "amqps://u:***@host:5671/vhost?heartbeat=30"),
        ("redis://redis:6379/0?password=s3cret&db=1", "redis://redis:6379/0?password=***&db=1"),
        ("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379", "sentinel://:***@s1:26379;sentinel://:***@s2:26379"),
    ],
)
def test_every_password_in_a_url_or_a_list_of_urls_is_masked_and_the_rest_kept(url, shown):
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "amqp://rabbit:5672//",
        "redis://name@redis:6379/0",
        "qemu+ssh://root@kvm1/system",
        "http://[::1]:8080/",
    ],
)
def test_a_url_without_a_password_is_shown_as_written(url):
    assert mask_url(url) == url


def test_a_url_as_kombu_rebuilds_it_with_its_password_decoded_is_masked_too():
    conn = Connection("amqp://u:p%40ss@rabbit:5672//")
    assert mask_url(conn.as_uri(include_password=True)) == "amqp://u:***@rabbit:5672//"
    assert mask_url(conn.as_uri()) == "amqp://u:***@rabbit:5672//"


def test_urls_and_bearer_tokens_inside_free_text_are_masked():
    text = "Error connecting to redis://:hunter2@10.0.0.1:6379/0 (Authorization: Bearer abc.DEF-123), retry"
    assert mask_secrets(text) == "Error connecting to redis://:***@10.0.0.1:6379/0 (Authorization: Bearer ***), retry"


def test_a_long_hostile_word_is_masked_in_linear_time():
    # 100,000 characters of what almost matches; the bounded patterns must not go quadratic
    text = ("amqp://u:" + "x" * 2000 + " ") * 50
    assert mask_secrets(text) == text


@pytest.fixture
def captured_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter())
    logger = logging.getLogger(unique("kvt.masking."))
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_the_log_filter_masks_a_url_a_library_logs_in_its_arguments_and_its_traceback(captured_logger):
    logger, stream = captured_logger
    url = "amqp://kvt:t0ps3cret@broker:5672//"
    logger.warning("connection to %s lost", url)
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        logger.exception("consumer stopped")
    assert "t0ps3cret" not in stream.getvalue()
    assert stream.getvalue().count("amqp://kvt:***@broker:5672//") == 2


def test_the_log_handler_writes_to_the_stderr_of_the_moment_not_the_one_at_setup(monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(Settings(log_level="INFO"))
        assert isinstance(root.handlers[0], StderrHandler)
        later = io.StringIO()
        monkeypatch.setattr(sys, "stderr", later)
        logging.getLogger("kvmworker.test").info("after stderr changed")
        assert "after stderr changed" in later.getvalue()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_with_log_json_a_python_warning_and_a_thread_crash_are_json_lines_too(tmp_path):
    # run as a process of its own: setup_logging takes over process-wide hooks (warnings, threading.excepthook)
    script = """
import threading, warnings
from kvmworker.cli.common import setup_logging
from kvmworker.settings import Settings
setup_logging(Settings(log_json=True))
warnings.warn("kvt deprecated thing")
thread = threading.Thread(target=lambda: 1 / 0, name="kvt-crash")
thread.start()
thread.join()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["logger"] for line in lines] == ["py.warnings", "kvmworker"]
    assert "kvt deprecated thing" in lines[0]["message"]
    assert "kvt-crash" in lines[1]["message"] and "ZeroDivisionError" in lines[1]["exc"]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_worker_says_it_stopped_before_stop_returns_and_nothing_after(tmp_path):
    # A line logged after stop() returned reaches log handlers the process may already have closed
    # ("--- Logging error --- ... Message: 'worker stopped'").
    lines = Lines()
    logger = logging.getLogger("kvmworker.worker")
    logger.addHandler(lines)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        running = start_worker(Settings(host=unique("kvt-stop-"), broker_url="memory://", state_dir=tmp_path))
        assert running.worker.connected.wait(15)
        assert running.stop(timeout=15)
        said = list(lines.messages)
        assert said[-1] == "worker stopped"
        assert not running.thread.is_alive()
        assert lines.messages == said
    finally:
        logger.removeHandler(lines)
        logger.setLevel(old_level)
