#!/bin/bash
# Guest side of tests/guest_tcmu.rs: serves a ferry volume through LIO
# (tcmu-runner with handler_ferry.so, configured with targetcli), logs in
# with open-iscsi over loopback, and migrates the volume live under a
# verifying fio load.
#
# Runs as root in the test guest (scripts/guest/run-guest.sh), with the
# share at /share holding this script, libhandler_ferry.so and ferry.
# Reports through /share/result ("ok" or "FAIL: why"); /share/guest.log
# has the timed steps, the tcmu-runner log and fio output are copied
# beside it.
#
# Checks, in order:
#  - tcmu-runner loads the handler and exports the ferry subtype on D-Bus;
#  - targetcli refuses a relative cfgstring and a missing volume, with the
#    handler's reason; accepts the volume (user:ferry backstore, 256 MiB)
#  - the iSCSI login shows a 256 MiB LIO-ORG disk;
#  - during the migration (rate-limited, started under load): fio random
#    writes verify (crc32c), the range filled before it re-verifies three
#    times, tcmu-runner is SIGKILLed mid-copy and restarted (the backstore
#    reopens, the migration resumes, fio sees no error), WRITE SAME,
#    COMPARE AND WRITE (match, and MISCOMPARE for a stale compare) and
#    UNMAP (reads back zeroes) work;
#  - the migration reaches "copied" and commits; the source forwards;
#  - tcmu-runner is SIGKILLed and restarted again: the backstore, still
#    configured with the source, now serves the target;
#  - fio verify-only passes over both fio ranges, and the whole LUN read
#    over iSCSI equals the target file;
#  - a second backstore with 4096-byte logical blocks (control=
#    hw_block_size=4096): the handler opens it in 4096-byte blocks, the
#    disk shows them, data lands at byte LBA * 4096 of its volume (the
#    last block in the last 4096 bytes), WRITE SAME sends one 4096-byte
#    block, and READ(16), VERIFY(16) and WRITE SAME past the end are
#    refused (READ(16) and VERIFY(16) with LBA OUT OF RANGE) and change
#    nothing;
#  - `ferry agent --frontend lio` with a file map replaces the hand-made
#    configuration with the map's, the LUN works over iSCSI, and unmap
#    and removal in the map take it away again; a CHAP target from the
#    map refuses a login without the secret and accepts one with it;
#  - ALUA through LIO: a tgt node owns a map LUN and the LIO node
#    exports it in standby with implicit ALUA groups in configfs (TPGS,
#    RTPG, TEST UNIT READY refused with the standby sense, the volume not
#    opened by tcmu-runner); the tgt node is killed and the LIO node takes
#    the LUN over, and what was written through the tgt node reads back.
#
# Disk layout of the 256 MiB LUN (fio regions do not overlap, so each
# verifies on its own):
#   [0, 96M)     written sequentially before the migration; re-read and
#                verified during it (reads routed to source or target),
#                and after the commit
#   [96M, 224M)  random writes of 4-64 KiB with crc32c headers during the
#                migration (to both legs in regions not yet copied), verified when
#                written and again after the commit
#   [224M, 256M) WRITE SAME, COMPARE AND WRITE and UNMAP with sg3-utils
set -uo pipefail

S=/share
. "$S/lib.sh"

VOL=/var/lib/ferry/src.img
DST=/var/lib/ferry/dst.img
IQN=iqn.2026-11.org.ferry:guest

must ferry volume create "$VOL" --size 256M


# --- LIO configuration through targetcli ----------------------------------
# A bad cfgstring is refused with the handler's reason (D-Bus CheckConfig).
if out=$(targetcli /backstores/user:ferry create name=bad size=256M cfgstring=relative.img 2>&1); then
  fail "a relative cfgstring was accepted"
fi
echo "$out" | grep -q "relative" || fail "no reason for a bad cfgstring: $out"
if out=$(targetcli /backstores/user:ferry create name=bad size=256M cfgstring=/var/lib/ferry/none.img 2>&1); then
  fail "a missing volume was accepted"
fi
echo "$out" | grep -q "does not exist" || fail "no reason for a missing volume: $out"
log "bad cfgstrings refused with reasons"

t=$(now)
must targetcli /backstores/user:ferry create name=lun0 size=256M cfgstring="$VOL"
must targetcli /iscsi create "$IQN"
must targetcli "/iscsi/$IQN/tpg1/luns" create /backstores/user:ferry/lun0
must targetcli "/iscsi/$IQN/tpg1" set attribute authentication=0 demo_mode_write_protect=0 \
  generate_node_acls=1 cache_dynamic_acls=1
