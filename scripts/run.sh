#!/usr/bin/env bash
# The one command that runs the worker on a fresh Debian machine (as root): the embedded default —
# worker and HTTP bridge in one process on memory://, so that a POST to http://127.0.0.1:8080/ works at once
# for root, with the token serve writes to /run/kvmworker/token (0600; see README.md).
# Extra arguments go to `kvmworker serve`, e.g. scripts/run.sh --port 9000
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kvmworker serve "$@"
