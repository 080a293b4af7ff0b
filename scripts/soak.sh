#!/usr/bin/env bash
# The long soak of the engine's random model (issue 13), outside CI:
# random I/O, copier steps, aborts, commits and restarts, with process
# crashes and power losses at random device calls, checked against a
# reference disk after each; a finished migration is followed by another.
#
#   scripts/soak.sh [OPS] [SEED]      (default 1000000 operations, seed 1)
#
# Runs crates/ferry-core/tests/soak.rs in a release build and prints its
# counts (operations, acknowledged writes, flushes, crashes of each kind,
# restarts, migrations, commits, aborts). CI runs the same test with
# 20,000 operations.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY_SOAK_OPS=${1:-1000000} FERRY_SOAK_SEED=${2:-1} \
  cargo test --release -p ferry-core --features sim --test soak -- --nocapture 2>&1 |
  grep -E '^soak:|test result|panicked|failed'
