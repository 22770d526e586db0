"""Per-user paired comparison of retrievers on one split: is a Recall@K difference larger than the
luck of which users hit?

usage: python -m benchmarks paired_users BASE_RUN RUN [RUN ...] [--dataset ml-1m] [--k 50] [--threads 2]

Each RUN is a run directory with checkpoints/best.safetensors (any model, e.g. the crbr suite's
two_tower and crbr stages). Every run is evaluated on the test split with full ranking over the
whole catalogue (history masked on real data, not on the synthetic world, as the crbr suite
does); per test user, a hit = one of the user's targets in the top K. Against BASE_RUN it reports
the users only the run hits, the users only the base hits, and the exact two-sided McNemar p-value
(`crbr.stats.mcnemar_exact`: a binomial test on those discordant users). Prints a markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from crbr.analysis import user_hits
from crbr.stats import mcnemar_exact

from ._common import add_data_arg, command_line, parser
from .bench_crbr import load_dataset


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("paired_users", __doc__)
    ap.add_argument("base")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "ml-1m", "Beauty"])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    add_data_arg(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from crbr.config import EvalConfig
    from crbr.data.dataset import leave_one_out, train_item_counts
    from crbr.models import load_model
    from crbr.train.loop import build_evaluator

    real = args.dataset != "synthetic"
    ds, _ = load_dataset(args.dataset, args.data_root)
    split = leave_one_out(ds)
    es, counts = split.test, train_item_counts(ds, split)
    hits, recall, protocol = {}, {}, ""
    for run in [args.base, *args.runs]:
        m, _ = load_model(Path(run) / "checkpoints" / "best.safetensors")
        ev = build_evaluator(ds, split, "test", EvalConfig(mask_history=real, batch_size=256), m.config.max_len, counts)
        with torch.no_grad():
            res = ev.evaluate(lambda b: m.score(b).float(), export=True)
        protocol = res.protocol
        hits[run] = user_hits(res, es, args.k)
        recall[run] = res.metrics[f"Recall@{args.k}"]
    b = hits[args.base]
    print(f"`{command_line('paired_users', argv)}`; dataset {args.dataset}; protocol: {protocol}.\n")
    print(f"| run | Recall@{args.k} | base Recall@{args.k} | users only the run hits | users only the base hits | exact McNemar p |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        a = hits[run]
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        print(f"| {Path(run).name} | {recall[run]:.4f} | {recall[args.base]:.4f} | {only_a} | {only_b} | "
              f"{mcnemar_exact(only_a, only_b):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
