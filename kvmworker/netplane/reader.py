"""A lean reader of RTM_GETLINK answers: one link by name or index, or a kernel-filtered dump.

Why not ``IPRoute.link('get'/'dump')``: pyroute2 decodes every attribute of every message
(~0.3 ms each), so a ``get`` costs ~0.3 ms and a dump of 4,000 bridges ~1.3 s. This reader
decodes only the handful of attributes the worker looks at (~0.04 ms per get, ~15 µs per
dumped link). Requests are still built by pyroute2's ``ifinfmsg``; writes stay with ``IPRoute``.

The socket is anything with ``send``/``recv``: a raw NETLINK_ROUTE socket opened inside the
namespace, or pyroute2's own mock engine (``pyroute2.iproute.ipmock.IPEngine``) in tests.
"""

from __future__ import annotations

import errno
import itertools
import struct
from dataclasses import dataclass
from typing import Protocol

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h: kernel ABI, stable.
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
RTM_GETLINK = 18
AF_UNSPEC, AF_BRIDGE = 0, 7
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_IFALIAS = 16, 18, 20
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VLAN_ID = IFLA_VXLAN_ID = 1
IFLA_VXLAN_LINK = 3
RTEXT_FILTER_BRVLAN, RTEXT_FILTER_SKIP_STATS = 2, 8
IFF_UP, IFF_LOOPBACK = 0x1, 0x8
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_ERRNO = struct.Struct("=i")
_DUMP_RETRIES = 5
_RECV_SIZE = 65536  # the kernel fills at most 32 KiB per dump chunk


class NetlinkSocket(Protocol):
    def send(self, data: bytes, /) -> int: ...
    def recv(self, size: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Link:
    """What the worker knows about one network device."""

    index: int
    name: str
    kind: str | None = None
    flags: int = 0
    master: int = 0
    alias: str | None = None
    mtu: int = 0
    mac: str | None = None
    parent: int = 0
    """The lower device of a vlan or vxlan, the peer of a veth."""
    tag: int | None = None
    """The VLAN id of a vlan, the VNI of a vxlan."""
    operstate: str = "unknown"

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)


class LinkReader:
    """Reads links through one netlink socket; the caller serialises calls (one request at a time)."""

    def __init__(self, sock: NetlinkSocket):
        self._sock = sock
        self._seq = itertools.count(1)

    def get(self, name: str | None = None, index: int = 0) -> Link | None:
        """One link, looked up by the kernel; None when there is no such link."""
        attrs: list[tuple[str, object]] = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
        if name is not None:
            attrs.append(("IFLA_IFNAME", name))
        try:
            links = self._request(AF_UNSPEC, index, attrs, NLM_F_REQUEST)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return next((link for link in links if name is None or link.name == name), None)

    def dump(
        self, kind: str | None = None, family: int = AF_UNSPEC, ext_mask: int = RTEXT_FILTER_SKIP_STATS
    ) -> list[Link]:
        """Every link, or only those of one ``kind`` (the kernel filters), or bridges and their ports (AF_BRIDGE)."""
        attrs: list[tuple[str, object]] = [("IFLA_EXT_MASK", ext_mask)]
        if kind is not None:
            attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]}))
        for _ in range(_DUMP_RETRIES):
            try:
                links = self._request(family, 0, attrs, NLM_F_REQUEST | NLM_F_DUMP)
            except _DumpInterrupted:
                continue
            return [link for link in links if kind is None or link.kind in (kind, None)]
        raise NetlinkError(errno.EAGAIN, "the link table kept changing during the dump")

    def bridges_and_ports(self) -> list[Link]:
        """Bridges and enslaved ports only, small messages (the AF_BRIDGE view of ``bridge link``)."""
        return self.dump(family=AF_BRIDGE, ext_mask=RTEXT_FILTER_BRVLAN | RTEXT_FILTER_SKIP_STATS)

    def _request(self, family: int, index: int, attrs: list[tuple[str, object]], flags: int) -> list[Link]:
        seq = next(self._seq) & 0xFFFFFFFF
        msg = ifinfmsg()
        msg["family"] = family
        msg["index"] = index
        msg["attrs"] = attrs
        msg["header"]["type"] = RTM_GETLINK
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg.encode()
        self._sock.send(msg.data)
        return self._collect(seq, dump=bool(flags & NLM_F_DUMP))

    def _collect(self, seq: int, dump: bool) -> list[Link]:
        links: list[Link] = []
        interrupted = False
        while True:
            data = self._sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, flags, msg_seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(errno.EBADMSG, "truncated netlink message")
                end, offset = offset + length, offset + (length + 3 & ~3)
                if msg_seq != seq:
                    continue  # left over from an earlier request that failed half-way
                if kind == NLMSG_DONE:
                    if interrupted:
                        raise _DumpInterrupted
                    return links
                if kind == NLMSG_ERROR:
                    (code,) = _ERRNO.unpack_from(data, end - length + _HEADER.size)
                    if code:
                        raise NetlinkError(-code)
                    return links
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                links.append(_parse_link(data, end - length + _HEADER.size, end))
                if not dump:
                    return links