log "LIO configured with targetcli ($(since "$t") s)"
core=$(ls -d /sys/kernel/config/target/core/user_*/lun0 | head -n1)
log "pgr_support=$(cat "$core/attrib/pgr_support" 2>/dev/null) alua_support=$(cat "$core/attrib/alua_support" 2>/dev/null) hw_max_sectors=$(cat "$core/attrib/hw_max_sectors") emulate_write_cache=$(cat "$core/attrib/emulate_write_cache" 2>/dev/null)"

# --- initiator ------------------------------------------------------------
echo "InitiatorName=iqn.2026-11.org.ferry:initiator" >/etc/iscsi/initiatorname.iscsi
iscsid || fail "iscsid"
must iscsiadm -m discovery -t st -p 127.0.0.1:3260
must iscsiadm -m node -T "$IQN" -p 127.0.0.1:3260 --login
DEV=
for i in $(seq 1 100); do
  for d in /sys/block/sd*; do
    [ -e "$d/device/vendor" ] || continue
    if grep -q LIO-ORG "$d/device/vendor"; then DEV=/dev/$(basename "$d"); fi
  done
  [ -n "$DEV" ] && [ -b "$DEV" ] && break
  sleep 0.1
done
[ -n "$DEV" ] || fail "no LIO-ORG disk after login"
size=$(blockdev --getsize64 "$DEV")
[ "$size" = $((256 * MiB)) ] || fail "$DEV is $size bytes, not 256 MiB"
log "logged in: $DEV ($(cat /sys/block/${DEV#/dev/}/device/model | tr -s ' '), $size bytes)"
sg_vpd -p lbpv "$DEV" >>"$S/guest.log" 2>&1 || true

fio_common=(--filename="$DEV" --direct=1 --ioengine=libaio --verify=crc32c --verify_fatal=1
  --randrepeat=1 --group_reporting)
fill=(--name=fill "${fio_common[@]}" --rw=write --bs=1M --iodepth=4 --offset=0 --size=96M)
rand=(--name=rand "${fio_common[@]}" --rw=randwrite --bsrange=4k-64k --iodepth=16
  --offset=96M --size=128M --io_size=48M)

t=$(now)
fio "${fill[@]}" --do_verify=0 >"$S/fio-fill.log" 2>&1 || fail "fio fill: $(tail -n 5 "$S/fio-fill.log")"
log "filled [0, 96M) ($(since "$t") s)"

# --- live migration under load -------------------------------------------
t=$(now)
fio "${rand[@]}" --do_verify=1 >"$S/fio-rand.log" 2>&1 &
fio_rand=$!
(
  # Re-read and verify the filled part over and over while migrating.
  for pass in 1 2 3; do
    fio "${fill[@]}" --verify_only --iodepth=8 >>"$S/fio-reread.log" 2>&1 || exit 1
  done
) &
fio_reread=$!
sleep 2
# Rate-limited so the copy spans the load (and the restart below).
must ferry migrate start "$VOL" "$DST" --rate 5M
log "migration started: $VOL -> $DST"

state() { ferry migrate status "$VOL" --json 2>/dev/null | sed -n 's/.*"state": "\([a-z]*\)".*/\1/p'; }
done_bytes() { ferry migrate status "$VOL" --json 2>/dev/null | sed -n 's/.*"bytes_done": \([0-9]*\).*/\1/p'; }

# Kill tcmu-runner a quarter into the copy of the filled regions (the
# copier takes regions in order; holes are marked without copying), with
# fio running: at 5 MiB/s over ten seconds of copying remain, so a slow
# guest still kills mid-copy.
for i in $(seq 1 200); do
  b=$(done_bytes)
  [ -n "$b" ] && [ "$b" -ge $((24 * MiB)) ] && break
  sleep 0.25
done
[ "$(state)" = copying ] || fail "the copy ended before the restart could test anything ($(state))"
log "killing tcmu-runner at $(done_bytes) bytes copied (fio running)"
kill -9 "$runner_pid"
wait "$runner_pid" 2>/dev/null
sleep 1
t_restart=$(now)
start_runner
for i in $(seq 1 120); do
  [ -n "$(state)" ] && break
  sleep 0.25
