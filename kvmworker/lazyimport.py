"""A library's parts without its package ``__init__``, until a name of the package itself is asked for.

pyroute2's ``__init__`` imports every part of it (NDB, IPDB, conntrack, nftables, wireguard, plan9, asyncio,
unittest, multiprocessing, …: about 5 MB of a worker's memory and a third of a second of its start), although
the worker uses its netlink sockets and messages only. After ``parts_only("pyroute2")``, ``import
pyroute2.netlink.rtnl`` and ``from pyroute2 import netns`` (a submodule) load just those modules; the first
access to anything else on the package (``pyroute2.IPRoute``, ``from pyroute2 import NDB``) runs the real
``__init__`` then, so nothing that uses the package as documented breaks, it only pays later.
"""

from __future__ import annotations

import importlib.util
import sys
import threading

_lock = threading.RLock()


def parts_only(package: str) -> None:
    """Register ``package`` so that importing its submodules does not run its ``__init__``; a package already
    imported (by whoever came first) is left as it is."""
    with _lock:
        if package in sys.modules:
            return
        spec = importlib.util.find_spec(package)
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return  # not installed (the import that needs it says so) or not a package
        module = importlib.util.module_from_spec(spec)  # __path__, __spec__, __file__: no code run
        module.__getattr__ = _complete_on_first_use(module, package)  # type: ignore[attr-defined]
        sys.modules[package] = module


def _complete_on_first_use(module, package: str):
    def __getattr__(name: str) -> object:
        # ``from package import submodule`` asks first: a submodule is the import system's to load, not a
        # reason to run the whole __init__.
        if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            raise AttributeError(name)
        with _lock:
            if module.__dict__.get("__getattr__") is __getattr__:
                del module.__getattr__
                module.__spec__.loader.exec_module(module)
        try:
            return module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
