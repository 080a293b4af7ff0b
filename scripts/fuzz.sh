#!/usr/bin/env bash
# Fuzzes ferry's parsers of untrusted input with cargo-fuzz (libFuzzer):
# CDBs and their execution, PR OUT parameter lists, TransportIDs, UNMAP
# lists, volume specs, tcmu cfgstrings and the cluster map's JSON. The
# targets live in fuzz/ (its own workspace), their seeds in
# fuzz/corpus/<target>/seed-*.
#
#   scripts/fuzz.sh [--short|--long] [target...]
#
# --short (the default, for CI): every target for FUZZ_SHORT_RUNS
#   executions (default 100000: about 15 s in all, after a build of about
#   1.5 min from scratch on 2 cores), growing a throw-away corpus.
# --long: every target for FUZZ_LONG_RUNS executions (default 10^7),
#   growing fuzz/corpus/<target> (ignored by git), at the lowest priority.
#
# One fuzzer runs at a time. Prints target, executions, seconds, exec/s and
# result for each, and exits non-zero if any target crashed, hung or failed
# to run; a crash leaves its input in fuzz/artifacts/<target>/, replayed by
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -s none <target> \
#     fuzz/artifacts/<target>/<file>
#
# Works on stable Rust: libFuzzer's instrumentation needs unstable flags,
# which RUSTC_BOOTSTRAP=1 allows; without a sanitizer (-s none) nothing
# needs a nightly standard library. The code fuzzed is safe Rust, so what
# is looked for is panics (overflow checks and debug assertions are on),
# hangs (-timeout) and runaway allocations (-rss_limit_mb).
# FUZZ_SANITIZER=address adds AddressSanitizer (with a nightly toolchain:
# RUSTUP_TOOLCHAIN=nightly). FUZZ_TARGET_DIR moves the build (default
# fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=short
targets=()
for arg in "$@"; do
  case "$arg" in
    --short) mode=short ;;
    --long) mode=long ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $arg" >&2; exit 2 ;;
    *) targets+=("$arg") ;;
  esac
done
all=(cdb_exec pr_out transport_id unmap volume_spec tcmu_cfgstring map_json)
if [ ${#targets[@]} -eq 0 ]; then
  targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
  case " ${all[*]} " in
    *" $t "*) ;;
    *) echo "fuzz.sh: unknown target $t (targets: ${all[*]})" >&2; exit 2 ;;
  esac
done

if [ "$mode" = long ]; then
  runs=${FUZZ_LONG_RUNS:-10000000}
  nice=(nice -n 19)
else
  runs=${FUZZ_SHORT_RUNS:-100000}
  nice=()
fi
sanitizer=${FUZZ_SANITIZER:-none}
target_dir=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

# Logs, the short run's corpora and the map target's store directory (it
# rewrites map.json for every input, so on tmpfs where there is one: on
# ext4 each rewrite waits for writeback), removed afterwards.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  scratch=$(mktemp -d /dev/shm/ferry-fuzz.XXXXXX)
else
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/ferry-fuzz.XXXXXX")
fi
trap 'rm -rf "$scratch"' EXIT

fuzz=(cargo fuzz)
build_opts=(--fuzz-dir fuzz -s "$sanitizer" --target-dir "$target_dir")

echo "== building the fuzz targets ($mode)"
"${nice[@]}" "${fuzz[@]}" build "${build_opts[@]}"

# Longest input per target: CDB scripts carry data-out buffers; the
# string parsers need no more than a long path or a map of a few LUNs.
max_len() {
  case "$1" in
    cdb_exec|unmap|map_json) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

results=()
failed=0
passed=0
for t in "${targets[@]}"; do
  if [ "$mode" = long ]; then
    corpus=(fuzz/corpus/"$t")
  else
    mkdir -p "$scratch/corpus/$t"
    corpus=("$scratch/corpus/$t" fuzz/corpus/"$t")
  fi
  mkdir -p fuzz/artifacts/"$t"
  log=$scratch/$t.log
  echo "== $t: $runs executions"
  set +e
  TMPDIR=$scratch "${nice[@]}" "${fuzz[@]}" run "${build_opts[@]}" "$t" "${corpus[@]}" -- \
    -runs="$runs" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
  if [ "$rc" -eq 0 ] && [ -n "$done_line" ]; then
    execs=$(echo "$done_line" | awk '{print $2}')
    secs=$(echo "$done_line" | awk '{print $5}')
    # libFuzzer's own rate, from its last status line (0 for a run
    # shorter than a second).
    rate=$(grep -oE 'exec/s: [0-9]+' "$log" | tail -n 1 | awk '{print $2}')
    if [ "${rate:-0}" = 0 ]; then
      rate=-
    fi
    result=ok
    passed=$((passed + 1))
  else
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1 || true)
    execs=${execs:-?}
    secs=?
    rate=?
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | awk '{print $5}' || true)
    result="FAILED (exit $rc${artifact:+, input $artifact})"
    failed=$((failed + 1))
    echo "---- $t log: the panic, then the last 30 lines"
    grep -m 1 -A 3 'panicked at' "$log" || true
    echo "...."
    tail -n 30 "$log"
    echo "----"
  fi
  echo "   $t: $execs executions in $secs s, $rate exec/s, $result"
  results+=("$(printf '%-16s %12s %8s %10s  %s' "$t" "$execs" "$secs" "$rate" "$result")")
done

echo
printf '%-16s %12s %8s %10s  %s\n' target executions seconds exec/s result
for r in "${results[@]}"; do
  echo "$r"
done
echo "fuzz: $passed passed, $failed failed"
if [ "$failed" -ne 0 ]; then
  echo "fuzz.sh: a target failed; see the log above and fuzz/artifacts/" >&2
  exit 1
fi
