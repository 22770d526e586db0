"""Paired statistics for comparing two models on the same evaluation.

Two kinds of pairing occur in this project's benchmarks:

- over seeds: each seed gives both models the same split and initialization seed, so the
  per-seed differences are paired (`paired`, `paired_bootstrap`, `sign_test`); run folders laid
  out as OUT/<run>_s<seed>/results.json are read by `load_seed_metrics` and compared by
  `paired_seed_table`;
- over users: both models rank the same test users, and a user is a hit or a miss for each
  (`mcnemar_exact` on the users only one of them hits).

Standard library only.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from pathlib import Path
from typing import Sequence

# two-sided 95% quantiles of Student's t (t_{0.975, df}), df = 1..30; beyond 30 the normal 1.96
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def t975(df: int) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom (1.96 beyond 30)."""
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def paired(base: Sequence[float], other: Sequence[float]) -> dict[str, float]:
    """Mean paired difference other - base, its standard error, the two-sided 95% t-interval
    (lo, hi) and how many pairs each side won: {n, mean, se, lo, hi, wins, losses}."""
    d = [o - b for o, b in zip(other, base)]
    n = len(d)
    mean = statistics.mean(d)
    se = statistics.stdev(d) / n ** 0.5 if n > 1 else float("nan")
    h = t975(n - 1) * se if n > 1 else float("nan")
    return {"n": n, "mean": mean, "se": se, "lo": mean - h, "hi": mean + h,
            "wins": sum(x > 0 for x in d), "losses": sum(x < 0 for x in d)}


def paired_bootstrap(base: Sequence[float], other: Sequence[float], n_resamples: int = 10_000,
                     level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Percentile bootstrap interval of the mean paired difference other - base: the pairs are
    resampled with replacement `n_resamples` times. Returns {n, mean, lo, hi}."""
    d = [o - b for o, b in zip(other, base)]
    if not d:
        raise ValueError("paired_bootstrap: no pairs")
    rng = random.Random(seed)
    n = len(d)
    means = sorted(sum(rng.choices(d, k=n)) / n for _ in range(n_resamples))
    tail = (1.0 - level) / 2
    lo = means[min(n_resamples - 1, max(0, math.floor(tail * n_resamples)))]
    hi = means[min(n_resamples - 1, max(0, math.ceil((1.0 - tail) * n_resamples) - 1))]
    return {"n": n, "mean": statistics.mean(d), "lo": lo, "hi": hi}


def binomial_two_sided(k: int, n: int) -> float:
    """Two-sided exact p-value of a split of n trials at least as uneven as min(k, n - k) vs the
    rest under Binomial(n, 1/2) (1.0 when n = 0)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: P(a split of the discordant pairs at least this uneven)
    under Binomial(only_a + only_b, 1/2)."""
    return binomial_two_sided(only_a, only_a + only_b)


def sign_test(base: Sequence[float], other: Sequence[float]) -> float:
    """Two-sided exact sign test of paired values: ties left out, the wins of `other` against
    Binomial(wins + losses, 1/2)."""
    wins = sum(o > b for o, b in zip(other, base))
    losses = sum(o < b for o, b in zip(other, base))
    return binomial_two_sided(wins, wins + losses)


# ------------------------------------------------------------------------- runs over seeds
def load_seed_metrics(out: str | Path, runs: list[str], metric: str,
                      split: str = "test") -> dict[str, dict[int, float]]:
    """{run: {seed: metric}} for every finished run directory OUT/<run>_s<seed> (one with a
    results.json); a run given as LABEL=PREFIX reads PREFIX_s<seed> instead (PREFIX = a path,
    e.g. runs/sweep_a/residual). A results.json without the metric is a ValueError naming it."""
    res: dict[str, dict[int, float]] = {}
    for spec in runs:
        name, prefix = spec.split("=", 1) if "=" in spec else (spec, str(Path(out) / spec))
        folder, stem = Path(prefix).parent, Path(prefix).name
        res[name] = {}
        for d in folder.glob(f"{stem}_s*"):
            m = re.fullmatch(rf"{re.escape(stem)}_s(\d+)", d.name)
            f = d / "results.json"
            if m and f.exists():
                r = json.loads(f.read_text())
                if metric not in r.get(split, {}):
                    raise ValueError(f"{f}: no {split} metric {metric!r}")
                res[name][int(m.group(1))] = float(r[split][metric])
    return res


def paired_seed_table(res: dict[str, dict[int, float]], baseline: str, metric: str,
                      split: str = "test") -> tuple[str, list[int]]:
    """A markdown table of `load_seed_metrics`' result over the seeds every run has: per run the
    mean ± sd over seeds and, against `baseline`, the paired difference (mean ± se), its 95%
    t-interval, the relative difference and the seeds won / lost. Returns (table, seeds); fewer
    than 2 shared seeds is a ValueError."""
    seeds = sorted(set.intersection(*(set(v) for v in res.values())))
    if len(seeds) < 2:
        raise ValueError(f"need >= 2 seeds that every run has; found {seeds}")
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
