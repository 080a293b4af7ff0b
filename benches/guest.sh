#!/usr/bin/env bash
# ferry's tcmu-runner handler against LIO's own backstores, in one boot of
# the test guest (the real LIO + TCMU + open-iscsi + fio stack; see
# scripts/guest/). One command, ratios from one run:
#
#   benches/guest.sh [SECONDS-PER-RUN]     (default 5; after scripts/setup.sh)
#   BENCH_SIZE_MIB=512 benches/guest.sh    (size of each LUN's tmpfs file)
#
# Three LUNs of one target on equal tmpfs files: LIO `fileio` (the
# kernel), `user:ferry` (tcmu-runner + handler_ferry) and `user:qcow`
# (tcmu-runner's own qcow handler, on a qcow2 image of the same bytes).
# fio (libaio, direct) runs 4 KiB random read and write at QD1 and QD16 and
# 1 MiB sequential read and write at QD8 on each, idle, then on ferry
# during a migration. Goals (issue 15): user:ferry >= 0.8x fileio at QD16,
# >= 0.6x at QD1, >= 1.0x user:qcow on every row; during a migration
# >= 0.8x of idle while the copy advances >= 0.5x of its idle rate.
#
# The guest runs under TCG, so absolute figures are far below the host's;
# the ratios compare stacks that pay the same emulation. It boots with
# 6 GiB (FERRY_GUEST_MEM) so the tmpfs files fit (five of them at most).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-5}
size_mib=${BENCH_SIZE_MIB:-512}
cache=${FERRY_GUEST_CACHE:-/var/tmp/ferry-guest}

command -v qemu-img >/dev/null || {
  echo "installing qemu-utils (qemu-img makes the qcow2 image)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-utils >/dev/null
}
(cd "$here" && cargo build --release -q --workspace --all-features)
bash "$here/scripts/guest/build-image.sh" "$cache" >/dev/null

share=$(mktemp -d /var/tmp/ferry-guest-bench.XXXXXX)
trap 'rm -rf "$share"' EXIT
install -m 0755 "$here/target/release/libhandler_ferry.so" "$share/"
install -m 0755 "$here/target/release/ferry" "$share/"
install -m 0755 "$here/scripts/guest/lib.sh" "$here/benches/guest-lio.sh" "$share/"
echo "$secs" >"$share/secs"
echo "$size_mib" >"$share/size_mib"
# The same bytes for every LUN: fully written, so no backstore reads holes.
dd if=/dev/urandom of="$share/data.img" bs=1M count="$size_mib" status=none
# qcow2 version 2 (compat=0.10): what tcmu-runner's qcow handler reads.
qemu-img convert -f raw -O qcow2 -o compat=0.10 "$share/data.img" "$share/data.qcow2"

# Six workloads, four runs each, plus boot and setup.
timeout_s=$((24 * (secs + 8) + 300))
status=0
FERRY_GUEST_MEM=${FERRY_GUEST_MEM:-6144} \
  bash "$here/scripts/guest/run-guest.sh" "$cache" "$share" guest-lio.sh "$timeout_s" || status=$?
if [ "$status" -ne 0 ] || [ ! -s "$share/bench.txt" ]; then
  echo "guest bench failed ($status):" >&2
  tail -n 30 "$share/guest.log" >&2 || true
  tail -n 20 "$share/tcmu-runner.log" >&2 || true
  exit 1
fi
cat "$share/bench.txt"
