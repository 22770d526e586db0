"""What the expert branch of a trained residual mixture adds to its scores
(crbr.models.residual_mixture), split into a part that is the same for every user and the rest.

usage:
  python -m research.residual_branch RUN_DIR [RUN_DIR ...] [--split test] [--log FILE]

A residual-mixture score is a sum of two terms (module docstring of crbr.models.residual_mixture):

    s(u, i) = LN(seq_u) . e_i  +  g (w_vis(i) LN(vis_u) + w_sem(i) LN(sem_u)) . e_i
              backbone term         branch term b(u, i)

and the branch term splits over the evaluated users into

    b(u, i) = m(i) + r(u, i),    m(i) = mean over users of b(u, i)   (an item bias)

For each run (its checkpoints/best.safetensors and the data its embedded config names) this prints:
- g, and the share of the branch's user-side vector g [LN(vis_u), LN(sem_u)] that is the
  all-user mean (1.0 = the branch is an item bias, whatever the history);
- the spread (std over users and items) of m, of r and of the backbone term;
- the split's full-ranking metrics of the full score and of three parts: the backbone term
  alone, backbone + m, and the full score minus m.

(`crbr.analysis.score_parts` and `branch_stats`.)

Read it beside SASRec alone: the backbone term of a mixture is not SASRec alone, it is the
backbone as co-trained with the experts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks._common import machine_line
from crbr.analysis import branch_stats, score_parts

from . import add_report_args, publish_report

SECTION = "residual_branch"


def analyse(run_dir: Path, split_name: str) -> dict:
    from crbr.config import ExperimentConfig, from_dict
    from crbr.data.batching import eval_batches
    from crbr.data.prepare import prepare_with_split
    from crbr.models import load_model
    from crbr.train.loop import build_evaluator

    ckpt = run_dir / "checkpoints" / "best.safetensors"
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} not found (a finished `crbr train` run of residual_mixture?)")
    model, meta = load_model(ckpt)
    if meta.get("model_name") != "residual_mixture" or model.config.mixture != "residual":
        raise ValueError(f"{ckpt}: not a residual mixture (model {meta.get('model_name')!r})")
    model.eval()
    cfg = from_dict(ExperimentConfig, meta["experiment"])
    ds, split = prepare_with_split(cfg)
    ev = build_evaluator(ds, split, split_name, cfg.eval, model.config.max_len)
    torch.manual_seed(0)
    st = branch_stats(model, (b for _, b in eval_batches(ds, ev.eval_set, model.config.max_len, 256)))
    m = st.item_bias
    offsets = model.backbone.add_seen_offsets

    def evaluate(fn):  # expert_inputs="noise" draws fresh inputs each pass: the same draws for every row
        torch.manual_seed(0)
        return ev.evaluate(fn)

    def parts(batch, bias_sign: float, with_branch: bool):
        s, b, _ = score_parts(model, batch)
        return offsets((s + b if with_branch else s) + bias_sign * m, batch)

    rows = {
        "full": evaluate(lambda b: parts(b, 0.0, True)),
        "backbone term": evaluate(lambda b: parts(b, 0.0, False)),
        "backbone + m": evaluate(lambda b: parts(b, 1.0, False)),
        "full - m": evaluate(lambda b: parts(b, -1.0, True)),
    }
    return {"run": f"{run_dir.parent.name}/{run_dir.name}", "stats": st, "metrics": {k: v.metrics for k, v in rows.items()},
            "protocol": rows["full"].protocol, "noise": model.config.expert_inputs}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m research.residual_branch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories of residual-mixture trainings")
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    ap.add_argument("--threads", type=int, default=1)
    add_report_args(ap, SECTION)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = [analyse(Path(r), args.split) for r in args.runs]
    head = ("| run | g | branch user side: share in all-user mean | std m(i) | std r(u,i) | std backbone term "
            "| NDCG@10 full | backbone term | backbone + m | full - m |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in res:
        st, mt = r["stats"], r["metrics"]
        lines.append(f"| {r['run']} | {st.gate:.3f} | {st.mean_share:.3f} | {st.bias_std:.3f} | {st.rest_std:.3f} "
                     f"| {st.backbone_std:.3f} | " + " | ".join(f"{mt[k]['NDCG@10']:.4f}" for k in
                                                               ("full", "backbone term", "backbone + m", "full - m"))
                     + " |")
    table = "\n".join(lines)
    print(f"protocol ({args.split}): {res[0]['protocol']}")
    print(table)
    section = "\n".join([
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, `python -m research.residual_branch "
        f"{' '.join(argv)}` ({(time.perf_counter() - t0) / 60:.0f} min); machine: {machine_line()}.",
        "", f"- Split {args.split}: {res[0]['protocol']}.", "", table])
    publish_report(args, SECTION, section, "What the residual branch adds (python -m research.residual_branch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
