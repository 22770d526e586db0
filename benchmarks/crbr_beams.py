"""Where CRBR's recall goes: the beam width, the merge rule and the quantized query, on trained
checkpoints of bench_crbr.py (the synthetic world by default, or `--dataset ml-1m|Beauty`).

usage: python benchmarks/crbr_beams.py RUN_DIR [RUN_DIR ...] [--beams 1 4 16 64] [--threads 1] [--dataset ml-1m]

Each RUN_DIR is a CRBR run (runs/bench_crbr/synthetic/crbr or crbr_<tag>). Its best checkpoint is
evaluated on the test split with full ranking over the whole catalogue (history masked on real
data, not on the synthetic world, as bench_crbr.py does), with the global top-B beam and no
per-path quota. Rows:

- Retrieval A: the frozen base's own user vector q_A (what CRBR routes from and is compared to);
- RQ(q_A): q_A quantized greedily, layer by layer, onto CRBR's learned codebooks (nearest code to
  the remaining residual): what the codebooks can express of q_A without any router (runs with the
  seed's v(0) = 0 only; with `start="context"` every path starts at q_A);
- CRBR with B beams under three merge rules over the B paths' queries q_b (unit norm) and path
  scores S_b (sum of log-probabilities), tau = the training InfoNCE temperature:
    similarity score(i) = max_b q_b . i                         (the seed's merge & sort; merge_score="similarity")
    path       score(i) = max_b [q_b . i + tau log w_b]         (w = softmax over the beam of S; merge_score="path")
    mixture    score(i) = log sum_b w_b softmax_i(q_b . i / tau)   (the path mixture's likelihood; needs each
               path's partition function over the catalogue, so exact search only: not a library option)
  plus the mean cosine between the best path's query and q_A, and the best cosine over the beam.

Writes the crbr_beams section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, write_section  # noqa: E402
from bench_crbr import SYNTHETIC, load_dataset, user_hits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mixture_scores(q: torch.Tensor, S: torch.Tensor, V: torch.Tensor, tau: float) -> torch.Tensor:
    """(U, I) log sum_b w_b softmax_i(q_b . i / tau) for B paths: q (U, B, D) unit queries, S (U, B)
    path scores, V (I, D) item vectors (row 0 = padding: -inf, never returned)."""
    logit = torch.einsum("ubd,id->ubi", q, V) / tau  # (U, B, I)
    logit[:, :, 0] = float("-inf")
    log_p = logit - torch.logsumexp(logit[:, :, 1:], -1, keepdim=True)  # per-path softmax over the catalogue
    return torch.logsumexp(torch.log_softmax(S, 1)[:, :, None] + log_p, 1)


def greedy_rq(x: torch.Tensor, codebooks: list[torch.Tensor]) -> torch.Tensor:
    """(U, D) x quantized layer by layer: at each layer the code nearest the remaining residual."""
    v = torch.zeros_like(x)
    for C in codebooks:
        j = torch.cdist(x - v, C).argmin(1)
        v = v + C[j]
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--beams", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "ml-1m", "Beauty"],
                    help="the runs' dataset (bench_crbr.py's); real data: history masked, interests = history categories")
    ap.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from crbr.config import EvalConfig
    from crbr.data.batching import history_batch
    from crbr.data.dataset import leave_one_out, train_item_counts
    from crbr.train.checkpoint import load_model_from_checkpoint
    from crbr.train.loop import build_evaluator

    t0 = time.perf_counter()
    real = args.dataset != "synthetic"
    ds, world = load_dataset(args.dataset)
    split = leave_one_out(ds)
    es = split.test
    counts = train_item_counts(ds, split)
    if real:  # as bench_crbr.py: a user's interests are the categories of the visible history
        from crbr.eval.interests import history_categories

        multi = np.array([len(c) >= 3 for c in history_categories(ds, es.users, es.hist_len)])
    else:
        o = world.interest_offsets
        multi = np.array([len(set(world.interest_categories[o[u]:o[u + 1]].tolist())) >= 3 for u in es.users])
    rows, protocol = [], ""
    for run in map(Path, args.runs):
        m, _ = load_model_from_checkpoint(run / "checkpoints" / "best.safetensors")
        m.eval()
        m.config.merge_quota, m.config.branching = 0, "global"  # whatever the run was evaluated with
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
                q, _, _, _, _ = m._beam(ctx, B, memory=mem)
            cos = (q * qa[:, None]).sum(-1)  # (U, B)
            for rule in ("similarity", "path", "mixture"):
                def fn(b, B=B, rule=rule):
                    if rule == "mixture":
                        c_b, mem_b = m.routing_inputs(b)
                        qb, _, S, _, _ = m._beam(c_b, B, memory=mem_b)
                        return mixture_scores(qb, S, V, tau)
                    m.config.beam, m.config.merge_score = B, rule  # the library's merge & sort (exact reference)
                    return m.score(b)

                rows.append((run.name, "CRBR", B, rule, *evaluate(fn), float(cos[:, 0].mean()), float(cos.max(1).values.mean())))
                print(rows[-1], flush=True)
    fmt = lambda x: f"{x:.4f}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, `python benchmarks/crbr_beams.py {' '.join(sys.argv[1:])}` "
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
    if args.results_md:
        write_section(Path(args.results_md), "crbr_beams", section,
                      "Where CRBR's recall goes: beams, merge rule, quantized query (benchmarks/crbr_beams.py)")


if __name__ == "__main__":
    main()
