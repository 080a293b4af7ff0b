#!/usr/bin/env bash
# iSCSI speed of this tree's ferry against another revision's, in one run:
# benches/iscsi.sh from each tree in turn (each on its own tgtd, with its
# own bs_ferry.so), alternating for ROUNDS rounds, then per workload the
# median ferry IOPS of each build and the ratio this/other. tgt's rdwr
# backing store runs in every pass too, so a ratio can be read against
# how much the machine itself drifted (rdwr this/other).
#
#   benches/compare-builds.sh REV [ROUNDS] [SECONDS-PER-RUN]
#                             (defaults: 2 rounds of 5 s; after scripts/setup.sh)
#
# REV is checked out into a worktree under /var/tmp and built there
# (release, all features); the worktree is removed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:?usage: benches/compare-builds.sh REV [ROUNDS] [SECONDS]}
rounds=${2:-2}
secs=${3:-5}
work=$(mktemp -d /var/tmp/ferry-compare.XXXXXX)
other=$work/tree

cleanup() {
  git -C "$here" worktree remove --force "$other" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

git -C "$here" worktree add --detach "$other" "$rev" >/dev/null
echo "building $rev and this tree (release)..."
(cd "$other" && cargo build --release --quiet -p ferry-tgt -p ferry -p ferry-initiator)
(cd "$here" && cargo build --release --quiet -p ferry-tgt -p ferry -p ferry-initiator)

# Each pass leaves its table's rows (workload rdwr ferry ...) in a file.
for r in $(seq 1 "$rounds"); do
  for side in other this; do
    tree=$here
    [ "$side" = other ] && tree=$other
    echo "round $r: $side"
    bash "$tree/benches/iscsi.sh" "$secs" | awk '/^(4K|1M)-/ {print $1, $2, $3}' \
      >>"$work/$side.rows"
  done
done

median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

short=$(git -C "$here" rev-parse --short "$rev")
printf '\n%-22s %12s %12s %14s %16s\n' workload "ferry($short)" "ferry(this)" "this/other" "rdwr this/other"
for w in $(awk '{print $1}' "$work/this.rows" | sort -u); do
  fo=$(awk -v w="$w" '$1==w {print $3}' "$work/other.rows" | median)
  ft=$(awk -v w="$w" '$1==w {print $3}' "$work/this.rows" | median)
  ro=$(awk -v w="$w" '$1==w {print $2}' "$work/other.rows" | median)
  rt=$(awk -v w="$w" '$1==w {print $2}' "$work/this.rows" | median)
  awk -v w="$w" -v fo="$fo" -v ft="$ft" -v ro="$ro" -v rt="$rt" \
    'BEGIN {printf "%-22s %12s %12s %13.2fx %15.2fx\n", w, fo, ft, ft / fo, rt / ro}' 
done
echo "(median IOPS of $rounds rounds of $secs s; idle LUNs, as benches/iscsi.sh's ferry column)"
