#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests that start their own PostgreSQL
# cluster (and S3 server) on loopback ports and stop them by PID. Run scripts/setup.sh first.
#
# The tests run under a temporary root of their own (TMPDIR), which must be empty at the end: a test
# that leaves a cluster, a repository or moto data behind fails the suite. Arguments go to
# `swift test` (e.g. --filter RestoreTests).
set -euo pipefail
cd "$(dirname "$0")/.."

# No force-unwrap, try! or as! in Sources: each is a crash without a message. Checked first, reported
# again at the end; the tests still run, so one finding does not hide the others.
lint_status=0
warning_status=0
perl scripts/lint-unwraps.pl Sources || lint_status=1

# A build failure fails the suite (its errors are printed), never hidden behind a filter.
build_log=$(mktemp)
if ! swift build --build-tests >"$build_log" 2>&1; then
  grep -E "error:|warning: unre" "$build_log" >&2 || tail -40 "$build_log" >&2
  rm -f "$build_log"
  echo "test.sh: the build failed (errors above)" >&2
  exit 1
fi
# Swift 6 language mode with no warnings (issue 20): a warning in the project's own sources fails the
# suite like the lint above (the dependencies' warnings are theirs). An incremental build shows only
# what it recompiled; CI builds from scratch and so sees every file.
if grep -E "^$PWD/(Sources|Tests)/.*: warning:" "$build_log" >&2; then
  warning_status=1
  echo "test.sh: the build has warnings in the project's sources (above); fix them" >&2
fi
rm -f "$build_log"

# World-traversable: the PostgreSQL server runs as `postgres` when the tests run as root.
root=$(mktemp -d "${TMPDIR:-/tmp}/dbrecovery-tests.XXXXXX")
chmod 755 "$root"
status=0
# Only XCTest is used; without this flag an empty Swift Testing run prints "0 tests" last.
TMPDIR="$root/" swift test --skip-build --disable-swift-testing "$@" || status=$?

# A test process that crashed cannot stop its servers: stop them here, by the PIDs the sandbox
# scripts recorded, and count it as something left behind.
while IFS= read -r -d '' pidfile; do
  dir=$(dirname "$pidfile")
  case $(basename "$pidfile") in
    server.pid) scripts/pg-sandbox.sh stop "$dir" || true ;;
    moto.pid) scripts/s3-sandbox.sh stop "$dir" || true ;;
  esac
done < <(find "$root" -maxdepth 3 \( -name server.pid -o -name moto.pid \) -print0 2>/dev/null)
# SwiftPM's own lock files and TemporaryDirectory.* folders are its bookkeeping, not the tests'.
# A server a test started itself (dbrestore --pitr) is stopped by the PID in its postmaster.pid, and
# only if that process runs on that very data directory.
while IFS= read -r -d '' pidfile; do
  dir=$(dirname "$pidfile")
  pid=$(head -1 "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir"; then
    echo "test.sh: stopping PostgreSQL $pid left running in $dir" >&2
    kill -QUIT "$pid" 2>/dev/null || true
  fi
done < <(find "$root" -maxdepth 5 -name postmaster.pid -print0 2>/dev/null)
leftovers=$(find "$root" -mindepth 1 -maxdepth 1 ! -name '_*.lock' ! -name 'TemporaryDirectory.*' 2>/dev/null | sort)
if [ -n "$leftovers" ]; then
  echo "test.sh: the tests left $(echo "$leftovers" | wc -l) entries in $root (tests must remove what they create, also on failure):" >&2
  echo "$leftovers" | head -20 | sed 's/^/  /' >&2
  if [ "$status" = 0 ]; then status=1; fi
fi
rm -rf "$root"
if [ "$lint_status" != 0 ]; then
  echo "test.sh: failed: force-unwrap, try! or as! in Sources (listed at the start)" >&2
  if [ "$status" = 0 ]; then status=1; fi
fi
if [ "$warning_status" != 0 ]; then
  echo "test.sh: failed: compiler warnings in the project's sources (listed after the build)" >&2
  if [ "$status" = 0 ]; then status=1; fi
fi
exit "$status"
