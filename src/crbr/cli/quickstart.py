"""`crbr quickstart`: the main job on the embedded synthetic multi-interest world.

Generates the world (deterministic by seed, no network), exports its ground truth, then runs the
whole pipeline with the generic trainer (early stopping on validation NDCG@10): SASRec, Q-Former
pre-training (Task A + B), Retrieval A over the frozen Q-Former, and CRBR over Retrieval A. It
prints the test metrics of every stage beside a popularity baseline (with the protocol and the
interest coverage against the world's true interests), builds an HNSW index, and shows for a few
multi-interest users their beams with the items each beam retrieved next to their true interests.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("crbr.quickstart")


# The pipeline after SASRec: (stage, label, model settings, train settings); checkpoints chain
# (Q-Former -> Retrieval A -> CRBR) through each stage's best.safetensors.
PIPELINE = [
    ("sasrec", "SASRec", {}, {}),
    ("qformer", "Q-Former (max-sim)",
     {"name": "qformer", "max_len": 100, "hidden": 64, "n_queries": 8, "n_layers": 2, "n_heads": 2, "dropout": 0.1,
      "n_negatives": 256, "max_masked": 16},
     {"epochs": 12, "lr": 3e-3, "windows": "all", "window_stride": 25, "length_bucketing": True, "patience": 3}),
    ("two_tower", "Retrieval A (SAB+PMA)",
     {"name": "set_transformer", "tower_checkpoint": "", "hidden": 64, "out_dim": 64, "n_negatives": 256, "dropout": 0.1},
     {"epochs": 6, "lr": 3e-3, "windows": "all", "window_stride": 25, "length_bucketing": True, "patience": 2}),
    ("crbr", "Retrieval B (CRBR)",
     {"name": "crbr", "base_checkpoint": "", "codebook_sizes": [16, 16], "beam": 4, "n_negatives": 256,
      "tau_decay": 1e-3},
     {"epochs": 6, "lr": 3e-3, "windows": "all", "window_stride": 25, "length_bucketing": True, "patience": 2}),
]

QUICKSTART_DEFAULTS = {
    "name": "quickstart",
    "data": {"name": "synthetic", "synthetic": {"seed": 0}},
    "model": {"name": "sasrec", "max_len": 50, "hidden": 64, "n_layers": 2, "n_heads": 2, "dropout": 0.2},
    "train": {"epochs": 30, "batch_size": 128, "lr": 2e-3, "patience": 3, "seed": 0},
}


def popularity_scorer(counts: np.ndarray):
    """Score every item by its training-set count (the non-personalized reference)."""
    pop = torch.as_tensor(counts, dtype=torch.float32)

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return pop.expand(batch["items"].shape[0], -1)

    return score


def metrics_table(rows: list[tuple[str, object]], keys: list[str], interests=None, ds=None, multi=None) -> str:
    """One row per model: metrics, tail-bucket HR@10 and (with ground truth) interest coverage@50."""
    from ..eval.interests import interest_coverage

    cov_keys = ["cov@50", "cov@50 >=3"] if interests is not None else []
    head = f"{'model':<24}" + "".join(f"{k:>11}" for k in keys + ["tail HR@10"] + cov_keys)
    lines = [head, "-" * len(head)]
    for name, res in rows:
        vals = [res.metrics[k] for k in keys] + [res.bucket_hr10[-1]]
        if interests is not None:
            cov = interest_coverage(res.topk_items, [interests[u] for u in res.users], ds.cat_offsets, ds.cat_ids, 50)
            vals += [float(np.nanmean(cov)), float(np.nanmean(cov[multi]))]
        lines.append(f"{name:<24}" + "".join(f"{v:>11.4f}" for v in vals))
    return "\n".join(lines)


def quickstart_pipeline(cfg, epochs: int | None = None):
    """The quickstart's chain as a Pipeline: the SASRec stage from the user's config, then
    Q-Former -> Retrieval A -> CRBR, each reading the previous stage's best checkpoint."""
    from ..pipeline import Pipeline, Stage

    base = cfg.to_dict()
    reads = {"two_tower": {"tower_checkpoint": "qformer"}, "crbr": {"base_checkpoint": "two_tower"}}
    stages = []
    for stage, label, model_params, train in PIPELINE:
        d = json.loads(json.dumps(base))
        d["name"] = f"quickstart_{stage}"
        if stage != "sasrec":  # the user's config / overrides define the SASRec stage
            d["model"] = {k: v for k, v in model_params.items() if k not in ("tower_checkpoint", "base_checkpoint")}
        d["train"].update(train)
        if epochs:
            d["train"]["epochs"] = epochs
        stages.append(Stage(stage, d, reads.get(stage, {}), label))
    return Pipeline("quickstart", stages)


