#!/usr/bin/env bash
# Installs everything dbrecovery needs on Debian 12 (PostgreSQL 15, libpq, zlib, libdeflate, ISA-L, libcurl, the S3 test server)
# and builds the five executables. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus (promtool), shellcheck, systemd (systemd-analyze) and man-db check what scripts/install.sh ships;
# libcurl carries S3 and --notify-url (ca-certificates: the CAs it trusts; openssl: a test certificate).
packages=(postgresql-15 postgresql-client-15 libpq-dev zlib1g-dev libdeflate-dev libisal-dev libcurl4-openssl-dev ca-certificates openssl pkg-config pigz pgbackrest time util-linux gzip
          prometheus shellcheck systemd man-db)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  # The Debian package would create and start a cluster of its own; we only want the binaries.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The S3-compatible server the tests run on loopback.
if ! python3 -c 'import moto, flask, flask_cors' 2>/dev/null || ! command -v moto_server >/dev/null; then
  echo "setup: installing moto (S3 test server) from PyPI" >&2
  python3 -m pip install -q 'moto==5.2.1' flask flask-cors
fi

# PostgreSQL 14, 16, 17 and 18 for the version matrix (Debian 12 ships only 15); cached, not in the checkout.
scripts/pg-majors.sh install

swift build 2>&1 | tail -1
echo "setup: done; executables are in $(swift build --show-bin-path)" >&2
