#!/usr/bin/env bash
# What QoS costs a LUN running under its limits: one ferry LUN on a
# private tgtd, each workload run alternately with no limits and with
# limits set well above what the LUN reaches (read and write IOPS and
# bytes per second at 100x its unlimited rate, so every command passes
# through the token buckets and none waits). Prints IOPS and p50/p99
# latency of both and the ratio limited/unlimited (goal: >= 0.97 IOPS,
# p50 within a few µs). Then the enforced rate at a limit of a quarter of
# that unlimited rate (goal: ratio to the limit within 0.9-1.1).
#
#   benches/qos.sh [SECONDS-PER-RUN]      (default 5; after scripts/setup.sh)
#
# FERRY_BIN: directory holding ferry, ferry-iscsi and libbs_ferry.so
# (default target/release).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/tgtd-lib.sh"
bin=${FERRY_BIN:-$here/target/release}
secs=${1:-5}
port=${BENCH_PORT:-3296}
work=$(mktemp -d /var/tmp/ferry-qos.XXXXXX)
export FERRY_RUN_DIR=$work/run
iqn=iqn.2026-11.org.ferry:qos
cleanup() {
  stop_tgtd 1
  rm -rf "$work"
}
trap cleanup EXIT

start_tgtd "$work/tgtd.log"
dd if=/dev/urandom of="$work/v.img" bs=1M count=256 status=none
serve_lun 1 "$iqn" ferry "file:$work/v.img" MaxRecvDataSegmentLength=262144
url="iscsi://127.0.0.1:$port/$iqn/1"
spec="file:$work/v.img"

run() { # qd bs readpct -> "iops p50 p99"
  "$bin/ferry-iscsi" load "$url" --seconds "$secs" --qd "$1" --block-size "$2" \
    --read-pct "$3" --random --seed 7 |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(round(j["iops"]), j["lat_p50_us"], j["lat_p99_us"])'
}
limits() { "$bin/ferry" volume qos "$spec" "$@" >/dev/null; }

printf '%-20s %22s %22s %12s\n' workload "unlimited iops/p50/p99" "limited iops/p50/p99" "limited/unl."
for spec_w in "4K-randread-qd1 1 4096 100" "4K-randread-qd32 32 4096 100" \
              "4K-randwrite-qd1 1 4096 0" "4K-randwrite-qd32 32 4096 0"; do
  set -- $spec_w
  best_u=(0 0 0); best_l=(0 0 0)
  for _ in 1 2; do
    limits --clear
    read -r -a u <<<"$(run "$2" "$3" "$4")"
    [ "${u[0]}" -gt "${best_u[0]}" ] && best_u=("${u[@]}")
    hi=$((best_u[0] * 100 + 1000))
    limits --read-iops "$hi" --write-iops "$hi" --read-bps $((hi * $3)) --write-bps $((hi * $3))
    read -r -a l <<<"$(run "$2" "$3" "$4")"
    [ "${l[0]}" -gt "${best_l[0]}" ] && best_l=("${l[@]}")
  done
  printf '%-20s %22s %22s %11sx\n' "$1" "${best_u[0]}/${best_u[1]}/${best_u[2]}" \
    "${best_l[0]}/${best_l[1]}/${best_l[2]}" "$(python3 -c "print(f'{${best_l[0]}/max(${best_u[0]},1):.3f}')")"
  if [ "$1" = 4K-randread-qd32 ]; then free_reads=${best_u[0]}; fi
done

# Enforcement at a quarter of the free read rate.
limit=$((free_reads / 4))
limits --clear
limits --read-iops "$limit"
read -r -a e <<<"$(run 32 4096 100)"
limits --clear
echo "read-iops=$limit at QD32: ${e[0]} IOPS ($(python3 -c "print(f'{${e[0]}/$limit:.3f}')")x the limit), p50 ${e[1]} µs"
echo "(IOPS, latency in µs; $secs s per run, best of two)"
