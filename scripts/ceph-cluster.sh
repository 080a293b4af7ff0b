#!/usr/bin/env bash
# A throwaway single-node Ceph 16.2 cluster on 127.0.0.1, for ferry's RBD
# backend and its tests.
#
#   scripts/ceph-cluster.sh start  DIR   # create (first time) or restart (recreate if it cannot); prints CEPH_CONF=DIR/ceph.conf
#   scripts/ceph-cluster.sh stop   DIR   # stops the daemons this script started (pids in DIR/run)
#   scripts/ceph-cluster.sh status DIR   # daemons and `ceph -s`
#   scripts/ceph-cluster.sh running DIR  # exits 0 if every daemon in DIR runs, else 1 (quiet)
#   scripts/ceph-cluster.sh env    DIR   # prints `export CEPH_CONF=DIR/ceph.conf` (eval it)
#
# One mon, one mgr and one bluestore OSD on a sparse 12 GiB file, started by
# hand (no systemd, containers or cephadm) with a private ceph.conf in DIR;
# data, logs, pid files and admin sockets all live under DIR. Auth is off
# and pools have one replica: it is a test fixture, never a place for data.
# `start` creates the pools ferry-a and ferry-b (32 PGs each, autoscaler
# off, `rbd pool init`) and waits, bounded, until every PG is active+clean.
#
# Ports: the mon listens on CEPH_PORT (msgr2) and CEPH_PORT+1 (msgr1),
# default 6790; the OSD and mgr bind in CEPH_PORT+10 .. CEPH_PORT+99. A
# second cluster in another DIR with CEPH_PORT=6890 (say) runs beside the
# first. The port is remembered in DIR/port, so later commands need only DIR.
#
# Why the details: without a mgr, mgr commands (`ceph pg stat`) hang forever
# even with --connect-timeout, so the mgr always runs and every `ceph` call
# is wrapped in `timeout`. The ceph packages are installed if missing.
#
# Environment: CEPH_PORT (base port, first start only), CEPH_START_TIMEOUT
# (seconds to wait for active+clean, default 180), CEPH_OSD_SIZE (bytes of
# the OSD's block file, default 12 GiB).
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|status|running|env DIR" >&2
  exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
DIR=$(realpath -m -- "$2")
CONF=$DIR/ceph.conf
POOLS=(ferry-a ferry-b)
PG_NUM=32

say() { echo "ceph-cluster: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# ----- packages ---------------------------------------------------------

ensure_packages() {
  local packages=(ceph ceph-mon ceph-osd ceph-mgr librbd-dev librados-dev uuid-runtime)
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]} (run as root to install them)"
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Update the package lists once, if they were never fetched or are stale
  # for these names.
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# ----- helpers ----------------------------------------------------------

# `ceph` against this cluster, never hanging: the mon connection has its own
# timeout, but a command routed to an absent mgr waits forever without it.
cephc() {
  timeout "${CEPH_CMD_TIMEOUT:-30}" ceph -c "$CONF" --connect-timeout 10 "$@"
}

