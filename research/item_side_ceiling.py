"""How far can P linear queries over a given item side get on the synthetic world?

CRBR retrieves with B = 4 query vectors over Retrieval A's item vectors, so its recall
is bounded by what any 4 queries over those vectors can express, however well they are routed.
This script measures that bound's best fit: for every test user (leave-one-out, as the crbr suite)
the generator's exact next-item distribution p (`SyntheticWorld.next_item_probs`) is
approximated by a mixture of P softmaxes over the item side V,

    m(i) = sum_k w_k softmax(V q_k)_i,      min over q_1..q_P, w of  KL(p || m),

fitted per user by Adam (the queries start at the target's mean item vectors over the P
categories holding most of it; `crbr.analysis.fit_mixture`). The target is p itself (`--fit-to exact`)
or the history-only estimate of research.synthetic_oracle (`--fit-to estimate`). The top 50 of m over the whole catalogue is
then scored against p: its expected Recall@50 (the mass of p it holds) and its realized Recall@50
(the test item in it). Ranking by m stands in for a per-path search and merge of the same queries
(CRBR's `mixture` merge rule).

Fitted to p, the user side is an oracle and only the item side and P limit the list; fitted to
the estimate, it is what P queries over V reach with the history read as well as that Bayes
estimate reads it. Either is a fit, not a proof: a better optimizer or a recall-shaped objective
could do somewhat better; `--steps` shows how much longer fitting moves it.

Item sides:
  truth            the generator's own features [s_i, 10 x onehot(category), log pop_i]: one
                   query per interest can express that interest's step distribution exactly
                   (up to the one-hot's finite weight)
  Retrieval A      the trained Set-Transformer retriever's item vectors (what CRBR searches)
  SASRec           the trained SASRec's item embeddings

    python -m research.item_side_ceiling --runs runs/bench/crbr/synthetic [--paths 1 4] [--steps 1000] [--lr 0.2] [--limit 800]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import machine_line
from benchmarks.bench_crbr import SYNTHETIC
from crbr.analysis import ORACLE_K as K
from crbr.analysis import fit_mixture, heldout_events, history_estimate_probs, initial_queries
from crbr.analysis import oracle_metrics as evaluate

from . import add_report_args, publish_report


def item_sides(world, runs: Path | None) -> dict[str, np.ndarray]:
    sides = {}
    C = len(world.category_centroids)
    onehot = np.zeros((len(world.item_category), C), dtype=np.float32)
    onehot[np.arange(1, len(world.item_category)), world.item_category[1:]] = 10.0
    logpop = np.log(np.where(world.item_popularity > 0, world.item_popularity, 1.0))[:, None]
    sides["truth"] = np.concatenate([world.item_styles, onehot, logpop.astype(np.float32)], 1)
    if runs is not None:
        from crbr.models import load_model

        for name, stage, get in (("Retrieval A", "two_tower", lambda m: m.item_vectors()),
                                 ("SASRec", "sasrec", lambda m: m.item_emb.weight)):
            ckpt = runs / stage / "checkpoints" / "best.safetensors"
            if not ckpt.exists():
                print(f"skip {name}: {ckpt} not found", flush=True)
                continue
            m, _ = load_model(ckpt)
            with torch.no_grad():
                sides[name] = get(m).float().numpy()
    return sides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m research.item_side_ceiling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=None, help="the crbr suite's synthetic folder (with two_tower/ and sasrec/)")
    ap.add_argument("--paths", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=0.2, help="Adam's learning rate")
    ap.add_argument("--fit-to", nargs="+", default=["exact", "estimate"], choices=["exact", "estimate"],
                    help="exact = the generator's p (an oracle user side); estimate = research.synthetic_oracle's "
                         "history-only estimate (EM + Bayes tastes, minutes)")
    ap.add_argument("--chunk", type=int, default=400, help="users fitted at once")
    ap.add_argument("--limit", type=int, default=0, help="only the first N users with >= 3 interests (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    add_report_args(ap, "item_side_ceiling")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from crbr.data.synthetic import SyntheticConfig, generate

    t0 = time.perf_counter()
    world = generate(SyntheticConfig(**SYNTHETIC))
    ds = world.dataset
    users, t, target, interests = heldout_events(world)
    keep = np.nonzero([len(i) >= 3 for i in interests])[0][: args.limit or None]
    users, t, target, interests = users[keep], t[keep], target[keep], [interests[k] for k in keep]
    p = world.next_item_probs(users, t)  # (U, I)
    fits = {"exact": p}
    if "estimate" in args.fit_to:
        fits["estimate"] = history_estimate_probs(world, users, t, seed=0)
    everyone = np.ones(len(users), dtype=bool)

    def score(logm: np.ndarray) -> tuple[float, float]:
        r = evaluate(p, np.argsort(-logm, axis=1, kind="stable")[:, :K], target, interests, ds, everyone)
        return float(r["expected_Recall@50"]), float(r["Recall@50"])

    label = {"exact": "the exact p (oracle)", "estimate": "the history estimate"}
    rows = [(label[f], "itself", "-", *score(np.log(np.maximum(fits[f], 1e-300))), 0.0) for f in args.fit_to]
    for name, V in item_sides(world, Path(args.runs) if args.runs else None).items():
        Vt = torch.as_tensor(V)
        for f in args.fit_to:
            for P in args.paths:
                t1 = time.perf_counter()
                init = initial_queries(fits[f], world.item_category, V, P)
                logm = np.zeros_like(p)
                for s in range(0, len(users), args.chunk):
                    sl = slice(s, s + args.chunk)
                    logm[sl] = fit_mixture(torch.as_tensor(fits[f][sl], dtype=torch.float32), Vt,
                                           torch.as_tensor(init[sl]), args.steps, args.lr).numpy()
                rows.append((label[f], name, str(P), *score(logm), time.perf_counter() - t1))
                print(rows[-1], flush=True)
    wall = time.perf_counter() - t0

    lines = [
        f"Run {datetime.now():%Y-%m-%d %H:%M}, `python -m research.item_side_ceiling"
        + (f" --runs {args.runs}" if args.runs else "") + f" --paths {' '.join(map(str, args.paths))} --steps {args.steps} --lr {args.lr}"
        + f" --fit-to {' '.join(args.fit_to)}" + (f" --limit {args.limit}" if args.limit else "") + f"` ({wall:.0f} s); machine: {machine_line()}; "
        f"{args.threads} thread(s).",
        f"Dataset: synthetic ({SYNTHETIC}), the world of the crbr suite; protocol: leave-one-out, the {len(users)} "
        f"test users with >= 3 true interests, top {K} over all {ds.n_items} items by the fitted mixture, nothing "
        "masked; expected Recall@50 = the exact next-item probability mass of the list.",
        "",
        "| fitted to | item side | queries P | expected Recall@50 (>=3) | realized Recall@50 (>=3) | fit time (s) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {f} | {n} | {P} | {e:.4f} | {r:.4f} | {s:.0f} |" for f, n, P, e, r, s in rows]
    section = "\n".join(lines)
    print(section)
    publish_report(args, "item_side_ceiling", section,
                   "What P queries over an item side can reach on the synthetic world (python -m research.item_side_ceiling)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
