"""The netlink client of one network namespace: writes through pyroute2 ``IPRoute``, reads through ``LinkReader``.

Both sockets stay open for the worker's life and serve one request at a time (a lock): commands
run on a pool of threads, and neither pyroute2's synchronous ``IPRoute`` nor a netlink socket's
request/answer sequence may be interleaved. Kernel errors are translated here, once, into the
worker's coded errors.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pyroute2 import config as pyroute2_config
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from kvmworker.netplane.reader import Address, Link, LinkReader, NetlinkSocket
from kvmworker.protocol.errors import (
    DeviceNotFound,
    InvalidParameter,
    KvmError,
    NamespaceNotFound,
    OperationNotAllowed,
)

if TYPE_CHECKING:  # pyroute2.iproute brings asyncio and unittest (~3 MB): loaded by the first command needing it
    from pyroute2.iproute import IPRoute

NETLINK_ROUTE = 0
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 270, 10, 11, 12
NETNS_RUN_DIR = "/run/netns"
RT_TABLE_MAIN = 254
NETNS_HELPER_TIMEOUT = 30.0
"""Seconds pyroute2's helper process may take to open a socket in a namespace (its default, 2 s, is exceeded on a
busy host or under emulation, and then the namespace cannot be used at all)."""


class Netlink:
    """One namespace's netlink sockets. ``namespace`` None is the worker's own namespace.

    ``ipr`` is an ``IPRoute``, or what opens one when a request first needs it (tuntap, routes, addresses):
    reading links does not, so a worker that only watches and lists them never loads pyroute2.iproute."""

    def __init__(
        self,
        ipr: IPRoute | Callable[[], IPRoute],
        reader_socket: NetlinkSocket,
        namespace: str | None = None,
        identity: Callable[[], object] | None = None,
    ):
        self.namespace = namespace
        self._ipr_opened: IPRoute | None = None if callable(ipr) else ipr
        self._open_ipr: Callable[[], IPRoute] | None = ipr if callable(ipr) else None
        self._socket = reader_socket
        self._reader = LinkReader(reader_socket)
        self._lock = threading.RLock()
        self._identity = identity
        self._opened_as = identity() if identity else None

    def still_current(self) -> bool:
        """False once the namespace was deleted (or deleted and made again) since these sockets were opened."""
        if self._identity is None:
            return True
        try:
            return self._identity() == self._opened_as
        except OSError:
            return False

    def link(self, name: str) -> Link | None:
        with self._kernel(f"reading {name}"):
            return self._reader.get(name=name)

    def link_at(self, index: int) -> Link | None:
        with self._kernel(f"reading link #{index}"):
            return self._reader.get(index=index)

    def links(self, kind: str | None = None) -> list[Link]:
        with self._kernel("listing links"):
            return self._reader.dump(kind=kind)

    def bridges_and_ports(self) -> list[Link]:
        with self._kernel("listing bridges"):
            return self._reader.bridges_and_ports()

    def add_link(self, name: str, kind: str, **attrs: Any) -> None:
        with self._kernel(f"creating {kind} {name}"):
            if kind == "tuntap":  # made through /dev/net/tun, not rtnetlink: IPRoute does that part
                self._ipr.link("add", ifname=name, kind=kind, **attrs)
            else:
                self._reader.change(*link_message("add", ifname=name, kind=kind, **attrs))

    def set_link(self, name: str, **attrs: Any) -> None:
        """Change a link found by name (the kernel resolves it: no lookup round trip)."""
        with self._kernel(f"changing {name}"):
            self._reader.change(*link_message("set", ifname=name, **attrs))

    def delete_link(self, name: str) -> None:
        with self._kernel(f"deleting {name}"):
            self._reader.change(*link_message("del", ifname=name))

    def addresses(self, index: int = 0) -> list[Address]:
        """The addresses of one device (by index), or of every device."""
        with self._kernel("listing addresses"):
            return self._reader.addresses(index)

    def host_traffic(self, index: int) -> list[str]:
        """What the host sends through one device: its addresses and the routes of the main table through it.
        Link-local IPv6 is left out: every interface that is up has it, whatever it carries."""
        with self._kernel("listing addresses and routes"):
            carried = [a.cidr for a in self._reader.addresses(index)]
            routes = self._ipr.route("dump", table=RT_TABLE_MAIN, oif=index)
            carried += [_route_text(route) for route in routes if route.get("oif") == index]
        return [item for item in carried if not _link_local(item)]

    def add_address(self, index: int, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        with self._kernel(f"adding {cidr}"):
            self._ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def delete_address(self, index: int, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        with self._kernel(f"removing {cidr}"):
            self._ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    @property
    def _ipr(self) -> IPRoute:
        """Opened on first use, under the lock (every caller holds it: ``_kernel``)."""
        with self._lock:
            if self._ipr_opened is None:
                assert self._open_ipr is not None
                self._ipr_opened = self._open_ipr()
            return self._ipr_opened

    def close(self) -> None:
        with self._lock:
            if self._ipr_opened is not None:
                self._ipr_opened.close()
            self._socket.close()

    @contextmanager
    def _kernel(self, what: str) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except NetlinkError as exc:
                raise kernel_error(exc, what) from exc


def _route_text(route: Any) -> str:
    dst = route.get("dst")
    return f"route {dst}/{route['dst_len']}" if dst else "default route"


def _link_local(item: str) -> bool:
    text = item.removeprefix("route ")
    try:
        return ipaddress.ip_interface(text).is_link_local
    except ValueError:
        return False


_LINK_COMMANDS = {"add": (RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL), "set": (RTM_NEWLINK, 0), "del": (RTM_DELLINK, 0)}


def link_message(command: str, **kwargs: Any) -> tuple[ifinfmsg, int]:
    """The message ``IPRoute.link(command, **kwargs)`` would send, built by the same pyroute2 request filters.

    Sent on the namespace's own socket rather than through ``IPRoute``, whose per-call event loop cost
    as much again as the kernel's work (a flat network create: 1.6 ms through IPRoute, 0.8 ms so).
    """
    from pyroute2.iproute.linux import get_arguments_processor  # the first link change pays the import

    msg_type, flags = _LINK_COMMANDS[command]
    request = get_arguments_processor("link", command, kwargs)
    msg = ifinfmsg()
    msg["header"]["type"] = msg_type
    for field in msg.fields:
        msg[field[0]] = request.get_value(field[0], default=0, mode="field")
    for key, value in request.items():
        nla = ifinfmsg.name2nla(key)
        if msg.valid_nla(nla) and value is not None:
            msg["attrs"].append([nla, value])
    if "attrs" in request:
        msg["attrs"].extend(request["attrs"])
    return msg, flags


def kernel_error(exc: NetlinkError, what: str) -> KvmError:
    """The coded error for a kernel refusal; ``detail`` names the step and the kernel's reason."""
    reason = exc.args[1] if len(exc.args) > 1 and exc.args[1] else os.strerror(exc.code)
    detail = f"{what}: the kernel answered: {reason}"
    if exc.code == errno.ENODEV:
        return DeviceNotFound(detail)
    if exc.code in (errno.EEXIST, errno.EINVAL, errno.ERANGE, errno.EADDRNOTAVAIL, errno.ELOOP, errno.EADDRINUSE):
        return InvalidParameter(detail)
    if exc.code in (errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EBUSY):
        return OperationNotAllowed(detail)
    return KvmError(detail)


