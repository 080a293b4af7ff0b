#!/usr/bin/env bash
# Ceph RBD: ferry over iSCSI against librbd itself (fio's rbd engine), tgt's
# own RBD backing store (bs_rbd), and Ceph's own live migration, in one run
# on a private loopback cluster. Prints IOPS, copy rates and times, and
# ratios.
#
#   benches/rbd.sh                        (as root, after scripts/setup.sh)
#   BENCH_SIZE_MIB=512 BENCH_SECS=3 benches/rbd.sh     (a quicker run)
#
# Environment:
#   BENCH_SECS           seconds per I/O run (default 5)
#   BENCH_SIZE_MIB       image size of parts 1 and 3 (default 1024)
#   BENCH_MIG_SIZE_MIB   image size of part 2 (default 2 x BENCH_SIZE_MIB:
#                        a copy should outlast a run for the rate during
#                        the run to be measured)
#   BENCH_PORT           tgtd's port (default 3296)
#   BENCH_CEPH_DIR       the cluster's directory (default /var/tmp/ferry-bench-ceph)
#   BENCH_CEPH_PORT      its mon port (default 6990, apart from the test
#                        clusters' 6790 and 6890)
#   BENCH_KEEP_CEPH=1    leave the cluster running at exit (emptied); the
#                        next run reuses it. Otherwise it is stopped and its
#                        directory removed (its OSD file ends up holding
#                        12 GiB of disk); a new one starts in about 15 s
#   FERRY_BIN            directory holding ferry, ferry-iscsi and
#                        libbs_ferry.so built with RBD (default target/release)
#   BENCH_PARTS          which parts to run (default 123; e.g. 3 for the
#                        unserved copy alone)
#
# The cluster is scripts/ceph-cluster.sh's (one mon, mgr and OSD on a
# 12 GiB file, pools ferry-a and ferry-b); fio and tgt-rbd are installed if
# missing. Every client (fio, bs_rbd, ferry, rbd) uses one ceph.conf with
# `rbd cache = false` in [client]: ferry always opens images with librbd's
# cache off, and the others get the same durability (an acknowledged write
# is on the OSD). Every image is fully written before it is used. What a
# part creates is deleted (images, migration leftovers, trash) before the
# next, since the OSD holds only 12 GiB.
#
# 1. Serving. The same workloads on three equal images in ferry-a:
#      fio-rbd  fio 3.33's rbd engine: librbd directly, no iSCSI. The limit.
#      bs_rbd   tgt's RBD backing store over iSCSI (Debian's tgt-rbd,
#               `--bstype rbd --bsopts conf=...;id=admin`)
#      ferry    bs_ferry over iSCSI, spec rbd:ferry-a/IMAGE?conf=...
#    Both iSCSI LUNs are served by one private tgtd and driven by the
#    project's initiator (ferry-iscsi load, libiscsi async). Workloads:
#    4 KiB random read and write at queue depth 1 and 32, 1 MiB sequential
#    read and write at QD 8. Each is run twice, the three alternating, and
#    the best of each kept. Goals: ferry/bs_rbd >= 1.3 and
#    ferry/fio-rbd >= 0.9 on every 4K row.
#
# 2. Foreground I/O during a migration (4 KiB random read and write, QD 1
#    and 32), each on a fresh, fully written image moving from ferry-a to
#    ferry-b:
#      ferry    the served LUN migrated live with the default copier
#               settings (`ferry migrate start SRC DST`: unlimited rate,
#               paced by the 20 % impact budget); foreground over iSCSI.
#      rbd-mig  `rbd migration prepare SRC DST`, then `rbd migration
#               execute DST` in the background while fio's rbd engine runs
#               on DST (Ceph's live migration: clients use the new image
#               while it copies). Then `rbd migration commit`.
#    Per workload: IOPS with no migration (idle), IOPS during a migration,
#    and how fast the copy advanced in the same window:
#      ferry: the migration starts just before ferry-iscsi's run; the
#        window is the run; the copy's bytes are `ferry migrate status`'s
#        bytes_done at its start and end. A copy that ends before the run
#        does is flagged (the run was partly without a copy, so its IOPS
#        overstate; raise BENCH_MIG_SIZE_MIB).
#      rbd-mig: `rbd migration execute` starts just before fio, which
#        takes about a second to connect before its I/O; the window is
#        the part of fio's run during which execute copied. The IOPS are
#        the mean of fio's 100 ms IOPS log over the window, the copied
#        bytes the percentage execute printed by each end of it
#        (timestamped as printed) times the image size. rbd's copy is not
#        paced and may end before fio does: the window is then shorter
#        than the run (flagged, with its length). (Started the other way
#        round, fio's writes to the prepared image copy up most objects
#        before execute begins, and execute finds little left to do.)
#    "x idle" compares with the copy's rate with no foreground I/O, each
#    measured once at the start: ferry's image size over the time from
#    `ferry migrate start` to `copied`, rbd's over the time from `rbd
#    migration prepare` to the end of `execute`. (fio's IOPS during rbd's
#    migration are those of a client that also runs the copy: `rbd
#    migration execute` hands the work to the image's exclusive-lock
#    owner, which is fio's librbd.) Goals for ferry: during/idle IOPS
#    >= 0.8 while the copy advances at >= 0.5x its idle rate.
#
# 3. Copying an unserved, fully written image (BENCH_SIZE_MIB) from ferry-a
#    to ferry-b, wall time of the whole job (best of two):
#      ferry       `ferry migrate start SRC DST --commit` (no process
#                  serves SRC, so the command copies in the foreground)
#      rbd-mig     `rbd migration prepare` + `execute` + `commit`
#      rbd-cp      `rbd cp`
#    Goal: ferry/rbd-mig <= 1.0.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/tgtd-lib.sh"
bin=${FERRY_BIN:-$here/target/release}
secs=${BENCH_SECS:-5}
size_mib=${BENCH_SIZE_MIB:-1024}
mig_mib=${BENCH_MIG_SIZE_MIB:-$((2 * size_mib))}
port=${BENCH_PORT:-3296}
ceph_dir=${BENCH_CEPH_DIR:-/var/tmp/ferry-bench-ceph}
ceph_port=${BENCH_CEPH_PORT:-6990}
iqn=iqn.2026-11.org.ferry:rbdbench
pools=(ferry-a ferry-b)

