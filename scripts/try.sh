#!/usr/bin/env bash
# The newcomer's tour. With no DATABASE_URL it starts a sandbox PostgreSQL cluster with sample data
# and walks the whole cycle: backup, prune (dry run), migrate up and down, an accident, emergency
# restore, verify — printing what each step did — then removes everything it made.
# With DATABASE_URL set it only takes a backup of that database into $BACKUP_REPO (or ./backups).
# DBRECOVERY_BIN=DIR uses already built executables instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${DBRECOVERY_BIN:-}" ]; then
  bin=$DBRECOVERY_BIN
else
  swift build 2>&1 | grep -E "error|Build" | tail -1
  bin=$(swift build --show-bin-path)
fi
# Bold headings on a terminal only, and never with NO_COLOR (https://no-color.org), like the tools.
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

if [ -n "${DATABASE_URL:-}" ]; then
  repo=${BACKUP_REPO:-$PWD/backups}
  step "dbbackup --repo $repo"
  "$bin/dbbackup" --repo "$repo"
  exit 0
fi

work=$(mktemp -d /tmp/dbrecovery-try.XXXXXX)
chmod 755 "$work"
cleanup() {
  scripts/pg-sandbox.sh stop "$work/cluster" || true
  rm -rf "$work"
}
trap cleanup EXIT

step "starting a sandbox PostgreSQL cluster in $work/cluster"
eval "$(scripts/pg-sandbox.sh start "$work/cluster" | sed 's/^/SANDBOX_/')"
export PGPASSWORD=$SANDBOX_PASSWORD
export DATABASE_URL="postgresql://postgres@127.0.0.1:$SANDBOX_PORT/app"
export BACKUP_REPO="$work/repo"
psql -q -X "postgresql://postgres@127.0.0.1:$SANDBOX_PORT/postgres" -c "CREATE DATABASE app"
psql -q -X -v ON_ERROR_STOP=1 "$DATABASE_URL" <<'SQL'
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, created_at timestamptz DEFAULT now());
CREATE TABLE meetings (id bigserial PRIMARY KEY, user_id bigint REFERENCES users, title text, starts_at timestamptz);
CREATE TABLE schema_version (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
INSERT INTO users (id, email) SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 5000) g;
INSERT INTO meetings (user_id, title, starts_at)
  SELECT 1 + g % 5000, 'meeting ' || g, now() + g * interval '1 hour' FROM generate_series(1, 20000) g;
INSERT INTO schema_version (version) VALUES (1), (2), (3);
SQL
echo "sample data: 5000 users, 20000 meetings, schema version 3 (DATABASE_URL=$DATABASE_URL)"

step "dbbackup --tag nightly   (the nightly cron job)"
id=$("$bin/dbbackup" --tag nightly)
echo "backup id: $id"
step "what was stored"
ls -l "$BACKUP_REPO/backups/$id"
step "the manifest: row counts from the dump's own snapshot"
sed -n '1,200p' "$BACKUP_REPO/backups/$id/manifest.json" | grep -E '"(name|rows|schema_version|sha256)"' | head -12
step "restoring by hand still works: gunzip -c dump.sql.gz | psql"
echo "gunzip -c $BACKUP_REPO/backups/$id/dump.sql.gz | head -3:"
{ gunzip -c "$BACKUP_REPO/backups/$id/dump.sql.gz" | grep -v -e '^--' -e '^$' | head -3; } || true
step "dbprune --dry-run   (which backups the retention policy keeps, and why)"
"$bin/dbbackup" --tag nightly --quiet >/dev/null
"$bin/dbprune" --dry-run

if [ -x "$bin/dbrestore" ]; then
  step "dbrestore list"
  "$bin/dbrestore" list
  step "dbverify $id   (live row counts against the manifest)"
  "$bin/dbverify" "$id"
  step "an accident: DELETE FROM meetings WHERE id % 3 = 0; DROP TABLE users CASCADE"
  psql -q -X "$DATABASE_URL" -c "DELETE FROM meetings WHERE id % 3 = 0" -c "DROP TABLE users CASCADE"
  step "dbverify $id   (now it must fail: exit code 30)"
  "$bin/dbverify" "$id" || echo "dbverify exit code: $?"
  step "dbrestore --emergency   (what the DBA runs at 3 a.m.)"
  "$bin/dbrestore" --emergency --incident-file "$work/incident.json"
  step "dbverify latest   (restored database against the manifest)"
  "$bin/dbverify" latest
  step "the damaged database was kept, renamed aside"
  psql -X -A -t "postgresql://postgres@127.0.0.1:$SANDBOX_PORT/postgres" -c "SELECT datname FROM pg_database WHERE datname LIKE 'app%' ORDER BY 1"
fi
step "dbmigrate up --release v2.0.0   (a deploy with two migrations; versions 1-3 already in schema_version are adopted, not re-run)"
mkdir -p "$work/migrations"
cat > "$work/migrations/0004_meeting_rooms.up.sql" <<'SQL'
ALTER TABLE meetings ADD COLUMN room text;
SQL
echo "ALTER TABLE meetings DROP COLUMN room;" > "$work/migrations/0004_meeting_rooms.down.sql"
cat > "$work/migrations/0005_user_names.up.sql" <<'SQL'
ALTER TABLE users ADD COLUMN display_name text;
UPDATE users SET display_name = 'User ' || id;
SQL
echo "ALTER TABLE users DROP COLUMN display_name;" > "$work/migrations/0005_user_names.down.sql"
"$bin/dbmigrate" up --dir "$work/migrations" --release v2.0.0 --yes
"$bin/dbmigrate" status --dir "$work/migrations"
step "dbmigrate down --steps 1 --dry-run   (the plan and the full SQL, with a warning for data it drops)"
"$bin/dbmigrate" down --steps 1 --dir "$work/migrations" --dry-run
step "dbmigrate down --steps 1   (backup tagged pre-downgrade first, then one transaction)"
"$bin/dbmigrate" down --steps 1 --dir "$work/migrations" --yes
echo "the runbook's query: SELECT version, applied_at FROM schema_version ORDER BY applied_at DESC LIMIT 1"
psql -X -A -t "$DATABASE_URL" -c "SELECT 'schema version now: ' || version FROM schema_version ORDER BY applied_at DESC LIMIT 1"

step "done; the sandbox is removed on exit"
