"""How much of history masking lies in the model's window: a trained checkpoint's test metrics
with the items of its input window given a fixed score offset, against masking nothing and
masking the whole visible history.

    python -m research.window_offsets CHECKPOINT [--offsets 1 2 4 8 inf]

Each row scores the test users with `model.score(batch)` plus `-offset` on every item of the
window the model reads (the last max_len events; repeats add up), nothing else masked; the last
row masks the whole visible history (the evaluator's `mask_history`). Prints HR@10 and NDCG@10
and writes them to --report.
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import add_report_args, publish_report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m research.window_offsets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--offsets", nargs="*", type=float, default=[1, 2, 4, 8, float("inf")])
    ap.add_argument("--threads", type=int, default=2)
    add_report_args(ap, "window_offsets")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from crbr.checkpoint import read_metadata
    from crbr.config import ExperimentConfig, from_dict
    from crbr.data.prepare import prepare_with_split
    from crbr.models import load_model
    from crbr.train.loop import build_evaluator

    cfg = from_dict(ExperimentConfig, read_metadata(args.checkpoint)["experiment"])
    ds, split = prepare_with_split(cfg)
    model, _ = load_model(args.checkpoint)

    def with_offset(off: float):
        def score(b):
            s = model.score(b).float()
            if off == float("inf"):
                return s.scatter(1, b["items"], float("-inf")).index_fill(1, torch.tensor([0]), float("-inf"))
            return s.scatter_add(1, b["items"], torch.full(b["items"].shape, -off) * (b["items"] > 0))
        return score

    rows = [("none", with_offset(0.0), False)] + [(f"-{o:g}", with_offset(o), False) for o in args.offsets]
    rows.append(("whole history masked", with_offset(0.0), True))
    lines = [f"`python -m research.window_offsets {' '.join(argv)}`; window = last {model.config.max_len} events", ""]
    print(lines[0])
    with torch.no_grad():
        for name, fn, mask in rows:
            cfg.eval.mask_history = mask
            res = build_evaluator(ds, split, "test", cfg.eval, model.config.max_len).evaluate(fn)
            lines.append(f"window offset {name:>22}: HR@10 {res.metrics['HR@10']:.4f}  NDCG@10 {res.metrics['NDCG@10']:.4f}")
            print(lines[-1], flush=True)
    publish_report(args, "window_offsets", "\n".join(lines), "Window offsets (python -m research.window_offsets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
