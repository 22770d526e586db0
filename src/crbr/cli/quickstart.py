"""`crbr quickstart`: the main job on the embedded synthetic multi-interest world.

Generates the world (deterministic by seed, no network), exports its ground truth, trains
SASRec with the generic trainer (early stopping on validation NDCG@10), and prints the test
metrics next to a popularity baseline, with the evaluation protocol.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("crbr.quickstart")


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


def metrics_table(rows: list[tuple[str, object]], keys: list[str]) -> str:
    head = f"{'model':<14}" + "".join(f"{k:>12}" for k in keys) + f"{'tail HR@10':>12}"
    lines = [head, "-" * len(head)]
    for name, res in rows:
        lines.append(f"{name:<14}" + "".join(f"{res.metrics[k]:>12.4f}" for k in keys) + f"{res.bucket_hr10[-1]:>12.4f}")
    return "\n".join(lines)


def run_quickstart(args) -> int:
    from ..config import apply_overrides, from_dict, ExperimentConfig
    import yaml

    from ..data.dataset import leave_one_out, train_item_counts
    from ..data.synthetic import SyntheticConfig, generate
    from ..models import build_model
    from ..train.loop import Trainer, build_evaluator

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
    print(world.summary() if hasattr(world, "summary") else ds.summary())
    split = leave_one_out(ds)
    print(split.describe())

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model_name, cfg.model_params, ds, split)
    trainer = Trainer(model, ds, split, cfg, max_len=model.config.max_len, run_dir=out)
    res = trainer.fit()

    counts = train_item_counts(ds, split)
    pop = build_evaluator(ds, split, "test", cfg.eval, model.config.max_len, counts).evaluate(popularity_scorer(counts))
    keys = ["HR@10", "NDCG@10", "Recall@50", "MRR", "coverage@10"]
    print(f"\nprotocol: {res.test.protocol}")
    print(metrics_table([("popularity", pop), (cfg.model_name, res.test)], keys))
    print(f"\ntrained {res.epochs_run} epochs ({res.seconds_per_epoch:.1f} s/epoch), best epoch {res.best_epoch}; "
          f"total {time.perf_counter() - t0:.0f} s; run dir {out} (metrics.csv, tb/, checkpoints/, results.json, "
          f"ground_truth.parquet)")
    return 0
