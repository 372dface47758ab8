#!/usr/bin/env bash
# The one command that runs the tests on a fresh Debian machine (as root): setup, services, lint, pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/spine -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
bash .ci/services.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/kvmworker schema --out "$(mktemp -d)" >/dev/null   # the CLI itself starts and writes schemas
# pytest exits 5 when it collects nothing: that is a failure here, as any non-zero status.
exec .venv/bin/pytest -p no:cacheprovider "$@"
