#!/usr/bin/env bash
# Set up this checkout on a Debian machine, as root: Debian packages, then the venv with the project.
#   scripts/setup.sh          what the worker needs
#   scripts/setup.sh --test   also what the tests need (RabbitMQ, Redis, libvirtd, QEMU, tools)
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME_PKGS=(python3 python3-venv python3-dev gcc pkg-config libvirt-dev iproute2)
TEST_PKGS=(rabbitmq-server redis-server redis-tools libvirt-daemon-system libvirt-clients qemu-system-x86
           qemu-utils busybox-static cpio kmod dbus-daemon wrk)

want=("${RUNTIME_PKGS[@]}")
[ "${1:-}" = "--test" ] && want+=("${TEST_PKGS[@]}")

missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Services must not be started by the package scripts (there may be no init); .ci/services.sh starts them.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi

# The locked versions (scripts/lock.sh writes the locks from pyproject.toml), then the project itself, editable.
# pip runs only when pyproject.toml or the lock changed since the last install into this venv: the stamp holds
# the fingerprint of each lock the venv satisfies (the test lock holds the runtime lock's versions, so both).
lock=requirements.lock
[ "${1:-}" = "--test" ] && lock=requirements-test.lock
stamp=.venv/.kvmworker-installed
# pip's status counts; only its complaint about a find-links folder this machine may lack is dropped
pip_quiet() { .venv/bin/pip -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
fingerprint() { cat pyproject.toml "$1" | sha256sum | cut -d' ' -f1; }
if ! grep -qx "$(fingerprint "$lock")" "$stamp" 2>/dev/null; then
  echo "[setup] installing $lock into .venv"
  pip_quiet install --require-hashes -r "$lock"
  pip_quiet install --no-deps -e .
  fingerprint "$lock" > "$stamp"
  if [ "$lock" = requirements-test.lock ]; then fingerprint requirements.lock >> "$stamp"; fi
fi
.venv/bin/python -c "import kvmworker, libvirt, pyroute2, kombu" || { rm -f "$stamp"; echo "[setup] the venv is broken"; exit 1; }
echo "[setup] ready: .venv/bin/kvmworker"
