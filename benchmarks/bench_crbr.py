"""CRBR vs the Set-Transformer retriever vs SASRec in one run: quality, interest coverage and
retrieval latency.

usage: python -m benchmarks crbr [--dataset synthetic|ml-1m|Beauty] [--threads 2] [--minutes 10] [--split-k 1]

Trains, in this process and through the generic trainer, SASRec, the Q-Former (Task A + B), the
Set-Transformer retriever ("Retrieval A": SAB + PMA over the frozen Q-Former; stage two_tower)
and CRBR over Retrieval A (reusing a stage's
checkpoint when its run directory already holds results.json), then evaluates each on the test
split with full ranking (history masked on real data, as the published SASRec numbers):
leave-one-out by default; `--split-k K` holds out each user's last K events as test targets (and
the K before as validation targets), the multi-target protocol of ComiRec / MIND, where Recall@50
counts how many of a user's next K items (often from several interests) are retrieved.

  Recall@50, NDCG@10, tail HR@10 (least popular fifth of the items), and interest coverage@50
  (share of a user's interests present among the categories of the top 50: the true interests on
  the synthetic world, the history's categories on real data), over all users and over
  multi-interest users (>= 3 interests).

Latency: 1024 users end to end on an HNSW index over the item vectors — Retrieval A (tower +
pooling + one search) and CRBR (tower + pooling + beam search B=4 + 4 searches + merge) —
median of 5 runs each, measured side by side. Writes one record per model (suite "crbr"; CRBR
with the per-path quota as variant "quota"; --tag and --split-k K > 1 add to the variant) and the
report OUT/<dataset>[_kK]/bench[_TAG].md beside bench[_TAG].json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from crbr.analysis import code_usage, recall_multi

from ._common import (ROOT, add_data_arg, add_output_args, command_line, data_root, machine_line, parser, publish,
                      relpath, with_tag, write_report)

SYNTHETIC = {"seed": 0, "n_users": 4000, "n_items": 4000, "n_categories": 60, "min_interests": 1, "max_interests": 5}


def stages(dataset: str, minutes: float) -> list[tuple[str, dict, dict]]:
    """(stage, model settings, train settings) for the dataset."""
    real = dataset != "synthetic"
    L = {"ml-1m": 200, "Beauty": 50}.get(dataset, 100)
    feats = {"item_features": "text"} if real else {}
    common = {"max_minutes": minutes, "windows": "all", "window_stride": max(L // 4, 10), "length_bucketing": True}
    return [
        ("sasrec", {"name": "sasrec", "max_len": L, "hidden": 64, "n_layers": 2, "n_heads": 1, "dropout": 0.2},
         {"lr": 1e-3 if real else 2e-3, "patience": 10 if real else 3, "epochs": 300, "max_minutes": minutes}),
        ("qformer", {"name": "qformer", "max_len": L, "hidden": 64, "n_queries": 16, "n_layers": 2, "n_heads": 2,
                     "dropout": 0.1, "n_negatives": 512, **feats},
         {"lr": 1e-3 if real else 3e-3, "patience": 5, "epochs": 200, **common}),
        ("two_tower", {"name": "set_transformer", "hidden": 64, "out_dim": 64, "n_negatives": 512, **feats},
         {"lr": 1e-3 if real else 3e-3, "patience": 4, "epochs": 100, **common}),
        ("crbr", {"name": "crbr", "codebook_sizes": [32, 32, 32], "beam": 4, "n_negatives": 512, "beta": 0.1,
                  "alpha": 0.1, "tau_decay": 2e-4},
         {"lr": 1e-3 if real else 3e-3, "patience": 4, "epochs": 100, **common}),
    ]


def split_settings(k: int) -> dict:
    return {"name": "leave_one_out"} if k == 1 else {"name": "leave_k_out", "k": k}


def run_stage(name, model, train, data, out: Path, threads: int, ds, split, split_k: int = 1):
    from crbr.config import ExperimentConfig, from_dict
    from crbr.models import build_model, load_model
    from crbr.train.loop import Trainer

    run = out / name
    best = run / "checkpoints" / "best.safetensors"
    if (run / "results.json").exists() and best.exists():
        print(f"== {name}: reusing {best}", flush=True)
        m, _ = load_model(best)
        res = json.loads((run / "results.json").read_text())
        res["reused"] = relpath(run)
        return m, res
    cfg = from_dict(ExperimentConfig, {
        "name": f"bench_crbr_{name}", "data": data, "split": split_settings(split_k), "model": model,
        "train": {"batch_size": 128, "seed": 0, "threads": threads, "progress": False, **train},
        "eval": {"batch_size": 256, "mask_history": data.get("name") != "synthetic"}, "out_dir": str(run)})
    print(f"== {name}: training ({model})", flush=True)
    torch.manual_seed(0)
    m = build_model(cfg.model_name, cfg.model_params, ds, split)
    Trainer(m, ds, split, cfg, max_len=m.config.max_len).fit()
    m.eval()
    return m, json.loads((run / "results.json").read_text())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("crbr", __doc__)
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "ml-1m", "Beauty"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=10.0, help="training cap per stage")
    add_data_arg(ap)
    add_output_args(ap, "crbr")
    ap.add_argument("--set", nargs="*", default=[], metavar="STAGE.KEY=VALUE",
                    help="change a stage's model setting, e.g. crbr.tau_decay=0.003 (values parsed as YAML)")
    ap.add_argument("--split-k", type=int, default=1,
                    help="test targets per user: 1 = leave-one-out; K > 1 = each user's last K events (own run folder)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    invocation = command_line("crbr", argv)
    if args.data_root:  # the stages' `prepare` reads the default root
        os.environ["CRBR_DATA"] = str(data_root(args.data_root))
    from crbr.data.batching import history_batch
    from crbr.data.dataset import make_split, train_item_counts
    from crbr.eval.interests import history_categories, interest_coverage
    from crbr.index import build_index
    from crbr.config import EvalConfig
    from crbr.retrieval import retrieve
    from crbr.train.loop import build_evaluator

    out = Path(args.out) / (args.dataset + (f"_k{args.split_k}" if args.split_k > 1 else ""))
    ds, world = load_dataset(args.dataset, args.data_root)
    data = {"name": "synthetic", "synthetic": SYNTHETIC} if world is not None else {"name": args.dataset}
    sp = split_settings(args.split_k)
    split = make_split(ds, sp.pop("name"), **sp)
    counts = train_item_counts(ds, split)
    es = split.test
    if world is not None:
        o = world.interest_offsets
        interests = [set(world.interest_categories[o[u]:o[u + 1]].tolist()) for u in es.users]
        what = "true interests (ground truth)"
    else:
        interests = history_categories(ds, es.users, es.hist_len)
        what = "categories of the visible history"
    multi = np.array([len(s) >= 3 for s in interests])
    # what a history-based model can see: the share of a user's interests among the categories
    # of the visible history (1 on real data, where the interests are the history's categories)
    seen = history_categories(ds, es.users, es.hist_len)
    observable = np.array([len(i & h) / max(len(i), 1) for i, h in zip(interests, seen)])

    import yaml

    changes: dict[str, dict] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        stage, _, field = key.partition(".")
        changes.setdefault(stage, {})[field] = yaml.safe_load(value)
    models, rows = {}, {}
    for name, model, train in stages(args.dataset, args.minutes):
        model = {**model, **changes.get(name, {})}
        if name == "two_tower":
            model = {**model, "tower_checkpoint": str(out / "qformer" / "checkpoints" / "best.safetensors")}
        if name == "crbr":
            model = {**model, "base_checkpoint": str(out / "two_tower" / "checkpoints" / "best.safetensors")}
        run_name = f"{name}_{args.tag}" if args.tag and name in changes else name
        models[name], rows[name] = run_stage(run_name, model, train, data, out, args.threads, ds, split, args.split_k)

    ec = EvalConfig(mask_history=args.dataset != "synthetic", batch_size=256)
    table = {}
    # CRBR twice: merge & sort by score alone, and with a per-path quota of ceil(50 / B) in the top 50
    cr_cfg = models["crbr"].config
    quota = -(-50 // cr_cfg.beam)
    variants = [(n, n, None) for n in models] + [("crbr_quota", "crbr", quota)]
    for name, stage, q in variants:
        m = models[stage]
        opts = {"merge_quota": q or 0} if stage == "crbr" else {}
        ev = build_evaluator(ds, split, "test", ec, m.config.max_len, counts)
        with torch.no_grad():
            res = ev.evaluate(lambda b: m.score(b, **opts).float(), export=True)
        cov = interest_coverage(res.topk_items, interests, ds.cat_offsets, ds.cat_ids, 50)
        table[name] = {"Recall@50": res.metrics["Recall@50"], "NDCG@10": res.metrics["NDCG@10"],
                       "tail_HR@10": res.bucket_hr10[-1], "cov@50": float(np.nanmean(cov)),
                       "cov@50_multi": float(np.nanmean(cov[multi])),
                       "Recall@50_multi": float(np.mean(recall_multi(res, es, multi, 50))),
                       "protocol": res.protocol}
        print(name, {k: v for k, v in table[name].items() if k != "protocol"}, flush=True)

    # latency: 1024 users end to end on one HNSW index over Retrieval A's item vectors
    ra, cr = models["two_tower"], models["crbr"]
    idx = build_index(ra.item_vectors(), "hnsw", M=16, ef_search=128)
    users = np.resize(np.arange(len(es)), 1024)
    batch = history_batch(ds, es.users[users], es.hist_len[users], ra.config.max_len)

    def t_ra():
        with torch.no_grad():
            u = ra.user_vectors(batch)
        return idx.search(u.numpy(), 50)

    def t_crbr():
        with torch.no_grad():
            return retrieve(cr, batch, k=50, index=idx, per_vector_k=50)

    lat = {}
    for _ in range(1):  # warm-up
        t_ra(), t_crbr()
    for name, fn in (("two_tower", t_ra), ("crbr", t_crbr)):
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        lat[name] = float(np.median(ts))
    print("latency (s, 1024 users):", lat, flush=True)
    dead, ppl = code_usage(cr, ds, es)
    print("dead codes per layer:", dead, "perplexity:", ppl, flush=True)

    label = {"sasrec": "SASRec", "qformer": "Q-Former max-sim", "two_tower": "Retrieval A (SAB+PMA)", "crbr": "CRBR (B=4)",
             "crbr_quota": f"CRBR (B=4), at most {quota} per path"}
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, `{invocation}`; "
        f"machine: {machine_line()}; {args.threads} thread(s).",
        f"Dataset: {args.dataset}" + (f" ({SYNTHETIC})" if world is not None else "") + f"; protocol: {table['crbr']['protocol']}.",
        (f"Variant {args.tag!r}: " + ", ".join(args.set) + ".\n" if args.tag else "") +
        f"Interests = {what}; multi-interest users = {int(multi.sum())} of {len(multi)} test users with >= 3; "
        f"share of their interests present in their visible history (a ceiling for coverage from the history "
        f"alone): {observable[multi].mean():.3f}. "
        f"Training capped at {args.minutes:g} min per stage.",
        *[f"Stage {n}: reused the run in {r['reused']} (config {r.get('name', '?')}, code {r.get('code_version', '?')})."
          for n, r in rows.items() if r.get("reused")],
        "",
        "| model | Recall@50 | Recall@50 (>=3) | NDCG@10 | tail HR@10 | interest cov@50 | cov@50 (>=3) | epochs (best) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in table.items():
        r = rows["crbr" if name == "crbr_quota" else name]
        lines.append(f"| {label[name]} | {t['Recall@50']:.4f} | {t['Recall@50_multi']:.4f} | {t['NDCG@10']:.4f} | "
                     f"{t['tail_HR@10']:.4f} | {t['cov@50']:.4f} | {t['cov@50_multi']:.4f} | {r['epochs_run']} ({r['best_epoch']}) |")
    a = table["two_tower"]
    lines += [
        "",
        f"Latency, 1024 users end to end on HNSW (M=16, efSearch=128): Retrieval A {lat['two_tower'] * 1e3:.0f} ms, "
        f"CRBR {lat['crbr'] * 1e3:.0f} ms = {lat['crbr'] / lat['two_tower']:.2f}x (bar <= 3x).",
    ] + [
        f"{label[n]} / Retrieval A Recall@50: all users {table[n]['Recall@50'] / max(a['Recall@50'], 1e-12):.2f}x, "
        f">=3-interest users {table[n]['Recall@50_multi'] / max(a['Recall@50_multi'], 1e-12):.2f}x; "
        f"coverage@50 (>=3): {table[n]['cov@50_multi']:.3f} vs Retrieval A {a['cov@50_multi']:.3f}."
        for n in ("crbr", "crbr_quota")
    ] + [
        f"Code usage over the B = {cr.config.beam} beams of all {len(es)} test users, layer by layer: dead codes "
        + " / ".join(f"{d:.0%}" for d in dead) + " (bar <= 10%), perplexity " + " / ".join(f"{x:.1f}" for x in ppl)
        + " of " + " / ".join(str(b.codebook.shape[0]) for b in cr.blocks) + " codes."
    ]
    section = "\n".join(lines)
    print(section)
    name = f"bench{'_' + args.tag if args.tag else ''}"
    (out / f"{name}.json").write_text(json.dumps({"table": table, "latency_s": lat}, indent=1, default=float))
    write_report(out, name, section)
    publish(records(args, table, rows, lat, dead, ppl, label, quota, world is not None, invocation), args)
    return 0


def records(args, table: dict, rows: dict, lat: dict, dead: list, ppl: list, label: dict, quota: int,
            synthetic: bool, invocation: str) -> list:
    """One record per evaluated model (CRBR with the quota merge as variant "quota")."""
    from crbr.results import Protocol, ResultRecord, machine_info, portable

    variant_of = {"crbr_quota": "quota"}
    k_part = f"k{args.split_k}" if args.split_k > 1 else ""
    out = []
    for name, t in table.items():
        stage = "crbr" if name == "crbr_quota" else name
        r = rows[stage]
        metrics = {k: float(v) for k, v in t.items() if k != "protocol"}
        timings = {k: r[k] for k in ("epochs_run", "best_epoch", "train_seconds") if isinstance(r.get(k), (int, float))}
        if stage in lat:
            timings["latency_1024_users_s"] = round(lat[stage], 4)
        if stage == "crbr":
            metrics.update({f"dead_codes_l{i + 1}": d for i, d in enumerate(dead)})
            metrics.update({f"perplexity_l{i + 1}": x for i, x in enumerate(ppl)})
        config = r.get("config") or {}
        notes = [f"{label[name]}.", f"Run by `{invocation}`." + (" Data: the synthetic world " + json.dumps(SYNTHETIC)
                 + "." if synthetic else ""), f"Training capped at {args.minutes:g} min per stage."]
        if r.get("reused"):
            notes.append(f"Stage reused from {r['reused']}.")
        out.append(ResultRecord(
            suite="crbr", dataset=args.dataset, model=str(r.get("model") or stage),
            variant=with_tag(with_tag(variant_of.get(name, ""), k_part), args.tag),
            protocol=Protocol.from_line(t["protocol"]), config=portable(config, ROOT), command=invocation,
            code_version=str(r.get("code_version") or "unknown"), machine=machine_info(args.threads),
            seeds=[int(r["seed"])] if isinstance(r.get("seed"), int) else [], metrics=metrics, timings=timings,
            date=time.strftime("%Y-%m-%dT%H:%M"), notes=" ".join(notes)))
    return out


def load_dataset(name: str, root: str | None = None):
    """(dataset, world): the synthetic world of these benchmarks (world = its ground truth) or a
    real dataset preset read from `root` (default: $CRBR_DATA, else ../shared/data; world = None)."""
    if name == "synthetic":
        from crbr.data.synthetic import SyntheticConfig, generate

        world = generate(SyntheticConfig(**SYNTHETIC))
        return world.dataset, world
    from crbr.config import from_dict
    from crbr.data.prepare import DataConfig, prepare

    return prepare(from_dict(DataConfig, {"name": name, "root": str(data_root(root))})), None


if __name__ == "__main__":
    sys.exit(main())
