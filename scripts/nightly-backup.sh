#!/usr/bin/env bash
# The nightly cron job: backup, prune, and on the first of the month a restore drill.
# Silent on success. On failure: one paragraph on stderr and the failing step's exit code.
#
# Settings come from the environment or /etc/dbrecovery/config.toml: DATABASE_URL, BACKUP_REPO
# (or BACKUP_S3_BUCKET). Optional: METRICS_DIR (Prometheus textfiles, one per step),
# DBRECOVERY_NOTIFY_URL (JSON event on failure), DRILL_DAY (default 01; "always" or "never").
set -uo pipefail
source "$(dirname "$0")/lib.sh"
dbbackup=$(dbrecovery_bin dbbackup) || exit 12
dbprune=$(dbrecovery_bin dbprune) || exit 12
dbrestore=$(dbrecovery_bin dbrestore) || exit 12
log=$(mktemp /tmp/dbrecovery-nightly.XXXXXX)
trap 'rm -f "$log"' EXIT

# The metrics option for one step, as an array (METRICS_DIR may contain spaces).
metrics_for() {  # step name
  metrics=()
  if [ -n "${METRICS_DIR:-}" ]; then metrics=(--metrics-file "$METRICS_DIR/dbrecovery_$1.prom"); fi
}
run_step() {  # name, command...
  local name=$1; shift
  "$@" >>"$log" 2>&1
  local code=$?
  if [ "$code" -ne 0 ]; then
    {
      echo "nightly backup FAILED at step '$name' (exit code $code) on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)."
      echo "What it said: $(grep -E 'error:|HINT:' "$log" | tail -2 | tr '\n' ' ')"
      echo "Earlier steps completed; nothing half-written is visible as a backup. Exit codes: README, 'Exit codes'."
    } >&2
    exit "$code"
  fi
}

metrics_for backup; run_step backup "$dbbackup" --tag nightly --quiet "${metrics[@]}"
metrics_for prune; run_step prune "$dbprune" --yes --quiet "${metrics[@]}"
drill_day=${DRILL_DAY:-01}
if [ "$drill_day" = always ] || { [ "$drill_day" != never ] && [ "$(date +%d)" = "$drill_day" ]; }; then
  metrics_for drill; run_step drill "$dbrestore" --drill --quiet "${metrics[@]}"
fi
exit 0
