#!/usr/bin/env bash
# SCSI conformance of a ferry LUN against tgt's own rdwr backing store,
# with libiscsi's iscsi-test-cu: one test per process under a watchdog,
# then the whole SCSI family in one process, the way its users run it.
#
#   scripts/conformance.sh OUTDIR [FILTER]
#
# Serves three LUNs from one private tgtd (127.0.0.1:$PORT): tgt rdwr on a
# 1 GiB file, a ferry LUN on an equal file volume, and a ferry LUN whose
# volume is being migrated (copier rate-limited so the migration lasts the
# whole run). Writes OUTDIR/{rdwr,ferry,ferry-migrating}.tsv (test, result)
# with result pass / fail / skip / timeout, and prints the counts.
# FILTER (a grep -E pattern on test names) runs a subset.
#
# The single-process run (`iscsi-test-cu --test=SCSI`, one session per
# suite but one process: state a test leaves behind reaches the later
# ones) writes OUTDIR/single-<LUN>.tsv and OUTDIR/single-<LUN>.log.
# CONFORMANCE_SINGLE_ONLY=1 runs only that part.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
filter=${2:-.}
port=${CONFORMANCE_PORT:-3290}
ctl=$((10000 + port % 10000)) # tgtd -C takes a C short
ferry=${FERRY_BIN:-$here/target/release/ferry}
work=$(mktemp -d /var/tmp/ferry-conformance.XXXXXX)
export FERRY_RUN_DIR=$work/run
iqn=iqn.2026-11.org.ferry:conformance

cleanup() {
  tgtadm -C "$ctl" --op delete --mode system >/dev/null 2>&1 || true
  sleep 0.5
  if [ -n "${tgtd_pid:-}" ]; then kill -9 "$tgtd_pid" 2>/dev/null; wait "$tgtd_pid" 2>/dev/null; fi || true
  rm -rf "$work"
}
trap cleanup EXIT

tgtd -f --iscsi portal=127.0.0.1:$port -C "$ctl" >"$out/tgtd.log" 2>&1 &
tgtd_pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

truncate -s 1G "$work/rdwr.img"
"$ferry" volume create "$work/ferry.img" --size 1G >/dev/null
"$ferry" volume create "$work/mig-src.img" --size 1G >/dev/null
# Data everywhere, so the copier has real work for the whole run.
dd if=/dev/urandom of="$work/mig-src.img" bs=1M count=1024 conv=notrunc status=none

add_lun() { # tid name bstype path
  tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid "$1" -T "$iqn:$2"
  tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid "$1" --lun 1 --bstype "$3" --backing-store "$4"
  tgtadm -C "$ctl" --lld iscsi --op update --mode logicalunit --tid "$1" --lun 1 --params thin_provisioning=1
  tgtadm -C "$ctl" --lld iscsi --op update --mode target --tid "$1" --name MaxRecvDataSegmentLength --value 262144
  tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid "$1" -I ALL
}
add_lun 1 rdwr rdwr "$work/rdwr.img"
add_lun 2 ferry ferry "file:$work/ferry.img"
add_lun 3 ferry-migrating ferry "file:$work/mig-src.img"
generation=0
# Keeps the third LUN mid-migration: tests that overwrite the whole LUN
# (WRITE SAME to the end, UNMAP) finish a copy at once, so before each test
# a copied migration is committed and a new one started from the result.
ensure_migrating() {
  local state
  state=$("$ferry" migrate status "file:$work/mig-src.img" --json 2>/dev/null | sed -n 's/.*"state": "\(.*\)".*/\1/p' || true)
  if [ "$state" = "copying" ]; then echo copying; return; fi
  [ "$state" = "copied" ] && "$ferry" migrate commit "file:$work/mig-src.img" --json >/dev/null
  generation=$((generation + 1))
  # Volumes two generations back are stale sources; their data can go
  # (the forwarding markers stay).
  rm -f "$work/mig-$((generation - 2)).img"
  "$ferry" migrate start "file:$work/mig-src.img" "file:$work/mig-$generation.img" \
    --rate 1M --region-size 1M --json >/dev/null
  echo started
}

