"""How a section fails alone: the OS errors of reading it become that section's coded error."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2.netlink.exceptions import NetlinkError

from kvmworker.protocol.errors import KvmError

# What reading the machine can raise: missing or unreadable files, unparsable text, netlink refusals, a process
# table that changed under psutil (``read_errors``), an optional client library that is not installed.
READ_ERRORS = (OSError, ValueError, LookupError, NetlinkError, ImportError)


def read_errors() -> tuple[type[BaseException], ...]:
    """READ_ERRORS, and psutil's once it is loaded: only code that imported psutil can raise them, and the
    worker loads it with the first section that reads the process table (~1 MB less at rest)."""
    psutil = sys.modules.get("psutil")
    return (*READ_ERRORS, psutil.Error) if psutil is not None else READ_ERRORS


@contextmanager
def failing_as(error: type[KvmError], what: str) -> Iterator[None]:
    try:
        yield
    except error:
        raise
    except KvmError as exc:  # a client's own code (e.g. 30002 from the netlink pool): the section answers its own
        raise error(f"reading {what} failed: {exc.detail}") from exc
    except Exception as exc:
        if not isinstance(exc, read_errors()):
            raise
        raise error(f"reading {what} failed: {type(exc).__name__}: {exc}") from exc
