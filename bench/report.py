#!/usr/bin/env python3
"""Summarise bench/results.csv: medians, ratios, a Markdown table and an SVG chart.

Usage: report.py RESULTS.csv OUT.md OUT.svg

Ratios are taken within each compare.sh invocation (contenders measured in
the same run, on copies of the same dataset), then the median is reported.
The chart is drawn by hand (no plotting library needed): seconds against N,
both axes logarithmic, solid lines for run 1 (every event new), dashed for
run 2 (every event already seen).
"""
import csv
import math
import statistics
import sys
from collections import defaultdict


def load(path):
    runs = defaultdict(dict)  # (n, rep) -> contender -> row
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            runs[(int(row["n"]), int(row["rep"]))][row["contender"]] = row
    return runs


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def ratio(x):
    return "–" if x is None else f"{x:.2f}x"


def summarise(runs):
    ns = sorted({n for n, _ in runs})
    table = {}
    for n in ns:
        reps = [c for (m, _), c in runs.items() if m == n]
        s = {}
        for who in ("floor", "spark", "peer"):
            for k in ("run1_s", "run2_s"):
                s[(who, k)] = med([float(c[who][k]) for c in reps if who in c])
        for k in ("run1_s", "run2_s"):
            s[("spark/floor", k)] = med(
                [float(c["spark"][k]) / float(c["floor"][k]) for c in reps if "spark" in c and "floor" in c]
            )
            s[("peer/spark", k)] = med(
                [float(c["peer"][k]) / float(c["spark"][k]) for c in reps if "spark" in c and "peer" in c]
            )
        rss = [int(c["spark"]["max_rss_kib"]) for c in reps if "spark" in c and c["spark"]["max_rss_kib"]]
        s["rss_mib"] = med(rss) / 1024 if rss else None
        s["events"] = next((int(c["floor"]["run1_events"]) for c in reps if "floor" in c), None)
        s["reps"] = len(reps)
        table[n] = s
    return ns, table


def markdown(ns, t):
    lines = [
        "| N | events | runs | floor run1 / run2 s | spark run1 / run2 s | spark/floor run1 / run2 | django-spark run1 / run2 s | django-spark/spark run1 / run2 | spark max RSS |",
        "| ---: | ---: | ---: | --- | --- | --- | --- | --- | ---: |",
    ]
    for n in ns:
        s = t[n]
        lines.append(
            f"| {n:,} | {s['events']:,} | {s['reps']} "
            f"| {fmt(s[('floor', 'run1_s')])} / {fmt(s[('floor', 'run2_s')])} "
            f"| {fmt(s[('spark', 'run1_s')])} / {fmt(s[('spark', 'run2_s')])} "
            f"| {ratio(s[('spark/floor', 'run1_s')])} / {ratio(s[('spark/floor', 'run2_s')])} "
            f"| {fmt(s[('peer', 'run1_s')], 1)} / {fmt(s[('peer', 'run2_s')], 1)} "
            f"| {fmt(s[('peer/spark', 'run1_s')], 0)}x / {fmt(s[('peer/spark', 'run2_s')], 0)}x "
            f"| {fmt(s['rss_mib'], 1)} MiB |"
        )
    if len(ns) >= 2:
        a, b = ns[-2], ns[-1]
        growth = t[b][("spark", "run1_s")] / t[a][("spark", "run1_s")]
        lines.append("")
        lines.append(
            f"From N = {a:,} to {b:,} ({b / a:.0f}x the records) spark's run 1 took {growth:.1f}x the time."
        )
    return "\n".join(lines) + "\n"


COLORS = {"floor": "#777777", "spark": "#d9480f", "peer": "#1c7ed6"}
LABELS = {"floor": "SQL floor", "spark": "spark", "peer": "django-spark 0.3.0"}


def svg(ns, t, path):
    w, h, left, right, top, bottom = 720, 420, 70, 230, 30, 50
    pts = [
        t[n][(who, k)]
        for n in ns
        for who in COLORS
        for k in ("run1_s", "run2_s")
        if t[n][(who, k)]
    ]
    lo_y = 10 ** math.floor(math.log10(min(pts)))
    hi_y = 10 ** math.ceil(math.log10(max(pts)))
    lo_x = 10 ** math.floor(math.log10(min(ns)))
    hi_x = 10 ** math.ceil(math.log10(max(ns)))
    pw, ph = w - left - right, h - top - bottom

    def x(v):
        return left + pw * (math.log10(v) - math.log10(lo_x)) / (math.log10(hi_x) - math.log10(lo_x))

    def y(v):
        return top + ph * (1 - (math.log10(v) - math.log10(lo_y)) / (math.log10(hi_y) - math.log10(lo_y)))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">Seconds per run against challenges (log-log)</text>',
    ]
    e = int(math.log10(lo_y))
    while 10**e <= hi_y * 1.0001:
        yy = y(10**e)
        out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{10**e:g}</text>')
        e += 1
    e = int(math.log10(lo_x))
    while 10**e <= hi_x * 1.0001:
        xx = x(10**e)
        out.append(f'<line x1="{xx:.1f}" y1="{top}" x2="{xx:.1f}" y2="{top + ph}" stroke="#eee"/>')
        out.append(f'<text x="{xx:.1f}" y="{top + ph + 16}" text-anchor="middle">{10**e:,}</text>')
        e += 1
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 10}" text-anchor="middle">N (challenges)</text>')
    out.append(
        f'<text x="16" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 16 {top + ph / 2})">seconds</text>'
    )
    ly = top + 10
    for who, color in COLORS.items():
        for k, dash in (("run1_s", ""), ("run2_s", ' stroke-dasharray="5,4"')):
            series = [(n, t[n][(who, k)]) for n in ns if t[n][(who, k)]]
            if not series:
                continue
            d = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in series)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for n, v in series:
                out.append(f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>')
            lx = left + pw + 12
            out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>')
            label = f"{LABELS[who]}, run {'1' if k == 'run1_s' else '2'}"
            out.append(f'<text x="{lx + 30}" y="{ly + 4}">{label}</text>')
            ly += 18
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    ns, t = summarise(load(argv[1]))
    with open(argv[2], "w") as f:
        f.write(markdown(ns, t))
    svg(ns, t, argv[3])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
