# Sourced by the demo and the benchmarks: a private tgtd on 127.0.0.1:$port
# (management channel $port too) loading the freshly built bs_ferry.so from
# $bin. Call start_tgtd LOG once, serve_lun per target; stop_tgtd [TID...]
# from the EXIT trap.

# tgtd loads every file in its backing-store directory: install under a
# dot name, then rename, so a running tgtd keeps its mapped copy.
install_plugin() {
  install -m 0755 "$bin/libbs_ferry.so" /usr/lib/tgt/backing-store/.bs_ferry.tmp
  mv /usr/lib/tgt/backing-store/.bs_ferry.tmp /usr/lib/tgt/backing-store/bs_ferry.so
}

start_tgtd() { # LOG; sets tgtd_pid
  install_plugin
  tgtd -f --iscsi portal=127.0.0.1:$port -C "$port" >"$1" 2>&1 &
  tgtd_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
}

# tgtd ignores SIGTERM and refuses to stop while a target exists: delete
# the targets, ask it to stop, then make sure.
stop_tgtd() { # TID...
  local tid
  for tid in "$@"; do
    tgtadm -C "$port" --op delete --mode target --tid "$tid" --force >/dev/null 2>&1 || true
  done
  tgtadm -C "$port" --op delete --mode system >/dev/null 2>&1 || true
  sleep 0.5
  if [ -n "${tgtd_pid:-}" ]; then kill -9 "$tgtd_pid" 2>/dev/null; wait "$tgtd_pid" 2>/dev/null; fi || true
}

# Target TID named TARGET serving BSTYPE on PATH as LUN 1, open to every
# initiator; target parameters to set as NAME=VALUE.
serve_lun() { # TID TARGET BSTYPE PATH [NAME=VALUE...]
  local tid=$1 target=$2 bstype=$3 path=$4 kv
  shift 4
  tgtadm -C "$port" --lld iscsi --op new --mode target --tid "$tid" -T "$target"
  for kv in "$@"; do
    tgtadm -C "$port" --lld iscsi --op update --mode target --tid "$tid" --name "${kv%%=*}" --value "${kv#*=}"
  done
  tgtadm -C "$port" --lld iscsi --op new --mode logicalunit --tid "$tid" --lun 1 --bstype "$bstype" --backing-store "$path"
  tgtadm -C "$port" --lld iscsi --op bind --mode target --tid "$tid" -I ALL
}
