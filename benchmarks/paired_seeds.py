"""Paired comparison of runs over many seeds: is a difference between two models larger than
the seed-to-seed noise of the evaluation?

Reads OUT/<run>_s<seed>/results.json (the layout of run_residual.py and run_towers.py), keeps the
seeds every listed run has, and reports per run the mean and spread of a test metric and, for each
run against the baseline, the mean paired difference (same seed: same split, same initial
backbone seed), its standard error, a two-sided 95% t-interval, and how many seeds each side won.

usage:
  python benchmarks/paired_seeds.py --out /path/to/bench_residual --runs sasrec residual residual_warm \
      g0=/path/to/sweep_g0/residual --baseline sasrec [--split valid] [--metric NDCG@10] [--results-md benchmarks/RESULTS.md --section NAME --title TITLE]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, write_section  # noqa: E402

# two-sided 95% quantiles of Student's t (t_{0.975, df}), df = 1..30; beyond 30 the normal 1.96
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def t975(df: int) -> float:
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def load(out: Path, runs: list[str], metric: str, split: str = "test") -> dict[str, dict[int, float]]:
    """{run: {seed: metric}} for every finished run directory OUT/<run>_s<seed>; a run given as
    LABEL=PREFIX reads PREFIX_s<seed> instead (PREFIX = a path, e.g. /runs/sweep_a/residual)."""
    res: dict[str, dict[int, float]] = {}
    for spec in runs:
        name, prefix = spec.split("=", 1) if "=" in spec else (spec, str(out / spec))
        folder, stem = Path(prefix).parent, Path(prefix).name
        res[name] = {}
        for d in folder.glob(f"{stem}_s*"):
            m = re.fullmatch(rf"{re.escape(stem)}_s(\d+)", d.name)
            f = d / "results.json"
            if m and f.exists():
                r = json.loads(f.read_text())
                if metric not in r.get(split, {}):
                    sys.exit(f"{f}: no {split} metric {metric!r}")
                res[name][int(m.group(1))] = float(r[split][metric])
    return res


def paired(base: list[float], other: list[float]) -> dict[str, float]:
    """Mean paired difference other - base, its standard error and 95% t-interval, wins."""
    d = [o - b for o, b in zip(other, base)]
    n = len(d)
    mean = statistics.mean(d)
    se = statistics.stdev(d) / n ** 0.5 if n > 1 else float("nan")
    h = t975(n - 1) * se if n > 1 else float("nan")
    return {"n": n, "mean": mean, "se": se, "lo": mean - h, "hi": mean + h,
            "wins": sum(x > 0 for x in d), "losses": sum(x < 0 for x in d)}


def report(res: dict[str, dict[int, float]], baseline: str, metric: str, split: str = "test") -> tuple[str, list[int]]:
    seeds = sorted(set.intersection(*(set(v) for v in res.values())))
    if len(seeds) < 2:
        sys.exit(f"need >= 2 seeds that every run has; found {seeds}")
    base = [res[baseline][s] for s in seeds]
    bmean = statistics.mean(base)
    lines = [f"| run | {split} {metric} mean ± sd over seeds | difference to {baseline} (paired, mean ± se) | "
             "95% interval | relative | seeds won / lost |", "|---|---|---|---|---|---|"]
    for name, vals in res.items():
        v = [vals[s] for s in seeds]
        cell = f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}"
        if name == baseline:
            lines.append(f"| {name} | {cell} | – | – | – | – |")
            continue
        p = paired(base, v)
        lines.append(f"| {name} | {cell} | {p['mean']:+.4f} ± {p['se']:.4f} | [{p['lo']:+.4f}, {p['hi']:+.4f}] | "
                     f"{100 * p['mean'] / bmean:+.1f}% | {p['wins']} / {p['losses']} |")
    return "\n".join(lines), seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder holding <run>_s<seed>/results.json")
    ap.add_argument("--runs", nargs="+", required=True,
                    help="run names (OUT/<run>_s<seed>) or LABEL=PREFIX for runs elsewhere (PREFIX_s<seed>)")
    ap.add_argument("--baseline", default=None, help="default: the first of --runs")
    ap.add_argument("--metric", default="NDCG@10")
    ap.add_argument("--split", default="test", choices=["test", "valid"])
    ap.add_argument("--results-md", default="", help="write the table into this file's section (default: print only)")
    ap.add_argument("--section", default="paired_seeds")
    ap.add_argument("--title", default="Paired seed comparison (benchmarks/paired_seeds.py)")
    args = ap.parse_args()
    labels = [r.split("=", 1)[0] for r in args.runs]
    baseline = args.baseline or labels[0]
    if baseline not in labels:
        sys.exit(f"--baseline {baseline} is not among --runs")
    res = load(Path(args.out), args.runs, args.metric, args.split)
    table, seeds = report(res, baseline, args.metric, args.split)
    head = (f"`python benchmarks/paired_seeds.py {' '.join(sys.argv[1:])}`; machine: {machine_line()}. "
            f"Seeds present in every run: {', '.join(map(str, seeds))} ({len(seeds)}); differences are paired by seed, "
            "interval = mean ± t(0.975, n-1) x se.")
    text = head + "\n\n" + table
    print(text)
    if args.results_md:
        write_section(Path(args.results_md), args.section, text, args.title)


if __name__ == "__main__":
    main()
