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
  # Services must not be started by the package scripts (there may be no init); scripts/services.sh starts them.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e ".${extras}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import kvmworker, libvirt, pyroute2, kombu" || { echo "[setup] the venv is broken"; exit 1; }
echo "[setup] ready: .venv/bin/kvmworker"
