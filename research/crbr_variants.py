"""CRBR inference variants on trained checkpoints: beam branching (global top-B vs distinct
first-layer codes) x merge (by score vs per-path quota), on the synthetic world of the crbr
benchmark suite.

usage: python -m research.crbr_variants RUN_DIR [RUN_DIR ...] [--threads 1]

Each RUN_DIR is a CRBR run (e.g. runs/bench/crbr/synthetic/crbr or crbr_<tag> from
`python -m benchmarks crbr --tag TAG`); its best checkpoint is evaluated on the test split with full
ranking over the whole catalogue (history not masked, as the crbr suite on synthetic data): Recall@50
over all users and over users with >= 3 true interests, interest coverage@50 (true interests),
and the mean number of distinct first-layer codes among a user's B beams. Training settings
are read from each run's results.json. Prints the table and writes it to --report (and with --log
into the crbr_variants:synthetic section of that file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import machine_line
from benchmarks.bench_crbr import SYNTHETIC

from . import add_report_args, publish_report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m research.crbr_variants", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quota", type=int, default=13, help="per-path quota of the quota merge (B=4: 13 -> 52 >= 50)")
    add_report_args(ap, "crbr_variants")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from crbr.config import EvalConfig
    from crbr.data.batching import history_batch
    from crbr.data.dataset import leave_one_out, train_item_counts
    from crbr.data.synthetic import SyntheticConfig, generate
    from crbr.eval.interests import history_categories, interest_coverage
    from crbr.models import load_model
    from crbr.train.loop import build_evaluator

    world = generate(SyntheticConfig(**SYNTHETIC))
    ds = world.dataset
    split = leave_one_out(ds)
    es = split.test
    counts = train_item_counts(ds, split)
    o = world.interest_offsets
    interests = [set(world.interest_categories[o[u]:o[u + 1]].tolist()) for u in es.users]
    multi = np.array([len(s) >= 3 for s in interests])
    seen = history_categories(ds, es.users, es.hist_len)
    observable = np.array([len(i & h) / max(len(i), 1) for i, h in zip(interests, seen)])[multi].mean()
    rows, protocol = [], ""
    for run in map(Path, args.runs):
        m, _ = load_model(run / "checkpoints" / "best.safetensors")
        cfg = json.loads((run / "results.json").read_text())["config"]["model"]
        train = ", ".join(f"{k}={cfg[k]}" for k in ("train_paths", "path_sampling", "branching", "gumbel_hard", "tau_decay") if k in cfg)
        for branching in ("global", "first"):
            for quota in (0, args.quota):
                ev = build_evaluator(ds, split, "test", EvalConfig(mask_history=False, batch_size=256), m.config.max_len, counts)
                with torch.no_grad():
                    res = ev.evaluate(lambda b: m.score(b, branching=branching, merge_quota=quota).float(), export=True)
                    beams = m.beams(history_batch(ds, es.users, es.hist_len, m.config.max_len), branching=branching)
                protocol = res.protocol
                cov = interest_coverage(res.topk_items, interests, ds.cat_offsets, ds.cat_ids, 50)
                hit = np.array([len(set(es.targets(r).tolist()) & set(res.topk_items[r, :50].tolist())) > 0 for r in range(len(es))])
                distinct = np.mean([len(set(c)) for c in beams.codes[:, :, 0].tolist()])
                row = (run.name, train, branching, quota or "-", res.metrics["Recall@50"], hit[multi].mean(),
                       float(np.nanmean(cov)), float(np.nanmean(cov[multi])), distinct)
                print(row, flush=True)
                rows.append(row)
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, `python -m research.crbr_variants {' '.join(argv)}`; "
        f"machine: {machine_line()}; {args.threads} thread(s).",
        f"Dataset: synthetic ({SYNTHETIC}); protocol: {protocol}. B = 4 beams; quota = at most {args.quota} items per path "
        "in the merged top 50. Coverage counts true interests; users with >= 3 interests have "
        f"{observable:.3f} of theirs among the categories of their whole visible history (the most a model of "
        "the history can find without guessing).",
        "",
        "| run | training | branching | quota | Recall@50 | Recall@50 (>=3) | cov@50 | cov@50 (>=3) | distinct layer-1 codes |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.4f} | {r[5]:.4f} | {r[6]:.4f} | {r[7]:.4f} | {r[8]:.2f} |" for r in rows],
    ]
    section = "\n".join(lines)
    print(section)
    publish_report(args, "crbr_variants", section,
                   "CRBR inference variants on the synthetic world (python -m research.crbr_variants)",
                   section="crbr_variants:synthetic")
    return 0


if __name__ == "__main__":
    sys.exit(main())
