#!/usr/bin/env bash
# Memory of many LUNs in one tgtd: its RSS with 64 ferry LUNs, idle, then
# each read and written once over iSCSI, then with every one of them
# migrating (issue 15's goal: at most 256 MiB for 64 LUNs), against tgtd
# with no LUN and with 64 LUNs of tgt's own rdwr store.
#
#   benches/luns-rss.sh [LUNS]      (default 64; after scripts/setup.sh)
#
# Each LUN is a sparse 1 GiB file with 64 MiB written, so a migration
# has data to copy. The copiers start paused (what a migrating LUN holds
# at rest), then all run at once to the end of their copies (the peak,
# tgtd's VmHWM).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/tgtd-lib.sh"
bin=${FERRY_BIN:-$here/target/release}
luns=${1:-64}
port=${BENCH_PORT:-3297}
work=$(mktemp -d /var/tmp/ferry-luns.XXXXXX)
export FERRY_RUN_DIR=$work/run
iqn=iqn.2026-12.org.ferry:luns

cleanup() {
  local rc=$?
  [ "$rc" = 0 ] || tail -n 5 "$work/tgtd.log" >&2
  stop_tgtd $(seq 1 $((2 * luns)))
  rm -rf "$work"
}
trap cleanup EXIT

start_tgtd "$work/tgtd.log"
rss() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$tgtd_pid/status"; }
mib() { python3 -c "print(f'{$1 / 1024:.1f}')"; }

empty=$(rss)
for i in $(seq 1 "$luns"); do
  truncate -s 1G "$work/ferry-$i.img"
  dd if=/dev/urandom of="$work/ferry-$i.img" bs=1M count=64 conv=notrunc status=none
  serve_lun "$i" "$iqn:ferry-$i" ferry "file:$work/ferry-$i.img"
done
open=$(rss)
for i in $(seq 1 "$luns"); do
  url="iscsi://127.0.0.1:$port/$iqn:ferry-$i/1"
  "$bin/ferry-iscsi" load "$url" --seconds 0.2 --qd 4 --block-size 4096 --read-pct 50 \
    --random --seed "$i" >/dev/null
done
used=$(rss)
for i in $(seq 1 "$luns"); do
  "$bin/ferry" migrate start "file:$work/ferry-$i.img" "file:$work/mig-$i.img" \
    --paused --no-wait --json >/dev/null
done
migrating=$(rss)
# Then every copier at once, to the end of its copy: the peak.
for i in $(seq 1 "$luns"); do
  "$bin/ferry" migrate resume "file:$work/ferry-$i.img" --json >/dev/null
done
for i in $(seq 1 "$luns"); do
  until "$bin/ferry" migrate status "file:$work/ferry-$i.img" --json | grep -q '"state": "copied"'; do
    sleep 0.2
  done
done
peak=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$tgtd_pid/status")
copied=$(rss)
for i in $(seq 1 "$luns"); do
  truncate -s 1G "$work/rdwr-$i.img"
  serve_lun $((luns + i)) "$iqn:rdwr-$i" rdwr "$work/rdwr-$i.img"
done
with_rdwr=$(rss)

echo "tgtd RSS (MiB), $luns LUNs"
printf '  %-40s %8s\n' "no LUN" "$(mib "$empty")"
printf '  %-40s %8s\n' "$luns ferry LUNs open" "$(mib "$open")"
printf '  %-40s %8s\n' "each read and written over iSCSI" "$(mib "$used")"
printf '  %-40s %8s\n' "every one migrating (copier paused)" "$(mib "$migrating")"
printf '  %-40s %8s\n' "peak while all $luns copiers ran" "$(mib "$peak")"
printf '  %-40s %8s\n' "every copy done" "$(mib "$copied")"
printf '  %-40s %8s\n' "plus $luns rdwr LUNs" "$(mib "$with_rdwr")"
python3 - "$empty" "$migrating" "$with_rdwr" "$luns" "$peak" "$copied" <<'EOF'
import sys
empty, migrating, with_rdwr, luns, peak, copied = (int(x) for x in sys.argv[1:])
per_ferry = (migrating - empty) / luns
per_rdwr = (with_rdwr - copied) / luns
print(f"per ferry LUN, migrating: {per_ferry / 1024:.2f} MiB; per rdwr LUN: {per_rdwr / 1024:.2f} MiB")
print(f"{luns} migrating ferry LUNs: {migrating / 1024:.0f} MiB idle, {peak / 1024:.0f} MiB at the "
      f"peak of {luns} copies at once; goal 256 MiB ({peak / (256 * 1024):.2f}x at the peak)")
EOF
