"""`crbr quickstart`: the main job on the embedded synthetic multi-interest world.

Generates the world (deterministic by seed, no network), exports its ground truth, then runs the
whole pipeline with the generic trainer (early stopping on validation NDCG@10): SASRec, Q-Former
pre-training (Task A + B), the Set-Transformer retriever over the frozen Q-Former, and CRBR over
that retriever. It prints the test metrics of every stage beside a popularity baseline (with the
protocol and the interest coverage against the world's true interests), builds an HNSW index, and
shows for a few multi-interest users their beams with the items each beam retrieved next to their
true interests. It ends with what to try next.

Progress bars are drawn only when stderr is a terminal (unless `train.progress` is set), so a
redirected log holds the epoch lines and nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("crbr.quickstart")


# The pipeline after SASRec: (stage, label, model settings, train settings); checkpoints chain
# (Q-Former -> Set-Transformer retriever -> CRBR) through each stage's best.safetensors.
PIPELINE = [
    ("sasrec", "SASRec", {}, {}),
    ("qformer", "Q-Former (max-sim)",
     {"name": "qformer", "max_len": 100, "hidden": 64, "n_queries": 8, "n_layers": 2, "n_heads": 2, "dropout": 0.1,
      "n_negatives": 256, "max_masked": 16},
     {"epochs": 12, "lr": 3e-3, "windows": "all", "window_stride": 25, "length_bucketing": True, "patience": 3}),
    ("two_tower", "Set-Transformer (SAB+PMA)",
     {"name": "set_transformer", "tower_checkpoint": "", "hidden": 64, "out_dim": 64, "n_negatives": 256, "dropout": 0.1},
     {"epochs": 6, "lr": 3e-3, "windows": "all", "window_stride": 25, "length_bucketing": True, "patience": 2}),
    ("crbr", "CRBR",
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


def interest_cov(res, interests, ds, multi) -> tuple[float, float]:
    """Mean interest coverage@50 of a result over all its users and over the `multi` ones."""
    from ..eval.interests import interest_coverage

    cov = interest_coverage(res.topk_items, [interests[u] for u in res.users], ds.cat_offsets, ds.cat_ids, 50)
    return float(np.nanmean(cov)), float(np.nanmean(cov[multi]))


def metrics_table(rows: list[tuple[str, object]], keys: list[str], interests=None, ds=None, multi=None,
                  tail: bool = True) -> str:
    """One row per model: metrics, tail-bucket HR@10 (with `tail`) and (with ground truth)
    interest coverage@50. The model column is at least 24 wide and 2 wider than the longest label."""
    cov_keys = ["cov@50", "cov@50 >=3"] if interests is not None else []
    width = max([24] + [len(name) + 2 for name, _ in rows])
    head = f"{'model':<{width}}" + "".join(f"{k:>11}" for k in keys + (["tail HR@10"] if tail else []) + cov_keys)
    lines = [head, "-" * len(head)]
    for name, res in rows:
        vals = [res.metrics[k] for k in keys] + ([res.bucket_hr10[-1]] if tail else [])
        if interests is not None:
            vals += list(interest_cov(res, interests, ds, multi))
        lines.append(f"{name:<{width}}" + "".join(f"{v:>11.4f}" for v in vals))
    return "\n".join(lines)


def tail_is_informative(rows: list[tuple[str, object]]) -> bool:
    """Whether any model hits a target of the least popular bucket in its top 10."""
    return any(float(res.bucket_hr10[-1]) > 0 for _, res in rows)


def tail_note(world, split, counts: np.ndarray, bucket_of: np.ndarray, n_buckets: int) -> str:
    """Why HR@10 on the least popular bucket is 0 for every model on the synthetic world: how
    little of the data those items hold, where they sit in their own categories, and how many of
    them the world's exact next-item probabilities (an oracle that knows every user's interests,
    tastes and latent state) put in a top 10."""
    es = split.test
    tail = np.nonzero(bucket_of == n_buckets - 1)[0]
    off = np.asarray(es.target_offsets)
    has = np.diff(off) > 0
    first = np.asarray(es.target_items)[off[:-1][has]]  # each user's first target
    share = counts[tail].sum() / max(counts[1:].sum(), 1)
    cat = world.item_category
    below = [np.mean(counts[world.category_members[cat[i]]] > counts[i]) for i in tail]
    in_tail = bucket_of[first] == n_buckets - 1
    line = (f"(tail HR@10, HR@10 on the {len(tail)} least popular items, is 0 for every model, so it is not shown: "
            f"those items get {share:.1%} of the training events and {int(in_tail.sum())} of the {len(first)} test "
            f"targets, and each is less popular than at least {min(below):.0%} of its own category's items")
    if in_tail.any():
        users, t = np.asarray(es.users)[has][in_tail], np.asarray(es.hist_len)[has][in_tail]
        p = world.next_item_probs(users, t)  # (n, I), the generator's own distribution
        p[:, 0] = -np.inf
        top = np.argsort(-p, axis=1, kind="stable")[:, :10]  # ties: lower item id first, as the evaluator
        hits = int((top == first[in_tail][:, None]).any(1).sum())
        line += (f"; even the world's exact next-item probabilities put only {hits} of the {int(in_tail.sum())} "
                 f"in their top 10")
    return line + ". crbr train prints HR@10 for every popularity bucket.)"


def quickstart_pipeline(cfg, epochs: int | None = None):
    """The quickstart's chain as a Pipeline: the SASRec stage from the user's config, then
    Q-Former -> Set-Transformer retriever -> CRBR, each reading the previous stage's best checkpoint."""
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


