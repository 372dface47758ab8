#!/usr/bin/env bash
# The one command that runs the tests on a fresh Debian machine (as root): setup, services, lint, pytest.
#   scripts/test.sh             everything: this machine's suite, then, when this kernel has no 8021q, the tests
#                               that need it inside a QEMU guest booted from a stock Debian kernel (the real-kernel stage)
#   scripts/test.sh ARGS…       pytest ARGS on this machine only, e.g. scripts/test.sh tests/spine -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
bash .ci/services.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/kvmworker schema --out "$(mktemp -d)" >/dev/null   # the CLI itself starts and writes schemas
# pytest exits 5 when it collects nothing: that is a failure here, as any non-zero status.
if [ $# -gt 0 ]; then
  exec .venv/bin/pytest -p no:cacheprovider "$@"
fi

kernel_has_vlan() {
  local ns="kvt-probe-$$" ok=1
  ip netns add "$ns"
  ip -n "$ns" link add kvtp0 type dummy 2>/dev/null || ip -n "$ns" link add kvtp0 type veth peer name kvtp1
  ip -n "$ns" link add link kvtp0 name kvtp0.5 type vlan id 5 2>/dev/null || ok=0
  ip netns del "$ns"
  [ "$ok" = 1 ]
}

# The whole suite lists its 25 slowest tests at the end: the run must stay under CI's 30 minutes, and this is
# where to look when it creeps up.
slowest=(--durations=25 --durations-min=5)
if kernel_has_vlan; then
  exec .venv/bin/pytest -p no:cacheprovider "${slowest[@]}"
fi

echo "[test] this kernel has no 8021q: the tests marked needs_8021q run meanwhile in a guest (scripts/guest-run.sh)"
.venv/bin/python -m compileall -q kvmworker tests >/dev/null   # the guest's / is read-only: compile here, once
# The real-kernel stage runs side by side with this machine's suite, which mostly waits (on brokers, daemons, its
# own tiny guests): the guest's emulated CPUs use what it leaves idle, and the run ends about the guest's
# 2.5 minutes sooner. Its output is shown after the suite's; the run fails if either fails.
# The guest reaches this machine's RabbitMQ as 10.0.2.2 through QEMU's user networking (loopback on this side).
# Plugin autoload is off: under emulation it costs about a minute, and these tests need none of the plugins.
guest_out=$(mktemp /tmp/kvt-guest-stage.XXXXXX)
setsid scripts/guest-run.sh env KVT_REQUIRE_8021Q=1 KVT_NETKILL_BROKER="amqp://guest:guest@10.0.2.2:5672//" \
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 .venv/bin/pytest -p no:cacheprovider -m needs_8021q -v \
  tests/netplane tests/faults/test_network_sigkill.py >"$guest_out" 2>&1 &
guest=$!   # setsid: its own session, so that an interrupted run takes the guest (and its QEMU) with it
trap 'pkill -TERM -s "$guest" 2>/dev/null || true; rm -f "$guest_out"' EXIT

host_rc=0
KVT_GUEST_STAGE=later .venv/bin/pytest -p no:cacheprovider "${slowest[@]}" || host_rc=$?

echo "[test] the real-kernel stage: a QEMU guest booted from a stock Debian kernel (run beside the suite above)"
guest_rc=0
wait "$guest" || guest_rc=$?
trap 'rm -f "$guest_out"' EXIT   # its session has ended
cat "$guest_out"
[ "$host_rc" = 0 ] || exit "$host_rc"
exit "$guest_rc"
