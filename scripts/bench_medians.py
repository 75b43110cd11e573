"""The medians of a scripts/bench.sh results file, for the report scripts bench.sh runs.

Each line of the file is one measured run: contender, wall seconds, CPU seconds, peak RSS KiB and
output bytes, tab-separated; a contender appears once per repetition.
"""
import statistics


def medians(path):
    """{contender: (wall, cpu, rss, size)}, each the median over the contender's repetitions."""
    runs = {}
    for line in open(path):
        name, wall, cpu, rss, size = line.rstrip("\n").split("\t")
        runs.setdefault(name, []).append((float(wall), float(cpu), int(rss), int(size)))
    return {name: tuple(statistics.median(v[i] for v in values) for i in range(4)) for name, values in runs.items()}
