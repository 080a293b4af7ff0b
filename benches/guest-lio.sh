#!/bin/bash
# Guest side of benches/guest.sh (not run by hand): in the test guest, one
# LIO target with three LUNs on equal tmpfs files, logged in over loopback
# with open-iscsi, measured with fio:
#   LUN 0  fileio      the kernel's own file backstore
#   LUN 1  user:ferry  tcmu-runner with handler_ferry (what is measured)
#   LUN 2  user:qcow   tcmu-runner's own qcow handler (a qcow2 image)
# The two user backstores get the defaults ferry's agent gives LIO LUNs
# (hw_max_sectors=2048, max_data_area_mb=256) and the target the agent's
# command window (default_cmdsn_depth=128).
#
# Each workload runs on the three idle (ferry's volume not yet migrated),
# then on ferry while it is being migrated (to another tmpfs file; a
# finished copy is committed and another started before each run), with
# the bytes the copy moved during that run.
# Writes the table to /share/bench.txt; the share holds lib.sh,
# libhandler_ferry.so, ferry, data.img (raw), data.qcow2 (the same bytes)
# and the settings secs and size_mib.
set -uo pipefail

S=/share
. "$S/lib.sh"

secs=$(cat "$S/secs")
size_mib=$(cat "$S/size_mib")
IQN=iqn.2026-12.org.ferry:bench
B=/mnt/bench

mkdir -p "$B"
mount -t tmpfs -o size=$((size_mib * 6))M tmpfs "$B" || fail "mounting tmpfs"
t=$(now)
must cp "$S/data.img" "$B/fileio.img"
must cp "$S/data.img" "$B/ferry.img"
must cp "$S/data.qcow2" "$B/qcow.qcow2"
log "tmpfs files ready ($(since "$t") s)"

user_control=control=hw_max_sectors=2048,max_data_area_mb=256
must targetcli /backstores/fileio create name=kfile file_or_dev="$B/fileio.img"
must targetcli /backstores/user:ferry create name=uferry size="${size_mib}M" \
  cfgstring="$B/ferry.img" "$user_control"
must targetcli /backstores/user:qcow create name=uqcow size="${size_mib}M" \
  cfgstring="$B/qcow.qcow2" "$user_control"
must targetcli /iscsi create "$IQN"
for b in fileio/kfile user:ferry/uferry user:qcow/uqcow; do
  must targetcli "/iscsi/$IQN/tpg1/luns" create "/backstores/$b"
done
must targetcli "/iscsi/$IQN/tpg1" set attribute authentication=0 demo_mode_write_protect=0 \
  generate_node_acls=1 cache_dynamic_acls=1 default_cmdsn_depth=128
for b in /sys/kernel/config/target/core/*/k* /sys/kernel/config/target/core/*/u*; do
  log "$(basename "$b"): hw_max_sectors=$(cat "$b/attrib/hw_max_sectors") queue_depth=$(cat "$b/attrib/queue_depth" 2>/dev/null)"
done

