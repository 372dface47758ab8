"""The lock files against pyproject.toml: a lock that no longer matches the declared ranges fails here.

``scripts/lock.sh`` writes both locks; the Dockerfile installs ``requirements.lock`` and CI
(``scripts/setup.sh --test``) ``requirements-test.lock``. The wheel-only venv of tests/deploy/test_outside.py
installs the same way, so a lock missing a package of the closure fails there too.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import ROOT

RUNTIME_LOCK = ROOT / "requirements.lock"
TEST_LOCK = ROOT / "requirements-test.lock"
FROM_PYPROJECT = "kvmworker (pyproject.toml)"
ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]*?))?\s*\\?$")


@dataclass
class Locked:
    version: str
    marker: str | None
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def read_lock(text: str) -> dict[str, Locked]:
    """Name → what uv wrote for it: the pinned version, its marker, its hashes and the ``# via`` lines."""
    entries: dict[str, Locked] = {}
    current: Locked | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if match := ENTRY.match(line):
            current = entries[canonicalize_name(match["name"])] = Locked(match["version"], match["marker"])
        elif current is not None and stripped.startswith("--hash="):
            current.hashes.append(stripped.removeprefix("--hash=").rstrip(" \\"))
        elif current is not None and stripped.startswith("#") and stripped not in ("# via", "#"):
            current.via.append(stripped.lstrip("#").strip().removeprefix("via ").strip())
    return entries


def declared(pyproject: dict, *extras: str) -> list[Requirement]:
    project = pyproject["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return [Requirement(r) for r in requirements]


def problems(requirements: list[Requirement], lock: dict[str, Locked]) -> list[str]:
    """What makes the lock stale for these requirements, in words; empty when it is current."""
    found: list[str] = []
    for req in requirements:
        locked = lock.get(canonicalize_name(req.name))
        if locked is None:
            found.append(f"{req.name} is declared but not locked")
        elif not req.specifier.contains(locked.version, prereleases=True):
            found.append(f"{req.name}=={locked.version} is outside the declared {req.specifier}")
    names = {canonicalize_name(r.name) for r in requirements}
    for name, locked in lock.items():
        if FROM_PYPROJECT in locked.via and name not in names:
            found.append(f"{name} is locked as a dependency of the project, which no longer declares it")
    return found


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


LOCKS = [pytest.param(RUNTIME_LOCK, (), id="requirements.lock"), pytest.param(TEST_LOCK, ("test",), id="test-lock")]


@pytest.mark.parametrize(("path", "extras"), LOCKS)
def test_the_lock_holds_every_declared_dependency_inside_its_range_and_nothing_undeclared(pyproject, path, extras):
    assert problems(declared(pyproject, *extras), read_lock(path.read_text())) == []


def test_a_stale_lock_is_reported_in_words(pyproject):
    lock = read_lock(RUNTIME_LOCK.read_text())
    narrowed = [Requirement(f"kombu[redis]>=5.3,<{lock['kombu'].version}"), Requirement("fastapi>=0.110,<1")]
    lock["uvicorn"].via.append(FROM_PYPROJECT)
    assert problems(narrowed, {k: v for k, v in lock.items() if k in ("kombu", "uvicorn")}) == [
        f"kombu=={lock['kombu'].version} is outside the declared <{lock['kombu'].version},>=5.3",
        "fastapi is declared but not locked",
        "uvicorn is locked as a dependency of the project, which no longer declares it",
    ]


@pytest.mark.parametrize("path", [RUNTIME_LOCK, TEST_LOCK], ids=["requirements.lock", "test-lock"])
def test_every_locked_package_is_pinned_with_the_hashes_of_its_files(path):
    lock = read_lock(path.read_text())
    assert len(lock) > 20
    unhashed = [name for name, locked in lock.items() if not locked.hashes]
    assert unhashed == []
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for locked in lock.values() for h in locked.hashes)


def test_the_test_lock_has_the_versions_of_the_runtime_lock_so_ci_tests_what_the_image_ships():
    runtime, test = read_lock(RUNTIME_LOCK.read_text()), read_lock(TEST_LOCK.read_text())
    assert {name: test.get(name, Locked("missing", None)).version for name in runtime} == {
        name: locked.version for name, locked in runtime.items()
    }


def test_the_runtime_lock_brings_what_kombus_redis_transport_imports():
    lock = read_lock(RUNTIME_LOCK.read_text())
    assert {"redis", "packaging", "amqp"} <= set(lock)
    assert "fastapi" not in lock


def test_the_dockerfile_and_setup_install_the_locks_with_their_hashes():
    dockerfile = (ROOT / "Dockerfile").read_text()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "--require-hashes --wheel-dir /wheels -r requirements.lock" in dockerfile
    assert "lock=requirements.lock" in setup and "lock=requirements-test.lock" in setup
    assert 'install --require-hashes -r "$lock"' in setup
