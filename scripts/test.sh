#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests that start their own PostgreSQL
# cluster (and S3 server) on loopback ports and stop them by PID. Run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --build-tests 2>&1 | grep -E "error|warning: unre|Compiling|Build" | grep -v "^\[" || true
exec swift test "$@"