echo "InitiatorName=iqn.2026-12.org.ferry:bench-initiator" >/etc/iscsi/initiatorname.iscsi
iscsid || fail "iscsid"
must iscsiadm -m discovery -t st -p 127.0.0.1:3260
must iscsiadm -m node -T "$IQN" -p 127.0.0.1:3260 --login
declare -A dev
for i in $(seq 1 100); do
  for d in /sys/block/sd*; do
    [ -e "$d/device" ] || continue
    addr=$(basename "$(readlink -f "$d/device")")
    dev[${addr##*:}]=/dev/$(basename "$d")
  done
  [ "${#dev[@]}" -ge 3 ] && break
  sleep 0.1
done
[ "${#dev[@]}" -ge 3 ] || fail "expected three disks after the login, found ${!dev[*]}"
log "disks: fileio ${dev[0]}, ferry ${dev[1]}, qcow ${dev[2]}"

fio_iops() { # device rw bs qd -> IOPS (reads plus writes)
  fio --name=b --filename="$1" --rw="$2" --bs="$3" --iodepth="$4" --ioengine=libaio \
    --direct=1 --time_based --runtime="$secs" --ramp_time=1 --norandommap \
    --randrepeat=0 --output-format=json 2>>"$S/fio.err" |
    python3 -c 'import json,sys
j = json.load(sys.stdin)["jobs"][0]
print(round(j["read"]["iops"] + j["write"]["iops"]))' 2>>"$S/fio.err" || echo 0
}

status_field() {
  ferry migrate status "$B/ferry.img" --json 2>/dev/null |
    python3 -c "import json,sys
try: print(json.load(sys.stdin)['$1'])
except Exception: print('')"
}
gen=0
ensure_migrating() {
  local state
  state=$(status_field state)
  [ "$state" = copying ] && return
  [ "$state" = copied ] && must ferry migrate commit "$B/ferry.img"
  gen=$((gen + 1))
  rm -f "$B/mig-$((gen - 2)).img"
  must ferry migrate start "$B/ferry.img" "$B/mig-$gen.img"
}
ratio() { python3 -c "print(f'{$1 / max($2, 1):.2f}x')"; }

workloads=("4K-randread-qd1 randread 4k 1" "4K-randread-qd16 randread 4k 16"
  "4K-randwrite-qd1 randwrite 4k 1" "4K-randwrite-qd16 randwrite 4k 16"
  "1M-read-qd8 read 1M 8" "1M-write-qd8 write 1M 8")
declare -A kio qio fio_
# Idle first, before ferry's volume was ever migrated.
for spec in "${workloads[@]}"; do
  set -- $spec
  kio[$1]=$(fio_iops "${dev[0]}" "$2" "$3" "$4")
  qio[$1]=$(fio_iops "${dev[2]}" "$2" "$3" "$4")
  fio_[$1]=$(fio_iops "${dev[1]}" "$2" "$3" "$4")
  log "$1 idle: fileio ${kio[$1]} qcow ${qio[$1]} ferry ${fio_[$1]}"
done

# The copy's rate with nothing else running, for the "x idle" column.
ensure_migrating
d0=$(status_field bytes_done); sleep 2; d1=$(status_field bytes_done)
copy_idle=$(python3 -c "print(round((${d1:-0} - ${d0:-0}) / 2 / 1048576))")
log "copy rate with no foreground load: $copy_idle MiB/s"

out=$S/bench.txt
{
  echo "LIO in a TCG guest, tmpfs files of $size_mib MiB, fio libaio direct, $secs s per run"
  echo "copy rate with no foreground load: $copy_idle MiB/s"
  printf '%-18s %8s %8s %8s %9s %12s %10s %9s %14s\n' workload fileio qcow ferry ferry-mig \
    ferry/fileio ferry/qcow mig/idle "copy MiB/s"
} >"$out"
for spec in "${workloads[@]}"; do
  set -- $spec
  k=${kio[$1]} q=${qio[$1]} f=${fio_[$1]}
  ensure_migrating
  d0=$(status_field bytes_done)
  m=$(fio_iops "${dev[1]}" "$2" "$3" "$4")
  d1=$(status_field bytes_done)
  note=
  [ "$(status_field state)" = copying ] || note=" (copy finished during the run)"
  copy=$(python3 -c "print(round(max(${d1:-0} - ${d0:-0}, 0) / $secs / 1048576))")
  printf '%-18s %8s %8s %8s %9s %12s %10s %9s %14s%s\n' "$1" "$k" "$q" "$f" "$m" \
    "$(ratio "$f" "$k")" "$(ratio "$f" "$q")" "$(ratio "$m" "$f")" \
    "$copy ($(ratio "$copy" "$copy_idle"))" "$note" >>"$out"
  log "$1 migrating: $m"
done
echo "(IOPS; migrations started: $gen)" >>"$out"
cat "$out" >>"$S/guest.log"
must iscsiadm -m node -T "$IQN" -p 127.0.0.1:3260 --logout
collect
echo ok >"$S/result"
