"""Named network namespaces (``/run/netns/<name>``, as ``ip netns`` keeps them)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

from pyroute2 import netns as pyroute2_netns

from kvmworker.netplane.netlink import NETNS_RUN_DIR, namespace_exists, namespace_path

CLONE_NEWNET = 0x40000000


def list_namespaces() -> list[str]:
    return sorted(name for name in pyroute2_netns.listnetns(NETNS_RUN_DIR) if namespace_exists(name))


def create_namespace(name: str) -> None:
    """Make a new namespace and pin it at ``/run/netns/<name>``.

    pyroute2's ``netns.create`` forks a helper and gives up after 2 s, which a kernel busy tearing
    down a large namespace easily exceeds, leaving a stale file behind. Here a short-lived thread
    unshares its own network namespace (only that thread moves) and pins it; no fork, no time limit.
    """
    failure: list[BaseException] = []

    def make() -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
            # pyroute2 bind-mounts /proc/<pid>/ns/net; "thread-self" names this thread's namespace.
            pyroute2_netns.attach(name, "thread-self", libc=libc)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=make, name=f"netns-create-{name}", daemon=True)
    worker.start()
    worker.join()
    if failure:
        _remove_stale(name)
        raise failure[0]


def delete_namespace(name: str) -> None:
    pyroute2_netns.remove(name)


def _remove_stale(name: str) -> None:
    path = namespace_path(name)
    if os.path.exists(path) and not namespace_exists(name):
        os.unlink(path)
