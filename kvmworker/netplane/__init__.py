"""The worker's networks through netlink (pyroute2's sockets and messages: its parts only, see lazyimport)."""

from kvmworker.lazyimport import parts_only

parts_only("pyroute2")