def quickstart_config(config: str | None, overrides: list[str] | None, out: str | Path, terminal: bool):
    """The quickstart's experiment config: QUICKSTART_DEFAULTS, then the sections of the YAML file
    `config`, then the overrides. Unless the user set train.progress, progress bars are on only
    when `terminal` (stderr is a terminal): redirected, they would bury the epoch lines."""
    import yaml

    from ..config import ExperimentConfig, apply_overrides, from_dict

    d = json.loads(json.dumps(QUICKSTART_DEFAULTS))
    user: dict = {}
    if config:
        user = yaml.safe_load(Path(config).read_text()) or {}
        d.update(user)
    apply_overrides(d, list(overrides or []))
    apply_overrides(user, list(overrides or []))
    if "progress" not in (user.get("train") or {}):
        d.setdefault("train", {})["progress"] = bool(terminal)
    d["out_dir"] = str(out)
    return from_dict(ExperimentConfig, d)


def run_quickstart(args) -> int:
    from ..data.dataset import leave_one_out, train_item_counts
    from ..data.synthetic import SyntheticConfig, generate
    from ..train.loop import build_evaluator

    t0 = time.perf_counter()
    out = Path(args.out)
    cfg = quickstart_config(args.config, args.overrides, out, sys.stderr.isatty())

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
    tail = tail_is_informative(results)
    print(metrics_table(results, keys, interests, ds, multi, tail=tail))
    note = (f"(interest coverage@50: share of a user's true interests whose category appears among the top 50; "
            f"'>=3' = the {int(multi.sum())} test users with at least 3 interests")
    covs = [interest_cov(res, interests, ds, multi)[1] for _, res in results]
    if covs[0] > max(covs[1:], default=-1.0):  # the popularity baseline (row 0) covers the most
        top50 = np.lexsort((np.arange(1, len(counts)), -counts[1:]))[:50] + 1  # most popular first, ties: lower id
        spans = len(set(world.item_category[top50].tolist()))
        note += (f"; popularity covers the most: its top 50, the same for every user, spans {spans} of the "
                 f"{len(ds.category_names)} categories. Coverage rewards breadth; only beside HR and Recall does it "
                 f"say whether a model found the right items")
    print(note + ")")
    if not tail:
        print(tail_note(world, split, counts, pop_ev.bucket_of, pop_ev.n_buckets))

    crbr_model = models.get("crbr")
    if crbr_model is not None:
        show_beams(crbr_model, ds, split, world, interests, out)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; run dirs under {out} (metrics.csv, tb/, checkpoints/, "
          f"results.json per stage; ground_truth.parquet)")
    print(next_steps(out))
    return 0


def has_command(name: str) -> bool:
    """Whether this installation has the `crbr` subcommand `name` (its module crbr.cli.<name>;
    the commands of crbr.cli.main itself are always there)."""
    return importlib.util.find_spec(f"crbr.cli.{name.replace('-', '_')}") is not None


def next_steps(out: Path) -> str:
    """What to try after the quickstart: the commands, with this run's folders filled in."""
    steps = [
        (f"crbr report {out / 'qformer'}", "learning curves and the Q-Former's token diagnostics as PNG files"),
        (f"crbr evaluate --checkpoint {out / 'sasrec' / 'checkpoints' / 'best.safetensors'} --export-topk top100.parquet",
         "re-score a checkpoint; each user's top 100 as original ids"),
        ("crbr train -c configs/sasrec_ml1m.yaml",
         "a config from configs/ on a real dataset (data from $CRBR_DATA); for your own CSV / Parquet log see "
         "the README, \"Your own data\""),
        ("crbr pipeline -c configs/pipelines/crbr_ml1m.yaml", "the Q-Former -> Set Transformer -> CRBR chain on MovieLens-1M"),
    ]
    if has_command("serve"):
        steps.append(("crbr serve --help", "serve a trained model and its item index over HTTP"))
    return "\nnext:\n" + "\n".join(f"  {cmd}\n      {what}" for cmd, what in steps)


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
    k = 50
    with torch.no_grad():
        r = retrieve(model, batch, k=k, index=index, per_vector_k=k)
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
            print(f"  beam {b + 1} codes {codes:<9} log p {float(r.beams.scores[row, b]):7.2f}: "
                  f"{items or beam_without_items(r, row, b, index, k)}")


def beam_without_items(r, row: int, b: int, index, k: int) -> str:
    """Why beam `b` of user `row` keeps no item in the merged list: every item it retrieved that
    made the merged top k was retrieved with a higher score by another beam (which keeps it), or
    none of them made the merged top k."""
    own = index.search(r.queries.vectors[row, b : b + 1].float().cpu().numpy(), k).ids[0]
    merged = {int(x): int(p) for x, p in zip(r.ids[row], r.path[row]) if x > 0}
    kept = [int(x) for x in own if int(x) in merged]
    if not kept:
        return f"(none of its items made the merged top {k})"
    owners = sorted({merged[x] + 1 for x in kept})
    which = f"beam{'s' if len(owners) > 1 else ''} {', '.join(str(o) for o in owners)}"
    rest = "; the rest ranked lower" if len(kept) < int((own > 0).sum()) else ""
    return f"(all {len(kept)} of its items in the merged top {k} were retrieved with a higher score by {which}{rest})"