parts=${BENCH_PARTS:-123}
want() { [[ $parts == *$1* ]]; }
say() { echo "rbd-bench: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

[[ $secs =~ ^[0-9]+$ ]] && ((secs > 0)) || die "BENCH_SECS must be a positive integer"
[[ $size_mib =~ ^[0-9]+$ ]] && ((size_mib >= 64)) || die "BENCH_SIZE_MIB must be an integer >= 64"
[[ $mig_mib =~ ^[0-9]+$ ]] && ((mig_mib >= 64)) || die "BENCH_MIG_SIZE_MIB must be an integer >= 64"
# The OSD is 12 GiB: part 1 holds three images at once, part 2 a
# migration's source and target, part 3 a copy's.
((3 * size_mib <= 7680 && 2 * mig_mib <= 7680)) ||
  die "images too big for the 12 GiB OSD (BENCH_SIZE_MIB <= 2560, BENCH_MIG_SIZE_MIB <= 3840)"
[ "$(id -u)" = 0 ] || die "run as root (tgtd, packages)"

# ----- what the run needs ----------------------------------------------

missing=()
for p in fio tgt tgt-rbd; do
  dpkg -s "$p" 2>/dev/null | grep "^Status: install ok installed" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    timeout 600 apt-get update -qq
    timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
[ -e /usr/lib/tgt/backing-store/bs_rbd.so ] || die "tgt-rbd is installed but bs_rbd.so is missing"
for f in ferry ferry-iscsi libbs_ferry.so; do
  [ -e "$bin/$f" ] || die "$bin/$f is missing: build with scripts/setup.sh (cargo build --release --workspace --all-features)"
done
for f in ferry libbs_ferry.so; do
  ldd "$bin/$f" | grep librbd >/dev/null ||
    die "$bin/$f was built without RBD: cargo build --release --workspace --all-features"
done

work=$(mktemp -d /var/tmp/ferry-bench-rbd.XXXXXX)
export FERRY_RUN_DIR=$work/run
bg=() # background processes to end at exit

cleanup() {
  local rc=$? p
  trap - EXIT
  set +e
  # `timeout` passes the signal on to the rbd command it runs.
  if [ -s "$work/exec.pid" ]; then kill "$(cat "$work/exec.pid")" 2>/dev/null || true; fi
  for p in "${bg[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${bg[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$rc" != 0 ] && [ -s "$work/tgtd.log" ]; then
    say "last lines of tgtd's log:"
    tail -n 8 "$work/tgtd.log" >&2
  fi
  stop_tgtd 1 2 3
  if [ -n "${ceph_started:-}" ]; then
    if [ "${BENCH_KEEP_CEPH:-}" = 1 ]; then
      [ -z "${conf:-}" ] || (purge_pools) || true
      say "cluster left running: CEPH_CONF=$ceph_dir/ceph.conf"
    elif timeout 120 "$here/scripts/ceph-cluster.sh" stop "$ceph_dir" >/dev/null 2>&1; then
      # The OSD's 12 GiB file ends up fully allocated: remove the cluster
      # (only a directory scripts/ceph-cluster.sh made).
      if grep -q '^# Written by scripts/ceph-cluster.sh' "$ceph_dir/ceph.conf" 2>/dev/null; then
        rm -rf "$ceph_dir"
      fi
    else
      say "stopping the cluster in $ceph_dir failed"
    fi
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM

# ----- the cluster -----------------------------------------------------

say "starting the cluster in $ceph_dir (port $ceph_port)"
ceph_started=1
CEPH_PORT=$ceph_port timeout 900 "$here/scripts/ceph-cluster.sh" start "$ceph_dir" >/dev/null ||
  die "the cluster in $ceph_dir did not start"
# Every client's conf: the cluster's, with librbd's cache off.
conf=$work/ceph.conf
sed '/^\[client\]$/a rbd cache = false' "$ceph_dir/ceph.conf" >"$conf"
grep -q '^rbd cache = false$' "$conf" || die "no [client] section in $ceph_dir/ceph.conf"

rbdc() { timeout "${RBD_TIMEOUT:-120}" rbd -c "$conf" "$@"; }
radosc() { timeout 60 rados -c "$conf" "$@"; }

# Removes an image, waiting (bounded) for a closing client's watch to go.
rm_image() { # POOL/IMAGE
  local i err
  for i in $(seq 60); do
    err=$(rbdc rm --no-progress "$1" 2>&1) && return 0
    case $err in
      *"No such file"*) return 0 ;;
    esac
    sleep 1
  done
  die "could not remove $1: $err"
}