tests=$(iscsi-test-cu --list | grep -E '^ALL\.[^.]+\.[^.]+$' | grep -E "$filter" || true)
if [ "${CONFORMANCE_SINGLE_ONLY:-0}" = 1 ]; then tests=; fi

run_one() { # name url -> result
  local log rc
  log=$(timeout -k 5 60 iscsi-test-cu --dataloss --test="$1" "$2" 2>&1) && rc=0 || rc=$?
  if [ "$rc" -ge 124 ]; then echo timeout; return; fi
  # CUnit's summary: `tests TOTAL RAN PASSED FAILED INACTIVE`. A suite
  # whose set-up failed (a login refused under load) runs nothing and
  # fails nothing: that is no pass.
  local ran failed
  # (Here-strings, not pipes: under pipefail, grep -q leaving early
  # could fail the writer and turn a skip into a pass.)
  read -r ran failed < <(awk '$1=="tests"{print $3, $5; exit}' <<<"$log")
  if [ "${failed:-1}" != "0" ] || [ "${ran:-0}" = "0" ]; then echo fail
  elif grep -q '\[SKIPPED\]' <<<"$log"; then echo skip
  else echo pass; fi
}

# CUnit's log of a whole run -> one `Suite.Test<TAB>result` line per
# test, decided as run_one decides for one test: fail if CUnit failed it,
# else skip if it reported a skipped part, else pass. CUnit's verdict
# ("passed" ending a line, or a line starting with FAILED) closes a test:
# what follows it on the line or later (the next suite's set-up) is not
# the test's.
cunit_results() {
  awk '
    function flush() { if (name != "") print name "\t" res; name = "" }
    function check(l,   i) {
      if (done) return
      i = index(l, "passed")
      if (i) { l = substr(l, 1, i - 1); done = 1 }
      else if (l ~ /^FAILED/) { res = "fail"; done = 1; return }
      if (l ~ /\[SKIPPED\]/ && res == "pass") res = "skip"
    }
    /^Suite: / { flush(); suite = $2; next }
    /^Run Summary/ { flush(); exit }
    /^  Test: / { flush(); name = suite "." $2; res = "pass"; done = 0; l = $0; sub(/^  Test: [^ ]+ [.][.][.]/, "", l); check(l); next }
    name != "" { check($0) }
    END { flush() }
  '
}

for target in rdwr ferry ferry-migrating; do
  : >"$out/$target.tsv"
done
for t in $tests; do
  name=${t#ALL.}
  tid=1
  for target in rdwr ferry ferry-migrating; do
    [ "$target" = ferry-migrating ] && ensure_migrating >/dev/null
    r=$(run_one "$t" "iscsi://127.0.0.1:$port/$iqn:$target/1")
    printf '%s\t%s\n' "$name" "$r" >>"$out/$target.tsv"
    tid=$((tid + 1))
  done
done

for target in rdwr ferry ferry-migrating; do
  [ "$target" = ferry-migrating ] && ensure_migrating >/dev/null
  log=$out/single-$target.log
  timeout -k 5 900 iscsi-test-cu --dataloss --test=SCSI "iscsi://127.0.0.1:$port/$iqn:$target/1" >"$log" 2>&1 || true
  cunit_results <"$log" >"$out/single-$target.tsv"
done

echo "migrations started and committed under the third LUN during the run: $generation"
counts() { # TSV
  local r
  for r in pass fail skip timeout; do
    printf ' %s %s' "$(grep -c $'\t'"$r"'$' "$1" || true)" "$r"
  done
  echo
}
for target in rdwr ferry ferry-migrating; do
  printf '%-16s' "$target"
  counts "$out/$target.tsv"
done
echo "one process, --test=SCSI:"
for target in rdwr ferry ferry-migrating; do
  printf '%-16s' "$target"
  counts "$out/single-$target.tsv"
done
