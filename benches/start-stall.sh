#!/usr/bin/env bash
# The longest foreground I/O stall while `ferry migrate start` runs on a
# served LUN, for a file LUN and (with CEPH_CONF set) an RBD LUN.
#
#   benches/start-stall.sh [RUNS]        (default 3; after scripts/setup.sh)
#   CEPH_CONF=/var/tmp/ferry-ci-ceph-a/ceph.conf benches/start-stall.sh
#
# A private tgtd serves each LUN through bs_ferry; ferry-iscsi runs 4 KiB
# random read/write at queue depth 1 over iSCSI and reports its longest
# command (lat_max_us). Each run serves a fresh LUN and measures that
# maximum twice, in a quiet window and in a window around `ferry migrate
# start --paused` (paused, so only the start itself is measured, not the
# copier's load). The RBD images (pools ferry-a, ferry-b) are left in the
# test cluster. Printed per LUN: the best and worst
# quiet maximum, the worst maximum around a start, and how long the start
# command took. Before the start did its slow work outside the LUN's lock,
# every command arriving during the start waited for all of it, so the
# start's duration is what the stall used to be. Goal: < 50 ms on a file
# LUN, < 200 ms on RBD.
#
# FERRY_BIN: directory holding ferry, ferry-iscsi and libbs_ferry.so
# (default target/release), e.g. a build of an older commit to compare.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/tgtd-lib.sh"
bin=${FERRY_BIN:-$here/target/release}
runs=${1:-3}
port=${BENCH_PORT:-3293}
work=$(mktemp -d /var/tmp/ferry-stall.XXXXXX)
export FERRY_RUN_DIR=$work/run
iqn=iqn.2026-11.org.ferry:stall
window=3 # seconds of I/O per measurement; the start begins 1 s in

tids=()
cleanup() {
  local rc=$?
  [ "$rc" = 0 ] || tail -n 5 "$work/tgtd.log" >&2
  stop_tgtd "${tids[@]}"
  rm -rf "$work"
}
trap cleanup EXIT

start_tgtd "$work/tgtd.log"

max_us() { python3 -c 'import json,sys; s=json.load(sys.stdin); assert s["errors"]==0, s; print(s["lat_max_us"])'; }

# bench NAME FIRST-TID MAKE-SPEC TARGET-SPEC: one fresh LUN per run (tid
# FIRST-TID + run), made by `MAKE-SPEC RUN` (prints its spec), migrated to
# `TARGET-SPEC RUN`.
bench() {
  local name=$1 tid0=$2 make=$3 target=$4 url i spec tid load t0 t1
  local quiet=() during=() took=()
  for i in $(seq "$runs"); do
    spec=$($make "$i")
    tid=$((tid0 + i))
    serve_lun "$tid" "$iqn:$name$i" ferry "$spec"
    tids+=("$tid")
    url="iscsi://127.0.0.1:$port/$iqn:$name$i/1"
    "$bin/ferry-iscsi" write-pattern "$url" --seed 1 --blocks 65536 >/dev/null
    quiet+=("$("$bin/ferry-iscsi" load "$url" --seconds "$window" --qd 1 --read-pct 50 --random --seed "$i" | max_us)")
    "$bin/ferry-iscsi" load "$url" --seconds "$window" --qd 1 --read-pct 50 --random --seed "$i" >"$work/load.json" &
    load=$!
    sleep 1
    t0=$(date +%s%N)
    "$bin/ferry" migrate start "$spec" "$($target "$i")" --paused --json >/dev/null
    t1=$(date +%s%N)
    wait "$load"
    during+=("$(max_us <"$work/load.json")")
    took+=("$(((t1 - t0) / 1000))")
  done
  python3 -c '
import sys
name, quiet, during, took = sys.argv[1], *(list(map(int, a.split())) for a in sys.argv[2:])
ms = lambda us: f"{us / 1000:.1f}"
print(f"{name:6} {ms(min(quiet)):>9} {ms(max(quiet)):>9} {ms(max(during)):>14} {ms(min(took)):>9} {ms(max(took)):>9}")
' "$name" "${quiet[*]}" "${during[*]}" "${took[*]}"
}

file_src() { truncate -s 256M "$work/src$1.img" && echo "file:$work/src$1.img"; }
file_dst() { echo "file:$work/dst$1.img"; }
img=stall$$
rbd_src() {
  "$bin/ferry" volume create "rbd:ferry-a/$img-$1?conf=$CEPH_CONF" --size 256M >/dev/null
  echo "rbd:ferry-a/$img-$1?conf=$CEPH_CONF"
}
rbd_dst() { echo "rbd:ferry-b/$img-$1?conf=$CEPH_CONF"; }

printf '%-6s %9s %9s %14s %9s %9s\n' LUN quiet-min quiet-max "during-start" start-min start-max
echo "(milliseconds: longest QD1 command in a ${window} s window; ferry migrate start duration; $runs runs)"
[ "${STALL_SKIP_FILE:-}" ] || bench file 0 file_src file_dst
if [ -n "${CEPH_CONF:-}" ]; then
  bench rbd 100 rbd_src rbd_dst
else
  echo "rbd: skipped (set CEPH_CONF to a cluster with pools ferry-a and ferry-b)"
fi
