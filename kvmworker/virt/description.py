"""Domain XML → the plain data ``info`` and ``console`` report (the XML is the one source for devices)."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def interfaces(root: ET.Element) -> list[dict[str, Any]]:
    return [_interface(el) for el in root.iterfind("devices/interface")]


def _interface(el: ET.Element) -> dict[str, Any]:
    source = el.find("source")
    return {
        "type": el.get("type"),
        "mac": _attr(el, "mac", "address"),
        "bridge": source.get("bridge") if source is not None else None,
        "network": source.get("network") if source is not None else None,
        "tap": _attr(el, "target", "dev"),
        "model": _attr(el, "model", "type"),
    }


def disks(root: ET.Element) -> list[dict[str, Any]]:
    return [_disk(el) for el in root.iterfind("devices/disk")]


def _disk(el: ET.Element) -> dict[str, Any]:
    source = el.find("source")
    path = None
    if source is not None:
        path = source.get("file") or source.get("dev") or source.get("volume") or source.get("name")
    return {
        "target": _attr(el, "target", "dev"),
        "bus": _attr(el, "target", "bus"),
        "device": el.get("device"),
        "source": path,
        "format": _attr(el, "driver", "type"),
    }


def graphics(root: ET.Element) -> list[dict[str, Any]]:
    return [
        {
            "type": el.get("type"),
            "port": _int(el.get("port")),
            "listen": el.get("listen"),
            "autoport": el.get("autoport"),
        }
        for el in root.iterfind("devices/graphics")
    ]


def consoles(root: ET.Element) -> list[dict[str, Any]]:
    found = []
    for kind in ("serial", "console"):
        for el in root.iterfind(f"devices/{kind}"):
            found.append({"kind": kind, "type": el.get("type"), "path": _source_path(el), "target": _target(el)})
    return found


def _source_path(el: ET.Element) -> str | None:
    source = el.find("source")
    return (source.get("path") if source is not None else None) or el.get("tty")


def _target(el: ET.Element) -> str | None:
    target = el.find("target")
    if target is None:
        return None
    return target.get("type") or target.get("port")


def _attr(el: ET.Element, child: str, name: str) -> str | None:
    found = el.find(child)
    return found.get(name) if found is not None else None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.lstrip("-").isdigit() else None