def run_quickstart(args) -> int:
    from ..config import apply_overrides, from_dict, ExperimentConfig
    import yaml

    from ..data.dataset import leave_one_out, train_item_counts
    from ..data.synthetic import SyntheticConfig, generate
    from ..train.loop import build_evaluator

    t0 = time.perf_counter()
    d = json.loads(json.dumps(QUICKSTART_DEFAULTS))
    if args.config:
        d.update(yaml.safe_load(Path(args.config).read_text()) or {})
    apply_overrides(d, args.overrides)
    out = Path(args.out)
    d["out_dir"] = str(out)
    cfg = from_dict(ExperimentConfig, d)

    world = generate(SyntheticConfig(**cfg.data.synthetic))
    ds = world.dataset
    out.mkdir(parents=True, exist_ok=True)
    world.save_ground_truth(out / "ground_truth.parquet")
    print(world.summary())
    split = leave_one_out(ds)
    print(split.describe())

    counts = train_item_counts(ds, split)
    interests = [set(world.interest_categories[world.interest_offsets[u] : world.interest_offsets[u + 1]].tolist())
                 for u in range(ds.n_users)]
    results: list[tuple[str, object]] = []
    pop_ev = build_evaluator(ds, split, "test", cfg.eval, 50, counts)
    results.append(("popularity", pop_ev.evaluate(popularity_scorer(counts), export=True)))
    pipe = quickstart_pipeline(cfg, getattr(args, "epochs", None))

    def report(res) -> None:
        print(f"   {res.fit.epochs_run} epochs ({res.fit.seconds_per_epoch:.1f} s/epoch), best epoch {res.fit.best_epoch}")
        ev = build_evaluator(ds, split, "test", cfg.eval, res.model.max_len, counts)
        results.append((res.stage.label, ev.evaluate_model(res.model, export=True)))

    models = {name: r.model for name, r in pipe.run(out, data=(ds, split), on_stage=report,
                                                          on_start=lambda st: print(f"\n== stage {st.name}: {st.label}")).items()}

    keys = ["HR@10", "NDCG@10", "Recall@50", "MRR"]
    print(f"\nprotocol: {results[-1][1].protocol}")
    multi = np.array([len(interests[u]) >= 3 for u in results[0][1].users])
    print(metrics_table(results, keys, interests, ds, multi))
    print(f"(interest coverage@50: share of a user's true interests whose category appears among the top 50; "
          f"'>=3' = the {int(multi.sum())} test users with at least 3 interests)")

    crbr_model = models.get("crbr")
    if crbr_model is not None:
        show_beams(crbr_model, ds, split, world, interests, out)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; run dirs under {out} (metrics.csv, tb/, checkpoints/, "
          f"results.json per stage; ground_truth.parquet)")
    return 0


def show_beams(model, ds, split, world, interests, out: Path, n_users: int = 3, per_beam: int = 5) -> None:
    """Build an HNSW index over the item vectors, retrieve through CRBR's beams for a few users
    with several interests, and print each beam with the items it found beside the true interests."""
    from ..data.batching import history_batch
    from ..index import build_index
    from ..retrieval import retrieve

    t = time.perf_counter()
    index = build_index(model.item_vectors(), "hnsw", M=16, ef_search=64)
    print(f"\nHNSW index over {ds.n_items} item vectors built in {time.perf_counter() - t:.1f} s")
    es = split.test
    users = [i for i, u in enumerate(es.users) if len(interests[u]) >= 3][:n_users]
    batch = history_batch(ds, es.users[users], es.hist_len[users], model.config.max_len)
    dev = next(model.parameters()).device  # the trainer moved the model (to the GPU, say)
    batch = {k: v.to(dev) for k, v in batch.items()}
    with torch.no_grad():
        r = retrieve(model, batch, k=50, index=index, per_vector_k=50)
    names = ds.category_names
    cat = world.item_category
    for row, i in enumerate(users):
        u = es.users[i]
        true = ", ".join(names[c] for c in sorted(interests[u]))
        print(f"\nuser {ds.user_ids[u]}: true interests [{true}]; next item {ds.item_ids[es.targets(i)[0]]} "
              f"({names[cat[es.targets(i)[0]]]})")
        for b in range(r.beams.codes.shape[1]):
            found = r.ids[row][(r.path[row] == b) & (r.ids[row] > 0)][:per_beam]
            items = ", ".join(f"{ds.item_ids[x]}({names[cat[x]]})" for x in found)
            codes = "-".join(str(c) for c in r.beams.codes[row, b].tolist())
            print(f"  beam {b + 1} codes {codes:<9} log p {float(r.beams.scores[row, b]):7.2f}: {items or '(no items kept)'}")