done
[ -n "$(state)" ] || fail "the restarted tcmu-runner does not serve $VOL"
log "tcmu-runner restarted as $runner_pid, serving again in $(since "$t_restart") s; migration $(state) at $(done_bytes) bytes"

# Block commands tcmu-runner hands to the handler's WRITE SAME, COMPARE
# AND WRITE and UNMAP callouts, while the migration runs.
lba0=$((224 * MiB / 512))
head -c 512 /dev/zero | tr '\0' '\253' >/tmp/ws.bin
must sg_write_same --lba=$lba0 --num=64 --in=/tmp/ws.bin "$DEV"
dd if="$DEV" iflag=direct bs=32k count=1 skip=$((224 * MiB / 32768)) 2>/dev/null | cmp -s - <(head -c 32768 /dev/zero | tr '\0' '\253') ||
  fail "WRITE SAME data did not read back"
{ head -c 512 /dev/zero | tr '\0' '\253'; head -c 512 /dev/zero | tr '\0' '\315'; } >/tmp/caw.bin
must sg_compare_and_write --lba=$lba0 --num=1 --inc=/tmp/caw.bin "$DEV"
if sg_compare_and_write --lba=$lba0 --num=1 --inc=/tmp/caw.bin "$DEV" >/tmp/caw2.out 2>&1; then
  fail "COMPARE AND WRITE with a stale compare half succeeded"
fi
grep -qi miscompare /tmp/caw2.out || fail "no MISCOMPARE: $(cat /tmp/caw2.out)"
dd if="$DEV" iflag=direct bs=512 count=1 skip=$lba0 2>/dev/null | cmp -s - <(head -c 512 /dev/zero | tr '\0' '\315') ||
  fail "COMPARE AND WRITE data did not read back"
must blkdiscard -o $((228 * MiB)) -l $((4 * MiB)) "$DEV"
dd if="$DEV" iflag=direct bs=1M count=4 skip=228 2>/dev/null | cmp -s - <(head -c $((4 * MiB)) /dev/zero) ||
  fail "discarded range does not read back as zeroes"
log "WRITE SAME, COMPARE AND WRITE (match and MISCOMPARE) and UNMAP checked"

wait "$fio_rand" || fail "fio random writes with verify: $(grep -E 'err=|verify|bad' "$S/fio-rand.log" | head -n 5)"
log "random writes + verify done ($(since "$t") s): $(grep -E '^ +write:' "$S/fio-rand.log" | head -n1 | sed 's/^ *//')"
wait "$fio_reread" || fail "re-reading the filled range: $(grep -E 'err=|verify|bad' "$S/fio-reread.log" | head -n 5)"
log "filled range re-verified 3 times during the migration"

for i in $(seq 1 600); do
  [ "$(state)" = copied ] && break
  sleep 0.25
done
[ "$(state)" = copied ] || fail "migration not copied: $(ferry migrate status "$VOL" 2>&1)"
log "migration copied ($(since "$t") s after the load started)"
must ferry migrate commit "$VOL"
# Output captured first: `ferry ... | grep -q` under pipefail fails when
# grep exits at its match and ferry dies of SIGPIPE writing the rest.
info=$(ferry volume info "$VOL" --json)
grep -q '"committed": true' <<<"$info" ||
  fail "the source does not forward to the committed target: $(ferry volume info "$VOL" 2>&1)"
log "committed"

# --- after the commit -----------------------------------------------------
# The backstore still names the source; reopened, it serves the target.
opens=$(grep -c "src.img: open," /var/log/tcmu-runner.log)
kill -9 "$runner_pid"
wait "$runner_pid" 2>/dev/null
t_restart=$(now)
start_runner
for i in $(seq 1 120); do
  [ "$(grep -c "src.img: open," /var/log/tcmu-runner.log)" -gt "$opens" ] && break
  sleep 0.25
done
[ "$(grep -c "src.img: open," /var/log/tcmu-runner.log)" -gt "$opens" ] ||
  fail "the restarted tcmu-runner did not reopen the backstore"
# The checks below read the LUN through the new tcmu-runner: the source
# never saw the writes made during the migration, so they pass only if
# the reopened backstore serves the target.
log "tcmu-runner restarted after the commit: $(grep "src.img: serving" /var/log/tcmu-runner.log | tail -n1 | sed 's/.*ferry: //') ($(since "$t_restart") s)"
fio "${fill[@]}" --verify_only >"$S/fio-fill-verify.log" 2>&1 ||
  fail "verify of the filled range after commit: $(grep -E 'err=|verify|bad' "$S/fio-fill-verify.log" | head -n 5)"
