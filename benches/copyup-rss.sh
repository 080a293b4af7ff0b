#!/usr/bin/env bash
# Memory of copy-ups with large regions: tgtd's peak RSS while a served
# LUN migrating with 1 GiB regions takes 4 KiB random writes at queue
# depth 32 (issue 13: a copy-up used to read and write its whole region
# in one buffer, so 32 concurrent copy-ups of 1 GiB regions needed
# 32 GiB; now each moves its region in 1 MiB chunks).
#
#   benches/copyup-rss.sh [SECONDS]      (default 10; after scripts/setup.sh)
#
# Prints tgtd's peak RSS (VmHWM) before the load and after it, the growth,
# and the growth per command in flight. The first write to each region
# waits for its whole 1 GiB copy-up, so commands get a long timeout. Goal: at most 4 MiB per copy-up
# (128 MiB at QD32), whatever the region size.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/tgtd-lib.sh"
bin=${FERRY_BIN:-$here/target/release}
secs=${1:-10}
port=${BENCH_PORT:-3295}
work=$(mktemp -d /var/tmp/ferry-rss.XXXXXX)
export FERRY_RUN_DIR=$work/run
iqn=iqn.2026-11.org.ferry:rss
qd=32

cleanup() {
  local rc=$?
  [ "$rc" = 0 ] || tail -n 5 "$work/tgtd.log" >&2
  stop_tgtd 1
  rm -rf "$work"
}
trap cleanup EXIT

start_tgtd "$work/tgtd.log"
hwm() { sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$tgtd_pid/status"; }

# 8 GiB of data: 8 regions of 1 GiB, each copied up by the first write
# that lands in it, while the other writes queue behind its region lock.
dd if=/dev/urandom of="$work/src.img" bs=1M count=8192 status=none
serve_lun 1 "$iqn:lun" ferry "file:$work/src.img"
url="iscsi://127.0.0.1:$port/$iqn:lun/1"
"$bin/ferry" migrate start "file:$work/src.img" "file:$work/dst.img" --paused --region-size 1G --json >/dev/null
before=$(hwm)
"$bin/ferry-iscsi" --timeout 120 load "$url" --seconds "$secs" --qd "$qd" --read-pct 0 --random --seed 3 >"$work/load.json"
after=$(hwm)
regions=$("$bin/ferry" migrate status "file:$work/src.img" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["regions_done"])')
python3 - "$before" "$after" "$qd" "$regions" "$work/load.json" <<'PY'
import json, sys
before, after, qd, regions = map(int, sys.argv[1:5])
load = json.load(open(sys.argv[5]))
assert load["errors"] == 0, load
grow = (after - before) / 1024
print(f"tgtd peak RSS: {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after "
      f"{load['iops']:.0f} IOPS of 4 KiB random writes at QD{qd} (1 GiB regions, {regions} of 8 copied up)")
print(f"growth {grow:.0f} MiB = {grow / qd:.2f} MiB per command in flight (goal <= 4 MiB)")
PY
