"""Reading /proc and /sys: an absent file is a field the machine does not expose (``None``), not an error."""

from __future__ import annotations

from pathlib import Path


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError:
        # sysfs answers EINVAL/ENODEV for attributes a driver does not implement (e.g. speed of a down link)
        return None


def read_int(path: Path, base: int = 10) -> int | None:
    text = read_text(path)
    try:
        return int(text, base) if text else None
    except ValueError:
        return None


def read_required(path: Path) -> str:
    """For the files a section cannot do without: their absence is the section's failure."""
    return path.read_text(errors="replace")


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found at {path}")
    return path


def subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def key_values(text: str, sep: str = ":") -> dict[str, str]:
    """``Key: value`` lines (``/proc/meminfo``, one ``/proc/cpuinfo`` block, ``/etc/os-release`` with ``=``)."""
    pairs = (line.split(sep, 1) for line in text.splitlines() if sep in line)
    return {key.strip(): value.strip() for key, value in pairs}


def cpu_list(text: str | None) -> list[int] | None:
    """The kernel's CPU list format: ``0-3,8,10-11``."""
    if text is None:
        return None
    cpus: list[int] = []
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus
