#!/usr/bin/env bash
# FUA write latency on a served LUN mid-migration, by volume size: does a
# flush cost more on a bigger volume? (issue 13: a checkpoint used to
# rewrite every confirmed word of the index, 4,096 synchronous writes per
# FUA for 1 TiB at 4 MiB regions, 65,536 for 16 TiB.)
#
#   benches/fua.sh [SECONDS-PER-RUN]        (default 5; after scripts/setup.sh)
#   CEPH_CONF=/var/tmp/ferry-ci-ceph-a/ceph.conf benches/fua.sh
#
# A private tgtd serves sparse file volumes of 1 GiB, 1 TiB and 16 TiB
# through bs_ferry (and, with CEPH_CONF, RBD images of 1 GiB and 1 TiB in
# pools ferry-a -> ferry-b). Each is migrated with a paused copier (so
# only the initiator's writes move regions) and 64 KiB regions, and
# ferry-iscsi writes 64 KiB (one whole region) at random region-aligned
# offsets of the LUN's first GiB with FUA at queue depth 1. The data work
# is the same at every size: most writes land on a new region (16,384 of
# them in that GiB), mark it and confirm it with their FUA. What differs is only the size of the
# index the confirmation works on, so the ratios show what a flush costs
# per byte of volume. Prints IOPS and p50/p99 latency per size and the
# ratio of each size's mean latency to the smallest one's. Goal: 16 TiB
# within 1.2x of 1 GiB.
#
# FERRY_BIN: directory holding ferry, ferry-iscsi and libbs_ferry.so
# (default target/release), e.g. a build of an older commit to compare.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/tgtd-lib.sh"
bin=${FERRY_BIN:-$here/target/release}
secs=${1:-5}
port=${BENCH_PORT:-3294}
work=$(mktemp -d /var/tmp/ferry-fua.XXXXXX)
export FERRY_RUN_DIR=$work/run
iqn=iqn.2026-11.org.ferry:fua
img=fua$$

tids=()
rbd_images=()
cleanup() {
  local rc=$? i
  [ "$rc" = 0 ] || tail -n 5 "$work/tgtd.log" >&2
  stop_tgtd "${tids[@]}"
  for i in "${rbd_images[@]}"; do rbd -c "$CEPH_CONF" rm "$i" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

start_tgtd "$work/tgtd.log"

# run NAME TID SRC-SPEC DST-SPEC: serves SRC, starts a paused migration
# to DST, runs the FUA load, prints "NAME iops mean_us p50 p99".
run() {
  local name=$1 tid=$2 src=$3 dst=$4 url
  serve_lun "$tid" "$iqn:$name" ferry "$src"
  tids+=("$tid")
  url="iscsi://127.0.0.1:$port/$iqn:$name/1"
  "$bin/ferry" migrate start "$src" "$dst" --paused --region-size 64K --json >/dev/null
  # The first GiB: 2,097,152 blocks of 512 bytes.
  # A long command timeout: an older build took seconds per FUA on the
  # largest volume, which is what this measures.
  "$bin/ferry-iscsi" --timeout 300 load "$url" --seconds "$secs" --qd 1 --read-pct 0 --random --fua \
    --block-size 65536 --blocks 2097152 --seed "$tid" |
    python3 -c '
import json, sys
s = json.load(sys.stdin)
assert s["errors"] == 0, s
iops = s["iops"]
print(sys.argv[1], round(iops), round(1e6 / iops), s["lat_p50_us"], s["lat_p99_us"])
' "$name"
  # Free the volume's space before the next size.
  tgtadm -C "$port" --op delete --mode target --tid "$tid" --force >/dev/null
}

results=$work/results
: >"$results"
n=0
# ext4's largest file is 4 KiB short of 16 TiB: that is the "16T" LUN.
for size in 1G 1T 16T; do
  n=$((n + 1))
  bytes=$size
  [ "$size" = 16T ] && bytes=$(((16 << 40) - 4096))
  "$bin/ferry" volume create "file:$work/src-$size.img" --size "$bytes" >/dev/null
  run "file-$size" "$n" "file:$work/src-$size.img" "file:$work/dst-$size.img" >>"$results"
  rm -f "$work"/src-"$size".img* "$work"/dst-"$size".img*
done
if [ -n "${CEPH_CONF:-}" ]; then
  for size in 1G 1T; do
    n=$((n + 1))
    src="rbd:ferry-a/$img-$size?conf=$CEPH_CONF"
    dst="rbd:ferry-b/$img-$size?conf=$CEPH_CONF"
    rbd_images+=("ferry-a/$img-$size" "ferry-b/$img-$size")
    "$bin/ferry" volume create "$src" --size "$size" >/dev/null
    run "rbd-$size" "$n" "$src" "$dst" >>"$results"
  done
else
  echo "rbd: skipped (set CEPH_CONF to a cluster with pools ferry-a and ferry-b)"
fi

python3 - "$results" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
base = {}
print(f"{'LUN':10} {'IOPS':>7} {'mean us':>8} {'p50 us':>7} {'p99 us':>7} {'mean / smallest':>16}")
for name, iops, mean, p50, p99 in rows:
    kind = name.split("-")[0]
    base.setdefault(kind, float(mean))
    print(f"{name:10} {iops:>7} {mean:>8} {p50:>7} {p99:>7} {float(mean) / base[kind]:>15.2f}x")
print("(64 KiB random FUA writes, one region each, at QD1 over iSCSI in the first GiB, paused migration, 64 KiB regions; goal: 16T within 1.2x of 1G)")
EOF