# Empties both pools: aborts/commits migrations, removes images, purges
# the trash and ferry's index objects.
purge_pools() {
  local pool img st
  for pool in "${pools[@]}"; do
    for img in $(rbdc ls "$pool"); do
      st=$(rbdc status "$pool/$img" 2>/dev/null | sed -n 's/^[[:space:]]*state: //p' || true)
      if [ -n "$st" ]; then
        rbdc migration abort --no-progress "$pool/$img" >/dev/null 2>&1 || true
      fi
    done
  done
  for pool in "${pools[@]}"; do
    for img in $(rbdc ls "$pool"); do rm_image "$pool/$img"; done
    rbdc trash purge --no-progress "$pool" >/dev/null 2>&1 || true
    for img in $(rbdc trash ls "$pool" 2>/dev/null | awk '{print $1}'); do
      rbdc trash rm --no-progress --force "$pool/$img" >/dev/null 2>&1 || true
    done
    for img in $(radosc -p "$pool" ls | grep '^ferry_' || true); do
      radosc -p "$pool" rm "$img" || true
    done
  done
}

# A fully written image of SIZE MiB.
make_image() { # POOL/IMAGE SIZE-MIB
  rbdc create --size "$2" "$1"
  RBD_TIMEOUT=600 rbdc bench --io-type write --io-pattern seq --io-size 4M --io-threads 16 \
    --io-total "$(($2 * 1048576))" "$1" >/dev/null || die "writing $1 failed"
}

