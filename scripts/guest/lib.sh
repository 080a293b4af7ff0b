#!/bin/bash
# What every script run in the test guest (scripts/guest/run-guest.sh)
# starts with: sourced from the share as /share/lib.sh. It defines the
# logging and failure helpers (reports go to /share/result and
# /share/guest.log), loads the iSCSI initiator, installs the ferry binary
# from the share and, unless the script set GUEST_LIO=0 before sourcing
# this, loads LIO and TCMU, starts D-Bus, installs handler_ferry.so and
# starts tcmu-runner (start_runner restarts it later; its pid is in
# $runner_pid).
S=/share
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
MiB=$((1024 * 1024))

# Seconds since boot, and since an earlier reading of it.
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[%7s] %s\n' "$(now)" "$*" | tee -a "$S/guest.log"; }
collect() {
  cp /var/log/tcmu-runner.log "$S/tcmu-runner.log" 2>/dev/null || true
  dmesg >"$S/dmesg.log" 2>/dev/null || true
}
fail() {
  log "FAIL: $*"
  echo "FAIL: $*" >"$S/result"
  collect
  exit 1
}
# Runs a step and fails the test when it fails, with its output logged.
must() {
  local out
  if ! out=$("$@" 2>&1); then
    echo "$out" >>"$S/guest.log"
    fail "$*"
  fi
  [ -n "$out" ] && echo "$out" >>"$S/guest.log"
  return 0
}
# The SCSI disk of $1 bytes once a login has made it (up to 10 s): prints
# its /dev path, or returns 1.
disk_of_size() {
  local sectors=$(($1 / 512)) dev d
  for _ in $(seq 1 100); do
    dev=
    for d in /sys/block/sd*; do
      [ -e "$d/size" ] && [ "$(cat "$d/size")" = "$sectors" ] && dev=/dev/${d##*/}
    done
    [ -n "$dev" ] && [ -b "$dev" ] && echo "$dev" && return 0
    sleep 0.1
  done
  return 1
}

: >"$S/guest.log"
log "guest up (kernel $(uname -r))"

# --- kernel and services -------------------------------------------------
for m in scsi_transport_iscsi libiscsi libiscsi_tcp iscsi_tcp sd_mod; do
  modprobe "$m" || fail "modprobe $m"
done
ip link set lo up
mkdir -p /run/dbus /run/lock/iscsi /var/lib/ferry /var/log /etc/iscsi
install -m 0755 "$S/ferry" /usr/local/bin/ferry
[ "${GUEST_LIO:-1}" = 0 ] && return 0

for m in configfs target_core_mod target_core_user uio iscsi_target_mod; do
  modprobe "$m" || fail "modprobe $m"
done
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config ||
  fail "mounting configfs"
dbus-daemon --system --fork || fail "dbus-daemon"

handler_dir=$(dpkg -L tcmu-runner | sed -n 's|/handler_[^/]*\.so$||p' | head -n1)
[ -d "$handler_dir" ] || fail "no tcmu-runner handler directory"
install -m 0755 "$S/libhandler_ferry.so" "$handler_dir/handler_ferry.so"
log "handler installed in $handler_dir"

runner_pid=
start_runner() {
  tcmu-runner >>"$S/tcmu-runner.out" 2>&1 &
  runner_pid=$!
  local i
  for i in $(seq 1 120); do
    if dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
      org.freedesktop.DBus.ListNames 2>/dev/null | grep -q org.kernel.TCMUService1; then
      return 0
    fi
    kill -0 "$runner_pid" 2>/dev/null || fail "tcmu-runner exited: $(tail -n 5 "$S/tcmu-runner.out")"
    sleep 0.25
  done
  fail "tcmu-runner did not register on D-Bus"
}
start_runner
desc=$(dbus-send --system --print-reply --dest=org.kernel.TCMUService1 /org/kernel/TCMUService1/ferry \
  org.freedesktop.DBus.Properties.Get string:org.kernel.TCMUService1 string:ConfigDesc 2>&1)
echo "$desc" | grep -q "A ferry volume" ||
  fail "handler_ferry did not register: $desc $(grep -i ferry /var/log/tcmu-runner.log | tail -n 3)"
log "tcmu-runner $runner_pid up, handler registered"
