#!/usr/bin/env bash
# The containerd versions the tests and benchmarks run against, in one place,
# and a way to get each one without touching the machine's own apt sources or
# its installed containerd:
#
#   scripts/containerd-versions.sh list          VERSION DEBIAN-SUITE PACKAGE-VERSION per line
#   scripts/containerd-versions.sh path VERSION  prints the containerd binary for VERSION,
#                                                fetching and unpacking it under target/ first
#
# 1.6 is bookworm's installed package (/usr/bin/containerd). 1.7 and 2.1 are
# Debian trixie's and sid's packages, fetched with `apt-get download` through
# a temporary sources list and a private package-list directory, unpacked with
# `dpkg-deb -x` into target/containerd/<package-version>/, and reused while
# the unpacked version matches.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSIONS="1.6 bookworm 1.6.20~ds1-1+deb12u3
1.7 trixie 1.7.24~ds1-6+deb13u1
2.1 sid 2.1.9+ds1-5"

case "${1:-}" in
list) echo "$VERSIONS" ;;
path)
  want="${2:?version}"
  line="$(echo "$VERSIONS" | awk -v v="$want" '$1 == v')"
  [ -n "$line" ] || { echo "unknown containerd version $want (known: $(echo "$VERSIONS" | cut -d' ' -f1 | tr '\n' ' '))" >&2; exit 2; }
  suite="$(echo "$line" | cut -d' ' -f2)"; pkgver="$(echo "$line" | cut -d' ' -f3)"
  if [ "$suite" = bookworm ]; then command -v containerd; exit 0; fi
  dir="$REPO/target/containerd/$pkgver"
  if [ ! -x "$dir/usr/bin/containerd" ]; then
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$dir"
    printf 'deb http://deb.debian.org/debian %s main\n' "$suite" >"$tmp/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
              -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "APT::Get::List-Cleanup=0")
    apt-get "${apt_opts[@]}" update -qq 2>&1 | grep -v "unsandboxed" >&2 || true
    # The exact revision, else the suite's current one of the same upstream
    # version (sid moves on; a Debian revision does not change containerd).
    (cd "$tmp" && { apt-get "${apt_opts[@]}" download -qq "containerd=$pkgver" 2>/dev/null ||
                    apt-get "${apt_opts[@]}" download -qq "containerd/$suite"; } >&2)
    deb="$(ls "$tmp"/containerd_*.deb)"
    got="$(dpkg-deb -f "$deb" Version)"
    case "$got" in "${pkgver%%[~+]*}"*) ;; *) echo "containerd in $suite is now $got, not ${pkgver%%[~+]*}: update VERSIONS in $0" >&2; exit 1 ;; esac
    dpkg-deb -x "$deb" "$dir"
  fi
  echo "$dir/usr/bin/containerd"
  ;;
*) echo "usage: $0 list | path VERSION" >&2; exit 2 ;;
esac
