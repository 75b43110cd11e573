# shellcheck shell=bash
# Shared by the wrapper scripts: finds the dbrecovery executables.
# Order: $DBRECOVERY_BIN, then PATH, then this checkout's release and debug builds, then the bin/
# directory of an installed tree (scripts/install.sh puts the scripts in PREFIX/share/dbrecovery/scripts).
dbrecovery_bin() {
  local name=$1 here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  for candidate in ${DBRECOVERY_BIN:+"$DBRECOVERY_BIN/$name"} "$(command -v "$name" 2>/dev/null)" \
                   "$here/.build/release/$name" "$here/.build/debug/$name" "$here/../../bin/$name"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  echo "dbrecovery: $name not found; install it on PATH, set DBRECOVERY_BIN, or run scripts/setup.sh" >&2
  return 12
}
