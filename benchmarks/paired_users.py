"""Per-user paired comparison of retrievers on one split: is a Recall@K difference larger than the
luck of which users hit?

usage: python benchmarks/paired_users.py BASE_RUN RUN [RUN ...] [--dataset ml-1m] [--k 50] [--threads 2]

Each RUN is a run directory with checkpoints/best.safetensors (any model, e.g. bench_crbr.py's
two_tower and crbr_<tag> stages). Every run is evaluated on the test split with full ranking over
the whole catalogue (history masked on real data, not on the synthetic world, as bench_crbr.py
does); per test user, a hit = one of the user's targets in the top K. Against BASE_RUN it reports
the users only the run hits, the users only the base hits, and the exact two-sided McNemar p-value
(binomial test on those discordant users). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crbr import load_dataset, user_hits  # noqa: E402


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: P(a split of the discordant pairs at least this uneven)
    under Binomial(only_a + only_b, 1/2)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "ml-1m", "Beauty"])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from crbr.config import EvalConfig
    from crbr.data.dataset import leave_one_out, train_item_counts
    from crbr.train.checkpoint import load_model_from_checkpoint
    from crbr.train.loop import build_evaluator

    real = args.dataset != "synthetic"
    ds, _ = load_dataset(args.dataset)
    split = leave_one_out(ds)
    es, counts = split.test, train_item_counts(ds, split)
    hits, recall, protocol = {}, {}, ""
    for run in [args.base, *args.runs]:
        m, _ = load_model_from_checkpoint(Path(run) / "checkpoints" / "best.safetensors")
        m.eval()
        ev = build_evaluator(ds, split, "test", EvalConfig(mask_history=real, batch_size=256), m.config.max_len, counts)
        with torch.no_grad():
            res = ev.evaluate(lambda b: m.score(b).float(), export=True)
        protocol = res.protocol
        hits[run] = user_hits(res, es, args.k)
        recall[run] = res.metrics[f"Recall@{args.k}"]
    b = hits[args.base]
    print(f"`python benchmarks/paired_users.py {' '.join(sys.argv[1:])}`; dataset {args.dataset}; protocol: {protocol}.\n")
    print(f"| run | Recall@{args.k} | base Recall@{args.k} | users only the run hits | users only the base hits | exact McNemar p |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        a = hits[run]
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        print(f"| {Path(run).name} | {recall[run]:.4f} | {recall[args.base]:.4f} | {only_a} | {only_b} | "
              f"{mcnemar_exact(only_a, only_b):.3f} |")


if __name__ == "__main__":
    main()
