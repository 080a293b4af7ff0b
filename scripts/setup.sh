#!/usr/bin/env bash
# Installs what ferry needs on a fresh Debian 12 machine and builds it.
# Safe to run again: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential pkg-config clang libclang-dev   # bindgen for the plugins' FFI
  tgt libiscsi-bin libiscsi-dev                   # tgtd target, libiscsi initiators
  librbd-dev librados-dev                         # the RBD backend (feature rbd)
  ceph ceph-mon ceph-osd ceph-mgr ceph-common     # loopback test clusters
  uuid-runtime                                    #   (scripts/ceph-cluster.sh)
  qemu-system-x86 debootstrap                     # the LIO/tcmu-runner guest tests
  zookeeper                                       # the cluster LUN map (tests start their own servers)
  prometheus curl                                 # the metrics tests (promtool, a real scraping server)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo-nextest >/dev/null && ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

# The Debian package's builder (scripts/deb.sh, tests/deb.rs).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deb"
  cargo install --locked cargo-deb
fi

cargo build --release --workspace --all-features

# tgtd loads every file in its backing-store directory; install bs_ferry.so
# atomically (a new inode), so a running tgtd keeps its mapped copy.
install -d /usr/lib/tgt/backing-store
install -m 0755 target/release/libbs_ferry.so /usr/lib/tgt/backing-store/.bs_ferry.so.new
mv /usr/lib/tgt/backing-store/.bs_ferry.so.new /usr/lib/tgt/backing-store/bs_ferry.so
# tcmu-runner loads handler_*.so from its handler directory (only where
# tcmu-runner is installed; on this project's machines it runs in the
# guest VM of the tests).
tcmu_dir=/usr/lib/x86_64-linux-gnu/tcmu-runner
if [ -d "$tcmu_dir" ]; then
  install -m 0755 target/release/libhandler_ferry.so "$tcmu_dir/.handler_ferry.so.new"
  mv "$tcmu_dir/.handler_ferry.so.new" "$tcmu_dir/handler_ferry.so"
fi
echo "setup: done (target/release/ferry, ferry-iscsi; /usr/lib/tgt/backing-store/bs_ferry.so)"