spec() { echo "rbd:$1?conf=$conf"; }
now() { date +%s.%N; }
ratio() { # A B -> "A/B x"
  python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}x' if b > 0 else 'n/a')" "$1" "$2"
}
# "ok" if the ratio A/B meets GOAL (>= unless the 4th argument is le).
verdict() { # A B GOAL [le]
  python3 -c "
import sys
a, b, g = map(float, sys.argv[1:4])
le = len(sys.argv) > 4
if b <= 0: print('n/a')
else: print('ok' if (a / b <= g if le else a / b >= g) else 'MISS')" "$@"
}

say "emptying the pools"
purge_pools

# ----- load tools ------------------------------------------------------

# fio's rbd engine on POOL/IMAGE for SECONDS: its JSON summary in
# OUT.json, an IOPS log per 100 ms in OUT_iops.1.log.
fio_run() { # OUT POOL IMAGE QD BS RW SECONDS
  rm -f "$1".json "$1"_iops.*.log
  CEPH_CONF=$conf timeout $(($7 + 60)) fio --name=bench --ioengine=rbd --clientname=admin \
    --pool="$2" --rbdname="$3" --iodepth="$4" --bs="$5" --rw="$6" --time_based --runtime="$7" \
    --write_iops_log="$1" --log_avg_msec=100 \
    --output-format=json --output="$1.json" >/dev/null 2>"$1.err" ||
    die "fio on $2/$3 failed: $(tail -n 3 "$1.err")"
  python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["jobs"][0]["error"]; sys.exit(f"fio: error {e}" if e else 0)' "$1.json"
}
# fio's rbd engine on POOL/IMAGE for $secs: prints IOPS.
fio_iops() { # POOL IMAGE QD BS RW
  fio_run "$work/fio" "$@" "$secs"
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(round(j["read"]["iops"] + j["write"]["iops"]))' "$work/fio.json"
}

# ferry-iscsi load on URL for $secs: prints IOPS; a failed command fails
# the run, with ferry-iscsi's first error.
iscsi_iops() { # URL QD BS READ-PCT random|seq
  local args=(load "$1" --seconds "$secs" --qd "$2" --block-size "$3" --read-pct "$4" --seed 3) rc=0
  [ "$5" = random ] && args+=(--random)
  timeout $((secs + 90)) "$bin/ferry-iscsi" "${args[@]}" >"$work/load.json" 2>"$work/load.err" || rc=$?
  [ "$rc" = 0 ] || die "ferry-iscsi ${args[*]} failed (exit $rc): $(tail -n 3 "$work/load.err")"
  python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["iops"]))' "$work/load.json"
}

# A target TID named NAME serving a bs_rbd LUN on POOL/IMAGE.
serve_bs_rbd() { # TID NAME POOL/IMAGE
  tgtadm -C "$port" --lld iscsi --op new --mode target --tid "$1" -T "$2"
  tgtadm -C "$port" --lld iscsi --op update --mode target --tid "$1" --name MaxRecvDataSegmentLength --value 262144
  tgtadm -C "$port" --lld iscsi --op new --mode logicalunit --tid "$1" --lun 1 --bstype rbd \
    --backing-store "$3" --bsopts "conf=$conf;id=admin" ||
    die "tgtd refused the bs_rbd LUN on $3 (see its log)"
  tgtadm -C "$port" --lld iscsi --op bind --mode target --tid "$1" -I ALL
}
unserve() { # TID
  tgtadm -C "$port" --op delete --mode target --tid "$1" --force >/dev/null 2>&1 || true
}

