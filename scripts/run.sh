#!/usr/bin/env bash
# The one command that runs the worker on a fresh Debian machine (as root): the embedded default —
# worker and HTTP bridge in one process on memory://, so that a POST to http://127.0.0.1:8080/ works at once
# for root, with the token serve writes to /run/kvmworker/token (0600; see README.md).
# Extra arguments go to `kvmworker serve`, e.g. scripts/run.sh --port 9000
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# VM commands need libvirtd. A KVM host has its own: where it is installed but not running (a machine
# booted without systemd, a container), start it. Where it is not installed, this script does not bring
# a hypervisor stack along: `kvmworker serve` says at start that libvirt is unreachable and what to
# install, and VmHandler commands answer 30009 until then; everything else works.
if command -v libvirtd >/dev/null 2>&1 && ! pgrep -x libvirtd >/dev/null && ! pgrep -x virtqemud >/dev/null; then
  echo "[run] starting libvirtd"
  if [ -d /run/systemd/system ]; then
    systemctl start libvirtd || echo "[run] could not start libvirtd: see systemctl status libvirtd"
  else
    pgrep -x virtlogd >/dev/null || virtlogd -d || true
    libvirtd -d || echo "[run] could not start libvirtd"
  fi
fi
exec .venv/bin/kvmworker serve "$@"
