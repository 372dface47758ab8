"""Parsing domain XML that a caller sent: namespace-aware, no DTD, no entities, and an XPath-like name per node.

The document libvirt receives is the one re-serialized from this tree, never the caller's text, so that
libvirt reads exactly what the checker saw (no entity, encoding or comment trick can differ between the two).
"""

from __future__ import annotations

import functools
from xml.etree import ElementTree as ET

from kvmworker.protocol.errors import InvalidParameter


@functools.cache
def _no_doctype() -> type[ET.TreeBuilder]:
    """The tree builder that refuses a DOCTYPE; made by the first parse, so that ElementTree loads with the
    first command that reads XML, not with the worker (kvmworker.lazyimport)."""

    class NoDoctype(ET.TreeBuilder):
        def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
            raise InvalidParameter("xml must not carry a DOCTYPE (no DTD, no entities)", field="xml")

    return NoDoctype


def parse(text: str) -> ET.Element:
    """The element tree of ``text``; a DTD, an entity or a malformed document is 30006."""
    parser = ET.XMLParser(target=_no_doctype()())
    try:
        parser.feed(text)
        return parser.close()
    except ET.ParseError as exc:
        raise InvalidParameter(f"xml is not well-formed: {exc}", field="xml") from None


def serialize(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def split(tag: str) -> tuple[str | None, str]:
    """``{uri}local`` → (uri, local); a name without a namespace → (None, name)."""
    if tag.startswith("{"):
        uri, _, local = tag[1:].partition("}")
        return uri, local
    return None, tag
