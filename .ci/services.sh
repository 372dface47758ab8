#!/usr/bin/env bash
# Start the services the tests need, idempotently: RabbitMQ, Redis, virtlogd, libvirtd.
# Safe to run again; each is started only when it is not answering.
set -u
log() { echo "[services] $*"; }

if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
  log "starting redis-server"
  redis-server --daemonize yes --port 6379 --bind 127.0.0.1 --save '' --appendonly no >/dev/null
fi

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
fi

if [ -e /dev/kvm ]; then
  chgrp kvm /dev/kvm 2>/dev/null || true
  chmod 660 /dev/kvm 2>/dev/null || true
fi
if ! pgrep -x virtlogd >/dev/null; then log "starting virtlogd"; virtlogd -d; fi
if ! pgrep -x libvirtd >/dev/null; then log "starting libvirtd"; libvirtd -d; fi

for i in $(seq 1 120); do
  if rabbitmqctl -q await_startup >/dev/null 2>&1 && redis-cli ping >/dev/null 2>&1 \
     && virsh -c qemu:///system version >/dev/null 2>&1; then
    log "rabbitmq, redis and libvirtd are up"
    exit 0
  fi
  sleep 1
done
log "services did not come up in 120 s"
exit 1
