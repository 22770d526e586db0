#!/usr/bin/env python
"""Peak memory and time of full-ranking evaluation on a large synthetic catalogue.

usage: python -m benchmarks eval_memory [--items 1000000] [--users 10000] [--hist 20]

Builds a SequenceDataset with `users` users of `hist` + 1 random events over `items` items, a
leave-one-out test set, and evaluates a score function returning fresh uniform random float32
scores (B, items + 1) per chunk, with history masking and top-100 export on (the most work the
evaluator does). Peak RSS is resource.getrusage(RUSAGE_SELF).ru_maxrss of this process. Prints one
Markdown table row (also the report OUT/eval_memory.md) and writes the record (suite "eval_memory",
dataset "random-scores-1M-items", model "evaluator"). Run it in a fresh process: the peak RSS is the
process's.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import sys
import time

import numpy as np
import torch

from crbr.data.dataset import SequenceDataset, leave_one_out, train_item_counts
from crbr.eval import Evaluator

from ._common import add_output_args, code_version, command_line, human, parser, publish, with_tag, write_report


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("eval_memory", __doc__)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--hist", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    add_output_args(ap, "eval_memory")
    a = ap.parse_args(argv)

    code_version()  # the code that runs, taken at the start
    rng = np.random.default_rng(a.seed)
    n = a.hist + 2  # leave-one-out: hist events visible + validation + test
    E = a.users * n
    ds = SequenceDataset(
        offsets=np.arange(0, E + 1, n, dtype=np.int64),
        items=rng.integers(1, a.items + 1, E).astype(np.int32),
        actions=np.ones(E, dtype=np.int16),
        timestamps=None,
        user_ids=np.arange(a.users).astype(str).astype(object),
        item_ids=np.concatenate([[""], np.arange(1, a.items + 1).astype(str)]).astype(object),
        action_names=["<pad>", "click"],
    )
    split = leave_one_out(ds)
    counts = train_item_counts(ds, split)
    ev = Evaluator(ds, split.test, counts, mask_history=True, export_k=100, split_name="leave_one_out")
    gen = torch.Generator().manual_seed(a.seed)

    fn_time = [0.0]

    def score_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        t = time.perf_counter()
        out = torch.rand(len(batch["users"]), a.items + 1, generator=gen)  # (B, I)
        fn_time[0] += time.perf_counter() - t
        return out

    base = rss_mib()
    t0 = time.perf_counter()
    res = ev.evaluate(score_fn, export=True)
    dt_s = time.perf_counter() - t0
    peak = rss_mib()
    print(res)
    row = (
        f"| eval memory | {a.items:,} items x {a.users:,} users, random scores, history masked, top-100 export "
        f"| chunk {ev.chunk_users} users ({ev.chunk_users * (a.items + 1) * 4 / 2**20:.0f} MiB scores) "
        f"| peak RSS {peak / 1024:.2f} GiB (before eval {base / 1024:.2f} GiB) | {dt_s:.1f} s total, "
        f"{dt_s - fn_time[0]:.1f} s in the evaluator ({fn_time[0]:.1f} s generating scores) | torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs |"
    )
    print(row)
    write_report(a.out, "eval_memory", f"`{command_line('eval_memory', argv)}`\n\n{row}")
    publish([record(a, argv, res, peak, base, dt_s, fn_time[0])], a)
    return 0


def record(a, argv: list[str], res, peak_mib: float, base_mib: float, total_s: float, score_s: float):
    from crbr.results import Protocol, ResultRecord, machine_info

    return ResultRecord(
        suite="eval_memory", dataset=f"random-scores-{human(a.items)}-items", model="evaluator", variant=with_tag("", a.tag),
        protocol=Protocol(line=f"full ranking over {a.items:,} items for {a.users:,} users with random scores, "
                               "history masked, top-100 export on", full_ranking=True, history_masked=True,
                          n_users=a.users),
        config={"items": a.items, "users": a.users, "hist": a.hist},
        command=command_line("eval_memory", argv), code_version=code_version(), machine=machine_info(torch.get_num_threads()), seeds=[a.seed],
        metrics={"peak_rss_gib": round(peak_mib / 1024, 2), "rss_before_eval_gib": round(base_mib / 1024, 2)},
        timings={"total_s": round(total_s, 1), "evaluator_s": round(total_s - score_s, 1),
                 "random_scores_s": round(score_s, 1)},
        date=dt.date.today().isoformat(), notes=f"{res.protocol}.")


if __name__ == "__main__":
    sys.exit(main())
