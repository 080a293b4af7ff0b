#!/usr/bin/env bash
# Boots the test guest (see build-image.sh) on a script and returns its
# result.
#
#   scripts/guest/run-guest.sh CACHE_DIR SHARE_DIR SCRIPT [TIMEOUT_SECONDS]
#
# SHARE_DIR is shared with the guest as /share (9p); SCRIPT is the name of
# an executable file in it, which the guest's init runs as root with
# /proc, /sys, /dev and /share mounted. The script reports by writing
# /share/result: a first line of "ok" is success, anything else is the
# failure to report. The guest powers off when the script returns (or
# panics, or runs out of time: the default is 600 s). The root disk is
# opened with -snapshot, so every run starts from the same image.
#
# Exit status: 0 when the script wrote "ok", 1 when it reported a
# failure or wrote nothing, 124 on timeout. The guest's console is kept
# in SHARE_DIR/console.log and its tail shown on failure.
#
# The guest runs under TCG (-accel tcg): KVM here cannot boot a stock
# kernel, and TCG needs nothing from the host. Two vCPUs, 2 GiB (FERRY_GUEST_MEM, in MiB, changes it).
set -euo pipefail

cache=${1:?usage: run-guest.sh CACHE_DIR SHARE_DIR SCRIPT [TIMEOUT]}
share=${2:?usage: run-guest.sh CACHE_DIR SHARE_DIR SCRIPT [TIMEOUT]}
script=${3:?usage: run-guest.sh CACHE_DIR SHARE_DIR SCRIPT [TIMEOUT]}
timeout_s=${4:-600}
share=$(cd "$share" && pwd)

for f in vmlinuz initrd.img root.img; do
  if [ ! -s "$cache/$f" ]; then
    echo "run-guest: $cache/$f is missing: run scripts/guest/build-image.sh $cache" >&2
    exit 1
  fi
done
if [ ! -x "$share/$script" ]; then
  echo "run-guest: $share/$script is not an executable file" >&2
  exit 1
fi
rm -f "$share/result" "$share/console.log"

# FERRY_GUEST_INIT=systemd boots systemd as PID 1 (into ferry-test.target,
# which runs the script the same way); the default is the image's own
# small init.
init="init=/sbin/ferry-guest-init"
if [ "${FERRY_GUEST_INIT:-}" = systemd ]; then
  init="init=/lib/systemd/systemd systemd.unit=ferry-test.target systemd.show_status=0"
fi

# -snapshot keeps its overlay in $TMPDIR; the copy-on-write data of one
# run is small.
status=0
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -m "${FERRY_GUEST_MEM:-2048}" -smp 2 \
  -nographic -no-reboot -nic none \
  -kernel "$cache/vmlinuz" -initrd "$cache/initrd.img" \
  -drive "file=$cache/root.img,if=virtio,format=raw,cache=unsafe" -snapshot \
  -virtfs "local,path=$share,mount_tag=share,security_model=none" \
  -append "console=ttyS0 root=/dev/vda rw $init ferry.script=$script panic=-1 loglevel=4 net.ifnames=0" \
  </dev/null >"$share/console.log" 2>&1 || status=$?

if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  echo "run-guest: the guest did not finish within $timeout_s s" >&2
  tail -n 60 "$share/console.log" >&2 || true
  exit 124
fi
result=$(head -n1 "$share/result" 2>/dev/null || true)
if [ "$result" = ok ]; then
  exit 0
fi
if [ -s "$share/result" ]; then
  echo "run-guest: the guest reported: $(cat "$share/result")" >&2
else
  echo "run-guest: the guest wrote no result (qemu exit $status)" >&2
fi
tail -n 60 "$share/console.log" >&2 || true
exit 1