rbdc() {
  timeout "${CEPH_CMD_TIMEOUT:-30}" rbd -c "$CONF" "$@"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pid of daemon NAME (mon.a, mgr.x, osd.0) if it runs with our conf.
daemon_pid() {
  local pidfile=$DIR/run/$1.pid pid
  [ -s "$pidfile" ] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  # A recycled pid belongs to some other process: ours name our conf.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-c $CONF " || return 1
  echo "$pid"
}

osd_id() {
  cat "$DIR/osd-id" 2>/dev/null || echo 0
}

daemons() {
  echo mon.a mgr.x "osd.$(osd_id)"
}

start_daemon() {
  local name=$1 type=${1%%.*} id=${1#*.}
  if daemon_pid "$name" >/dev/null; then
    return 0
  fi
  rm -f "$DIR/run/$name.pid"
  # The daemons fork into the background once initialised and write their
  # pid file themselves (`pid file` in ceph.conf). They keep every
  # descriptor they inherit, so all but stdin/out/err are closed first:
  # otherwise they would hold our lock (and any lock or pipe of whoever ran
  # us) for life.
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done 2>/dev/null
    exec "ceph-$type" -c "$CONF" -i "$id"
  ) </dev/null >>"$DIR/log/$name.stderr" 2>&1 ||
    die "ceph-$type -i $id failed to start (see $DIR/log/$name.log and $name.stderr)"
  local i
  for i in $(seq 1 100); do
    daemon_pid "$name" >/dev/null && return 0
    sleep 0.1
  done
  die "$name did not write its pid file (see $DIR/log/$name.log)"
}

write_conf() {
  local fsid=$1 port=$2
  cat >"$CONF.tmp" <<EOF
# Written by scripts/ceph-cluster.sh: a single-node test cluster. No auth,
# one replica per pool: never put data you care about here.
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]
public network = 127.0.0.0/8
ms bind port min = $((port + 10))
ms bind port max = $((port + 99))
auth cluster required = none
auth service required = none
auth client required = none
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = $PG_NUM
osd pool default pgp num = $PG_NUM
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
# The host's disk is shared with everything else: only complain when it is
# really full.
mon data avail warn = 2
mon data avail crit = 1
run dir = $DIR/run
crash dir = $DIR/crash

[mon]
mon data = $DIR/mon/\$name
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok

[mgr]
mgr data = $DIR/mgr/\$name
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok

[osd]
osd data = $DIR/osd/\$name
osd objectstore = bluestore
bluestore block create = true
bluestore block size = ${CEPH_OSD_SIZE:-12884901888}
# The floor of the autotuner; the default 4 GiB is far more than a test needs.
osd memory target = 939524096
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok

[client]
# Clients (tests, rbd, rados) keep no admin socket and no log file.
admin socket =
log file =
EOF
  mv "$CONF.tmp" "$CONF"
}

# Creates a cluster from nothing in DIR.
init_cluster() {
  local port=$1 fsid
  fsid=$(uuidgen)
  rm -rf "$DIR/mon" "$DIR/mgr" "$DIR/osd" "$DIR/run" "$DIR/log" "$DIR/crash" "$DIR/osd-id"
  mkdir -p "$DIR/mon/mon.a" "$DIR/mgr/mgr.x" "$DIR/osd" "$DIR/run" "$DIR/log" "$DIR/crash"
  echo "$port" >"$DIR/port"
  write_conf "$fsid" "$port"

  say "creating cluster $fsid in $DIR (mon on 127.0.0.1:$port)"
  monmaptool --create --clobber --fsid "$fsid" \
    --addv a "[v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]" "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap" >/dev/null 2>&1 ||
    die "ceph-mon --mkfs failed (see $DIR/log/mon.a.log)"
  start_daemon mon.a
  start_daemon mgr.x

  local uuid id
  uuid=$(uuidgen)
  id=$(cephc osd new "$uuid") || die "ceph osd new failed"
  echo "$id" >"$DIR/osd-id"
  mkdir -p "$DIR/osd/osd.$id"
  ceph-osd -c "$CONF" -i "$id" --mkfs --osd-uuid "$uuid" >/dev/null 2>&1 ||
    die "ceph-osd --mkfs failed (see $DIR/log/osd.$id.log)"
  start_daemon "osd.$id"
  touch "$DIR/initialized"
}

ensure_pools() {
  local detail pool line
  detail=$(cephc osd pool ls detail) || die "listing pools failed"
  for pool in "${POOLS[@]}"; do
    line=$(grep -F "'$pool' " <<<"$detail" || true)
    if [ -z "$line" ]; then
      cephc osd pool create "$pool" "$PG_NUM" "$PG_NUM" replicated >/dev/null 2>&1 ||
        die "creating pool $pool failed"
    fi
    # Tags the pool for rbd and creates its directory objects; skipped
    # when done before (it costs most of an "already running" start).
    if ! grep -q 'application rbd' <<<"$line"; then
      rbdc pool init "$pool" || die "rbd pool init $pool failed"
    fi
  done
}

