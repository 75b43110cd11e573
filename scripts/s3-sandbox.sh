#!/usr/bin/env bash
# Start or stop a throwaway S3-compatible server (moto_server) on a free loopback port.
#
#   scripts/s3-sandbox.sh start DIR     prints ENDPOINT=, PORT=, PID=
#   scripts/s3-sandbox.sh stop DIR      stops the server this script started there, by PID
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
action=$1; dir=$2
case $action in
start)
  command -v moto_server >/dev/null || { echo "s3-sandbox: moto_server not found; run scripts/setup.sh (pip install moto==5.2.1 flask flask-cors)" >&2; exit 12; }
  mkdir -p "$dir"
  for _ in 1 2 3; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    moto_server -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    pid=$!
    echo "$pid" > "$dir/moto.pid"
    for _ in $(seq 1 100); do
      if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
        echo "ENDPOINT=http://127.0.0.1:$port"; echo "PORT=$port"; echo "PID=$pid"; exit 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
  done
  echo "s3-sandbox: moto_server did not start; see $dir/moto.log" >&2
  exit 1
  ;;
stop)
  [ -f "$dir/moto.pid" ] || exit 0
  pid=$(cat "$dir/moto.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/moto.pid"
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
