"""Where CRBR's recall goes: the beam width, the merge rule and the quantized query, on trained
checkpoints of the crbr benchmark suite (the synthetic world by default, or `--dataset ml-1m|Beauty`).

usage: python -m research.crbr_beams RUN_DIR [RUN_DIR ...] [--beams 1 4 16 64] [--threads 1] [--dataset ml-1m]

Each RUN_DIR is a CRBR run (runs/bench/crbr/synthetic/crbr or crbr_<tag>). Its best checkpoint is
evaluated on the test split with full ranking over the whole catalogue (history masked on real
data, not on the synthetic world, as the crbr suite does), with the global top-B beam and no
per-path quota. Rows:

- Retrieval A: the frozen base's own user vector q_A (what CRBR routes from and is compared to);
- RQ(q_A): q_A quantized greedily, layer by layer, onto CRBR's learned codebooks (nearest code to
  the remaining residual): what the codebooks can express of q_A without any router (runs with the
  design's v(0) = 0 only; with `start="context"` every path starts at q_A);
- CRBR with B beams under three merge rules over the B paths' queries q_b (unit norm) and path
  scores S_b (sum of log-probabilities), tau = the training InfoNCE temperature:
    similarity score(i) = max_b q_b . i                         (the design's merge & sort; merge_score="similarity")
    path       score(i) = max_b [q_b . i + tau log w_b]         (w = softmax over the beam of S; merge_score="path")
    mixture    score(i) = log sum_b w_b softmax_i(q_b . i / tau)   (the path mixture's likelihood; needs each
               path's partition function over the catalogue, so exact search only: not a library option;
               `crbr.analysis.mixture_scores`)
  plus the mean cosine between the best path's query and q_A, and the best cosine over the beam.

Prints the table and writes it to --report (and with --log into the crbr_beams section of that file).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._common import add_data_arg, machine_line
from benchmarks.bench_crbr import SYNTHETIC, load_dataset
from crbr.analysis import greedy_rq, mixture_scores, user_hits

from . import add_report_args, publish_report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m research.crbr_beams", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--beams", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "ml-1m", "Beauty"],
                    help="the runs' dataset (the crbr suite's); real data: history masked, interests = history categories")
    add_data_arg(ap)
    add_report_args(ap, "crbr_beams")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from crbr.config import EvalConfig
    from crbr.data.batching import history_batch
    from crbr.data.dataset import leave_one_out, train_item_counts
    from crbr.models import load_model
    from crbr.train.loop import build_evaluator

    t0 = time.perf_counter()
    real = args.dataset != "synthetic"
    ds, world = load_dataset(args.dataset, args.data_root)
    split = leave_one_out(ds)
    es = split.test
    counts = train_item_counts(ds, split)
    if real:  # as the crbr suite: a user's interests are the categories of the visible history
        from crbr.eval.interests import history_categories

        multi = np.array([len(c) >= 3 for c in history_categories(ds, es.users, es.hist_len)])
    else:
        o = world.interest_offsets
        multi = np.array([len(set(world.interest_categories[o[u]:o[u + 1]].tolist())) >= 3 for u in es.users])
    rows, protocol = [], ""
    for run in map(Path, args.runs):
        m, _ = load_model(run / "checkpoints" / "best.safetensors")
        fixed = {"merge_quota": 0, "branching": "global"}  # whatever the run was evaluated with
        V = m.item_vectors()
        tau = m.config.nce_temperature
        ev = build_evaluator(ds, split, "test", EvalConfig(mask_history=real, batch_size=256), m.config.max_len, counts)

        def evaluate(fn) -> tuple[float, float]:
            nonlocal protocol
            with torch.no_grad():
                res = ev.evaluate(lambda b: fn(b).float(), export=True)
            protocol = res.protocol
            hit = user_hits(res, es, 50)
            return res.metrics["Recall@50"], float(hit[multi].mean())

        def q_a(b):
            return F.normalize(m.base.user_vectors(b), dim=-1)

        def base_scores(b):
            s = q_a(b) @ V.T
            s[:, 0] = float("-inf")
            return s

        def rq_scores(b):
            s = F.normalize(greedy_rq(q_a(b), [blk.codebook for blk in m.blocks]), dim=-1) @ V.T
            s[:, 0] = float("-inf")
            return s

        with torch.no_grad():
            hb = history_batch(ds, es.users, es.hist_len, m.config.max_len)
            ctx, mem = m.routing_inputs(hb)
            qa = ctx  # the routing context is Retrieval A's (unit) query q_A
            rq = F.normalize(greedy_rq(qa, [blk.codebook for blk in m.blocks]), dim=-1)
        rows.append((run.name, "Retrieval A (q_A)", "-", "-", *evaluate(base_scores), 1.0, 1.0))
        if m.config.start == "zero":  # with start="context" the paths start at q_A: nothing to quantize
            rq_cos = float((rq * qa).sum(-1).mean())
            rows.append((run.name, "RQ(q_A) on CRBR's codebooks", "-", "-", *evaluate(rq_scores), rq_cos, rq_cos))
        print(*rows[-2:], flush=True)
        for B in args.beams:
            with torch.no_grad():
                q, _, _, _, _ = m._beam(ctx, B, memory=mem, branching="global")
            cos = (q * qa[:, None]).sum(-1)  # (U, B)
            for rule in ("similarity", "path", "mixture"):
                def fn(b, B=B, rule=rule):
                    if rule == "mixture":
                        c_b, mem_b = m.routing_inputs(b)
                        qb, _, S, _, _ = m._beam(c_b, B, memory=mem_b, branching="global")
                        return mixture_scores(qb, S, V, tau)
                    return m.score(b, beam=B, merge_score=rule, **fixed)  # the library's merge & sort (exact reference)

                rows.append((run.name, "CRBR", B, rule, *evaluate(fn), float(cos[:, 0].mean()), float(cos.max(1).values.mean())))
                print(rows[-1], flush=True)
    fmt = lambda x: f"{x:.4f}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, `python -m research.crbr_beams {' '.join(argv)}` "
        f"({(time.perf_counter() - t0) / 60:.0f} min); machine: {machine_line()}; {args.threads} thread(s).",
        f"Dataset: {args.dataset}{'' if real else f' ({SYNTHETIC})'}; protocol: {protocol}. Multi-interest users: "
        f"{int(multi.sum())} of {len(multi)} test users with >= 3 {'history categories' if real else 'true interests'}.",
        "",
        "| run | retriever | B | merge | Recall@50 | Recall@50 (>=3) | cos(best path, q_A) | max cos over beam |",
        "|---|---|---|---|---|---|---|---|",
        *("| " + " | ".join(fmt(x) for x in r) + " |" for r in rows),
    ]
    section = "\n".join(lines)
    print(section)
    publish_report(args, "crbr_beams", section, "Where CRBR's recall goes: beams, merge rule, quantized query "
                                                 "(python -m research.crbr_beams)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