fio "${rand[@]}" --verify_only >"$S/fio-rand-verify.log" 2>&1 ||
  fail "verify of the random writes after commit: $(grep -E 'err=|verify|bad' "$S/fio-rand-verify.log" | head -n 5)"
log "fio verify-only passes over both ranges after the commit"
sync
t=$(now)
diff=$(dd if="$DEV" iflag=direct bs=4M 2>/dev/null | cmp - "$DST" 2>&1) ||
  fail "the LUN differs from the target volume: $diff"
log "the whole LUN, read over iSCSI, equals the target volume file ($(since "$t") s)"

must iscsiadm -m node -T "$IQN" -p 127.0.0.1:3260 --logout

# --- a LUN of 4096-byte logical blocks --------------------------------------
# targetcli's control=hw_block_size=4096 sets the backstore's block size in
# target_core_user; tcmu-runner reports it to the handler, which must place
# data at byte LBA * 4096 of the volume and count every range in 4096-byte
# blocks. Torn down afterwards, so the agent below finds what it did before.
t=$(now)
IQN4K=iqn.2026-11.org.ferry:guest-4k
V4K=/var/lib/ferry/v4k.img
B4K=$((64 * MiB / 4096)) # 16384 blocks
must ferry volume create "$V4K" --size 64M
must targetcli /backstores/user:ferry create name=lun4k size=64M cfgstring="$V4K" \
  control=hw_block_size=4096
core4k=$(ls -d /sys/kernel/config/target/core/user_*/lun4k | head -n1)
[ "$(cat "$core4k/attrib/hw_block_size")" = 4096 ] ||
  fail "the backstore's hw_block_size is $(cat "$core4k/attrib/hw_block_size"), not 4096"
must targetcli /iscsi create "$IQN4K"
must targetcli "/iscsi/$IQN4K/tpg1/luns" create /backstores/user:ferry/lun4k
must targetcli "/iscsi/$IQN4K/tpg1" set attribute authentication=0 demo_mode_write_protect=0 \
  generate_node_acls=1 cache_dynamic_acls=1
grep -q "v4k.img: open, $((64 * MiB)) bytes in 4096-byte blocks" /var/log/tcmu-runner.log ||
  fail "the handler did not open v4k.img with 4096-byte blocks: $(grep v4k /var/log/tcmu-runner.log | tail -n 3)"
must iscsiadm -m discovery -t st -p 127.0.0.1:3260
must iscsiadm -m node -T "$IQN4K" -p 127.0.0.1:3260 --login
DEV4K=$(disk_of_size $((64 * MiB))) || fail "no 64 MiB disk after logging in to $IQN4K"
lbs=$(cat "/sys/block/${DEV4K#/dev/}/queue/logical_block_size")
[ "$lbs" = 4096 ] || fail "$DEV4K has $lbs-byte logical blocks, not 4096"
cap=$(sg_readcap --long "$DEV4K" 2>&1)
grep -q "Number of logical blocks=$B4K" <<<"$cap" && grep -q "Logical block length=4096" <<<"$cap" ||
  fail "READ CAPACITY(16) of $DEV4K: $cap"
# Two blocks at LBA 5: in the file at 5 * 4096, nothing before them.
head -c 8192 /dev/urandom >/tmp/two4k
must dd if=/tmp/two4k of="$DEV4K" bs=4096 seek=5 oflag=direct conv=notrunc
cmp <(dd if="$V4K" bs=4096 skip=5 count=2 2>/dev/null) /tmp/two4k ||
  fail "LBA 5 of the 4096-byte LUN is not at byte 5 * 4096 of the volume"
cmp -n $((5 * 4096)) "$V4K" /dev/zero || fail "a write at LBA 5 changed bytes before 5 * 4096"
cmp <(dd if="$DEV4K" bs=4096 skip=5 count=2 iflag=direct 2>/dev/null) /tmp/two4k ||
  fail "LBAs 5-6 of the 4096-byte LUN do not read back"
