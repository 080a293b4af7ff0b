#!/usr/bin/env bash
# What enforcing a persistent reservation costs, against tgt's own rdwr
# backing store (whose reservations tgtd enforces in its core), in one run
# on one tgtd.
#
#   benches/pr.sh [SECONDS-PER-RUN]          (default 5; after scripts/setup.sh)
#
# Each store's LUN is measured with no reservation, then with a Write
# Exclusive reservation held by another host: the benchmark's reads are
# allowed, but every command is checked against the reservation first.
# (Reads only: tgtd ties its registrations to a session, so a registered
# writer cannot be set up for rdwr from another session; ferry's check
# costs the same for every opcode.) Prints IOPS and the ratios
# reserved/free per store (goal >= 0.95 for ferry) and ferry/rdwr with
# the reservation.
#
# Then the rate of PR OUT commands (REGISTER AND IGNORE EXISTING KEY, a
# change every time) in one session: rdwr keeps them in tgtd's memory,
# ferry saves each durably before GOOD, beside the volume or (when
# ZooKeeper is installed) in a ZooKeeper map on loopback, as the agents
# do. Prints commands per second and the ratios to rdwr and between
# ferry's two homes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/tgtd-lib.sh"
bin=$here/target/release
secs=${1:-5}
port=${BENCH_PORT:-3292}
work=$(mktemp -d /var/tmp/ferry-prbench.XXXXXX)
export FERRY_RUN_DIR=$work/run
iqn=iqn.2026-11.org.ferry:prbench
holder=iqn.2026-11.org.ferry:holder
bench=iqn.2026-11.org.ferry:bench

cleanup() {
  stop_tgtd 1 2 3
  if [ -n "${zk_pid:-}" ]; then kill -9 "$zk_pid" 2>/dev/null; wait "$zk_pid" 2>/dev/null; fi || true
  rm -rf "$work"
}
trap cleanup EXIT

start_tgtd "$work/tgtd.log"

dd if=/dev/urandom of="$work/rdwr.img" bs=1M count=256 status=none
cp "$work/rdwr.img" "$work/ferry.img"
serve_lun 1 "$iqn:rdwr" rdwr "$work/rdwr.img"
serve_lun 2 "$iqn:ferry" ferry "file:$work/ferry.img"

url() { echo "iscsi://127.0.0.1:$port/$iqn:$1/1"; }
pr() { # store initiator isid args... (status must be GOOD)
  local store=$1 who=$2 isid=$3; shift 3
  "$bin/ferry-iscsi" --initiator "$who" --isid "$isid" pr-out "$(url "$store")" "$@" >/dev/null
}
measure() { # store qd readpct -> iops
  "$bin/ferry-iscsi" --initiator "$bench" --isid 2 load "$(url "$1")" --seconds "$secs" \
    --qd "$2" --block-size 4096 --read-pct "$3" --random --seed 3 |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["iops"]))'
}
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }

declare -A free reserved
workloads="4K-randread-qd32:32:100 4K-randread-qd1:1:100"
# tgtd ties registrations to the session that made them, so each step
# registers (ignoring any key) in its own session first.
free_it() { pr "$1" "$holder" 1 register-and-ignore clear --key a1 --sa-key a1; }
reserve_it() { pr "$1" "$holder" 1 register-and-ignore reserve --type 1 --key a1 --sa-key a1; }
for w in $workloads; do
  IFS=: read -r name qd pct <<<"$w"
  for store in rdwr ferry; do
    # Free, then reserved, twice each, alternating; the best of each.
    f=0; r=0
    for _ in 1 2; do
      free_it "$store"
      v=$(measure "$store" "$qd" "$pct"); [ "$v" -gt "$f" ] && f=$v
      reserve_it "$store"
      v=$(measure "$store" "$qd" "$pct"); [ "$v" -gt "$r" ] && r=$v
    done
    free[$name.$store]=$f; reserved[$name.$store]=$r
  done
done
printf '%-20s %10s %10s %10s %10s %12s %12s %14s\n' workload rdwr rdwr-resv ferry ferry-resv rdwr-r/free ferry-r/free ferry/rdwr-resv
for w in $workloads; do
  name=${w%%:*}
  rf=${free[$name.rdwr]}; rr=${reserved[$name.rdwr]}; ff=${free[$name.ferry]}; fr=${reserved[$name.ferry]}
  printf '%-20s %10s %10s %10s %10s %12s %12s %14s\n' "$name" "$rf" "$rr" "$ff" "$fr" \
    "$(ratio "$rr" "$rf")" "$(ratio "$fr" "$ff")" "$(ratio "$fr" "$rr")"
done
echo "(IOPS; $secs s per run; reservation: Write Exclusive held by another host)"

# PR OUT rate.
count=${PR_OUT_COUNT:-300}
homes="rdwr ferry"
zk_jar=/usr/share/java/zookeeper.jar
if [ -f "$zk_jar" ] && command -v java >/dev/null; then
  zk_port=$((port + 7))
  mkdir -p "$work/zk/data"
  printf 'tickTime=250\ndataDir=%s\nclientPort=%s\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=ruok\n' \
    "$work/zk/data" "$zk_port" >"$work/zk/zoo.cfg"
  java -Xmx256m -cp "/etc/zookeeper/conf:$zk_jar" org.apache.zookeeper.server.ZooKeeperServerMain \
    "$work/zk/zoo.cfg" >"$work/zk/log" 2>&1 &
  zk_pid=$!
  for _ in $(seq 300); do
    [ "$( (exec 3<>/dev/tcp/127.0.0.1/$zk_port && echo ruok >&3 && head -c 4 <&3) 2>/dev/null)" = imok ] && break
    sleep 0.1
  done
  cp "$work/rdwr.img" "$work/ferry-zk.img"
  "$bin/ferry" pr move "file:$work/ferry-zk.img" --to-map "zk://127.0.0.1:$zk_port/ferry" --lun bench >/dev/null
  serve_lun 3 "$iqn:ferry-zk" ferry "file:$work/ferry-zk.img"
  homes="$homes ferry-zk"
fi
declare -A rate
actions=$(printf 'register-and-ignore %.0s' $(seq "$count"))
for home in $homes; do
  best=0
  for _ in 1 2 3; do
    t0=$(date +%s%N)
    # shellcheck disable=SC2086 # one word per action
    "$bin/ferry-iscsi" --initiator "$holder" --isid 1 pr-out "$(url "$home")" $actions --key a1 --sa-key a1 >/dev/null
    t1=$(date +%s%N)
    v=$(python3 -c "print(round($count / (($t1 - $t0) / 1e9)))")
    [ "$v" -gt "$best" ] && best=$v
  done
  rate[$home]=$best
done
echo
printf '%-22s' "PR OUT per second:"
for home in $homes; do printf ' %s %s' "$home" "${rate[$home]}"; done
echo
printf '%-22s ferry/rdwr %s' "ratios:" "$(ratio "${rate[ferry]}" "${rate[rdwr]}")"
if [ -n "${rate[ferry-zk]:-}" ]; then
  printf '  ferry-zk/ferry %s' "$(ratio "${rate[ferry-zk]}" "${rate[ferry]}")"
fi
echo
echo "($count commands in one session, best of 3; each saved before GOOD on ferry, in memory on rdwr)"
