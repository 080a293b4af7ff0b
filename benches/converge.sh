#!/usr/bin/env bash
# How fast the cluster LUN map reaches the targets: node agents on a real
# ZooKeeper, each driving its own tgtd on loopback, measured from a
# committed map change to the serving node's report that its tgtd
# reflects it, and from a node's death to its LUN served elsewhere.
#
#   benches/converge.sh [CHANGES] [NODES]   (defaults 20 and 3; after scripts/setup.sh)
#
# Prints median, p90 and max in ms, as ratios to the goals: convergence
# <= 1 s, failover <= session timeout + 5 s.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ferry=$here/target/release/ferry
changes=${1:-20}
nodes=${2:-3}
session=5
work=$(mktemp -d /var/tmp/ferry-converge.XXXXXX)
jar=/usr/share/java/zookeeper.jar
target=iqn.2026-11.org.ferry:bench
pids=()

cleanup() {
  exec 2>/dev/null # no "Killed" notices for our own children
  for p in "${pids[@]}"; do kill -9 "$p" || true; done
  wait || true
  for i in $(seq 1 "$nodes"); do
    ctl=$((13100 + i))
    tgtadm -C "$ctl" --op show --mode target 2>/dev/null | sed -n 's/^Target \([0-9]*\):.*/\1/p' |
      while read -r t; do tgtadm -C "$ctl" --op delete --mode target --tid "$t" --force >/dev/null 2>&1; done
    tgtadm -C "$ctl" --op delete --mode system >/dev/null 2>&1 || true
  done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { # a port nothing listens on, from the ephemeral range
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }
  done
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

install -m 0755 "$here/target/release/libbs_ferry.so" /usr/lib/tgt/backing-store/.bs_ferry.tmp
mv /usr/lib/tgt/backing-store/.bs_ferry.tmp /usr/lib/tgt/backing-store/bs_ferry.so

zk_port=$(free_port)
mkdir -p "$work/zk"
printf 'tickTime=250\ndataDir=%s\nclientPort=%s\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\nminSessionTimeout=500\n4lw.commands.whitelist=ruok\n' \
  "$work/zk" "$zk_port" >"$work/zoo.cfg"
java -Xmx256m -cp "/etc/zookeeper/conf:$jar" org.apache.zookeeper.server.ZooKeeperServerMain "$work/zoo.cfg" \
  >"$work/zk.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
  [ "$( (exec 3<>/dev/tcp/127.0.0.1/$zk_port && printf ruok >&3 && cat <&3) 2>/dev/null)" = imok ] && break
  sleep 0.1
done
export FERRY_MAP=zk://127.0.0.1:$zk_port/ferry

declare -A node_pid tgtd_pid
for i in $(seq 1 "$nodes"); do
  port=$(free_port)
  ctl=$((13100 + i))
  mkdir -p "$work/run$i"
  FERRY_RUN_DIR=$work/run$i tgtd -f --iscsi portal=127.0.0.1:$port -C "$ctl" >"$work/tgtd$i.log" 2>&1 &
  tgtd_pid[$i]=$!
  pids+=($!)
  "$ferry" map node add "n$i" --portal "127.0.0.1:$port" >/dev/null
done
sleep 0.5
for i in $(seq 1 "$nodes"); do
  "$ferry" agent --node "n$i" --tgtd-control $((13100 + i)) --run-dir "$work/run$i" \
    --session-timeout ${session}s --metrics off >"$work/agent$i.log" 2>&1 &
  node_pid[$i]=$!
  pids+=($!)
done
"$ferry" map target add "$target" >/dev/null

# Waits until node $1 reports map version >= $2 with LUN $3 served (or,
# with $3 empty, just the version); prints the ms it took since $4.
wait_applied() {
  local node=$1 version=$2 lun=$3 since=$4 line v
  for _ in $(seq 2000); do
    line=$("$ferry" map show | grep "^node $node ") || true
    v=$(echo "$line" | sed -n 's/.* applied v\(-\?[0-9]*\) .*/\1/p')
    if [ -n "$v" ] && [ "$v" -ge "$version" ] && { [ -z "$lun" ] || echo "$line" | grep -q "serving \[.*\b$lun\b"; }; then
      echo $(($(now_ms) - since))
      return
    fi
    sleep 0.01
  done
  echo "timeout: $line" >&2
  exit 1
}

times=()
for k in $(seq 1 "$changes"); do
  "$ferry" volume create "file:$work/v$k.img" --size 16M >/dev/null
  t0=$(now_ms)
  "$ferry" map lun add "v$k" --target "$target" --lun "$k" --spec "file:$work/v$k.img" --nodes n1 >/dev/null
  v=$("$ferry" map show | awk 'NR == 1 {print $NF}')
  times+=("$(wait_applied n1 "$v" "v$k" "$t0")")
done

# Failover: node 1 dies (agent and tgtd); its LUNs may move to node 2.
"$ferry" map lun set v1 --nodes n1,n2 >/dev/null
v=$("$ferry" map show | awk 'NR == 1 {print $NF}')
wait_applied n1 "$v" v1 "$(now_ms)" >/dev/null
t0=$(now_ms)
kill -9 "${node_pid[1]}" "${tgtd_pid[1]}"
{ wait "${node_pid[1]}" "${tgtd_pid[1]}" || true; } 2>/dev/null
failover=$(wait_applied n2 0 v1 "$t0")

stats() { # median p90 max of the arguments
  printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)], a[int(NR*0.9+0.5)], a[NR]}'
}
read -r med p90 max < <(stats "${times[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
echo "convergence over $changes changes ($nodes nodes): median ${med} ms, p90 ${p90} ms, max ${max} ms"
echo "  median/goal(1 s) $(ratio "$med" 1000), max/goal $(ratio "$max" 1000)"
echo "failover after SIGKILL of the serving node: ${failover} ms (session timeout ${session} s)"
echo "  failover/session-timeout $(ratio "$failover" $((session * 1000))), failover/goal(session + 5 s) $(ratio "$failover" $(((session + 5) * 1000)))"