def open_netlink(namespace: str | None) -> Netlink:
    """Open the sockets of a namespace (None: the worker's own). A named namespace must exist."""
    if namespace is not None and not namespace_exists(namespace):
        raise NamespaceNotFound(f"network namespace {namespace!r} does not exist", field="namespace")
    try:
        sock = _reader_socket(namespace)
    except FileNotFoundError:  # deleted meanwhile
        raise NamespaceNotFound(f"network namespace {namespace!r} does not exist", field="namespace") from None
    identity = (lambda: namespace_identity(namespace)) if namespace is not None else None
    return Netlink(lambda: _open_iproute(namespace), sock, namespace, identity)


def _open_iproute(namespace: str | None) -> IPRoute:
    from pyroute2.iproute import IPRoute

    if namespace is not None:
        timeout = max(pyroute2_config.default_communicate_timeout, NETNS_HELPER_TIMEOUT)
        pyroute2_config.default_communicate_timeout = timeout
    try:
        return IPRoute(netns=namespace, flags=0, groups=0, ext_ack=True)
    except FileNotFoundError:  # deleted since its sockets were opened
        raise NamespaceNotFound(f"network namespace {namespace!r} does not exist", field="namespace") from None


def _reader_socket(namespace: str | None) -> socket.socket:
    if namespace is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    else:
        sock = pyroute2_netns.create_socket(namespace, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE, flags=0)
    sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)  # lets the kernel filter address dumps by device
    sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # a refusal comes with the kernel's reason in words
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # without our request echoed back
    sock.bind((0, 0))
    return sock


def namespace_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def namespace_exists(name: str) -> bool:
    return os.path.ismount(namespace_path(name))


def namespace_identity(name: str) -> tuple[int, int]:
    """The namespace a name stands for now (its nsfs inode): changes when it is deleted and made again."""
    st = os.stat(namespace_path(name))
    return st.st_dev, st.st_ino