say "starting tgtd on 127.0.0.1:$port"
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  die "127.0.0.1:$port is in use (another tgtd? set BENCH_PORT)"
fi
start_tgtd "$work/tgtd.log"
kill -0 "$tgtd_pid" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null ||
  die "tgtd did not start: $(tail -n 3 "$work/tgtd.log")"

workloads4k=("4K-randread-qd1 1 4096 100 random randread" "4K-randread-qd32 32 4096 100 random randread"
  "4K-randwrite-qd1 1 4096 0 random randwrite" "4K-randwrite-qd32 32 4096 0 random randwrite")
workloads=("${workloads4k[@]}" "1M-seqread-qd8 8 1048576 100 seq read" "1M-seqwrite-qd8 8 1048576 0 seq write")

# ----- 1. serving ------------------------------------------------------
if want 1; then

say "part 1: writing three ${size_mib} MiB images"
make_image ferry-a/bench-fio "$size_mib"
make_image ferry-a/bench-bsrbd "$size_mib"
make_image ferry-a/bench-ferry "$size_mib"
serve_bs_rbd 1 "$iqn:bsrbd" ferry-a/bench-bsrbd
serve_lun 2 "$iqn:ferry" ferry "$(spec ferry-a/bench-ferry)" MaxRecvDataSegmentLength=262144 ||
  die "tgtd refused the ferry LUN (see its log)"

echo
echo "1. Serving RBD images (IOPS, best of 2 runs of $secs s; ${size_mib} MiB images)"
printf '%-18s %9s %9s %9s %13s %11s\n' workload fio-rbd bs_rbd ferry ferry/bs_rbd ferry/fio
for w in "${workloads[@]}"; do
  set -- $w
  fo=0 bs=0 fe=0
  for _ in 1 2; do
    r=$(fio_iops ferry-a bench-fio "$2" "$3" "$6"); ((r > fo)) && fo=$r
    r=$(iscsi_iops "iscsi://127.0.0.1:$port/$iqn:bsrbd/1" "$2" "$3" "$4" "$5"); ((r > bs)) && bs=$r
    r=$(iscsi_iops "iscsi://127.0.0.1:$port/$iqn:ferry/1" "$2" "$3" "$4" "$5"); ((r > fe)) && fe=$r
  done
  note=""
  case $1 in
    4K-*) note="  ($(verdict "$fe" "$bs" 1.3) >= 1.3x bs_rbd, $(verdict "$fe" "$fo" 0.9) >= 0.9x fio)" ;;
  esac
  printf '%-18s %9s %9s %9s %13s %11s%s\n' "$1" "$fo" "$bs" "$fe" "$(ratio "$fe" "$bs")" "$(ratio "$fe" "$fo")" "$note"
done
unserve 1
unserve 2
purge_pools

fi

# ----- 2. foreground during a migration --------------------------------
if want 2; then

# Every measurement starts from a fresh, fully written image in ferry-a
# that moves to ferry-b, and ends with both pools emptied. (A fresh LUN
# each time, rather than one LUN migrated back and forth: after a commit,
# tgtd keeps the migration's source image open until the LUN's next
# commit, so the images a chain of migrations leaves behind cannot be
# removed while the LUN is served.)
src=$(spec ferry-a/mig-src)
dst=$(spec ferry-b/mig-dst)
mig_url="iscsi://127.0.0.1:$port/$iqn:mig/1"
copy_timeout=$((120 + mig_mib / 8)) # seconds: at least 8 MiB/s (the floor is 16)

ferry_status() { timeout 30 "$bin/ferry" migrate status "$src" --json 2>/dev/null || true; }
ferry_state() { ferry_status | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["state"])
except Exception: print("none")'; }
ferry_done() { ferry_status | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["bytes_done"])
except Exception: print(0)'; }

