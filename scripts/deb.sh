#!/usr/bin/env bash
# Builds the Debian package: everything in release (the plugins too), the
# man pages from the command line's own definitions (`ferry man`), then
# cargo-deb (installed when missing). Prints the package's path.
#
#   scripts/deb.sh            (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
  echo "deb: installing cargo-deb" >&2
  cargo install --locked cargo-deb >&2
fi
cargo build --release --workspace --all-features >&2
rm -rf target/man
target/release/ferry man target/man >&2
# cargo-deb prints the package's path last.
cargo deb --no-build -p ferry | tail -n 1
