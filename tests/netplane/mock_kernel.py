"""pyroute2's own mock netlink engine, completed where the VLAN tests need more of the kernel.

``pyroute2.config.mock_netlink`` plugs ``pyroute2.iproute.ipmock.IPEngine`` under ``IPRoute``: an
in-memory link table speaking real netlink messages. It leaves out a few things the kernel does and
the network handler relies on; ``MockKernel`` adds exactly those, as the kernel behaves:

- RTM_DELLINK (deleting a device also deletes its VLANs and releases its ports);
- RTM_NEWLINK without NLM_F_CREATE on a name: change that device (``ip link set NAME``);
- IFLA_IFALIAS, kept and reported; a device's kind kept when it is changed;
- errors answered as NLMSG_ERROR (the engine leaves the type 0);
- ``vlan=False``: a kernel without 8021q, which refuses the vlan kind with EOPNOTSUPP.
"""

from __future__ import annotations

import errno
import struct

from pyroute2 import IPRoute
from pyroute2.iproute.ipmock import IPEngine, MockLink
from pyroute2.netlink import NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWLINK

from kvmworker.netplane.netlink import Netlink

NLM_F_CREATE = 0x400


class MockKernel(IPEngine):
    def __init__(self, interfaces: tuple[str, ...] = ("ens224",), vlan: bool = True):
        super().__init__(netns="default")
        self.vlan = vlan
        self.aliases: dict[int, str] = {}
        self.processors[RTM_NEWLINK] = self.RTM_NEWLINK
        self.processors[RTM_DELLINK] = self.RTM_DELLINK
        for name in interfaces:
            self.database["links"].append(MockLink(ifname=name, address="52:54:00:00:00:01", mtu=1500))

    def link(self, name: str) -> MockLink | None:
        return next((x for x in self.database["links"] if x.ifname == name), None)

    def RTM_NEWLINK(self, req):
        tag = req["header"]["sequence_number"]
        create = req["header"]["flags"] & NLM_F_CREATE
        link = self._find(req)
        if create and link is not None:
            return self.nl_error(tag, errno.EEXIST)
        if create and req.get(("linkinfo", "kind")) == "vlan" and not self.vlan:
            return self.nl_error(tag, errno.EOPNOTSUPP)
        if link is None and not create:
            return self.nl_error(tag, errno.ENODEV)
        if link is None:
            link = MockLink.load_from_msg(req)
            self.database["links"].append(link)
        else:
            kind, vlan_id, parent = link.kind, link.vlan_id, link.link
            link.update_from_msg(req)
            link.kind, link.vlan_id, link.link = kind, vlan_id, parent
        if req.get("ifalias") is not None:
            self.aliases[link.index] = req.get("ifalias")
        self.nl_error(tag, 0)

    def RTM_DELLINK(self, req):
        tag = req["header"]["sequence_number"]
        link = self._find(req)
        if link is None:
            return self.nl_error(tag, errno.ENODEV)
        self._remove(link)
        self.nl_error(tag, 0)

    def _remove(self, link: MockLink) -> None:
        self.database["links"].remove(link)
        self.aliases.pop(link.index, None)
        for other in list(self.database["links"]):
            if other.kind == "vlan" and other.link == link.index:
                self._remove(other)
            elif other.master == link.index:
                other.master = 0

    def _find(self, req) -> MockLink | None:
        index, name = req.get("index"), req.get("ifname")
        for link in self.database["links"]:
            if (index and link.index == index) or (not index and name and link.ifname == name):
                return link
        return None

    def nl_dump(self, registry, msg_class, tag):
        for msg in super().nl_dump(registry, msg_class, tag):
            alias = self.aliases.get(msg.get("index")) if msg.get("ifname") else None
            if alias is not None:
                msg["attrs"].append(("IFLA_IFALIAS", alias))
                msg.reset()
                msg.encode()
            yield msg

    def nl_error(self, tag, code):
        # As the kernel: NLMSG_ERROR, a negative errno, then the header of the request it answers.
        request = struct.pack("=IHHII", 16, 0, 0, tag, 0)
        header = struct.pack("=IHHII", 16 + 4 + len(request), NLMSG_ERROR, 0, tag, 0)
        self.loopback_w.send(header + struct.pack("=i", -code) + request)


def mock_netlink(kernel: MockKernel) -> Netlink:
    """A ``Netlink`` whose writes (IPRoute) and reads (LinkReader) both talk to the mock kernel."""
    return Netlink(IPRoute(use_socket=kernel), kernel)
