#!/usr/bin/env python3
"""Writes README.md's performance table from a bench/results.md that scripts/bench.sh wrote.

    scripts/bench-readme.py bench/results.md README.md

The table sits between the two marker lines below in README.md and is replaced whole, so the README
shows the numbers of one bench run, side by side with the peers measured in that same run.
"""
import re
import sys

BEGIN = "<!-- bench:begin: scripts/bench.sh writes this table from bench/results.md -->"
END = "<!-- bench:end -->"


def cells(line):
    """The cells of a markdown table row, with `\\|` kept inside a cell."""
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [part.strip().replace("\\|", "|") for part in parts]


def tables(text):
    """Every table of the file as {section heading: [rows of cells]}, the header and rule left out."""
    found, heading, rows = {}, "", None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|"):
            if rows is None:
                rows = []
                found.setdefault(heading, []).append(rows)
            rows.append(cells(line))
        else:
            rows = None
    return {name: [table[2:] for table in group] for name, group in found.items()}


def main(results_path, readme_path):
    text = open(results_path).read()
    every = tables(text)
    contenders = {row[0]: float(row[1]) for row in every["dbrecovery benchmark"][0]}
    machine = next((line for line in text.splitlines() if line.startswith("Machine:")), "").rstrip()
    dataset = next((line for line in text.splitlines() if line.startswith("Dataset:")), "").rstrip()
    rows = []

    def pair(job, ours, peer, target):
        if ours in contenders and peer in contenders:
            ratio = contenders[ours] / contenders[peer]
            rows.append((job, f"`{ours}` {contenders[ours]:.2f} s", f"`{peer}` {contenders[peer]:.2f} s",
                         f"{ratio:.2f}", f"≤ {target}", "yes" if ratio <= target else "no"))

    pair("logical backup", "dbbackup", "pg_dump | pigz -6 -p 2", 0.80)
    pair("logical backup, level 1", "dbbackup --compression-level 1", "pg_dump > /dev/null (floor)", 1.0)
    pair("restore (sha256, row counts, swap)", "dbrestore (checksum + row counts + swap)", "gunzip -c | psql", 1.0)
    pair("restore (sha256, row counts, swap)", "dbrestore (checksum + row counts + swap)", "pg_restore -j 2", 0.80)
    pair("physical base backup, gz level 6", "dbbackup --physical --compression-level 6", "pgbackrest backup (full, gz, process-max 2)", 0.65)
    pair("base backup extraction", "dbrestore --pitr (extract base backup)", "pgbackrest restore (process-max 2)", 0.6)
    pair("one small table out of a backup", "dbrestore --table (one small table)", "dbrestore (checksum + row counts + swap)", 0.1)
    pair("incremental base backup, 1 % changed (PG 17)", "dbbackup --physical --incremental (PG 17, 1 % changed)", "dbbackup --physical (PG 17, full)", 1.0)
    for heading, group in every.items():
        if heading.startswith("WAL at 50 ms"):
            for row in group[0]:
                if row[3]:
                    ratio = float(row[3].rstrip("×"))
                    target = float(row[4].lstrip("≥ ").rstrip("×"))
                    rows.append((f"WAL at 50 ms per S3 request", f"`{row[0]}` {row[1]} s", "one call per segment",
                                 f"{ratio:.2f}× as fast", f"≥ {target:g}×", "yes" if ratio >= target else "no"))
        if heading.startswith("Growth"):
            for row in group[1]:
                value, target = float(row[1]), float(row[2].lstrip("≤ "))
                rows.append((f"at {heading.split(' at ', 1)[1].split(' the data')[0]} the data",
                             f"`{row[0].split(' / ')[0]}`", f"`{row[0].split(' / ')[1]}`", f"{value:.2f}", f"≤ {target:g}",
                             "yes" if value <= target else "no"))
    growth = []
    for heading, group in every.items():
        if heading.startswith("Growth"):
            factor = heading.split(" at ", 1)[1].split(" the data")[0]
            for row in group[0]:
                growth.append(f"`{row[0]}` {row[1]} s → {row[2]} s ({row[3]} of linear), peak RSS {row[4]} → {row[5]} MiB")
    lines = [BEGIN, "", f"{machine.rstrip()}  ", f"{dataset.rstrip()}", "",
             "| job | dbrecovery | peer, same run | ratio | target | met |", "| --- | --- | --- | ---: | ---: | :---: |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    if growth:
        lines += ["", f"At {factor} the data, one run each: " + "; ".join(growth) + "."]
    lines += ["", END]
    readme = open(readme_path).read()
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        sys.exit(f"bench-readme: {readme_path} has no '{BEGIN}' … '{END}' markers; put them where the table belongs")
    open(readme_path, "w").write(readme[:start] + "\n".join(lines) + readme[end + len(END):])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: scripts/bench-readme.py bench/results.md README.md")
    main(sys.argv[1], sys.argv[2])
