#!/usr/bin/env bash
# The runbook's backup commands, on dbrecovery:
#   backup-procedures.sh backup          create a backup (prints its id)
#   backup-procedures.sh list            list backups, newest first
#   backup-procedures.sh restore ID      verified restore of backup ID (current database kept aside)
#   backup-procedures.sh verify ID       check the live database's row counts against backup ID
# Settings: DATABASE_URL and BACKUP_REPO (or /etc/dbrecovery/config.toml).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
case ${1:-} in
  backup) exec "$(dbrecovery_bin dbbackup)" --tag manual ;;
  list) exec "$(dbrecovery_bin dbrestore)" list ;;
  restore) [ -n "${2:-}" ] || { echo "usage: $0 restore BACKUP_ID (see: $0 list)" >&2; exit 2; }
           exec "$(dbrecovery_bin dbrestore)" "$2" --yes ;;
  verify) [ -n "${2:-}" ] || { echo "usage: $0 verify BACKUP_ID (see: $0 list)" >&2; exit 2; }
          exec "$(dbrecovery_bin dbverify)" "$2" ;;
  *) sed -n '2,7p' "$0" >&2; exit 2 ;;
esac
