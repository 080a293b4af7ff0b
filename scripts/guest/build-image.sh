#!/usr/bin/env bash
# Builds (once, cached) the QEMU guest the tcmu-runner tests boot: a Debian
# 12 (bookworm) root file system with LIO's user-space stack (tcmu-runner,
# targetcli-fb), an iSCSI initiator (open-iscsi) and fio, its kernel, and a
# small initrd that can mount the root disk and the 9p share.
#
#   scripts/guest/build-image.sh CACHE_DIR
#
# Leaves CACHE_DIR/{vmlinuz,initrd.img,root.img} and a stamp naming this
# script's checksum: a later call with the same script returns at once,
# an edited script rebuilds. Needs root (debootstrap, chroot, device
# ownership in the image) and the distribution's package mirror, which it
# takes from the host's apt sources. Installs debootstrap and QEMU on the
# host when they are missing. Concurrent calls serialize on a lock.
#
# Why a guest at all: LIO, target_core_user and the iSCSI initiator are
# kernel modules the host may not have or load; the guest runs the stock
# Debian kernel under TCG, so the test needs no KVM.
set -euo pipefail

cache=${1:?usage: build-image.sh CACHE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# Everything the guest scripts use. kmod for modprobe, dbus because
# targetcli talks to tcmu-runner over the system bus, librbd1 because the
# handler and the ferry binary of an --all-features build link librbd.
# tgt and multipath-tools for the ALUA failover test (two tgtd gateways,
# dm-multipath over both paths). systemd and libiscsi7 for the package
# test, which boots systemd as PID 1 and installs ferry's .deb.
packages=(
  kmod initramfs-tools zstd tcmu-runner targetcli-fb python3-rtslib-fb
  open-iscsi fio iproute2 dbus procps util-linux sg3-utils e2fsprogs
  librbd1 linux-image-amd64 tgt multipath-tools systemd libiscsi7
)
# Modules the initrd needs to reach the root disk and the share; the rest
# load from the root file system.
initrd_modules=(virtio_pci virtio_blk ext4 9p 9pnet_virtio 9pnet)

stamp="$(sha256sum "$0" | cut -c1-16)"
if [ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ] &&
  [ -s "$cache/root.img" ] && [ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.img" ]; then
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "build-image: must run as root (debootstrap, chroot)" >&2
  exit 1
fi

exec 9>"$cache/.lock"
flock 9
# Another build may have finished while we waited for the lock.
if [ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ] && [ -s "$cache/root.img" ]; then
  exit 0
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
  echo "build-image: installing ${need[*]} on the host"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The mirror the host's apt uses for bookworm's main component, so the
# image comes from where the host's packages do.
mirror() {
  local f uris="" suites="" comps=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    # deb822 stanzas: print URIs of binary stanzas carrying bookworm main.
    awk '
      /^[[:space:]]*$/ { if (t ~ /(^| )deb( |$)/ && s ~ /(^| )bookworm( |$)/ && c ~ /(^| )main( |$)/) print u; t=u=s=c=""; next }
      /^Types:/ { t=$0; sub(/^Types:[[:space:]]*/, "", t) }
      /^URIs:/ { u=$2 }
      /^Suites:/ { s=$0 }
      /^Components:/ { c=$0 }
      END { if (t ~ /(^| )deb( |$)/ && s ~ /(^| )bookworm( |$)/ && c ~ /(^| )main( |$)/) print u }
    ' "$f"
  done
  if [ -e /etc/apt/sources.list ]; then
    awk '$1 == "deb" && $3 == "bookworm" { for (i = 4; i <= NF; i++) if ($i == "main") print $2 }' \
      /etc/apt/sources.list
  fi
}
mirror_uri=$(mirror | grep -v -- '-security' | head -n1 || true)

work="$cache/build.$$"
root="$work/root"
cleanup() {
  for m in proc sys dev; do
    mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work" "$cache/debs"

start=$(date +%s)
echo "build-image: debootstrap bookworm into $root${mirror_uri:+ from $mirror_uri}"
include=$(IFS=,; echo "${packages[*]}")
# INITRD=No: the kernel package's hook skips the (large, slow) generic
# initrd; a small one is made below.
if ! INITRD=No DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase \
  --include="$include" --cache-dir="$cache/debs" bookworm "$root" ${mirror_uri:+"$mirror_uri"} \
  >"$work/debootstrap.log" 2>&1; then
  tail -n 40 "$work/debootstrap.log" >&2
  [ -e "$root/debootstrap/debootstrap.log" ] && tail -n 40 "$root/debootstrap/debootstrap.log" >&2
  echo "build-image: debootstrap failed" >&2
  exit 1
fi
echo "build-image: debootstrap done in $(($(date +%s) - start)) s"

kver=$(basename "$(ls -d "$root"/lib/modules/* | sort -V | tail -n1)")

# A small initrd: virtio disk, ext4 and 9p only.
mkdir -p "$root/etc/ferry-initramfs/scripts"
cat >"$root/etc/ferry-initramfs/initramfs.conf" <<EOF
MODULES=list
BUSYBOX=auto
COMPRESS=zstd
EOF
printf '%s\n' "${initrd_modules[@]}" >"$root/etc/ferry-initramfs/modules"
mount -t proc proc "$root/proc"
chroot "$root" mkinitramfs -d /etc/ferry-initramfs -o /boot/initrd.ferry "$kver"
umount "$root/proc"

# The test, under either PID 1: mounts the share, runs the script the
# kernel command line names (ferry.script=NAME, a file in the share), and
# powers off.
cat >"$root/sbin/ferry-guest-run" <<'EOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /share
modprobe 9pnet_virtio 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /share
script=$(sed -n 's/.*ferry\.script=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$script" ] && [ -x "/share/$script" ]; then
  "/share/$script"
  echo "ferry-guest-run: $script exited with $?"
else
  echo "ferry-guest-run: no script /share/$script" | tee /share/result
fi
sync
echo o >/proc/sysrq-trigger
EOF
chmod 0755 "$root/sbin/ferry-guest-run"
# PID 1 of the test guest without systemd: mounts what systemd would
# have, then runs the test.
cat >"$root/sbin/ferry-guest-init" <<'EOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mountpoint -q /run || mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm /tmp
mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
/sbin/ferry-guest-run
sleep 10
EOF
chmod 0755 "$root/sbin/ferry-guest-init"
# Under systemd (run-guest.sh with FERRY_GUEST_INIT=systemd), PID 1 is
# systemd, booted into ferry-test.target, whose one service runs the test.
cat >"$root/etc/systemd/system/ferry-test.service" <<'EOF'
[Unit]
Description=ferry guest test script
After=basic.target
[Service]
Type=oneshot
ExecStart=/sbin/ferry-guest-run
StandardOutput=journal+console
StandardError=journal+console
EOF
cat >"$root/etc/systemd/system/ferry-test.target" <<'EOF'
[Unit]
Description=ferry guest test
Requires=basic.target ferry-test.service
After=basic.target ferry-test.service
AllowIsolate=yes
EOF
echo ferry-guest >"$root/etc/hostname"
: >"$root/etc/fstab"
# No services start by themselves in the guest (there is no init system
# running), but keep package scripts from trying if anything is installed
# later.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.ferry" "$work/initrd.img"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/boot/initrd.ferry"

echo "build-image: writing root.img"
mkfs.ext4 -q -F -L ferry-root -d "$root" "$work/root.img" 3G

mv "$work/vmlinuz" "$work/initrd.img" "$work/root.img" "$cache/"
echo "$stamp" >"$cache/stamp"
echo "build-image: done in $(($(date +%s) - start)) s ($cache, kernel $kver)"
