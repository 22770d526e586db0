"""The Bayes-optimal retriever on the synthetic world: what any model could reach at most.

On the world of the crbr benchmark suite (same generator settings) every user's leave-one-out test event
is scored by `SyntheticWorld.next_item_probs`, the exact distribution the generator draws it
from, given the ground truth before it: the latent interest state of the previous event, the
user's interest weights and tastes, and the last `repeat_window` items. Its top-K lists are the
best a retriever can do in expectation; a model sees only the history, so it sits below them.

Rows:
  oracle           top 50 by the exact probability
  oracle, no state the same without the previous event's latent interest (z_{t-1} marginalized
                   to the interest weights, so P(interest) = w_j): knows every interest and taste
                   but not which one is active
  oracle + cover   the oracle's list with the best item of every interest it misses swapped in
                   for its least likely items (coverage 1 by construction; the recall it costs)
  oracle, tastes inferred from the history
                   the oracle with each interest's taste replaced by its Bayes posterior given the
                   visible history (`inferred_taste_probs`); it still knows the interests, weights,
                   latent states and event kinds, so its expected Recall@50 is an upper bound for
                   any retriever that reads only the history
  catalogue known, user estimated from the history
                   knows the catalogue and the process but reads the user only through the
                   history's items and actions (`history_estimate_probs`: EM on the generator's
                   hidden Markov model, then the tastes' Bayes predictive): an achievable
                   retriever with a perfect item side

Metrics per row, over all test users and over those with >= 3 true interests (the CRBR bar's
group): Recall@50 realized (the actual test item in the top 50) and expected (the probability
mass of the top 50, the realized value's expectation), NDCG@10, interest coverage@50 (share of
the true interests among the categories of the top 50). With `--compare bench.json` (written by
`python -m benchmarks crbr`) the models of that run are set beside the oracle. The estimators are
`crbr.analysis.inferred_taste_probs` and `history_estimate_probs`.

    python -m research.synthetic_oracle --compare runs/bench/crbr/synthetic/bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from benchmarks._common import machine_line
from benchmarks.bench_crbr import SYNTHETIC
from crbr.analysis import ORACLE_K as K
from crbr.analysis import heldout_events, history_estimate_probs, inferred_taste_probs, with_coverage
from crbr.analysis import oracle_metrics as evaluate

from . import add_report_args, publish_report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m research.synthetic_oracle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", default=None, help="bench.json of a crbr suite run on the synthetic world")
    ap.add_argument("--skip-inferred", action="store_true",
                    help="leave out the row with inferred tastes (its Metropolis sampling takes minutes)")
    ap.add_argument("--skip-estimate", action="store_true",
                    help="leave out the row that estimates the user from the history (EM + Metropolis, minutes)")
    add_report_args(ap, "synthetic_oracle")
    args = ap.parse_args(argv)
    import dataclasses

    from crbr.data.synthetic import SyntheticConfig, generate

    t0 = time.perf_counter()
    world = generate(SyntheticConfig(**SYNTHETIC))
    ds = world.dataset
    users, t, target, interests = heldout_events(world)
    multi = np.array([len(i) >= 3 for i in interests])

    rows = {}
    p = world.next_item_probs(users, t)  # (U, I)
    top = np.argsort(-p, axis=1, kind="stable")[:, :K]
    rows["oracle"] = evaluate(p, top, target, interests, ds, multi)
    covered = with_coverage(p, top, interests, world.item_category, np.asarray(ds.cat_offsets), np.asarray(ds.cat_ids))
    rows["oracle + cover"] = evaluate(p, covered, target, interests, ds, multi)
    # no state: stickiness 0 makes P(z_t = j) = w_j
    stateless = dataclasses.replace(world, config=dataclasses.replace(world.config, stickiness=0.0))
    p0 = stateless.next_item_probs(users, t)
    rows["oracle, no state"] = evaluate(p0, np.argsort(-p0, axis=1, kind="stable")[:, :K], target, interests, ds, multi)
    if not args.skip_inferred:
        pt = inferred_taste_probs(world, users, t, seed=0)
        # expected recall is the mass of its list under the exact p, like every other row's
        rows["oracle, tastes inferred from the history"] = evaluate(
            p, np.argsort(-pt, axis=1, kind="stable")[:, :K], target, interests, ds, multi)
    if not args.skip_estimate:
        pe = history_estimate_probs(world, users, t, seed=0)
        rows["catalogue known, user estimated from the history"] = evaluate(
            p, np.argsort(-pe, axis=1, kind="stable")[:, :K], target, interests, ds, multi)
    wall = time.perf_counter() - t0
    for n, r in rows.items():
        print(n, {k: round(v, 4) for k, v in r.items()}, flush=True)

    models = {}
    if args.compare:
        names = {"sasrec": "SASRec", "qformer": "Q-Former max-sim", "two_tower": "Retrieval A (SAB+PMA)",
                 "crbr": "CRBR (B=4)", "crbr_quota": "CRBR (B=4), at most 13 per path"}
        table = json.loads(Path(args.compare).read_text())["table"]
        models = {names.get(k, k): v for k, v in table.items()}

    def f(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    lines = [
        f"Run {datetime.now():%Y-%m-%d %H:%M}, `python -m research.synthetic_oracle"
        + (f" --compare {args.compare}" if args.compare else "") + f"` ({wall:.0f} s); machine: {machine_line()}.",
        f"Dataset: synthetic ({SYNTHETIC}), the world of the crbr suite; protocol: leave-one-out, each of the "
        f"{len(users)} users' last event is the target, top {K} over all {ds.n_items} items, nothing masked; "
        f"{int(multi.sum())} users have >= 3 true interests.",
        "",
        "| retriever | Recall@50 | Recall@50 (>=3) | expected Recall@50 (>=3) | NDCG@10 | cov@50 | cov@50 (>=3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in rows.items():
        lines.append(f"| {n} | {f(r['Recall@50'])} | {f(r['Recall@50_multi'])} | {f(r['expected_Recall@50_multi'])} | "
                     f"{f(r['NDCG@10'])} | {f(r['cov@50'])} | {f(r['cov@50_multi'])} |")
    for n, r in models.items():
        lines.append(f"| {n} (trained, {Path(args.compare).parent.name}) | {f(r['Recall@50'])} | {f(r['Recall@50_multi'])} | - | "
                     f"{f(r['NDCG@10'])} | {f(r['cov@50'])} | {f(r['cov@50_multi'])} |")
    if "Retrieval A (SAB+PMA)" in models:
        ra = models["Retrieval A (SAB+PMA)"]["Recall@50_multi"]
        o = rows["oracle"]
        lines += ["", f"CRBR bar on >= 3-interest users: Recall@50 >= 1.2 x Retrieval A = {1.2 * ra:.4f}; the oracle "
                      f"reaches {o['Recall@50_multi']:.4f} realized ({o['expected_Recall@50_multi']:.4f} expected) = "
                      f"{o['Recall@50_multi'] / ra:.2f}x Retrieval A."]
        for name, what in (("oracle, tastes inferred from the history", "With the tastes inferred from the history it"),
                           ("catalogue known, user estimated from the history",
                            "Knowing only the catalogue and estimating the user from the history, one")):
            if name in rows:
                v = rows[name]["expected_Recall@50_multi"]
                lines[-1] += f" {what} expects {v:.4f} = {v / ra:.2f}x Retrieval A."
    section = "\n".join(lines)
    print(section)
    publish_report(args, "synthetic_oracle", section,
                   "The Bayes-optimal retriever on the synthetic world (python -m research.synthetic_oracle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
