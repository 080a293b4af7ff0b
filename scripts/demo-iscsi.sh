#!/usr/bin/env bash
# The main job on the embedded default backend, for real over iSCSI:
# tgtd serves a ferry LUN (a local file volume holding data), an iSCSI
# initiator (libiscsi) runs a verifying read/write workload on it, the
# volume is migrated live to another file with a progress bar, committed,
# and the result is checked over iSCSI: every acknowledged write is there,
# and the LUN's checksum read over iSCSI equals the new volume file's.
# Everything it starts or creates is removed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/tgtd-lib.sh"
bin=$here/target/release
size=${DEMO_SIZE:-1G}
port=${DEMO_PORT:-3260}
seconds=${DEMO_SECONDS:-20}
work=$(mktemp -d /var/tmp/ferry-demo.XXXXXX)
export FERRY_RUN_DIR=$work/run
iqn=iqn.2026-11.org.ferry:demo
url=iscsi://127.0.0.1:$port/$iqn/1
src=file:$work/source.img
dst=file:$work/target.img

cleanup() {
  [ -n "${load_pid:-}" ] && kill "$load_pid" 2>/dev/null || true
  stop_tgtd
  rm -rf "$work"
}
trap cleanup EXIT

echo "== 1. a $size file volume with data, served by tgtd on 127.0.0.1:$port"
"$bin/ferry" volume create "$src" --size "$size"
start_tgtd "$work/tgtd.log"
serve_lun 1 "$iqn" ferry "$src" MaxRecvDataSegmentLength=262144
"$bin/ferry-iscsi" info "$url"
echo "   writing a known pattern over the LUN through iSCSI..."
"$bin/ferry-iscsi" write-pattern "$url" --seed 7

echo "== 2. an iSCSI workload: random 4 KiB reads and writes, 8 in flight, verified"
"$bin/ferry-iscsi" load "$url" --seconds "$seconds" --qd 8 --read-pct 50 --random \
  --log "$work/writes.log" --seed 11 >"$work/load.json" 2>"$work/load.err" &
load_pid=$!
sleep 2

echo "== 3. live migration to $dst"
"$bin/ferry" migrate start "$src" "$dst" --rate 200M
"$bin/ferry" migrate status "$src" --watch
"$bin/ferry" migrate commit "$src"

echo "== 4. workload finishing on the committed volume"
wait "$load_pid"; load_pid=
cat "$work/load.json"

echo "== 5. checks over iSCSI"
"$bin/ferry-iscsi" load "$url" --verify-log "$work/writes.log" --seed 11
"$bin/ferry-iscsi" verify-pattern "$url" --seed 7 --skip-log "$work/writes.log"
tgtadm -C "$port" --lld iscsi --op show --mode target | grep -E "Backing store (type|path)" | tail -2
lun_sum=$("$bin/ferry-iscsi" checksum "$url")
file_sum=$(sha256sum "${dst#file:}" | cut -d' ' -f1)
echo "   sha256 over iSCSI:      $lun_sum"
echo "   sha256 of $dst: $file_sum"
[ "$lun_sum" = "$file_sum" ] || { echo "checksums differ"; exit 1; }
echo "== done: migrated live under load, every acknowledged write verified"