ferry_serve() { # a fresh served LUN on ferry-a/mig-src
  make_image ferry-a/mig-src "$mig_mib"
  serve_lun 3 "$iqn:mig" ferry "$src" MaxRecvDataSegmentLength=262144 ||
    die "tgtd refused the ferry LUN (see its log)"
}
ferry_start() {
  timeout 120 "$bin/ferry" migrate start "$src" "$dst" --json >"$work/start.json" 2>&1 ||
    die "ferry migrate start failed: $(tail -n 3 "$work/start.json")"
}
# Waits until the copy is done (sets ferry_copied_at), commits, stops
# serving the LUN and empties the pools.
ferry_finish() {
  local limit=$((SECONDS + copy_timeout)) st
  while :; do
    st=$(ferry_state)
    case $st in
      copied) ferry_copied_at=$(now); break ;;
      copying) ;;
      *) die "ferry's migration is $st, not copying or copied: $(ferry_status)" ;;
    esac
    ((SECONDS < limit)) || die "ferry's migration did not finish in ${copy_timeout}s: $(ferry_status)"
    sleep 0.2
  done
  timeout 120 "$bin/ferry" migrate commit "$src" --json >"$work/commit.json" 2>&1 ||
    die "ferry migrate commit failed: $(tail -n 3 "$work/commit.json")"
  unserve 3
  purge_pools
}
# In the background: the time the copy is first seen no longer copying.
ferry_watch() { # OUT
  rm -f "$1"
  (
    while [ "$(ferry_state)" = copying ]; do sleep 0.25; done
    now >"$1"
  ) &
  bg+=($!)
}

# rbd migration of ferry-a/rbd-src to ferry-b/rbd-dst (prepared):
# execute runs in the background; exec.log gets each progress line it
# prints with the time it came, exec.start and exec.done its start and
# end times, exec.rc its exit status, exec.pid the pid of its `timeout`
# while it runs.
rbd_execute_bg() {
  rm -f "$work/exec.done" "$work/exec.rc" "$work/exec.log" "$work/exec.pid"
  now >"$work/exec.start"
  (
    set +e
    timeout "$copy_timeout" rbd -c "$conf" migration execute ferry-b/rbd-dst >/dev/null 2> >(
      while IFS= read -r -d $'\r' line || [ -n "$line" ]; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$work/exec.log"
    ) &
    echo $! >"$work/exec.pid"
    wait $!
    rc=$?
    rm -f "$work/exec.pid"
    now >"$work/exec.done"
    echo "$rc" >"$work/exec.rc"
  ) &
  rbd_pid=$!
  bg+=($rbd_pid)
}
rbd_finish() { # waits for execute, commits, empties the pools
  wait "$rbd_pid" || true
  sleep 0.1 # exec.log's last lines
  [ "$(cat "$work/exec.rc" 2>/dev/null)" = 0 ] ||
    die "rbd migration execute failed: $(tail -n 2 "$work/exec.log")"
  rbdc migration commit --no-progress ferry-b/rbd-dst >/dev/null || die "rbd migration commit failed"
  purge_pools
}
# IOPS and the copy's rate over the part of fio's run (FIO.json, its
# IOPS log) during which execute was copying. Prints "IOPS MiB/s NOTE".
rbd_window() { # FIO
  python3 - "$1.json" "$1_iops.1.log" "$work/exec.log" "$(cat "$work/exec.start")" \
    "$(cat "$work/exec.done")" "$((mig_mib * 1048576))" <<'EOF'
import json, re, sys
summary, iops_log, exec_log = sys.argv[1:4]
t_start, t_done, size = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
f = json.load(open(summary))
f_end = f["timestamp_ms"] / 1000
f_start = f_end - f["jobs"][0]["job_runtime"] / 1000
w0, w1 = max(t_start, f_start), min(t_done, f_end)
# IOPS: the 100 ms intervals (time stamped at their end) inside [w0, w1].
per = {}
for line in open(iops_log):
    ms, val = line.split(",")[:2]
    per[int(ms)] = per.get(int(ms), 0) + int(val)
inside = [v for ms, v in per.items()
          if f_start + ms / 1000 - 0.1 >= w0 - 0.01 and f_start + ms / 1000 <= w1 + 0.01]
iops = round(sum(inside) / len(inside)) if inside else 0
# Bytes copied by a time: the last percentage printed by then.
steps = []
for line in open(exec_log):
    t, _, text = line.partition(" ")
    m = re.search(r"(\d+)% complete", text)
    if m:
        steps.append((float(t), int(m.group(1))))
def copied(t):
    if t >= t_done:
        return size
    return size * max([p for (ts, p) in steps if ts <= t], default=0) // 100
rate = (copied(w1) - copied(w0)) / max(w1 - w0, 1e-3) / 1048576
note = ""
if w1 < f_end - 0.05:
    note = f"*copy ended {w1 - f_start:.1f}s into fio's {f_end - f_start:.1f}s run: IOPS and rate over the {w1 - w0:.1f}s they overlapped"
print(iops, f"{rate:.0f}", note)
EOF
}

