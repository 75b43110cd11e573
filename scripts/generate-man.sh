#!/usr/bin/env bash
# Regenerates the manual pages in docs/man from the argument parser (swift-argument-parser's
# generate-manual plugin) and the help snapshots the tests compare against. Run it after changing
# any option, help text or example; PackagingTests fails until the snapshots match the code.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build >&2
rm -f docs/man/*.1 docs/man/*.help.json docs/man/*.help.txt
mkdir -p docs/man
swift package --allow-writing-to-directory docs/man generate-manual --configuration debug --multi-page --output-directory docs/man >&2
bin=$(swift build --show-bin-path)
for tool in dbbackup dbrestore dbverify dbprune dbmigrate; do
  "$bin/$tool" --experimental-dump-help > "docs/man/$tool.help.json"
  # The screen an operator reads (and a usage error's HINT points at), at 80 columns.
  COLUMNS=80 "$bin/$tool" --help > "docs/man/$tool.help.txt"
done
echo "generate-man: $(find docs/man -name '*.1' | wc -l) pages and 10 help snapshots in docs/man" >&2