# The last block, written, in the file's last 4096 bytes, read back.
head -c 4096 /dev/urandom >/tmp/last4k
must dd if=/tmp/last4k of="$DEV4K" bs=4096 seek=$((B4K - 1)) oflag=direct conv=notrunc
cmp <(tail -c 4096 "$V4K") /tmp/last4k || fail "the last block is not the volume's last 4096 bytes"
cmp <(dd if="$DEV4K" bs=4096 skip=$((B4K - 1)) count=1 iflag=direct 2>/dev/null) /tmp/last4k ||
  fail "the last block does not read back"
# One block past the end: READ(16) refused with LBA OUT OF RANGE; VERIFY
# (range-checked by the handler itself) passes on the last block and
# is refused across the end.
past=$(printf '%016x' "$B4K" | sed 's/../& /g')
if sg_raw -r 4096 "$DEV4K" 88 00 $past 00 00 00 01 00 00 >/tmp/past4k.out 2>&1; then
  fail "READ(16) one block past the end succeeded"
fi
grep -qi "out of range" /tmp/past4k.out || fail "READ(16) past the end: $(cat /tmp/past4k.out)"
lastlba=$(printf '%016x' $((B4K - 1)) | sed 's/../& /g')
must sg_raw "$DEV4K" 8f 00 $lastlba 00 00 00 01 00 00
if sg_raw "$DEV4K" 8f 00 $lastlba 00 00 00 02 00 00 >/tmp/verify4k.out 2>&1; then
  fail "VERIFY(16) across the end succeeded"
fi
grep -qi "out of range" /tmp/verify4k.out || fail "VERIFY(16) across the end: $(cat /tmp/verify4k.out)"
# WRITE SAME of one 4096-byte block over the last four, then across the end
# (refused, nothing written).
head -c 4096 /dev/zero | tr '\0' '\253' >/tmp/ws4k.bin
must sg_write_same --lba=$((B4K - 4)) --num=4 --xferlen=4096 --in=/tmp/ws4k.bin "$DEV4K"
cmp <(tail -c 16384 "$V4K") <(head -c 16384 /dev/zero | tr '\0' '\253') ||
  fail "WRITE SAME of 4096-byte blocks is not in the volume's last 16 KiB"
if sg_write_same --lba=$((B4K - 3)) --num=4 --xferlen=4096 --in=/tmp/two4k "$DEV4K" >/tmp/ws4k.out 2>&1; then
  fail "WRITE SAME across the end succeeded"
fi
cmp <(tail -c 16384 "$V4K") <(head -c 16384 /dev/zero | tr '\0' '\253') ||
  fail "a refused WRITE SAME changed the volume"
[ "$(stat -c %s "$V4K")" = $((64 * MiB)) ] || fail "the 4096-byte LUN's volume changed size"
must iscsiadm -m node -T "$IQN4K" -p 127.0.0.1:3260 --logout
must targetcli /iscsi delete "$IQN4K"
must targetcli /backstores/user:ferry delete lun4k
log "4096-byte blocks: LBA * 4096 placement, last block, READ(16)/VERIFY/WRITE SAME past the end refused ($(since "$t") s)"

# --- the node agent driving LIO from the LUN map --------------------------
# `ferry agent --frontend lio` with the embedded file map: it replaces the
# hand-made configuration (a ferry LUN the map does not name), exports
# the map's LUN with a per-initiator mapped LUN, follows map edits, and
# takes LUNs away when the map does.
t=$(now)
export FERRY_MAP=file:/var/lib/ferry/map
IQN2=iqn.2026-11.org.ferry:agent
ME=iqn.2026-11.org.ferry:initiator
TPG=/sys/kernel/config/target/iscsi/$IQN2/tpgt_1
must ferry volume create /var/lib/ferry/m1.img --size 64M
must ferry map node add g --portal 0.0.0.0:3260 --frontend lio
must ferry map target add "$IQN2"
must ferry map lun add m1 --target "$IQN2" --lun 1 --spec /var/lib/ferry/m1.img
must ferry map initiator add "$ME" --lun m1
RUST_LOG=info ferry agent --node g --frontend lio >>"$S/agent.log" 2>&1 &
agent_pid=$!
# Waits until a shell condition holds (up to 60 s), or fails with $2.
wait_for() {
  local i
  for i in $(seq 1 240); do
    eval "$1" && return 0
    kill -0 "$agent_pid" 2>/dev/null || fail "the agent exited: $(tail -n 5 "$S/agent.log")"
    sleep 0.25
  done
  fail "$2: $(tail -n 5 "$S/agent.log")"
}
wait_for '[ -L "$TPG/lun/lun_1/ferry_1" ] && [ -d "$TPG/acls/$ME/lun_1" ]' "the agent did not export m1"
[ -d "/sys/kernel/config/target/iscsi/$IQN" ] && fail "the agent left the unmapped target $IQN"
wait_for 'grep -q "serving \[m1\]" <<<"$(ferry map show)"' "the agent did not report serving m1"
log "agent exported the map's LUN through LIO ($(since "$t") s)"
# The agent's LUNs get ferry's defaults, not the kernel's 64 KiB commands
# and 64-command window.
AGENT_CORE=$(readlink -f "$TPG/lun/lun_1/ferry_1")
[ "$(cat "$AGENT_CORE/attrib/hw_max_sectors")" = 2048 ] ||
  fail "the agent's backstore has hw_max_sectors=$(cat "$AGENT_CORE/attrib/hw_max_sectors"), not 2048"