# Waits until every PG is active+clean, then (shorter) for HEALTH_OK.
wait_clean() {
  local limit=${CEPH_START_TIMEOUT:-180} start=$SECONDS stat="" health=""
  while :; do
    stat=$(CEPH_CMD_TIMEOUT=10 cephc pg stat 2>/dev/null || true)
    if [[ $stat =~ ^([0-9]+)\ pgs:\ ([0-9]+)\ active\+clean\; ]] &&
      [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ]; then
      break
    fi
    if ((SECONDS - start >= limit)); then
      say "placement groups not active+clean after ${limit}s: ${stat:-no answer from the mgr}"
      cephc -s >&2 || true
      die "cluster in $DIR did not become healthy (logs in $DIR/log)"
    fi
    sleep 1
  done
  local settle=$((SECONDS + 30))
  while :; do
    health=$(CEPH_CMD_TIMEOUT=10 cephc health 2>/dev/null || true)
    case $health in
      HEALTH_OK*) return 0 ;;
    esac
    if ((SECONDS >= settle)); then
      case $health in
        HEALTH_ERR*) cephc health detail >&2 || true; die "cluster in $DIR reports $health" ;;
      esac
      # Every PG is active+clean, so I/O works; a lingering warning is
      # reported, not fatal.
      say "warning: every PG is active+clean but health is: $health"
      cephc health detail >&2 || true
      return 0
    fi
    sleep 1
  done
}

# ----- commands ---------------------------------------------------------

# Serialises start and stop on one DIR (tests start the shared cluster from
# several processes at once).
lock() {
  exec 9>"$DIR/.lock"
  flock -w "${CEPH_LOCK_TIMEOUT:-600}" 9 || die "$DIR/.lock is held by another process"
}

cmd_start() {
  ensure_packages
  mkdir -p "$DIR"
  lock
  local began=$SECONDS all_running=1 name
  if [ -f "$DIR/initialized" ] && [ -f "$CONF" ]; then
    for name in $(daemons); do
      daemon_pid "$name" >/dev/null || all_running=0
    done
    if ((all_running)); then
      say "already running in $DIR"
    else
      say "restarting the daemons in $DIR"
      # A cluster killed mid-write (a machine reset under the test run)
      # can leave a store that no longer opens. Its data is a fixture's:
      # start over rather than fail every RBD test.
      if ! (for name in $(daemons); do start_daemon "$name"; done); then
        say "the daemons in $DIR do not come back: recreating the cluster"
        local port
        port=$(cat "$DIR/port" 2>/dev/null || echo "${CEPH_PORT:-6790}")
        cmd_stop_locked >/dev/null 2>&1 || true
        find "$DIR" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
        init_cluster "$port"
      fi
    fi
  else
    local port=${CEPH_PORT:-6790}
    [[ $port =~ ^[0-9]+$ ]] && ((port > 0 && port < 65436)) || die "bad CEPH_PORT $port"
    # Leftovers of a failed first start: stop what we started, start over.
    cmd_stop_locked >/dev/null 2>&1 || true
    if port_in_use "$port" || port_in_use $((port + 1)); then
      die "port $port or $((port + 1)) on 127.0.0.1 is in use (another cluster? set CEPH_PORT)"
    fi
    init_cluster "$port"
  fi
  ensure_pools
  wait_clean
  say "ready in $((SECONDS - began))s"
  echo "CEPH_CONF=$CONF"
}

cmd_stop_locked() {
  local name pid i
  [ -d "$DIR/run" ] || {
    say "nothing to stop in $DIR"
    return 0
  }
  # One at a time, OSD first and mon last: the OSD tells the mon it is going
  # down (with the mon gone it waits 5 s for an answer).
  for name in "osd.$(osd_id)" mgr.x mon.a; do
    pid=$(daemon_pid "$name") || continue
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name (pid $pid) ignored SIGTERM for 15s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/run/$name.pid"
  done
}

cmd_stop() {
  [ -d "$DIR" ] || {
    say "no cluster in $DIR"
    return 0
  }
  lock
  cmd_stop_locked
}

cmd_status() {
  [ -f "$CONF" ] || die "no cluster in $DIR"
  local name pid down=0
  for name in $(daemons); do
    if pid=$(daemon_pid "$name"); then
      echo "$name: running (pid $pid)"
    else
      echo "$name: stopped"
      down=1
    fi
  done
  echo "port: $(cat "$DIR/port" 2>/dev/null || echo unknown)"
  if ((down)); then
    return 1
  fi
  CEPH_CMD_TIMEOUT=15 cephc -s || return 1
}

cmd_running() {
  [ -f "$DIR/initialized" ] && [ -f "$CONF" ] || return 1
  local name
  for name in $(daemons); do
    daemon_pid "$name" >/dev/null || return 1
  done
}

cmd_env() {
  [ -f "$CONF" ] || die "no cluster in $DIR"
  echo "export CEPH_CONF=$CONF"
}

case $cmd in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  running) cmd_running ;;
  env) cmd_env ;;
  *) usage ;;
esac
