#!/usr/bin/env bash
# guest-run.sh CMD [ARGS…] — run CMD inside a QEMU guest booted from a stock Debian kernel.
#
# The guest sees this machine's / read-only over virtio-9p, under a tmpfs overlay (so the same venv and checkout
# run there and may write), starts in the current directory with the current environment, and CMD's stdout and
# stderr come back separately; the script exits with CMD's exit status. What for: a real kernel with the modules
# this machine's kernel lacks (8021q, bonding), for the network tests.
#
# Environment:
#   GUEST_ACCEL      tcg (default) or kvm; /dev/kvm here cannot boot Debian kernels, elsewhere kvm is much faster
#   GUEST_MEMORY     MiB of guest memory (default 2048); GUEST_CPUS (default: this machine's, at most 4)
#   GUEST_TIMEOUT    seconds before the guest is killed and the script exits 124 (default 1500)
#   GUEST_NET        1 (default): user-mode networking; the guest reaches this machine's loopback at 10.0.2.2
#   GUEST_CACHE      where the kernel and the initramfs are kept (default /var/cache/kvmworker-guest)
#   GUEST_CONSOLE    a file for the guest's console (default: a temporary file, shown when the guest fails)
# Exit status: CMD's; 124 on timeout; 125 when the guest did not get as far as running CMD.
set -euo pipefail