[ "$(cat "$TPG/attrib/default_cmdsn_depth")" = 128 ] ||
  fail "the agent's target has default_cmdsn_depth=$(cat "$TPG/attrib/default_cmdsn_depth"), not 128"
grep -q "Max Data Area" "$AGENT_CORE/info" && log "agent backstore info: $(tr '\n' ' ' <"$AGENT_CORE/info")"
must iscsiadm -m discovery -t st -p 127.0.0.1:3260
must iscsiadm -m node -T "$IQN2" -p 127.0.0.1:3260 --login
DEV2=$(disk_of_size $((64 * MiB))) || fail "no 64 MiB disk after logging in to the agent's target"
head -c 1M /dev/urandom >/tmp/chunk
must dd if=/tmp/chunk of="$DEV2" bs=1M oflag=direct conv=fsync
cmp <(dd if="$DEV2" bs=1M count=1 iflag=direct 2>/dev/null) /tmp/chunk || fail "read back differs through the agent's LUN"
cmp <(head -c 1M /var/lib/ferry/m1.img) /tmp/chunk || fail "the volume file lacks the write"
serial=$(cat /sys/kernel/config/target/core/user_*/m1/wwn/vpd_unit_serial | head -n1)
log "agent's LUN: $DEV2, writes land in the volume, $serial"
# Online resize from the map: the agent grows the volume through
# tcmu-runner's control socket and LIO's device size follows; the
# initiator sees it at a rescan, without logging out.
t=$(now)
must ferry map lun set m1 --size 96M
wait_for '[ "$(stat -c %s /var/lib/ferry/m1.img)" = $((96 * MiB)) ]' "the agent did not grow m1"
wait_for '[ "$(cat "$AGENT_CORE/attrib/dev_size")" = $((96 * MiB)) ]' "LIO's device size did not follow"
echo 1 >"/sys/block/$(basename "$DEV2")/device/rescan"
wait_for '[ "$(blockdev --getsize64 "$DEV2")" = $((96 * MiB)) ]' "the initiator saw no 96 MiB after a rescan"
head -c 1M /dev/urandom >/tmp/tail
must dd if=/tmp/tail of="$DEV2" bs=1M seek=95 oflag=direct conv=fsync
cmp <(dd if="$DEV2" bs=1M skip=95 count=1 iflag=direct 2>/dev/null) /tmp/tail ||
  fail "the block past the old end reads back wrong"
cmp <(tail -c 1M /var/lib/ferry/m1.img) /tmp/tail || fail "the volume lacks the write past the old end"
cmp <(dd if="$DEV2" bs=1M count=1 iflag=direct 2>/dev/null) /tmp/chunk || fail "the resize changed old data"
log "online resize through LIO: 64 -> 96 MiB seen after a rescan, written past the old end ($(since "$t") s)"
must iscsiadm -m node -T "$IQN2" -p 127.0.0.1:3260 --logout
must ferry map initiator unmap "$ME" m1
wait_for '[ ! -d "$TPG/acls/$ME/lun_1" ]' "the unmapped LUN stayed mapped"
must ferry map lun remove m1
wait_for '[ ! -d "$TPG" ] && ! ls -d /sys/kernel/config/target/core/user_*/m1 >/dev/null 2>&1' \
  "the removed LUN's target or backstore stayed"
log "agent followed unmap and removal ($(since "$t") s in all)"

