#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests that start their own PostgreSQL
# cluster (and S3 server) on loopback ports and stop them by PID. Run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --build-tests 2>&1 | grep -E "error|warning: unre|Compiling|Build" | grep -v "^\[" || true
# Only XCTest is used; without this flag an empty Swift Testing run prints "0 tests" last.
exec swift test --disable-swift-testing "$@"
