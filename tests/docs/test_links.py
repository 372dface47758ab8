"""Every relative link in README.md and docs/*.md leads to a file of this repository (and an anchor to a heading)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) outside code; targets with a scheme (https:, mailto:) leave the repository on purpose
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")


def links(document: Path) -> list[str]:
    text = FENCE.sub("", document.read_text())
    text = CODE.sub(lambda m: m[0] if "](" in m[0] else "", text)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(document: Path) -> set[str]:
    text = FENCE.sub("", document.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_inside_the_repository(document):
    assert links(document) or document.name != "README.md", "no links found: the pattern is broken"
    for target in links(document):
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        assert resolved.is_relative_to(ROOT), f"{document.name}: {target} leaves the repository"
        assert resolved.exists(), f"{document.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{document.name}: {target}: no heading with that anchor"


def test_the_slug_is_the_one_github_makes():
    assert slug("Exactly-once effects") == "exactly-once-effects"
    assert slug("`SystemHandler.result {msg_id}`") == "systemhandlerresult-msg_id"
    assert slug("On the wire (INTERFACE §4)") == "on-the-wire-interface-4"
    assert slug("2. Return codes") == "2-return-codes"
