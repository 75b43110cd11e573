#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster in a directory of its own.
#
#   scripts/pg-sandbox.sh start DIR [--major N] [--archive-command CMD] [--initdb-option OPT]... [--wal-start SEGMENT]
#                                      prints URL=, PASSWORD=, PORT=, PID=, SOCKET=, BIN=
#   scripts/pg-sandbox.sh standby DIR --primary PRIMARY_DIR [--major N]
#                                      a hot standby of the sandbox in PRIMARY_DIR (pg_basebackup -R,
#                                      streaming), started on a free port; prints the same values
#   scripts/pg-sandbox.sh stop DIR     stops the server this script started there, by PID
#
# --wal-start makes the new cluster's WAL begin at that segment name (pg_resetwal -l), e.g. just
# before a log boundary, so that segment-name arithmetic across it is exercised without writing 4 GB.
# --major picks a PostgreSQL major installed by scripts/pg-majors.sh (default: $PG_BIN, else 15).
# The cluster listens on 127.0.0.1 on a free port, requires a password (scram-sha-256) and keeps
# its socket inside DIR. As root it runs as the `postgres` user, since the server refuses root.
set -euo pipefail

usage() { echo "usage: $0 start DIR [--major N] [--archive-command CMD] [--initdb-option OPT]... [--wal-start SEGMENT] | standby DIR --primary PRIMARY_DIR [--major N] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1; dir=$2; shift 2

archive_command=""
major=""
initdb_options=()
primary=""
wal_start=""
while [ $# -gt 0 ]; do
  case $1 in
    --archive-command) [ $# -ge 2 ] || usage; archive_command=$2; shift 2 ;;
    --major) [ $# -ge 2 ] || usage; major=$2; shift 2 ;;
    --initdb-option) [ $# -ge 2 ] || usage; initdb_options+=("$2"); shift 2 ;;
    --primary) [ $# -ge 2 ] || usage; primary=$2; shift 2 ;;
    --wal-start) [ $# -ge 2 ] || usage; wal_start=$2; shift 2 ;;
    *) usage ;;
  esac
done

pg_bin=${PG_BIN:-}
if [ -n "$major" ]; then
  pg_bin=$("$(dirname "$0")/pg-majors.sh" bin "$major") || exit 12
elif [ -z "$pg_bin" ]; then
  for candidate in /usr/lib/postgresql/15/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$candidate/initdb" ]; then pg_bin=$candidate; break; fi
  done
fi
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || {
  echo "pg-sandbox: initdb not found; install the server with: apt-get install postgresql-15 (or run scripts/setup.sh)" >&2
  exit 12
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups --reset-env -- env PATH="$pg_bin:/usr/bin:/bin" "$@"
  else
    "$@"
  fi
}

# Writes the sandbox settings (after whatever postgresql.auto.conf already holds: later lines win)
# on a free port and starts the server; prints the values the tests read. $1: the server's password.
start_on_free_port() {
  local password=$1 port pid settings
  settings=$(cat "$dir/data/postgresql.auto.conf" 2>/dev/null || true)
  for _ in 1 2 3 4 5; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    {
      [ -z "$settings" ] || printf '%s\n' "$settings"
      echo "port = $port"
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = '$dir/socket'"
      echo "fsync = off"
      # synchronous_commit stays on: with it off, a commit's WAL waits up to wal_writer_delay to be
      # written, so pg_current_wal_lsn() lags what is committed and a standby "caught up" with it
      # lacks the last transactions (fsync = off already spares the flush cost).
      echo "max_connections = 50"
      echo "wal_level = replica"
      echo "max_wal_senders = 4"
      echo "max_prepared_transactions = 10"   # the swap tests hold a target open with one
      if [ -n "$archive_command" ]; then
        echo "archive_mode = on"
        echo "archive_command = '$archive_command'"
      fi
    } > "$dir/data/postgresql.auto.conf"
    if as_owner "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null 2>&1; then
      pid=$(head -1 "$dir/data/postmaster.pid")
      echo "$pid" > "$dir/server.pid"
      echo "URL=postgresql://postgres@127.0.0.1:$port/postgres"
      echo "PASSWORD=$password"
      echo "PORT=$port"
      echo "PID=$pid"
      echo "SOCKET=$dir/socket"
      echo "BIN=$pg_bin"
      return 0
    fi
  done
  echo "pg-sandbox: the server did not start; see $dir/server.log" >&2
  tail -5 "$dir/server.log" >&2 || true
  return 1
}

case $action in
start)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  mkdir -p "$dir/socket"
  password=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20)
  umask 077
  printf '%s\n' "$password" > "$dir/password"
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$dir" "$dir/socket" "$dir/password"
    chmod 755 "$dir"
  fi
  as_owner "$pg_bin/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 --pwfile="$dir/password" \
    --encoding=UTF8 --locale=C.UTF-8 ${initdb_options[@]+"${initdb_options[@]}"} >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  if [ -n "$wal_start" ]; then
    as_owner "$pg_bin/pg_resetwal" -l "$wal_start" -D "$dir/data" >>"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  : > "$dir/data/postgresql.auto.conf"   # emptied, not removed: it stays the server user's file
  start_on_free_port "$password" || exit 1
  ;;
standby)
  # A streaming hot standby of another sandbox: pg_basebackup -R (standby.signal, primary_conninfo)
  # from the primary's port, the primary's settings kept (archive_command included: a standby
  # archives only once promoted), then our own port and socket.
  [ -n "$primary" ] && [ -f "$primary/server.pid" ] || { echo "pg-sandbox: standby needs --primary DIR of a running sandbox" >&2; exit 2; }
  primary=$(cd "$primary" && pwd)
  primary_port=$(sed -n 's/^port = //p' "$primary/data/postgresql.auto.conf" | tail -1)
  password=$(cat "$primary/password")
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  mkdir -p "$dir/socket"
  umask 077
  cp "$primary/password" "$dir/password"
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$dir" "$dir/socket" "$dir/password"
    chmod 755 "$dir"
  fi
  as_owner env PGPASSWORD="$password" "$pg_bin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$dir/data" \
    -R -X stream --checkpoint=fast >"$dir/basebackup.log" 2>&1 || { cat "$dir/basebackup.log" >&2; exit 1; }
  archive_command=""   # keep the primary's own archive settings, copied with its postgresql.auto.conf
  # The conninfo -R writes can name options (sslnegotiation, PostgreSQL 17+) that the libpq the
  # server's walreceiver loads may not know: the few that matter, instead (later lines win).
  echo "primary_conninfo = 'host=127.0.0.1 port=$primary_port user=postgres password=$password application_name=standby'" >> "$dir/data/postgresql.auto.conf"
  start_on_free_port "$password" || exit 1
  ;;
stop)
  [ -f "$dir/server.pid" ] || exit 0
  pid=$(cat "$dir/server.pid")
  # Only the postmaster this script started: its PID, and only while it is that data directory's.
  if kill -0 "$pid" 2>/dev/null && [ "$(head -1 "$dir/data/postmaster.pid" 2>/dev/null)" = "$pid" ]; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -QUIT "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/server.pid"
  ;;
*) usage ;;
esac
