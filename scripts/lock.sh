#!/usr/bin/env bash
# Refresh the lock files from pyproject.toml (after changing a dependency, or to take newer releases):
#   requirements.lock       what the worker runs with: the Dockerfile and scripts/setup.sh install it
#   requirements-test.lock  that plus the test extras, at the same versions: scripts/setup.sh --test (CI)
# Every version is pinned with the hashes of its files on PyPI; pip refuses a download that does not match.
# tests/deploy/test_lock.py fails while the locks and pyproject.toml disagree.
#   scripts/lock.sh              keep the locked versions that still fit pyproject.toml, add what is new
#   scripts/lock.sh --upgrade    take the newest releases inside pyproject.toml's ranges
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "[lock] run scripts/setup.sh --test first"; exit 1; }
[ -x .venv/bin/uv ] || .venv/bin/pip install -q 'uv>=0.13,<1'
compile=(.venv/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes
         --custom-compile-command "scripts/lock.sh" "$@")
"${compile[@]}" pyproject.toml -o requirements.lock
# The test lock is constrained by the runtime lock: CI tests exactly the versions the image ships.
"${compile[@]}" pyproject.toml --extra test -c requirements.lock -o requirements-test.lock
echo "[lock] wrote requirements.lock and requirements-test.lock"
