"""Link notifications of one network namespace: a netlink socket bound to the kernel's link group.

The kernel multicasts an RTM_NEWLINK for every change of a device (created, renamed, up/down, carrier, master,
MTU, alias, …) and an RTM_DELLINK when it goes, each with the whole device. They are decoded here by the lean
link parser (``reader.parse_link``, ~10 µs a message; pyroute2's full decoding costs ~0.3 ms, too much in a
burst). Bridges also send AF_BRIDGE copies about their ports (an RTM_DELLINK when a port merely leaves its
bridge): those are skipped, the AF_UNSPEC message about the same change says it all.

The kernel queues notifications on the socket before the call that caused them returns, so whoever reads the
socket after a command ended sees every change the command made. When the socket's buffer overflows (a burst
faster than the reader), the kernel drops the newer messages and says so once (ENOBUFS): ``read`` raises
``Overrun``; the caller then ``discard``s what is still queued (older than what was lost) and reads the kernel
afresh.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from pyroute2 import netns as pyroute2_netns

from kvmworker.netplane.reader import AF_BRIDGE, Link, parse_link

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTM_NEWLINK, RTM_DELLINK = 16, 17
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 8 << 20
"""Bytes the kernel may queue for us (a notification with statistics takes ~2-4 KiB of it): room for a burst of
thousands of changes while the watch thread waits for the interpreter."""
_HEADER = struct.Struct("=IHHII")
_RECV_SIZE = 1 << 18


@dataclass(frozen=True, slots=True)
class LinkChange:
    link: Link
    removed: bool = False


class Overrun(Exception):
    """The kernel dropped notifications: what is known about the links may be stale."""


class LinkMonitor:
    """Non-blocking: ``read()`` returns what is queued now (possibly nothing). ``fileno()`` for a selector."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        sock.setblocking(False)

    @classmethod
    def open(cls, namespace: str | None = None, receive_buffer: int = RECEIVE_BUFFER) -> LinkMonitor:
        """Subscribe to link changes in ``namespace`` (None: the process's own)."""
        if namespace is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        else:
            sock = pyroute2_netns.create_socket(namespace, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE, flags=0)
        try:
            _set_receive_buffer(sock, receive_buffer)
            sock.bind((0, RTMGRP_LINK))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[LinkChange]:
        """Every change queued now, in the kernel's order."""
        changes: list[LinkChange] = []
        while True:
            try:
                data = self._sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return changes
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise Overrun("the kernel dropped link notifications (receive buffer full)") from exc
                raise
            changes += parse_changes(data)

    def discard(self) -> None:
        """Drop what is queued: after an overrun it is older than the messages that were lost, and a fresh read
        of the kernel (made after this) replaces it."""
        while True:
            try:
                self._sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise

    def close(self) -> None:
        self._sock.close()


def parse_changes(data: bytes) -> list[LinkChange]:
    """The link changes in one datagram of notifications; other messages and AF_BRIDGE copies are skipped."""
    found: list[LinkChange] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        body, end, offset = offset + _HEADER.size, offset + length, offset + (length + 3 & ~3)
        if kind in (RTM_NEWLINK, RTM_DELLINK) and data[body] != AF_BRIDGE:
            found.append(LinkChange(parse_link(data, body, end), removed=kind == RTM_DELLINK))
    return found


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # beyond rmem_max: needs CAP_NET_ADMIN
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
