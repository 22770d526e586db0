"""Full-ranking evaluation: metrics, the chunked / distributed evaluator, top-K export."""

from .evaluator import EvalResult, Evaluator
from .export import export_topk, topk_table
from .metrics import idcg_table, popularity_buckets, target_ranks, topk_ordered, user_metrics

__all__ = [
    "EvalResult",
    "Evaluator",
    "export_topk",
    "topk_table",
    "idcg_table",
    "popularity_buckets",
    "target_ranks",
    "topk_ordered",
    "user_metrics",
]
