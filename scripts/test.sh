#!/usr/bin/env bash
# The one entry point for checks: formatting, lints (every target, every
# feature set), docs, then every test. CI runs exactly this (.ci/run).
#
# Every test runs for real. A test that needs something a machine does not
# always have is #[ignore]d, so a plain `cargo test` or `cargo nextest run`
# reports it skipped (never passed); this script provides what those tests
# need and runs them with the rest (`--run-ignored all`):
#   - two loopback Ceph clusters (scripts/ceph-cluster.sh) in
#     /var/tmp/ferry-ci-ceph-a (port 6790) and /var/tmp/ferry-ci-ceph-b
#     (port 6890), exported as CEPH_CONF and CEPH_CONF_B. A cluster found
#     running there is reused and left running; one a test.sh run started
#     is stopped when the last test.sh run using it exits (so a concurrent
#     run never loses its cluster mid-test);
#   - tcmu-runner's source tree for the handler's ABI layout test
#     (TCMU_SRC; scripts/tcmu-src.sh fetches it once into a cache, unless
#     TCMU_SRC is set);
#   - the QEMU guest of tests/guest_tcmu.rs, whose image the test builds
#     once and caches.
# Everything else the tests use (tgt, libiscsi's tools, ZooKeeper, Ceph,
# QEMU, debootstrap, a C compiler, cargo-nextest) comes from
# scripts/setup.sh; what is missing is named before anything runs.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "test.sh: $*" >&2
  exit 1
}

# ----- what must be installed -------------------------------------------
[ "$(id -u)" = 0 ] ||
  die "run as root: the tests start tgtd (installing its plugin under /usr/lib/tgt), Ceph daemons and a QEMU guest"
missing=()
for tool in tgtd tgtadm iscsi-test-cu ceph ceph-mon ceph-osd ceph-mgr monmaptool rbd uuidgen \
  java qemu-system-x86_64 debootstrap cc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
cargo nextest --version >/dev/null 2>&1 || missing+=(cargo-nextest)
((${#missing[@]} == 0)) ||
  die "missing ${missing[*]}: run scripts/setup.sh first (it installs everything the tests use)"

echo "== fmt";     cargo fmt --all -- --check
echo "== clippy";  cargo clippy --workspace --all-targets -- -D warnings
echo "== clippy (all features)"; cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== doc";     RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "== build"
# The end-to-end tests load target/debug/libbs_ferry.so into tgtd and run
# the workspace's binaries; test runners build neither.
cargo build --workspace --all-features

echo "== services"
# tcmu-runner ships no headers: its source tree (Debian's tcmu source
# package) is what the handler's ABI layout test compiles against.
if [ -z "${TCMU_SRC:-}" ]; then
  TCMU_SRC=$(bash scripts/tcmu-src.sh) || die "fetching tcmu-runner's source failed (scripts/tcmu-src.sh)"
fi
export TCMU_SRC
echo "tcmu-runner source: TCMU_SRC=$TCMU_SRC"

# ----- the loopback Ceph clusters ---------------------------------------
# A cluster is "test.sh's" when a test.sh run started it (a marker file
# beside its directory says so). Each run registers itself in $ceph_users
# while it uses the clusters; the last one out stops test.sh's clusters.
# A run killed before its exit trap leaves its entry behind: a dead pid is
# no user, so the next run's exit stops what it left running.
ceph_a=/var/tmp/ferry-ci-ceph-a
ceph_b=/var/tmp/ferry-ci-ceph-b
ceph_lock=/var/tmp/ferry-ci-ceph.lock
ceph_users=/var/tmp/ferry-ci-ceph.users
ceph_ours=()

# Whether the pid in $1 is a test.sh run that is still alive.
live_user() {
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'test\.sh'
}

# Starts (or reuses) the cluster in DIR $1 on port $2; called with the
# lock held on fd 7.
ceph_up() {
  local dir=$1 port=$2
  if ! bash scripts/ceph-cluster.sh running "$dir"; then
    touch "$dir.started-by-test.sh"
  fi
  if [ -e "$dir.started-by-test.sh" ]; then
    ceph_ours+=("$dir")
  fi
  CEPH_PORT=$port bash scripts/ceph-cluster.sh start "$dir" >/dev/null
}

ceph_start() {
  flock 7
  mkdir -p "$ceph_users"
  touch "$ceph_users/$$"
  ceph_up "$ceph_a" 6790
  ceph_up "$ceph_b" 6890
}

ceph_stop() {
  flock 7
  rm -f "$ceph_users/$$"
  local user dir
  for user in "$ceph_users"/*; do
    [ -e "$user" ] || continue
    if live_user "${user##*/}"; then
      echo "test.sh: test run ${user##*/} still uses the Ceph clusters: leaving them running" >&2
      return 0
    fi
    rm -f "$user"
  done
  for dir in "${ceph_ours[@]}"; do
    [ -e "$dir.started-by-test.sh" ] || continue
    bash scripts/ceph-cluster.sh stop "$dir" >/dev/null 2>&1 || true
    rm -f "$dir.started-by-test.sh"
  done
}

# Only this function's redirection opens the lock file: the tests and the
# daemons never inherit it.
trap 'ceph_stop 7>"$ceph_lock"' EXIT
# A signal ends the run through the exit trap.
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
ceph_start 7>"$ceph_lock"
export CEPH_CONF=$ceph_a/ceph.conf CEPH_CONF_B=$ceph_b/ceph.conf
echo "Ceph clusters ready: CEPH_CONF=$CEPH_CONF CEPH_CONF_B=$CEPH_CONF_B"

echo "== tests"
profile=default
[ "${CI:-}" = "true" ] && profile=ci
# --run-ignored all: the #[ignore]d tests need what this script provides.
cargo nextest run --workspace --all-features --profile "$profile" --no-tests=fail --run-ignored all
