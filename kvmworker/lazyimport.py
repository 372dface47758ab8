"""A library's parts without its package ``__init__``, until a name of the package itself is asked for.

pyroute2's ``__init__`` imports every part of it (NDB, IPDB, conntrack, nftables, wireguard, plan9, asyncio,
unittest, multiprocessing, …: about 5 MB of a worker's memory and a third of a second of its start), although
the worker uses its netlink sockets and messages only. After ``parts_only("pyroute2")``, ``import
pyroute2.netlink.rtnl`` and ``from pyroute2 import netns`` (a submodule) load just those modules; the first
access to anything else on the package (``pyroute2.IPRoute``, ``from pyroute2 import NDB``) runs the real
``__init__`` then, so nothing that uses the package as documented breaks, it only pays later.

``on_demand(name, answers)`` goes one step further for a module a library imports at start but seldom uses: a
stand-in in ``sys.modules`` answers a few names itself (``importlib.metadata.entry_points`` for a group nobody
declares, PyYAML's ``safe_dump``/``safe_load`` forwarded) and imports the real module on any other name.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import threading
import types
from collections.abc import Callable

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


class _OnDemand(types.ModuleType):
    """Stands in ``sys.modules`` for a module until a name it does not answer itself is asked for; then the real
    module is imported and its names copied in, so whoever holds the stand-in holds the real thing from then on."""

    def __getattr__(self, name: str) -> object:
        return getattr(_realize(self), name)


def _realize(stand_in: types.ModuleType) -> types.ModuleType:
    with _lock:
        real = stand_in.__dict__.get("__real__")
        if real is None:
            name = stand_in.__name__
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
            real = importlib.import_module(name)
            hooks = stand_in.__dict__.pop("__when_imported__", [])
            stand_in.__dict__.update(real.__dict__)
            stand_in.__dict__["__real__"] = real
            for hook in hooks:
                hook(real)
        return real


def on_demand(name: str, answers: dict[str, Callable[..., object]]) -> None:
    """Put a stand-in for the module ``name`` in ``sys.modules``: ``answers`` are the names it answers without
    the module (each gets the stand-in as its first argument, and may call ``realized`` to have the real one);
    any other name imports the module. A module already imported, or not installed, is left as it is."""
    with _lock:
        if name in sys.modules:
            return
        spec = importlib.util.find_spec(name)
        if spec is None:
            return
        stand_in = _OnDemand(name)  # what the import system and inspect read of a module, as the real one has it
        stand_in.__spec__, stand_in.__loader__, stand_in.__package__ = spec, spec.loader, spec.parent
        if spec.has_location:
            stand_in.__file__ = spec.origin
        if spec.submodule_search_locations is not None:
            stand_in.__path__ = list(spec.submodule_search_locations)
        for attr, answer in answers.items():
            setattr(stand_in, attr, functools.wraps(answer)(functools.partial(answer, stand_in)))
        sys.modules[name] = stand_in
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, stand_in)  # find_spec imported the parent


def when_imported(name: str, hook: Callable[[types.ModuleType], object]) -> None:
    """``hook(module)`` once the module ``name`` is really imported: now if it is, else when its stand-in
    (``on_demand``) imports it."""
    with _lock:
        module = sys.modules.get(name)
        if isinstance(module, _OnDemand) and "__real__" not in module.__dict__:
            module.__dict__.setdefault("__when_imported__", []).append(hook)
            return
    hook(module if module is not None else importlib.import_module(name))


def realized(stand_in: types.ModuleType) -> types.ModuleType:
    """The real module behind ``stand_in`` (imported now if it was not)."""
    return _realize(stand_in)


def _forward(attr: str) -> Callable[..., object]:
    def answer(stand_in: types.ModuleType, *args: object, **kwargs: object) -> object:
        return getattr(realized(stand_in), attr)(*args, **kwargs)

    answer.__name__ = attr
    return answer


class _NoEntryPoints(tuple):
    """What ``importlib.metadata.entry_points(group=...)`` gives for a group nobody declares (an empty
    ``EntryPoints``: the same answers to its names, groups, select and item lookup)."""

    names = groups = frozenset()

    def select(self, **params: object) -> _NoEntryPoints:
        return self

    def __getitem__(self, name):  # type: ignore[override]
        if isinstance(name, int | slice):
            return tuple.__getitem__(self, name)
        raise KeyError(name)


_GROUP_LINE = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*$", re.MULTILINE)


def declared_entry_point_groups() -> set[str] | None:
    """Every entry-point group the distributions on ``sys.path`` declare (their ``entry_points.txt``), read the
    way ``importlib.metadata`` finds them in directories; None where it cannot be told cheaply (a zip on the
    path, another finder of distributions): then only ``importlib.metadata`` itself can answer."""
    if any(hasattr(f, "find_distributions") and f is not importlib.machinery.PathFinder for f in sys.meta_path):
        return None
    groups: set[str] = set()
    for entry in sys.path:
        folder = entry or "."
        if not os.path.isdir(folder):
            if os.path.exists(folder):
                return None  # a zip (an egg, the stdlib's zip): its distributions are not listed here
            continue
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                try:
                    with open(os.path.join(folder, name, "entry_points.txt"), encoding="utf-8") as file:
                        groups.update(_GROUP_LINE.findall(file.read()))
                except (OSError, UnicodeDecodeError):
                    continue
    return groups


def _entry_points(stand_in: types.ModuleType, **params: object) -> object:
    group = params.get("group")
    if set(params) == {"group"} and isinstance(group, str):
        declared = declared_entry_point_groups()
        if declared is not None and group not in declared:
            return _NoEntryPoints()
    return realized(stand_in).entry_points(**params)


def metadata_on_demand() -> None:
    """pydantic (for its plugins, when it builds its first model) and kombu (for extra serializers, when it is
    imported) each ask ``importlib.metadata`` for the entry points of a group that usually nobody declares;
    importing it brings email, zipfile, csv, importlib.resources… (~1.6 MB of a worker). The stand-in answers
    such a question from the ``entry_points.txt`` files themselves; a group somebody declares, and every
    other use of the module, imports it."""
    on_demand("importlib.metadata", {"entry_points": _entry_points})


def yaml_on_demand() -> None:
    """kombu registers PyYAML as a serializer when it is imported, with ``yaml.safe_dump`` and a loader that
    calls ``yaml.safe_load``; nothing of the worker's sends or accepts YAML, so PyYAML (~1.1 MB) is imported by
    the first YAML message, if one ever comes, not at start."""
    on_demand("yaml", {"safe_dump": _forward("safe_dump"), "safe_load": _forward("safe_load")})


def elementtree_on_demand() -> None:
    """ElementTree (with pyexpat, ~0.3 MB) is imported by a dozen of the worker's modules for the VM, storage
    and inventory commands that read or write XML; it loads with the first of them, not at start."""
    on_demand("xml.etree.ElementTree", {})
