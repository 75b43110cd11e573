#!/usr/bin/env bash
# Installs dbrecovery the way a package would, and removes exactly that again.
#
#   scripts/install.sh [--prefix /usr/local] [--configuration release|debug] [--bin-dir DIR] [--dry-run]
#   scripts/install.sh --uninstall [--prefix /usr/local]
#
# Installs under PREFIX: bin/ the five executables (built here, or taken from --bin-dir);
# share/man/man1/ their manual pages (docs/man, generated from the argument parser by
# scripts/generate-man.sh); bash, zsh and fish completions; share/dbrecovery/ the wrapper scripts,
# the default retention policy and an example config; lib/systemd/system/ the nightly and weekly
# units (paths rewritten to PREFIX); share/dbrecovery/prometheus/ alert rules and a Grafana
# dashboard. Every installed file is listed in share/dbrecovery/install-manifest.txt, which
# --uninstall reads: it removes those files only, and the directories only when they end up empty.
# Nothing is written to /etc: copy share/dbrecovery/config.example.toml to
# /etc/dbrecovery/config.toml and enable the timer yourself:
#   systemctl enable --now dbrecovery-nightly.timer
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

prefix=/usr/local configuration=release uninstall=0 dry_run=0 bin_dir=""
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --prefix)
      [ $# -ge 2 ] && [ -n "$2" ] || { echo "install: --prefix needs a directory, e.g. --prefix /usr/local" >&2; exit 2; }
      prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --configuration)
      [ $# -ge 2 ] && { [ "$2" = release ] || [ "$2" = debug ]; } || { echo "install: --configuration is release or debug" >&2; exit 2; }
      configuration=$2; shift 2 ;;
    --bin-dir)
      [ $# -ge 2 ] && [ -d "$2" ] || { echo "install: --bin-dir needs the directory holding the built executables" >&2; exit 2; }
      bin_dir=$2; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install: unknown argument '$1'" >&2; echo "HINT: scripts/install.sh --help" >&2; exit 2 ;;
  esac
done
case $prefix in /*) ;; *) prefix="$here/$prefix" ;; esac
prefix=${prefix%/}
tools=(dbbackup dbrestore dbverify dbprune dbmigrate)
manifest="$prefix/share/dbrecovery/install-manifest.txt"

if [ "$uninstall" = 1 ]; then
  [ -f "$manifest" ] || { echo "install: nothing to uninstall: $manifest does not exist" >&2; echo "HINT: pass the --prefix you installed with" >&2; exit 2; }
  mapfile -t files < "$manifest"
  for file in "${files[@]}" "$manifest"; do
    [ "$dry_run" = 1 ] && { echo "would remove $file"; continue; }
    rm -f -- "$file"
  done
  if [ "$dry_run" = 0 ]; then
    # Directories go only when empty, deepest first; the prefix itself is never removed.
    for file in "${files[@]}" "$manifest"; do
      dir=$(dirname "$file")
      while [ "$dir" != "$prefix" ] && [ "${dir#"$prefix"/}" != "$dir" ] && rmdir -- "$dir" 2>/dev/null; do dir=$(dirname "$dir"); done
    done
    echo "install: removed ${#files[@]} files from $prefix" >&2
  fi
  exit 0
fi

if [ -n "$bin_dir" ]; then
  build_dir=$bin_dir
else
  build_dir=$(swift build -c "$configuration" --show-bin-path)
  if [ "$dry_run" = 0 ]; then
    echo "install: building ($configuration)" >&2
    for tool in "${tools[@]}"; do swift build -c "$configuration" --product "$tool" >&2; done
  fi
fi
for tool in "${tools[@]}"; do
  [ -x "$build_dir/$tool" ] || [ "$dry_run" = 1 ] || { echo "install: $build_dir/$tool is missing" >&2; echo "HINT: build first (swift build -c release) or pass --bin-dir" >&2; exit 12; }
  # A binary that cannot start here (a shared library missing on this machine) would fail every
  # archive_command call once installed: refuse before anything is copied.
  if [ -x "$build_dir/$tool" ] && ! "$build_dir/$tool" --version >/dev/null 2>&1; then
    missing_libraries=$( (ldd "$build_dir/$tool" 2>/dev/null || true) | awk '/not found/ {print $1}' | tr '\n' ' ')
    echo "install: $build_dir/$tool does not start on this machine${missing_libraries:+ (missing: ${missing_libraries% })}" >&2
    echo "HINT: install its shared libraries (Debian 12: apt-get install libpq5 zlib1g libdeflate0 libisal2 libcurl4), or build here with scripts/setup.sh" >&2
    exit 12
  fi
done

installed=()
# put MODE SOURCE DESTINATION: copies one file and records it.
put() {
  local mode=$1 source=$2 destination=$3
  installed+=("$destination")
  [ "$dry_run" = 1 ] && { echo "would install $destination"; return; }
  install -D -m "$mode" -- "$source" "$destination"
}
# put_text MODE DESTINATION < text
put_text() {
  local mode=$1 destination=$2 staged
  staged=$(mktemp)
  cat > "$staged"
  put "$mode" "$staged" "$destination"
  rm -f -- "$staged"
}

for tool in "${tools[@]}"; do
  put 0755 "$build_dir/$tool" "$prefix/bin/$tool"
  if [ "$dry_run" = 0 ]; then
    # (Input redirection, not a pipe: put_text must run in this shell to record what it installed.)
    put_text 0644 "$prefix/share/bash-completion/completions/$tool" < <("$build_dir/$tool" --generate-completion-script bash)
    put_text 0644 "$prefix/share/zsh/site-functions/_$tool" < <("$build_dir/$tool" --generate-completion-script zsh)
    put_text 0644 "$prefix/share/fish/vendor_completions.d/$tool.fish" < <("$build_dir/$tool" --generate-completion-script fish)
  else
    installed+=("$prefix/share/bash-completion/completions/$tool" "$prefix/share/zsh/site-functions/_$tool" "$prefix/share/fish/vendor_completions.d/$tool.fish")
  fi
done

# Manual pages: generated from the argument parser into docs/man (scripts/generate-man.sh).
while IFS= read -r -d '' page; do
  put 0644 "$page" "$prefix/share/man/man1/$(basename "$page")"
done < <(find docs/man -name '*.1' -print0 | sort -z)

for script in lib.sh nightly-backup.sh pre-deploy-snapshot.sh rollback/backup-procedures.sh rollback/database-rollback.sh; do
  put 0755 "scripts/$script" "$prefix/share/dbrecovery/scripts/$script"
done
put 0644 retention/default.toml "$prefix/share/dbrecovery/retention/default.toml"
put 0644 contrib/config.example.toml "$prefix/share/dbrecovery/config.example.toml"
put 0644 contrib/prometheus/dbrecovery.rules.yml "$prefix/share/dbrecovery/prometheus/dbrecovery.rules.yml"
put 0644 contrib/grafana/dbrecovery-dashboard.json "$prefix/share/dbrecovery/grafana/dbrecovery-dashboard.json"
# The units name /usr/local; systemd splits ExecStart on spaces, so the paths are written quoted.
for unit in contrib/systemd/*.service contrib/systemd/*.timer; do
  put_text 0644 "$prefix/lib/systemd/system/$(basename "$unit")" < <(
    sed -e "s|^ExecStart=/usr/local/share/dbrecovery/\(.*\)$|ExecStart=\"$prefix/share/dbrecovery/\1\"|" \
        -e "s|/usr/local/bin|$prefix/bin|g" "$unit")
done

if [ "$dry_run" = 0 ]; then
  printf '%s\n' "${installed[@]}" | install -D -m 0644 /dev/stdin "$manifest"
  echo "install: ${#installed[@]} files under $prefix (list: $manifest)" >&2
  case ":$PATH:" in *":$prefix/bin:"*) ;; *) echo "install: add $prefix/bin to PATH" >&2 ;; esac
fi