# CHAP and mutual CHAP from the map: LIO asks for CHAP per ACL (no
# secret, no login) and answers the initiator's challenge with the
# target's own secret, which open-iscsi checks.
t=$(now)
IQN3=iqn.2026-11.org.ferry:chap
TPG3=/sys/kernel/config/target/iscsi/$IQN3/tpgt_1
echo "chap-secret-4242" >/var/lib/ferry/chap
echo "mutual-secret-7777" >/var/lib/ferry/mutual
must ferry volume create /var/lib/ferry/m2.img --size 16M
must ferry map target add "$IQN3" --chap-user host1 --chap-secret-file /var/lib/ferry/chap \
  --mutual-chap-user tgt1 --mutual-chap-secret-file /var/lib/ferry/mutual
must ferry map lun add m2 --target "$IQN3" --lun 1 --spec /var/lib/ferry/m2.img
must ferry map initiator map "$ME" m2
wait_for '[ -L "$TPG3/lun/lun_1/ferry_1" ] && [ -d "$TPG3/acls/$ME/lun_1" ]' "the agent did not export m2"
[ "$(cat "$TPG3/attrib/authentication")" = 1 ] || fail "CHAP is off on $IQN3"
[ "$(cat "$TPG3/acls/$ME/auth/userid")" = host1 ] || fail "the ACL has no CHAP user"
[ "$(cat "$TPG3/acls/$ME/auth/userid_mutual")" = tgt1 ] || fail "the ACL has no mutual CHAP user"
must iscsiadm -m discovery -t st -p 127.0.0.1:3260
if iscsiadm -m node -T "$IQN3" -p 127.0.0.1:3260 --login >>"$S/guest.log" 2>&1; then
  fail "a login without CHAP got in"
fi
for kv in node.session.auth.authmethod=CHAP node.session.auth.username=host1 \
  node.session.auth.password=chap-secret-4242 node.session.auth.username_in=tgt1 \
  node.session.auth.password_in=not-the-target-secret; do
  must iscsiadm -m node -T "$IQN3" -p 127.0.0.1:3260 -o update -n "${kv%%=*}" -v "${kv#*=}"
done
# The initiator expects another target secret: it refuses the target.
if iscsiadm -m node -T "$IQN3" -p 127.0.0.1:3260 --login >>"$S/guest.log" 2>&1; then
  fail "open-iscsi accepted a target with the wrong mutual CHAP secret"
fi
must iscsiadm -m node -T "$IQN3" -p 127.0.0.1:3260 -o update \
  -n node.session.auth.password_in -v mutual-secret-7777
must iscsiadm -m node -T "$IQN3" -p 127.0.0.1:3260 --login
must iscsiadm -m node -T "$IQN3" -p 127.0.0.1:3260 --logout
grep -q chap-secret-4242 "$S/agent.log" && fail "the agent log shows the CHAP secret"
grep -q mutual-secret-7777 "$S/agent.log" && fail "the agent log shows the mutual CHAP secret"
must ferry map lun remove m2
wait_for '[ ! -d "$TPG3" ]' "the CHAP target stayed after its LUN went"
log "CHAP and mutual CHAP from the map: refused without the secret, target refused with the wrong one, logged in with both ($(since "$t") s)"

# ALUA through LIO: a tgt node t (tgtd on :3261 with its own agent) owns
# LUN m3; the LIO node g exports it in standby (its backstore opened by
# the handler without opening the volume) with one implicit ALUA group
# per node in configfs, so LIO reports TPGS, the port group designators
# and RTPG, and refuses media access. t dies: g takes the LUN over, its
# group turns active once the handler opened the volume, and the data
# written through t reads back through g.
t=$(now)
IQN4=iqn.2026-11.org.ferry:alua
M3=/var/lib/ferry/m3.img
install -D -m 0755 "$S/libbs_ferry.so" /usr/lib/tgt/backing-store/bs_ferry.so
mkdir -p /run/ferry-t
FERRY_RUN_DIR=/run/ferry-t tgtd -f --iscsi portal=127.0.0.1:3261 -C 1 >>"$S/tgtd-t.log" 2>&1 &
tgtd_t=$!
wait_for 'tgtadm -C 1 --lld iscsi --mode target --op show >/dev/null 2>&1' "tgtd t did not start"
must ferry volume create "$M3" --size 16M
must ferry map node add t --portal 127.0.0.1:3261
RUST_LOG=info ferry agent --node t --tgtd-control 1 --run-dir /run/ferry-t --metrics off >>"$S/agent-t.log" 2>&1 &
agent_t=$!
owner_of() { ferry map show --json | python3 -c "import json,sys; print(json.load(sys.stdin)['owners'].get('$1',''))"; }
is_live() { ferry map show --json | python3 -c "import json,sys; sys.exit('$1' not in json.load(sys.stdin)['live'])"; }
# t live before the LUN exists, so the map's order (t first) decides.
wait_for 'is_live t' "node t did not register"
must ferry map target add "$IQN4"
must ferry map lun add m3 --target "$IQN4" --lun 1 --spec "$M3" --nodes t,g
must ferry map initiator map "$ME" m3
wait_for '[ "$(owner_of m3)" = t ]' "node t did not claim m3"
CORE3=
wait_for 'CORE3=$(ls -d /sys/kernel/config/target/core/user_*/m3 2>/dev/null | head -n1); [ -n "$CORE3" ] && [ "$(cat "$CORE3"/alua/ferry_*/alua_access_state 2>/dev/null | sort | tr "\n" " ")" = "0 2 " ]' \
  "g did not export m3 in standby with ALUA groups: $(grep -E "m3|ALUA|port" "$S/agent.log" | tail -n 5)"
