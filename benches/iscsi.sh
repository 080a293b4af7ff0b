#!/usr/bin/env bash
# iSCSI speed of a ferry LUN against tgt's own rdwr backing store, in one
# run on one tgtd, idle and while the ferry LUN is being migrated.
#
#   benches/iscsi.sh [SECONDS-PER-RUN]      (default 5; after scripts/setup.sh)
#   BENCH_SIZE_MIB=4096 benches/iscsi.sh    (LUN size, default 1024: a copy
#                                            must outlast a run for its rate
#                                            during the run to be measured)
#
# Workloads (ferry-iscsi, libiscsi async): 4 KiB random read and write at
# queue depth 1 and 32, 1 MiB sequential read and write at QD 8. Prints
# IOPS and the ratios ferry/rdwr (goal >= 1.0) and ferry-migrating /
# ferry-idle (goal >= 0.8 at the default copier settings: unlimited rate,
# paced by the 20 % impact budget), and how fast the copy advanced during
# each migrating run against its rate with no foreground load (goal >=
# 0.5x). The migrating runs keep a migration in progress: before each run
# a finished one is committed and another started.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/tgtd-lib.sh"
bin=$here/target/release
secs=${1:-5}
port=${BENCH_PORT:-3291}
work=$(mktemp -d /var/tmp/ferry-bench.XXXXXX)
export FERRY_RUN_DIR=$work/run
iqn=iqn.2026-11.org.ferry:bench
size_mib=${BENCH_SIZE_MIB:-1024}

cleanup() {
  stop_tgtd 1 2
  rm -rf "$work"
}
trap cleanup EXIT

start_tgtd "$work/tgtd.log"

# Equal files, fully written, for both stores.
dd if=/dev/urandom of="$work/rdwr.img" bs=1M count="$size_mib" status=none
cp "$work/rdwr.img" "$work/ferry.img"
serve_lun 1 "$iqn:rdwr" rdwr "$work/rdwr.img" MaxRecvDataSegmentLength=262144
serve_lun 2 "$iqn:ferry" ferry "file:$work/ferry.img" MaxRecvDataSegmentLength=262144

gen=0
ensure_migrating() {
  local state
  state=$("$bin/ferry" migrate status "file:$work/ferry.img" --json 2>/dev/null | sed -n 's/.*"state": "\(.*\)".*/\1/p' || true)
  [ "$state" = copying ] && return
  [ "$state" = copied ] && "$bin/ferry" migrate commit "file:$work/ferry.img" --json >/dev/null
  gen=$((gen + 1))
  rm -f "$work/mig-$((gen - 2)).img"
  "$bin/ferry" migrate start "file:$work/ferry.img" "file:$work/mig-$gen.img" --json >/dev/null
}
ensure_idle() {
  local state
  while :; do
    state=$(state_now)
    case "$state" in
      copying) sleep 0.2 ;;
      copied) "$bin/ferry" migrate commit "file:$work/ferry.img" --json >/dev/null ;;
      *) return ;;
    esac
  done
}
done_now() { # bytes the current migration has copied (0: none)
  "$bin/ferry" migrate status "file:$work/ferry.img" --json 2>/dev/null |
    python3 -c 'import json,sys
try: print(json.load(sys.stdin)["bytes_done"])
except Exception: print(0)'
}
mib_per_s() { python3 -c "print(f'{($2 - $1) / $3 / 1048576:.0f}')"; }

state_now() {
  "$bin/ferry" migrate status "file:$work/ferry.img" --json 2>/dev/null | sed -n 's/.*"state": "\(.*\)".*/\1/p' || true
}

measure() { # url qd bs readpct random -> iops
  local args=(load "$1" --seconds "$secs" --qd "$2" --block-size "$3" --read-pct "$4" --seed 3)
  [ "$5" = random ] && args+=(--random)
  "$bin/ferry-iscsi" "${args[@]}" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["iops"]))'
}

# The copy's own rate with no foreground load: what "x idle" compares to.
ensure_idle
ensure_migrating
sleep 1 # past the start
d0=$(done_now); sleep 2; d1=$(done_now)
copy_idle=$(mib_per_s "$d0" "$d1" 2)
# A copy that ended inside the window (or before it: 0 MiB/s) gives no
# rate to compare with; "x idle" is then left out, not divided by zero.
idle_note=$([ "$(state_now)" = copying ] ||
  echo " (the copy finished within the window: a lower bound; BENCH_SIZE_MIB makes it longer)")
echo "copy rate with no foreground load: $copy_idle MiB/s$idle_note"
printf '%-22s %10s %10s %10s %12s %14s %18s\n' workload rdwr ferry ferry-mig ferry/rdwr mig/idle "copy MiB/s (x idle)"
for spec in "4K-randread-qd1 1 4096 100 random" "4K-randread-qd32 32 4096 100 random" \
            "4K-randwrite-qd1 1 4096 0 random" "4K-randwrite-qd32 32 4096 0 random" \
            "1M-seqread-qd8 8 1048576 100 seq" "1M-seqwrite-qd8 8 1048576 0 seq"; do
  set -- $spec
  # Idle: alternate the two stores twice and keep each one's best, so
  # page-cache writeback from the previous run hits both alike.
  ensure_idle
  rd=0; fe=0
  for _ in 1 2; do
    r=$(measure "iscsi://127.0.0.1:$port/$iqn:rdwr/1" "$2" "$3" "$4" "$5"); [ "$r" -gt "$rd" ] && rd=$r
    f=$(measure "iscsi://127.0.0.1:$port/$iqn:ferry/1" "$2" "$3" "$4" "$5"); [ "$f" -gt "$fe" ] && fe=$f
  done
  ensure_migrating
  d0=$(done_now)
  mi=$(measure "iscsi://127.0.0.1:$port/$iqn:ferry/1" "$2" "$3" "$4" "$5")
  d1=$(done_now)
  copy=$(mib_per_s "$d0" "$d1" "$secs")
  note=$([ "$(state_now)" = copying ] && echo "" || echo " (copy finished during the run: a lower bound)")
  printf '%-22s %10s %10s %10s %12s %14s %18s%s\n' "$1" "$rd" "$fe" "$mi" \
    "$(python3 -c "print(f'{$fe/$rd:.2f}x')")" "$(python3 -c "print(f'{$mi/$fe:.2f}x')")" \
    "$copy ($(python3 -c "print(f'{$copy/$copy_idle:.2f}x' if $copy_idle > 0 else '-')"))" "$note"
done
echo "(IOPS; $secs s per run; migrations started during the migrating runs: $gen)"
