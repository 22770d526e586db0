"""Reproducible benchmark suites of crbr, run from the repository root with

    python -m benchmarks --list
    python -m benchmarks SUITE [options]          # e.g. python -m benchmarks sasrec --datasets ml-1m
    python -m benchmarks SUITE --help

Each suite trains or measures through the installed `crbr` package, prints a human-readable
report (also written under its --out folder, default runs/bench/SUITE/), writes one result record
per measured (dataset, model, variant) into benchmarks/results/ (`crbr.results`; a rerun replaces
its own records) and regenerates benchmarks/RESULTS.md from the records. Real datasets are read
from $CRBR_DATA, else ../shared/data (--data-root overrides both).

The tools at the end of the list analyse finished runs and write no records. One-off
investigations live in research/ (`python -m research.NAME`); their history is
docs/research-log.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str  # what follows `python -m benchmarks`
    module: str  # benchmarks.<module> with a main(argv) function
    description: str  # one line
    kind: str = "suite"  # "suite": writes records; "tool": analyses finished runs


ENTRIES = [
    Entry("sasrec", "run_sasrec", "SASRec trained by `crbr train` on ML-100K, ML-1M and Beauty, "
          "exports checked against the raw files"),
    Entry("towers", "run_towers", "user towers side by side on one dataset: Q-Former variants, "
          "PinnerFormer, Set-Transformer retriever"),
    Entry("crbr", "bench_crbr", "CRBR against the Set-Transformer retriever and SASRec: recall, "
          "interest coverage, latency"),
    Entry("residual", "run_residual", "residual-enhancement mixture on ML-100K against SASRec alone, "
          "its ablations and federated training"),
    Entry("recbole_side_by_side", "recbole_side_by_side", "crbr SASRec and RecBole 1.2.1 SASRec on "
          "ML-100K in one run: test metrics and time to quality"),
    Entry("ann", "bench_ann", "ANN item indexes (HNSW, IVF, IVF-PQ) against exact search: "
          "recall@100 and queries/second"),
    Entry("eval_memory", "bench_eval_memory", "peak memory and time of full-ranking evaluation "
          "over a 1M-item catalogue"),
    Entry("qformer_efficiency", "bench_qformer_efficiency", "Q-Former encoder against self-attention: "
          "step time and peak memory as the history grows"),
    Entry("semantic_ids", "bench_semantic_ids", "semantic-ID tokenizers (RQ-KMeans variants, RQ-VAE, published "
          "LETTER IDs) judged by the health report"),
    Entry("generative", "bench_generative", "the generative retriever against SASRec from the same run: "
          "retrieval, action alignment, controls"),
    Entry("serve", "bench_serve", "crbr serve under closed-loop load: QPS and latency with and without "
          "micro-batching, HTTP / model / index split, soak"),
    Entry("compare_runs", "compare_runs", "finished `crbr train` runs side by side, validation metric "
          "at equal wall-clock", "tool"),
    Entry("paired_seeds", "paired_seeds", "paired comparison of runs over seeds: difference, "
          "t-interval, seeds won", "tool"),
    Entry("paired_users", "paired_users", "per-user paired comparison of retrievers: exact McNemar "
          "test on Recall@K hits", "tool"),
    Entry("verify_export", "verify_export", "recompute HR@K / NDCG@K of an exported top-K file from "
          "the raw dataset, without crbr", "tool"),
]
SUITES = {e.name: e for e in ENTRIES}

# what `make bench` runs, in this order
HEADLINE = ["sasrec", "towers", "crbr", "residual", "ann", "eval_memory", "qformer_efficiency"]
