"""Paired comparison of runs over many seeds: is a difference between two models larger than
the seed-to-seed noise of the evaluation?

Reads OUT/<run>_s<seed>/results.json (the layout of the residual and towers suites), keeps the
seeds every listed run has, and reports per run the mean and spread of a test metric and, for each
run against the baseline, the mean paired difference (same seed: same split, same initial
backbone seed), its standard error, a two-sided 95% t-interval, and how many seeds each side won
(`crbr.stats.load_seed_metrics` and `paired_seed_table`).

usage:
  python -m benchmarks paired_seeds --out runs/bench/residual --runs sasrec residual residual_warm \
      g0=runs/sweep_g0/residual --baseline sasrec [--split valid] [--metric NDCG@10] [--report FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

from crbr.stats import load_seed_metrics, paired_seed_table

from ._common import command_line, machine_line, parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("paired_seeds", __doc__)
    ap.add_argument("--out", required=True, help="folder holding <run>_s<seed>/results.json")
    ap.add_argument("--runs", nargs="+", required=True,
                    help="run names (OUT/<run>_s<seed>) or LABEL=PREFIX for runs elsewhere (PREFIX_s<seed>)")
    ap.add_argument("--baseline", default=None, help="default: the first of --runs")
    ap.add_argument("--metric", default="NDCG@10")
    ap.add_argument("--split", default="test", choices=["test", "valid"])
    ap.add_argument("--report", default="", help="also write the text to this markdown file")
    args = ap.parse_args(argv)
    labels = [r.split("=", 1)[0] for r in args.runs]
    baseline = args.baseline or labels[0]
    if baseline not in labels:
        sys.exit(f"--baseline {baseline} is not among --runs")
    try:
        res = load_seed_metrics(Path(args.out), args.runs, args.metric, args.split)
        table, seeds = paired_seed_table(res, baseline, args.metric, args.split)
    except ValueError as e:
        sys.exit(str(e))
    head = (f"`{command_line('paired_seeds', argv)}`; machine: {machine_line()}. "
            f"Seeds present in every run: {', '.join(map(str, seeds))} ({len(seeds)}); differences are paired by seed, "
            "interval = mean ± t(0.975, n-1) x se.")
    text = head + "\n\n" + table
    print(text)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