# The copy's rate during a run: B0 bytes at T0, B1 at T1, done at TD
# (empty: still copying). Prints "MiB/s NOTE".
window_rate() { # T0 T1 B0 B1 TD
  python3 - "$@" <<'EOF2'
import sys
t0, t1, b0, b1 = map(float, sys.argv[1:5])
td = float(sys.argv[5]) if sys.argv[5] else None
end = min(t1, td) if td else t1
rate = (b1 - b0) / max(end - t0, 1e-3) / 1048576
note = f"*copy ended {end - t0:.1f}s into the {t1 - t0:.1f}s run" if td and td < t1 else ""
print(f"{rate:.0f} {note}")
EOF2
}

say "part 2: the copies' rates with no foreground I/O (${mig_mib} MiB images)"
ferry_serve
t0=$(now)
ferry_start
ferry_finish
ferry_idle=$(python3 -c "print(f'{$mig_mib / ($ferry_copied_at - $t0):.0f}')")
make_image ferry-a/rbd-src "$mig_mib"
t0=$(now)
rbdc migration prepare ferry-a/rbd-src ferry-b/rbd-dst || die "rbd migration prepare failed"
rbd_execute_bg
rbd_finish
rbd_idle=$(python3 -c "print(f'{$mig_mib / ($(cat "$work/exec.done") - $t0):.0f}')")

echo
echo "2. Foreground I/O during a migration (IOPS, one run of $secs s each; ${mig_mib} MiB images)"
echo "   copy rate with no foreground I/O: ferry $ferry_idle MiB/s, rbd migration $rbd_idle MiB/s"
printf '%-18s | %7s %7s %7s %16s | %7s %7s %7s %16s\n' "" "ferry" "" "" "" "rbd-mig" "" "" ""
printf '%-18s | %7s %7s %7s %16s | %7s %7s %7s %16s\n' workload idle during x-idle "copy MiB/s (x)" \
  idle during x-idle "copy MiB/s (x)"
