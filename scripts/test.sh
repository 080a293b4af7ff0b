#!/usr/bin/env bash
# The one entry point for checks: formatting, lints (every target, every
# feature set), docs, then every test. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== fmt";     cargo fmt --all -- --check
echo "== clippy";  cargo clippy --workspace --all-targets -- -D warnings
echo "== clippy (all features)"; cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== doc";     RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "== build"
# The end-to-end tests load target/debug/libbs_ferry.so into tgtd and run
# the workspace's binaries; test runners build neither.
cargo build --workspace --all-features
echo "== tests"
profile=default
[ "${CI:-}" = "true" ] && profile=ci
cargo nextest run --workspace --all-features --profile "$profile" --no-tests=fail