class _DumpInterrupted(Exception):
    pass


def _parse_link(data: bytes, offset: int, end: int) -> Link:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(data, offset)
    fields: dict[str, object] = {"index": index, "flags": flags}
    pos = offset + _IFINFO.size
    while pos + 4 <= end:
        length, kind = _NLA.unpack_from(data, pos)
        if length < 4:
            break
        kind &= 0x3FFF
        start = pos + 4
        if kind == IFLA_IFNAME:
            fields["name"] = _string(data, start, pos + length)
        elif kind == IFLA_MASTER:
            fields["master"] = _U32.unpack_from(data, start)[0]
        elif kind == IFLA_IFALIAS:
            fields["alias"] = _string(data, start, pos + length)
        elif kind == IFLA_MTU:
            fields["mtu"] = _U32.unpack_from(data, start)[0]
        elif kind == IFLA_LINK:
            fields["parent"] = _U32.unpack_from(data, start)[0]
        elif kind == IFLA_ADDRESS and length == 10:
            fields["mac"] = data[start : start + 6].hex(":")
        elif kind == IFLA_OPERSTATE:
            state = data[start]
            fields["operstate"] = OPERSTATES[state] if state < len(OPERSTATES) else "unknown"
        elif kind == IFLA_LINKINFO:
            fields.update(_parse_linkinfo(data, start, pos + length))
        pos += length + 3 & ~3
    return Link(**fields)  # type: ignore[arg-type]


def _parse_linkinfo(data: bytes, pos: int, end: int) -> dict[str, object]:
    info = _nested(data, pos, end)
    found: dict[str, object] = {}
    if IFLA_INFO_KIND in info:
        found["kind"] = kind = _string(data, *info[IFLA_INFO_KIND])
        if IFLA_INFO_DATA in info and kind in ("vlan", "vxlan"):
            details = _nested(data, *info[IFLA_INFO_DATA])
            if IFLA_VLAN_ID in details:  # IFLA_VLAN_ID and IFLA_VXLAN_ID are both attribute 1
                start, stop = details[IFLA_VLAN_ID]
                found["tag"] = (_U16 if stop - start == 2 else _U32).unpack_from(data, start)[0]
            if kind == "vxlan" and IFLA_VXLAN_LINK in details:
                found["parent"] = _U32.unpack_from(data, details[IFLA_VXLAN_LINK][0])[0]
    return found


def _nested(data: bytes, pos: int, end: int) -> dict[int, tuple[int, int]]:
    """The payload bounds of each attribute in a nested attribute set."""
    found: dict[int, tuple[int, int]] = {}
    while pos + 4 <= end:
        length, kind = _NLA.unpack_from(data, pos)
        if length < 4:
            break
        found[kind & 0x3FFF] = (pos + 4, pos + length)
        pos += length + 3 & ~3
    return found


def _string(data: bytes, start: int, end: int) -> str:
    return data[start:end].split(b"\0", 1)[0].decode("utf-8", "replace")
