#!/usr/bin/env bash
# The deploy pipeline's "always create a backup" step: a pinned backup tagged pre-deploy and the
# release about to be deployed. Prints the backup id on stdout (--json: the backup summary).
#
#   scripts/pre-deploy-snapshot.sh --release v1.3.0 [--lock-wait 15m] [--json]
#
# --lock-wait (default 15m): how long to wait while another backup or a prune holds the repository
# (the nightly backup, another pipeline's snapshot) and for table locks; then fail (exit 21 or 13)
# naming the holder. The wait is said once on stderr.
#
# Rollback path if the deploy goes wrong:
#   scripts/rollback/database-rollback.sh --version <previous release> --dry-run   # the plan
#   scripts/rollback/database-rollback.sh --version <previous release>             # migrate down
#   scripts/rollback/database-rollback.sh --version <previous release> --emergency # restore the backup
set -euo pipefail
source "$(dirname "$0")/lib.sh"
release=""; json=(); lock_wait=15m
while [ $# -gt 0 ]; do
  case $1 in
    --release)
      [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#-}" = "$2" ] || { echo "pre-deploy-snapshot: --release needs a value, e.g. --release v1.3.0" >&2; exit 2; }
      release=$2; shift 2 ;;
    --release=*) release=${1#--release=}; shift ;;
    --lock-wait)
      [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#-}" = "$2" ] || { echo "pre-deploy-snapshot: --lock-wait needs a duration, e.g. --lock-wait 15m" >&2; exit 2; }
      lock_wait=$2; shift 2 ;;
    --lock-wait=*) lock_wait=${1#--lock-wait=}; shift ;;
    --json) json=(--json); shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "pre-deploy-snapshot: unknown argument '$1'; usage: --release vX.Y.Z [--lock-wait 15m] [--json]" >&2; exit 2 ;;
  esac
done
[ -n "$release" ] || { echo "pre-deploy-snapshot: --release vX.Y.Z is required (the release about to be deployed)" >&2; exit 2; }
exec "$(dbrecovery_bin dbbackup)" --tag pre-deploy --release "$release" --pin --lock-wait "$lock_wait" --quiet "${json[@]}"
