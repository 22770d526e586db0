"""How much of history masking lies in the model's window: a trained checkpoint's test metrics
with the items of its input window given a fixed score offset, against masking nothing and
masking the whole visible history.

    python benchmarks/window_offsets.py CHECKPOINT [--offsets 1 2 4 8 inf]

Each row scores the test users with `model.score(batch)` plus `-offset` on every item of the
window the model reads (the last max_len events; repeats add up), nothing else masked; the last
row masks the whole visible history (the evaluator's `mask_history`). Prints HR@10 and NDCG@10.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--offsets", nargs="*", type=float, default=[1, 2, 4, 8, float("inf")])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from crbr.config import ExperimentConfig, from_dict
    from crbr.data.prepare import prepare_with_split
    from crbr.train.checkpoint import load_model_from_checkpoint, read_metadata
    from crbr.train.loop import build_evaluator

    cfg = from_dict(ExperimentConfig, read_metadata(args.checkpoint)["experiment"])
    ds, split = prepare_with_split(cfg)
    model, _ = load_model_from_checkpoint(args.checkpoint)
    model.eval()

    def with_offset(off: float):
        def score(b):
            s = model.score(b).float()
            if off == float("inf"):
                return s.scatter(1, b["items"], float("-inf")).index_fill(1, torch.tensor([0]), float("-inf"))
            return s.scatter_add(1, b["items"], torch.full(b["items"].shape, -off) * (b["items"] > 0))
        return score

    rows = [("none", with_offset(0.0), False)] + [(f"-{o:g}", with_offset(o), False) for o in args.offsets]
    rows.append(("whole history masked", with_offset(0.0), True))
    print(f"checkpoint {args.checkpoint}; window = last {model.config.max_len} events")
    with torch.no_grad():
        for name, fn, mask in rows:
            cfg.eval.mask_history = mask
            res = build_evaluator(ds, split, "test", cfg.eval, model.config.max_len).evaluate(fn)
            print(f"window offset {name:>22}: HR@10 {res.metrics['HR@10']:.4f}  NDCG@10 {res.metrics['NDCG@10']:.4f}", flush=True)


if __name__ == "__main__":
    main()
