"""The local token file: a fresh random bearer token at every start, readable by its owner only.

``kvmworker serve`` writes it (default ``/run/kvmworker/token``) so that the README's first ``curl``
works for root and for nobody else on the machine: other local users cannot read it, and a web page
cannot read it either. It is removed again at a clean stop.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from kvmworker.bridge.auth import LocalToken

DEFAULT_TOKEN_FILE = Path("/run/kvmworker/token")


class TokenFileError(Exception):
    """The token file cannot be written safely; the bridge does not start."""


def create_token_file(path: Path) -> LocalToken:
    """A new token in ``path`` (0600, its directory created 0700); any previous token stops working."""
    path = Path(path)
    _safe_directory(path.parent)
    token = secrets.token_urlsafe(32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, never a followed symlink
    try:
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return LocalToken(token, str(path))


def remove_token_file(local: LocalToken) -> None:
    """Only if it still holds our token: a second ``serve`` may have written its own since."""
    path = Path(local.path)
    try:
        if local.matches(path.read_text().strip()):
            path.unlink()
    except OSError:
        pass


def _safe_directory(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    st = directory.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise TokenFileError(f"{directory} is not a directory")
    # a directory others may write to lets them replace the file between our write and the caller's read
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise TokenFileError(f"{directory} is writable by other users; choose another --token-file")
    if st.st_uid != os.geteuid():
        raise TokenFileError(f"{directory} belongs to uid {st.st_uid}, not to us; choose another --token-file")