[ $# -gt 0 ] || { echo "usage: $0 CMD [ARGS…]" >&2; exit 64; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${GUEST_CACHE:-/var/cache/kvmworker-guest}
accel=${GUEST_ACCEL:-tcg}
cpus=${GUEST_CPUS:-$(nproc)}; [ "$cpus" -le 4 ] || cpus=4
memory=${GUEST_MEMORY:-2048}
limit=${GUEST_TIMEOUT:-1500}
log() { echo "[guest-run] $*" >&2; }

# Modules the guest loads, each after what it depends on (resolved below with modinfo: an unpacked kernel has
# no modules.dep, and busybox's insmod does not resolve dependencies).
MODULES=(virtio_pci 9pnet_virtio 9p overlay virtio_net 8021q bridge veth vxlan tun bonding dummy)

kernel_dir() {
  local pkg
  if [ ! -e "$cache/kernel/ready" ]; then
    mkdir -p "$cache"
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n 1)
    if [ -z "$pkg" ]; then
      apt-get update -qq >/dev/null
      pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n 1)
    fi
    [ -n "$pkg" ] || { log "no linux-image-6.1.0-*-amd64 package found"; exit 125; }
    log "fetching $pkg (unpacked, never installed)"
    rm -rf "$cache/kernel" "$cache/download" && mkdir -p "$cache/download" "$cache/kernel"
    (cd "$cache/download" && apt-get download -q "$pkg" >/dev/null 2>&1)
    dpkg-deb -x "$cache"/download/*.deb "$cache/kernel"
    rm -rf "$cache/download"
    touch "$cache/kernel/ready"
  fi
  echo "$cache/kernel"
}

module_order() {  # modules in load order, dependencies first
  local tree=$1 seen=" " order=()
  visit() {
    local name=$1 file dep
    case "$seen" in *" $name "*) return ;; esac
    seen+="$name "
    file=$(find "$tree" -name "$name.ko" -o -name "$name.ko.xz" | head -n 1)
    [ -n "$file" ] || return 0   # built into the kernel
    for dep in $(modinfo -F depends "$file" | tr ',' ' '); do visit "$dep"; done
    order+=("$file")
  }
  for m in "${MODULES[@]}"; do visit "$m"; done
  printf '%s\n' "${order[@]}"
}

build_initramfs() {  # a busybox initramfs: load the modules, mount / over 9p under an overlay, hand over
  local kdir=$1 out=$2 work
  work=$(mktemp -d)
  mkdir -p "$work"/{bin,dev,proc,sys,modules,lower,upper,newroot}
  cp /bin/busybox "$work/bin/busybox"
  local n=0
  while read -r file; do
    n=$((n + 1))
    case "$file" in
      *.xz) xz -dc "$file" > "$work/modules/$(printf %02d $n)-$(basename "${file%.xz}")" ;;
      *) cp "$file" "$work/modules/$(printf %02d $n)-$(basename "$file")" ;;
    esac
  done < <(module_order "$kdir/lib/modules")
  cat > "$work/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in /modules/*.ko; do
  case "$m" in *-bonding.ko) args=max_bonds=0 ;; *-dummy.ko) args=numdummies=0 ;; *) args= ;; esac
  insmod "$m" $args || echo "guest: insmod $m failed"
done
mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=512000 hostroot /lower || exec sh
mount -t tmpfs -o mode=0755 tmpfs /upper && mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || exec sh
mkdir -p /newroot/run/guest-io
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 io /newroot/run/guest-io || exec sh
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /bin/bash /run/guest-io/stage2
INIT
  chmod +x "$work/init"
  (cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$work"
}

kdir=$(kernel_dir)
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -n 1)
stamp=$(cat "$0" /bin/busybox "$vmlinuz" | sha256sum | cut -c1-16)
initrd="$cache/initrd-$stamp.cpio.gz"
if [ ! -e "$initrd" ]; then
  log "building the initramfs"
  rm -f "$cache"/initrd-*.cpio.gz
  build_initramfs "$kdir" "$initrd"
fi

io=$(mktemp -d /tmp/guest-io.XXXXXX)
console=${GUEST_CONSOLE:-$io.console}
cleanup() { rm -rf "$io"; [ -n "${GUEST_CONSOLE:-}" ] || rm -f "$io.console"; }
trap cleanup EXIT
export -p | grep -v -E '^declare -x (BASHOPTS|BASH_VERSINFO|EUID|PPID|SHELLOPTS|UID|_)=' > "$io/env"
printf '%q ' "$@" > "$io/cmd"
cat > "$io/stage2" <<STAGE2
# The guest's second stage, run by bash from the overlay root.
mount -t proc proc /proc; mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm /run/netns /tmp
mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
# /tmp stays the overlay's (writable, and showing this machine's /tmp): the caller's directory may be there
mountpoint -q /run/netns || mount -t tmpfs tmpfs /run/netns
hostname kvmworker-guest
ip link set lo up
if [ "${GUEST_NET:-1}" = 1 ] && ip link show eth0 >/dev/null 2>&1; then
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
fi
. /run/guest-io/env
export KVT_IN_GUEST=1
cd $(printf '%q' "$PWD")
echo "guest: running the command" > /dev/console
set +e
eval "\$(cat /run/guest-io/cmd)" > /run/guest-io/stdout 2> /run/guest-io/stderr < /dev/null
echo \$? > /run/guest-io/rc
sync
echo o > /proc/sysrq-trigger
STAGE2

net=(-nic none)
[ "${GUEST_NET:-1}" = 1 ] && net=(-nic "user,model=virtio-net-pci")
accel_args=(-accel "tcg,thread=multi" -cpu max)
[ "$accel" = kvm ] && accel_args=(-accel kvm -cpu host)
log "booting $(basename "$vmlinuz") ($accel, $cpus cpus, ${memory} MiB): $*"
set +e
timeout --kill-after=10 "$limit" qemu-system-x86_64 "${accel_args[@]}" -machine q35 -smp "$cpus" -m "$memory" \
  -nographic -no-reboot -serial "file:$console" -monitor none \
  -kernel "$vmlinuz" -initrd "$initrd" -append "console=ttyS0 panic=-1 quiet loglevel=3" \
  -fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap" \
  -device "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot" \
  -fsdev "local,id=io,path=$io,security_model=none" -device "virtio-9p-pci,fsdev=io,mount_tag=io" \
  "${net[@]}" </dev/null >/dev/null 2>"$io.qemu"
qemu_rc=$?
set -e
[ -e "$io/stdout" ] && cat "$io/stdout"
[ -e "$io/stderr" ] && cat "$io/stderr" >&2
if [ -s "$io/rc" ]; then
  rc=$(cat "$io/rc")
  log "the command exited $rc"
  rm -f "$io.qemu"
  exit "$rc"
fi
[ "$qemu_rc" = 124 ] && log "timed out after $limit s" || log "the guest stopped before the command finished (qemu $qemu_rc)"
cat "$io.qemu" >&2 || true
log "last lines of the guest's console:"; tail -n 40 "$console" >&2 || true
rm -f "$io.qemu"
[ "$qemu_rc" = 124 ] && exit 124
exit 125