notes=()
for w in "${workloads4k[@]}"; do
  set -- $w
  say "part 2: $1"
  # ferry: idle, then during a migration started just before the run.
  ferry_serve
  f_idle=$(iscsi_iops "$mig_url" "$2" "$3" "$4" "$5")
  ferry_start
  ferry_watch "$work/ferry.done"
  t0=$(now); b0=$(ferry_done)
  f_mig=$(iscsi_iops "$mig_url" "$2" "$3" "$4" "$5")
  b1=$(ferry_done); t1=$(now)
  sleep 0.3 # the watcher's last look
  read -r f_rate f_note < <(window_rate "$t0" "$t1" "$b0" "$b1" "$(cat "$work/ferry.done" 2>/dev/null || true)")
  ferry_finish
  # rbd migration: the same with fio's rbd engine on the destination,
  # started just after execute.
  make_image ferry-a/rbd-src "$mig_mib"
  r_idle=$(fio_iops ferry-a rbd-src "$2" "$3" "$6")
  rbdc migration prepare ferry-a/rbd-src ferry-b/rbd-dst || die "rbd migration prepare failed"
  rbd_execute_bg
  fio_run "$work/fmig" ferry-b rbd-dst "$2" "$3" "$6" "$secs"
  rbd_finish
  read -r r_mig r_rate r_note < <(rbd_window "$work/fmig")
  [ -z "$f_note" ] || notes+=("$1 ferry: ${f_note#\*}: the run was partly without a copy, its IOPS overstate (raise BENCH_MIG_SIZE_MIB)")
  [ -z "$r_note" ] || notes+=("$1 rbd-mig: ${r_note#\*}")
  printf '%-18s | %7s %7s %7s %16s | %7s %7s %7s %16s  (ferry: %s >= 0.8x idle IOPS, %s >= 0.5x idle copy)\n' "$1" \
    "$f_idle" "$f_mig" "$(ratio "$f_mig" "$f_idle")" "$f_rate${f_note:+*} ($(ratio "$f_rate" "$ferry_idle"))" \
    "$r_idle" "$r_mig" "$(ratio "$r_mig" "$r_idle")" "$r_rate${r_note:+*} ($(ratio "$r_rate" "$rbd_idle"))" \
    "$(verdict "$f_mig" "$f_idle" 0.8)" "$(verdict "$f_rate" "$ferry_idle" 0.5)"
done
for n in "${notes[@]}"; do echo "   * $n"; done

fi

# ----- 3. unserved copy ------------------------------------------------
if want 3; then

say "part 3: copying an unserved ${size_mib} MiB image, each way twice"
copy_ferry() {
  timeout $((120 + size_mib / 8)) "$bin/ferry" migrate start "$(spec ferry-a/copy-src)" "$(spec ferry-b/copy-dst)" \
    --commit --json >"$work/copy.json" 2>&1 || die "ferry migrate start --commit failed: $(tail -n 3 "$work/copy.json")"
}
copy_rbd_mig() {
  rbdc migration prepare ferry-a/copy-src ferry-b/copy-dst || die "rbd migration prepare failed"
  RBD_TIMEOUT=$((120 + size_mib / 8)) rbdc migration execute --no-progress ferry-b/copy-dst || die "rbd migration execute failed"
  rbdc migration commit --no-progress ferry-b/copy-dst || die "rbd migration commit failed"
}
copy_rbd_cp() {
  RBD_TIMEOUT=$((120 + size_mib / 8)) rbdc cp --no-progress ferry-a/copy-src ferry-b/copy-dst || die "rbd cp failed"
}
declare -A best=([ferry]=0 [rbd_mig]=0 [rbd_cp]=0)
for _ in 1 2; do
  for how in ferry rbd_mig rbd_cp; do
    make_image ferry-a/copy-src "$size_mib"
    t0=$(now)
    "copy_$how"
    t1=$(now)
    t=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
    if [ "${best[$how]}" = 0 ] || python3 -c "import sys; sys.exit(0 if $t < ${best[$how]} else 1)"; then
      best[$how]=$t
    fi
    purge_pools
  done
done
echo
echo "3. Copying an unserved, fully written ${size_mib} MiB image ferry-a -> ferry-b (best of 2)"
printf '%-28s %8s %8s %10s\n' method seconds MiB/s ferry/this
for how in ferry rbd_mig rbd_cp; do
  case $how in
    ferry) label="ferry migrate start --commit" ;;
    rbd_mig) label="rbd migration prep+exec+com" ;;
    rbd_cp) label="rbd cp" ;;
  esac
  printf '%-28s %8s %8s %10s\n' "$label" "${best[$how]}" "$(python3 -c "print(f'{$size_mib / ${best[$how]}:.0f}')")" \
    "$(ratio "${best[ferry]}" "${best[$how]}")"
done
echo "   (goal: ferry/rbd-migration <= 1.0x: $(verdict "${best[ferry]}" "${best[rbd_mig]}" 1.0 le))"
fi
