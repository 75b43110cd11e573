#!/usr/bin/env bash
# The nightly cron job: backup, prune, and on the first of the month a restore drill.
# Silent on success. On failure: one paragraph on stderr and the failing step's exit code.
#
# Settings come from the environment or /etc/dbrecovery/config.toml: DATABASE_URL, BACKUP_REPO
# (or BACKUP_S3_BUCKET). Optional: METRICS_DIR (Prometheus textfiles, one per step),
# DBRECOVERY_NOTIFY_URL (JSON event on failure), DRILL_DAY (day of the month, default 1; "always" or "never").
#
#   scripts/nightly-backup.sh             # what cron runs
#   scripts/nightly-backup.sh --dry-run   # what it would do tonight: dbprune --dry-run, and whether the drill runs
set -uo pipefail
dry_run=false
for argument in "$@"; do
  case $argument in
    --dry-run) dry_run=true ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "nightly-backup: unknown argument '$argument'; it takes only --dry-run (settings come from the environment or the config file: --help)" >&2; exit 2 ;;
  esac
done
drill_day=${DRILL_DAY:-1}
case $drill_day in
  always|never) ;;
  *)
    if ! [[ $drill_day =~ ^[0-9]{1,2}$ ]] || ((10#$drill_day < 1 || 10#$drill_day > 31)); then
      echo "nightly-backup: DRILL_DAY='$drill_day' is not a day of the month (1 to 31), 'always' or 'never'" >&2; exit 2
    fi ;;
esac
drill_tonight=false
if [ "$drill_day" = always ] || { [ "$drill_day" != never ] && ((10#$(date +%d) == 10#$drill_day)); }; then drill_tonight=true; fi
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
completed=()
run_step() {  # name, command...
  local name=$1; shift
  "$@" >>"$log" 2>&1
  local code=$?
  if [ "$code" -ne 0 ]; then
    {
      echo "nightly backup FAILED at step '$name' (exit code $code) on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)."
      echo "What it said: $(grep -E 'error:|HINT:' "$log" | tail -2 | tr '\n' ' ')"
      if ((${#completed[@]})); then echo "Completed before it: ${completed[*]}."; else echo "No step completed before it."; fi
      echo "Nothing half-written is visible as a backup. Exit codes: README, 'Exit codes'."
    } >&2
    exit "$code"
  fi
  completed+=("$name")
}

if $dry_run; then
  echo "nightly-backup --dry-run: would run dbbackup --tag nightly, then dbprune --yes$($drill_tonight && echo ", then dbrestore --drill (DRILL_DAY=$drill_day)")."
  $drill_tonight || echo "No drill tonight (DRILL_DAY=$drill_day)."
  echo "What dbprune would delete now (before tonight's backup):"
  exec "$dbprune" --dry-run
fi
metrics_for backup; run_step backup "$dbbackup" --tag nightly --quiet "${metrics[@]}"
metrics_for prune; run_step prune "$dbprune" --yes --quiet "${metrics[@]}"
if $drill_tonight; then
  metrics_for drill; run_step drill "$dbrestore" --drill --quiet "${metrics[@]}"
fi
exit 0