log "m3: owned by t, exported by g in standby ($(ls "$CORE3/alua" | tr '\n' ' '))"
ls -l /proc/"$runner_pid"/fd 2>/dev/null | grep -q "$M3" && fail "tcmu-runner opened m3's volume in standby"
must iscsiadm -m discovery -t st -p 127.0.0.1:3260
must iscsiadm -m node -T "$IQN4" -p 127.0.0.1:3260 --login
must iscsiadm -m discovery -t st -p 127.0.0.1:3261
must iscsiadm -m node -T "$IQN4" -p 127.0.0.1:3261 --login
# Which disk is which path: tgt reports vendor FERRY, LIO LIO-ORG.
disk_of() {
  local d
  for d in /sys/class/scsi_disk/*/device; do
    [ "$(cat "$d/vendor" | tr -d ' ')" = "$1" ] && [ "$(cat "$d/model" | tr -d ' ')" = "$2" ] &&
      ls "$d/block" 2>/dev/null | head -n1 && return 0
  done
  return 1
}
wait_for 'disk_of FERRY VOLUME >/dev/null && disk_of LIO-ORG TCMUdevice >/dev/null' "the two m3 paths did not appear"
via_t=/dev/$(disk_of FERRY VOLUME)
via_g=/dev/$(disk_of LIO-ORG TCMUdevice)
sg_inq "$via_g" | grep -q "TPGS=1" || fail "LIO does not report implicit ALUA for m3: $(sg_inq "$via_g" | grep TPGS)"
sg_rtpg "$via_g" >>"$S/guest.log" 2>&1 || fail "RTPG through g failed"
if out=$(sg_turs -v "$via_g" 2>&1); then fail "TEST UNIT READY passed on g's standby path"; fi
echo "$out" | grep -qi "standby" || fail "g's standby path answered: $out"
head -c $((4 * MiB)) /dev/urandom >/tmp/m3.data
must dd if=/tmp/m3.data of="$via_t" bs=1M oflag=direct status=none
log "m3 through LIO's standby path: TPGS=1, RTPG, TEST UNIT READY refused (standby); 4 MiB written through t"
tt=$(now)
kill -9 "$agent_t" "$tgtd_t"
wait_for '[ "$(owner_of m3)" = g ]' "g did not take m3 over"
wait_for 'sg_turs "$via_g" >/dev/null 2>&1' "g's path did not turn active: $(sg_rtpg "$via_g" 2>&1 | tr '\n' ' ')" 
sg_rtpg "$via_g" >>"$S/guest.log" 2>&1
cmp <(dd if="$via_g" bs=1M count=4 iflag=direct status=none) /tmp/m3.data ||
  fail "what t acknowledged does not read back through g"
ls -l /proc/"$runner_pid"/fd | grep -q "$M3" || fail "g serves m3 without its volume open"
log "t killed: g took m3 over and serves it through LIO ($(since "$tt") s), the data written through t reads back"
must iscsiadm -m node -T "$IQN4" --logout
kill "$agent_pid"
log "ALUA through LIO ($(since "$t") s in all)"

collect
grep -E "ferry" /var/log/tcmu-runner.log | tail -n 20 >>"$S/guest.log"
log "all checks passed"
echo ok >"$S/result"
