#!/usr/bin/env python3
"""Compare the this-CPU operations of two pcpu-bench builds in one session.

    scripts/compare-ops.py BEFORE/pcpu-bench AFTER/pcpu-bench [RUNS]

Runs `pcpu-bench ops --json` of the two builds alternately RUNS times
(default 8), so that both see the same machine, and prints a Markdown
table: the median ns per operation of each build, and the after/before
ratio of each pair of neighbouring runs (median and range).  The guest's
speed wanders by up to 2x between minutes; a ratio of two runs taken
seconds apart is steadier than any single number.
"""
import json
import statistics
import subprocess
import sys


def run(binary):
    out = subprocess.run([binary, "ops", "--json"], check=True,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if d.get("bench") == "ops":
                return {row[0]: (row[1], row[2]) for row in d["rows"]}
    sys.exit(f"{binary}: no ops table in its output")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    before, after = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    pairs = []
    for i in range(runs):
        pairs.append((run(before), run(after)))
        print(f"run {i + 1} of {runs} done", file=sys.stderr)
    names = [n for n in pairs[0][0] if n in pairs[0][1]]
    print("| method | before: median ns, 1 thr / 2 thr "
          "| after: median ns, 1 thr / 2 thr "
          "| after/before, 1 thr: median (range) | 2 thr |")
    print("|---|---|---|---|---|")
    for n in names:
        cells = [f"| {n} "]
        for side in (0, 1):
            for col in (0, 1):
                v = statistics.median(p[side][n][col] for p in pairs)
                cells.append(f"| {v:.2f} " if col == 0 else f"/ {v:.2f} ")
        for col in (0, 1):
            r = [p[1][n][col] / p[0][n][col] for p in pairs]
            cells.append(f"| {statistics.median(r):.2f} "
                         f"({min(r):.2f}-{max(r):.2f}) ")
        print("".join(cells) + "|")
    print(f"\n{runs} runs of each, alternated.")


if __name__ == "__main__":
    main()
