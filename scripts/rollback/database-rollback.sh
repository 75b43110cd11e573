#!/usr/bin/env bash
# The runbook's database rollback, on dbrecovery:
#   database-rollback.sh --version v1.2.3 --dry-run     the plan (migrations to revert, full SQL); changes nothing
#   database-rollback.sh --version v1.2.3               migrate down to what release v1.2.3 had (backup first)
#   database-rollback.sh --version v1.2.3 --emergency   restore the newest verified backup of v1.2.3's state (the database at
#                                                       release v1.2.3 by dbmigrate's log: v1.3.0's pre-deploy snapshot is one)
# Then verify: SELECT version, applied_at FROM schema_version ORDER BY applied_at DESC LIMIT 1;
# Settings: DATABASE_URL, BACKUP_REPO, MIGRATIONS_DIR (default ./migrations).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
version=""; dry_run=(); emergency=false
while [ $# -gt 0 ]; do
  case $1 in
    --version) version=${2:-}; shift 2 ;;
    --dry-run) dry_run=(--dry-run); shift ;;
    --emergency) emergency=true; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "database-rollback: unknown argument '$1'; usage: --version vX.Y.Z [--dry-run] [--emergency]" >&2; exit 2 ;;
  esac
done
[ -n "$version" ] || { echo "database-rollback: --version vX.Y.Z is required (the release to roll back to)" >&2; exit 2; }
if $emergency; then
  exec "$(dbrecovery_bin dbrestore)" --emergency --release "$version" "${dry_run[@]}"
fi
exec "$(dbrecovery_bin dbmigrate)" down --to-release "$version" --dir "${MIGRATIONS_DIR:-migrations}" --yes "${dry_run[@]}"
