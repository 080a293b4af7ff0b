#!/usr/bin/env bash
# Fetches tcmu-runner's source (Debian's `tcmu` source package, 1.5.4 on
# Debian 12) once into a cache directory and prints the path of the tree,
# for the handler's ABI layout test:
#
#   TCMU_SRC=$(bash scripts/tcmu-src.sh) cargo nextest run -p ferry-tcmu --test layout
#
# tcmu-runner ships no development headers, so the test compiles
# handler/tcmu/layout/layout.c against the source tree. The cache
# (default /var/tmp/ferry-tcmu-src, or $1) survives runs; with the tree
# already there nothing is fetched. Where the machine's APT sources carry
# no deb-src entry, one is added beside the Debian source list
# (debian-src.sources: the same archives, deb-src). Needs root for that
# and for apt-get update; everything else goes to stdout only on success
# (progress to stderr).
set -euo pipefail
cache=${1:-${TCMU_SRC_CACHE:-/var/tmp/ferry-tcmu-src}}

tree() { # the unpacked tree in the cache, if any
  local d
  for d in "$cache"/tcmu-*/; do
    if [ -f "$d/tcmu-runner.h" ]; then
      (cd "$d" && pwd)
      return 0
    fi
  done
  return 1
}

if tree; then exit 0; fi

lists=/etc/apt/sources.list.d
has_deb_src() {
  grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list "$lists"
}
if ! has_deb_src; then
  src=$lists/debian.sources
  if [ ! -f "$src" ]; then
    echo "tcmu-src: no deb-src entry and no $src to derive one from" >&2
    exit 1
  fi
  echo "tcmu-src: adding $lists/debian-src.sources (deb-src of $src)" >&2
  sed 's/^Types:.*/Types: deb-src/' "$src" >"$lists/debian-src.sources.new"
  mv "$lists/debian-src.sources.new" "$lists/debian-src.sources"
fi
# dpkg-source unpacks what apt-get source downloads.
if ! command -v dpkg-source >/dev/null; then
  echo "tcmu-src: installing dpkg-dev" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpkg-dev >&2
fi
echo "tcmu-src: fetching the tcmu source package into $cache" >&2
apt-get update -qq >&2
mkdir -p "$cache"
# A partial download from an interrupted run is fetched again.
work=$(mktemp -d "$cache/.fetch.XXXXXX")
chmod 755 "$work" # apt fetches as its own user
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get source -qq tcmu >&2)
for d in "$work"/tcmu-*/; do
  [ -f "$d/tcmu-runner.h" ] || continue
  rm -rf "${cache:?}/$(basename "$d")"
  mv "$d" "$cache/"
done
if ! tree; then
  echo "tcmu-src: the tcmu source package has no tcmu-runner.h" >&2
  exit 1
fi
