"""Reading a Dockerfile and a .dockerignore the way the builder does, for tests that cannot run a build.

No docker engine runs here, so the tests check what a build would see: the stages and their
instructions, and the build context that .dockerignore lets through.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, args = current.strip().partition(" ")
        logical.append((keyword.upper(), " ".join(args.split())))
        current = ""
    return logical


def stages(text: str) -> list[Stage]:
    """Build stages, with ``${ARG}`` in FROM replaced by the global ARG's default."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, rest in instructions(text):
        if keyword == "ARG" and not found and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest).split()
            found.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif found:
            found[-1].instructions.append((keyword, rest))
    return found


def apt_packages(run: str) -> set[str]:
    """The packages an ``apt-get install`` in a RUN line names."""
    packages: set[str] = set()
    for command in re.split(r"&&|;", run):
        words = shlex.split(command)
        if words[:2] == ["apt-get", "install"]:
            packages |= {w for w in words[2:] if not w.startswith("-")}
    return packages


class DockerIgnore:
    """The builder's rules: patterns in order, the last that matches a path or one of its parents decides."""

    def __init__(self, text: str):
        self._rules: list[tuple[re.Pattern[str], bool, str]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self._rules.append((re.compile(_regex(pattern)), negated, pattern))

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for regex, negated, _ in self._rules:
            if any(regex.fullmatch(c) for c in candidates):
                result = not negated
        return result

    def may_include_below(self, directory: str) -> bool:
        """Whether a negated pattern could bring back something under an excluded directory."""
        return any(negated and pattern.startswith(directory + "/") for _, negated, pattern in self._rules)

    def context(self, root: Path) -> list[str]:
        """Every file of ``root`` that reaches the build context, relative, sorted."""
        kept: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(root).as_posix()
            prefix = "" if rel == "." else rel + "/"
            dirnames[:] = [d for d in dirnames if not self.excluded(prefix + d) or self.may_include_below(prefix + d)]
            kept += [prefix + f for f in filenames if not self.excluded(prefix + f)]
        return sorted(kept)


def _regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out
