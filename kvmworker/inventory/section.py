"""How a section fails alone: the OS errors of reading it become that section's coded error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from pyroute2.netlink.exceptions import NetlinkError

from kvmworker.protocol.errors import KvmError

# What reading the machine can raise: missing or unreadable files, unparsable text, netlink refusals, a process
# table that changed under psutil, an optional client library that is not installed.
READ_ERRORS = (OSError, ValueError, LookupError, NetlinkError, psutil.Error, ImportError)


@contextmanager
def failing_as(error: type[KvmError], what: str) -> Iterator[None]:
    try:
        yield
    except error:
        raise
    except KvmError as exc:  # a client's own code (e.g. 30002 from the netlink pool): the section answers its own
        raise error(f"reading {what} failed: {exc.detail}") from exc
    except READ_ERRORS as exc:
        raise error(f"reading {what} failed: {type(exc).__name__}: {exc}") from exc
